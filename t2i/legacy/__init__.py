"""Original checkpoints: safe loading and state-dict key conversion (issue 4, item 6).

Loading::

    state = load_original(path)   # torch.load(..., weights_only=True); refuses arbitrary pickles

Converters are pure functions registered per *what* is converted ("generator", "text_encoder",
"discriminator", "image_encoder", "captioner")::

    register_converter(what, to_t2i, to_original)
    to_t2i(state_dict) -> state_dict          # original key names -> t2i module's key names
    to_original(state_dict) -> state_dict     # and back; to_original(to_t2i(sd)) == sd bit for bit

Both take and return plain ``{key: Tensor}`` dicts, must not copy or change tensor values, and keep
key order. ``CONVERTERS`` is the dict; ``get_converter(what)`` imports the built-in converter modules
(``t2i.legacy.generator``, ``.text_encoder``, ``.discriminator``, ``.alignment``) on first use.
``to_t2i(what, sd)`` / ``to_original(what, sd)`` look up and apply, and ``load_into(module, sd)``
loads strictly with an error that lists missing and unexpected keys and shape mismatches.

Key maps are derived from structure: t2i modules keep the originals' sub-module names where they
exist (``rnn``, ``fc.0``, ``residual.0.block.3``, ``A``, ``M_r``...), so converters only move prefixes.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

StateDict = dict[str, Tensor]
KeyMap = Callable[[StateDict], StateDict]

_BUILTIN_MODULES = (
    "t2i.legacy.generator",
    "t2i.legacy.text_encoder",
    "t2i.legacy.discriminator",
    "t2i.legacy.alignment",
)


class LegacyError(ValueError):
    """A problem with an original checkpoint file or its keys (shown to CLI users without a traceback)."""

    t2i_user_error = True


class KeyMismatchError(LegacyError):
    def __init__(self, what: str, missing: list[str], unexpected: list[str], shapes: list[str] | None = None):
        self.missing, self.unexpected, self.shapes = missing, unexpected, shapes or []
        lines = [f"{what}: the state dict does not match the model built from the recipe."]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if self.shapes:
            lines.append(f"  shape mismatches ({len(self.shapes)}): " + ", ".join(self.shapes))
        lines.append("  Check the recipe (widths, res_blocks, refiner, legacy_unused_conv) against the checkpoint.")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Converter:
    what: str
    to_t2i: KeyMap
    to_original: KeyMap


CONVERTERS: dict[str, Converter] = {}


def register_converter(what: str, to_t2i: KeyMap, to_original: KeyMap) -> None:
    """Register the pair of key maps for ``what`` (re-registering replaces the pair)."""
    CONVERTERS[what] = Converter(what, to_t2i, to_original)


def _discover() -> None:
    for module in _BUILTIN_MODULES:
        if module not in sys.modules and importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def get_converter(what: str) -> Converter:
    _discover()
    try:
        return CONVERTERS[what]
    except KeyError:
        known = ", ".join(sorted(CONVERTERS)) or "(none)"
        raise LegacyError(f"no converter for {what!r}; known: {known}") from None


def to_t2i(what: str, state_dict: Mapping[str, Tensor]) -> StateDict:
    return get_converter(what).to_t2i(dict(state_dict))


def to_original(what: str, state_dict: Mapping[str, Tensor]) -> StateDict:
    return get_converter(what).to_original(dict(state_dict))


def load_original(path: str | Path) -> Any:
    """Read an original checkpoint with ``weights_only=True`` (tensors and plain containers only).

    A ``module.`` prefix from ``nn.DataParallel`` is removed when every key has it.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise LegacyError(f"checkpoint not found: {file}")
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise LegacyError(
            f"refusing to load {file}: it contains Python objects other than tensors and plain containers, "
            "and unpickling them could run arbitrary code (torch.load(weights_only=True) rejected it: "
            f"{str(exc).splitlines()[0]}). Original checkpoints are plain state dicts; if this file comes from a "
            "source you trust, re-save its state_dict() in a separate environment and import that."
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise LegacyError(f"cannot read {file} as a PyTorch checkpoint: {exc}") from None
    if isinstance(data, dict) and data and all(isinstance(k, str) and k.startswith("module.") for k in data):
        data = {k[len("module.") :]: v for k, v in data.items()}
    return data


def load_into(module: nn.Module, state_dict: Mapping[str, Tensor], what: str = "model") -> None:
    """``load_state_dict(strict=True)`` with one error listing missing/unexpected keys and bad shapes."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise KeyMismatchError(what, missing, unexpected, shapes)
    module.load_state_dict(dict(state_dict), strict=True)


def rename_prefixes(state_dict: Mapping[str, Tensor], rules: list[tuple[str, str]]) -> StateDict:
    """Rename keys by the first matching ``(old_prefix, new_prefix)`` rule; others stay. Keeps order."""
    out: StateDict = {}
    for key, value in state_dict.items():
        for old, new in rules:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out
