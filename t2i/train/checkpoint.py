"""Checkpoint files: one dict of tensors and plain data, written atomically, read with ``weights_only=True``.

Layout (``format_version`` 1)::

    {"format_version": 1, "t2i_version": str, "kind": "gan" | "damsm" | "stream",
     "step": int, "recipe": dict (resolved), "vocab": dict | None,
     "models": {"generator": sd, "generator_ema": sd, "discriminators": [sd, ...],
                "text_encoder": sd, "image_encoder": sd, "captioner": sd},   # only those present
     "optimizers": {...}, "rng": {...}, "data": {...}, "metrics": {...}}

Nothing in it needs arbitrary unpickling (design-anchors.md §4.3), so every file loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    t2i_user_error = True


def save_atomic(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` with torch.save to a temp file in the same folder, fsync, then rename over ``path``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Load a t2i checkpoint safely, with a clear message for missing, corrupt or foreign files."""
    import pickle

    import torch

    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise CheckpointError(f"{path} is a folder without checkpoints/last.pt")
        path = candidate
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} needs arbitrary unpickling, which t2i refuses (weights_only=True): {str(exc).splitlines()[0]}. "
            "If it is an original AttnGAN/DM-GAN file, convert it with `t2i import`."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {exc}") from None
    if not isinstance(data, dict) or "format_version" not in data:
        raise CheckpointError(
            f"{path} is not a t2i checkpoint (no format_version); original files go through `t2i import`"
        )
    if data["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {data['format_version']}; this t2i reads up to {FORMAT_VERSION}"
        )
    data["_path"] = str(path)
    return data


_STEP_RE = re.compile(r"step_(\d+)\.pt$")


class CheckpointKeeper:
    """``last.pt`` always, ``step_N.pt`` every N steps (keeping the newest ``keep``), ``best-<metric>.pt``."""

    def __init__(self, folder: Path, keep: int = 3):
        self.folder = Path(folder)
        self.keep = keep

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    def save(self, state: dict[str, Any], step: int, *, periodic: bool) -> list[Path]:
        from t2i.train.finite import require_finite_state  # never a NaN checkpoint, whoever trains

        require_finite_state(state, self.last)
        written = [save_atomic(state, self.last)]
        if periodic and self.keep > 0:
            written.append(save_atomic(state, self.folder / f"step_{step:08d}.pt"))
            self._prune()
        return written

    def save_best(self, state: dict[str, Any], metric: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", metric)
        from t2i.train.finite import require_finite_state

        require_finite_state(state, self.folder / f"best-{safe}.pt")
        return save_atomic(state, self.folder / f"best-{safe}.pt")

    def periodic(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("step_*.pt") if _STEP_RE.search(p.name))

    def _prune(self) -> None:
        for old in self.periodic()[: -self.keep]:
            old.unlink(missing_ok=True)

    def latest_good(self) -> dict[str, Any]:
        """The newest checkpoint that loads: last.pt, else the newest periodic one."""
        errors = []
        for candidate in [self.last, *reversed(self.periodic())]:
            if not candidate.exists():
                continue
            try:
                return load(candidate)
            except CheckpointError as exc:
                errors.append(str(exc))
        detail = "; ".join(errors) if errors else "no checkpoint files"
        raise CheckpointError(f"no loadable checkpoint in {self.folder}: {detail}")
