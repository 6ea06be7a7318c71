"""Activation recomputation for modules whose forward changes their own state (issue 8: training memory).

``torch.utils.checkpoint`` keeps only a region's inputs and runs the region again during backward. The generator's
BatchNorm layers update running statistics and the DM-GAN discriminators' spectral norm runs a power iteration on
every call (models.md §7, §12 Q14), so a plain re-run would move that state a second time and compute with other
values. Here the state at the start of the forward is kept (a few small tensors), written back before the re-run,
and the re-run, being the same deterministic computation from the same state, ends in the state the forward left.
Values, gradients and state are those of the plain forward (``tests/test_recompute.py``).

Which regions: the ones whose saved activations are still alive when backward reaches its memory peak but are
cheap to recompute — every discriminator during the generator update (1.6 GFLOP per image at 256² in DM-GAN, yet
about half a gigabyte of activations at batch 10) and the generator's first stage (2 % of a step's FLOPs, 0.6 GB).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["Recomputed", "mutable_state", "recompute_forward"]


def mutable_state(module: nn.Module) -> list[Tensor]:
    """The tensors a forward may change in place: buffers and parameters that do not train (spectral norm's u, v).

    Call it while the trainable parameters still have ``requires_grad=True`` (the training loop switches the
    discriminators' off during the generator update).
    """
    frozen = [p for p in module.parameters() if not p.requires_grad]
    return [*module.buffers(), *frozen]


def recompute_forward(fn: Callable[..., Any], state: list[Tensor], *args: Any) -> Any:
    """``fn(*args)`` whose activations are recomputed in backward, ``state`` restored to its start value first."""
    if not torch.is_grad_enabled():
        return fn(*args)

    def contexts():
        start = [t.detach().clone() for t in state]

        @contextlib.contextmanager
        def from_start() -> Iterator[None]:
            now = [t.detach().clone() for t in state]  # may include changes made after the forward (e.g. D's heads)
            _write(state, start)
            try:
                yield
            finally:
                _write(state, now)  # equal to what the re-run left in the tensors the region itself changes

        return contextlib.nullcontext(), from_start()

    return checkpoint(fn, *args, use_reentrant=False, context_fn=contexts)


def _write(state: list[Tensor], values: list[Tensor]) -> None:
    with torch.no_grad():
        for tensor, value in zip(state, values, strict=True):
            tensor.data.copy_(value)  # through .data, as the spectral norm writes u and v: no version bump


class Recomputed:
    """A module's call with recomputation (``recompute_forward``); other attributes are the module's own."""

    def __init__(self, module: nn.Module, state: list[Tensor] | None = None):
        self.module = module
        self.state = mutable_state(module) if state is None else state

    def __call__(self, *args: Any) -> Any:
        return recompute_forward(self.module, self.state, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)
