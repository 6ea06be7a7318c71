"""Keep, for backward, the means to recompute a BatchNorm+GLU output instead of the output itself.

Inside :class:`RecomputeGLUOutputs`, a layer that would save a training-mode :func:`~t2i.ops.bn_glu` output y for
backward (a conv keeps its input for the weight gradient) saves a closure ``y = GLU(bn(x))`` over the BN input x,
which the BN+GLU op keeps anyway. In backward the closure runs again: one elementwise pass per use, and the same
bits as the forward (same function, same inputs). A tensor changed in place after it was made is kept as it is.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor

# What each active context can recompute, keyed by the output's storage: autograd's pack hook receives the tensor
# a layer saves, which may be another view of the same storage than the op's output.
_active: list[dict[int, tuple[weakref.ref, int, Callable[[], Tensor]]]] = []


def note_recomputable(out: Tensor, recompute: Callable[[], Tensor]) -> None:
    """Declare that ``recompute()`` gives ``out`` again (a no-op outside :class:`RecomputeGLUOutputs`)."""
    if _active:
        _active[-1][out.untyped_storage().data_ptr()] = (weakref.ref(out), out._version, recompute)


class _Recompute:
    """What autograd keeps instead of a registered tensor: how to compute it again, and which view of it was kept."""

    __slots__ = ("fn", "size", "stride", "offset")

    def __init__(self, fn: Callable[[], Tensor], t: Tensor):
        self.fn, self.size, self.stride, self.offset = fn, t.size(), t.stride(), t.storage_offset()

    def materialize(self) -> Tensor:
        return self.fn().as_strided(self.size, self.stride, self.offset)


class RecomputeGLUOutputs(torch.autograd.graph.saved_tensors_hooks):
    """Within this context, saved BatchNorm+GLU outputs are recomputed in backward instead of kept."""

    def __init__(self):
        self.table: dict[int, tuple[weakref.ref, int, Callable[[], Tensor]]] = {}
        super().__init__(self._pack, self._unpack)

    def __enter__(self):
        _active.append(self.table)
        super().__enter__()
        return self

    def __exit__(self, *exc):
        _active.remove(self.table)
        self.table.clear()
        return super().__exit__(*exc)

    def _pack(self, t: Tensor):
        entry = self.table.get(t.untyped_storage().data_ptr()) if t.layout == torch.strided else None
        if entry is not None:
            out = entry[0]()
            if out is not None and out._version == entry[1] and t._version == entry[1] and t.dtype == out.dtype:
                return _Recompute(entry[2], t)
        return t

    @staticmethod
    def _unpack(packed):
        return packed.materialize() if isinstance(packed, _Recompute) else packed
