"""Give memory that the C heap keeps after frees back to the operating system (issue 8, peak memory).

glibc's malloc serves tensors under its mmap threshold (which grows to 32 MB after large frees) from its heap, and
keeps the pages of freed chunks. In a G update the discriminators' and the DAMSM encoder's activations are freed
just before the generator's backward, which then allocates tensors too large for those chunks: the freed pages stay
resident on top of the generator's peak (about 1 GB at DM-GAN bird size, batch 10). ``malloc_trim(0)`` returns
them; it costs about 0.1 s at that size. Elsewhere (macOS, musl, Windows) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from torch import Tensor


@functools.cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the C heap's free pages to the OS; False where the C library has no ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def release_before_backward_of(tensor: Tensor) -> None:
    """Release the free heap when backward reaches ``tensor`` (its gradient is complete: its consumers are done)."""
    if tensor.requires_grad:
        tensor.register_hook(_release_hook)


def _release_hook(grad: Tensor) -> None:
    release_free_heap()
