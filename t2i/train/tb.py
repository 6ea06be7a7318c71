"""TensorBoard event files beside metrics.jsonl (``[log] tensorboard = true``): ``RUN/tensorboard/``.

A mirror, not a record: metrics.jsonl, eval.jsonl, validation.jsonl and the PNGs stay the source of truth, and the
loops hand the logger the same rows and files they have just written. Only the process that writes the run folder
opens a writer. A resumed run appends to the same folder with ``purge_step`` set just past the checkpoint's step,
so TensorBoard drops the events the interrupted run logged after it (as the loop truncates the JSONL files).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 't2i[tensorboard]'"
_NOT_SCALARS = ("step", "time")  # the x axis, and wall-clock time (every event carries its own)


class TensorBoardMissingError(RuntimeError):
    t2i_user_error = True


def folder(run_path: str | Path) -> Path:
    return Path(run_path) / "tensorboard"


def require(recipe: Any) -> None:
    """Before a run starts: ``[log] tensorboard = true`` needs the tensorboard package, else a clear error."""
    if recipe.log.tensorboard:
        _writer_class()


def _writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch's module imports the tensorboard package
        raise TensorBoardMissingError(
            f"[log] tensorboard = true needs the tensorboard package, which is not installed ({exc}). "
            f"Install it with: {INSTALL_HINT} (or run with --set log.tensorboard=false)"
        ) from None
    return SummaryWriter


class RunLogger:
    """Scalars, evaluation values and images into TensorBoard; every method is a no-op when off."""

    def __init__(self, writer: Any = None):
        self.writer = writer

    @classmethod
    def open(cls, recipe: Any, run_path: str | Path, step: int, *, enabled: bool = True) -> RunLogger:
        """A logger for a run that starts (or resumes) at ``step``; off unless asked for and ``enabled`` (rank 0)."""
        if not (enabled and recipe.log.tensorboard):
            return cls()
        writer_class = _writer_class()
        # Events after the checkpoint's step came from the interrupted run: purged, since they are logged again.
        return cls(writer_class(log_dir=str(folder(run_path)), purge_step=step + 1))

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def scalars(self, row: Mapping[str, Any], prefix: str = "") -> None:
        """Every finite number of a metrics.jsonl / validation.jsonl row, at the row's step."""
        if self.writer is None:
            return
        step = int(row["step"])
        for key, value in row.items():
            if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(prefix + key, value, step)
        self.writer.flush()

    def evaluation(self, rows: list[Mapping[str, Any]]) -> None:
        """eval.jsonl rows: one scalar per metric, tagged ``eval/<metric>``, at the step evaluated."""
        if self.writer is None:
            return
        for row in rows:
            value = row.get("value")
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(f"eval/{row['metric']}", value, int(row["step"]))
        self.writer.flush()

    def images(self, step: int, files: Mapping[str, Path]) -> None:
        """PNG files written at ``step`` (sample grid, attention sheet), tagged by their key; missing ones skipped."""
        if self.writer is None:
            return
        import numpy as np
        from PIL import Image

        for tag, path in files.items():
            if Path(path).is_file():
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                self.writer.add_image(tag, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
