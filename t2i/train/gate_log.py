"""The memory gates' means in metrics.jsonl: ``gates/stage<N>/write_mean``, ``response_mean``, ``share_*``, ...

On the steps that are logged (every ``train.log_every`` and the last), the step's own G forward runs with the
refiners recording their gates (t2i/refiners/gates.py) and their means join the step's logs; on the other steps
nothing is recorded, so training costs what it did. A generator without memory refiners adds no keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from t2i.refiners.gates import log_values, record_gates


def logged_next(trainer: Any) -> bool:
    """Will the step about to run be written to metrics.jsonl (the loop's cadence: every log_every, and the last)?"""
    if trainer.rank != 0:
        return False
    total = trainer.steps_option if trainer.steps_option is not None else trainer.recipe.train.steps
    step = trainer.step + 1
    return step % trainer.recipe.train.log_every == 0 or step == total


@contextmanager
def gate_logging(trainer: Any, logs: dict[str, float]) -> Iterator[None]:
    """Around the step's G forward: record the gates when the step is logged, and put their means into ``logs``."""
    if not logged_next(trainer):
        yield
        return
    with record_gates(trainer.nets.generator) as gates:
        yield
    logs.update(log_values(gates))
