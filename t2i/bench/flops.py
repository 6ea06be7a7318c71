"""FLOPs of one call, counted by torch's FlopCounterMode (exact, independent of the machine's load)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """(fn's result, FLOPs of the call): mm/bmm/conv forward and backward, 2 FLOPs per multiply-add."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        result = fn()
    return result, int(counter.get_total_flops())
