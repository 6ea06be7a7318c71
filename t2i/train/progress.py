"""Progress display: a rich bar with images/s, ETA and latest losses on a terminal; nothing live otherwise.

When output is not a terminal (CI, files, SLURM), the loop writes plain periodic lines instead (``log_every``).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

console = Console(stderr=True)


class Progress:
    def __init__(self, total: int, *, start: int = 0, enabled: bool = True, description: str = "train"):
        self.total, self.start, self.description = total, start, description
        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self._bar: RichProgress | None = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[speed]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[losses]}"),
                console=console,
                transient=False,
            )
            self._bar.__enter__()
            # the description column renders its text as markup; a recipe name is not markup
            self._task = self._bar.add_task(
                escape(self.description), total=self.total, completed=self.start, speed="", losses=""
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, step: int, logs: dict[str, float]) -> None:
        if self._bar is None:
            return
        losses = " ".join(f"{k[5:]}={v:.2f}" for k, v in logs.items() if k in ("loss/G", "loss/D0", "loss/kl"))
        task = self._bar.tasks[0]
        speed = f"{task.speed:.2f} it/s" if task.speed else ""
        self._bar.update(self._task, completed=step, losses=losses, speed=speed)

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(line, highlight=False, markup=False)
        else:
            console.print(line, highlight=False, markup=False)
