"""FLOPs of one call, counted by torch's FlopCounterMode (exact, independent of the machine's load).

The counter lives with the training budget (t2i/train/budget.py), which counts a training step once per run;
benchmarks use the same function.
"""

from __future__ import annotations

from t2i.train.budget import count_flops

__all__ = ["count_flops"]
