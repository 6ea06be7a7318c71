"""Batch or channel ranges small enough that a kernel's temporaries stay bounded."""

from __future__ import annotations

CHUNK_BYTES = 16 * 2**20  # at most this many bytes of temporaries per range (read at call time: tests lower it)


def chunk_ranges(count: int, bytes_per_item: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges over ``count`` items, each at most ``CHUNK_BYTES`` of temporaries (at least one item)."""
    size = max(1, min(count, CHUNK_BYTES // max(1, bytes_per_item)))
    return [(lo, min(lo + size, count)) for lo in range(0, count, size)]
