"""What a run has spent so far: images seen, training FLOPs and training seconds, for budget-matched comparisons.

FLOPs of one training step are counted once per run (torch's FlopCounterMode around the first step this process
trains) and kept in the checkpoint, so a resume neither recounts nor loses them; training FLOPs so far are that
count times the steps. Seconds are wall-clock time of drawing batches and training steps only: evaluation, sample
grids and checkpoints are not training time. Both travel in the checkpoint, so a resumed run keeps counting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Budget", "count_flops"]


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """(fn's result, FLOPs of the call): mm/bmm/conv forward and backward, 2 FLOPs per multiply-add."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        result = fn()
    return result, int(counter.get_total_flops())


class Budget:
    """Per-step FLOPs (all processes together) and training seconds; ``record(step)`` gives an eval row's fields."""

    def __init__(self, global_batch: int, world: int = 1, *, count: bool = True):
        self.global_batch, self.world = global_batch, world
        self.count = count  # False under torch.compile: the counter cannot see inside compiled graphs
        self.step_flops: int | None = None
        self.seconds = 0.0

    def step(self, train_step: Callable[[], Any]) -> Any:
        """Run one training step, counting its FLOPs if they are not known yet (the counter only observes)."""
        if self.step_flops is not None or not self.count:
            return train_step()
        result, flops = count_flops(train_step)
        self.step_flops = flops * self.world  # each process trains its share of the global batch
        return result

    def add_seconds(self, seconds: float) -> None:
        self.seconds += seconds

    def record(self, step: int) -> dict[str, Any]:
        return {
            "images_seen": step * self.global_batch,
            "train_flops": None if self.step_flops is None else self.step_flops * step,
            "train_seconds": round(self.seconds, 3),
        }

    def state(self) -> dict[str, Any]:
        return {"step_flops": self.step_flops, "seconds": self.seconds}

    def load_state(self, state: dict[str, Any] | None) -> None:
        """A checkpoint's budget; one written before budgets were kept leaves seconds counting from this resume."""
        if state:
            self.step_flops = state.get("step_flops")
            self.seconds = float(state.get("seconds", 0.0))
