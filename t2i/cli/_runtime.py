"""The runtime options every network-running command takes: --device, --precision, --channels-last, --compile.

On a recipe command they become ``--set runtime.*`` overrides (validated with the recipe, recorded in the run
folder); on a checkpoint command (sample, eval, compare) they build the runtime directly. See t2i/runtime.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import typer

DeviceOption = typer.Option(
    None, "--device", help="auto | cpu | cuda | cuda:N (default: the recipe's \\[runtime] device, else auto)."
)
PrecisionOption = typer.Option(
    None, "--precision", help="fp32 (the originals' math) | bf16 | fp16 (autocast; fp16 with loss scaling)."
)
ChannelsLastOption = typer.Option(
    None, "--channels-last/--no-channels-last", help="Channels-last memory format for networks and images."
)
CompileOption = typer.Option(None, "--compile/--no-compile", help="torch.compile the generator and discriminators.")


@dataclass
class RuntimeFlags:
    device: str | None = None
    precision: str | None = None
    channels_last: bool | None = None
    compile: bool | None = None

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}

    def sets(self) -> list[str]:
        """``--set runtime.KEY=VALUE`` overrides (TOML values) for the flags that were given."""
        out = []
        for key, value in self.given().items():
            text = ("true" if value else "false") if isinstance(value, bool) else f'"{value}"'
            out.append(f"runtime.{key}={text}")
        return out

    def runtime(self, section: Any = None, *, local_rank: int | None = None):
        """A Runtime from ``section`` (a recipe's [runtime], or defaults) with the given flags on top."""
        from pydantic import ValidationError

        from t2i.recipe import RuntimeSection
        from t2i.runtime import DeviceError, Runtime, warn_once

        base = section.model_dump() if section is not None else {}
        try:
            merged = RuntimeSection(**{**base, **self.given()})
        except ValidationError as exc:
            problems = "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors())
            raise DeviceError(problems) from None
        rt = Runtime.from_section(merged, local_rank=local_rank)
        warn_once(rt.warn())
        return rt
