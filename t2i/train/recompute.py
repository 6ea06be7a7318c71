"""Activation recomputation for modules whose forward changes their own state (``train.recompute``, issue 8).

``torch.utils.checkpoint`` keeps only a region's inputs and runs the region again during backward. The generator's
BatchNorm layers update running statistics and the DM-GAN discriminators' spectral norm runs a power iteration on
every call (models.md §7, §12 Q14), so a plain re-run would move that state a second time and compute with other
values. Here the state at the start of the forward is kept (a few small tensors) and written back before the
re-run; the re-run, the same deterministic computation from the same state, ends where the forward ended, and then
the state as it was just before the re-run is written back (it may include changes made after the region, e.g. by
a discriminator's logit heads). Values, gradients and state equal the plain forward's (``tests/test_recompute.py``).

What it saves depends on where backward peaks: in the training loop the peak is in the generator's last-stage
backward, when the discriminators' and encoders' activations are already freed, so only generator parts that are
still alive then (earlier stages) lower it; see docs/training.md for measured numbers.
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
