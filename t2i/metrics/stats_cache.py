"""Cache of real-image feature statistics (FID mu, Sigma), keyed by what they depend on.

Key = SHA-256 of (protocol name, backbone weights hash, data set file-list hash, image size, ...); the key goes into
the protocol record, so two results that share it were compared against the same real statistics.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["StatsCache", "dataset_fingerprint", "stats_key"]


def stats_key(**parts: Any) -> str:
    """Stable SHA-256 of the keyword parts (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def dataset_fingerprint(dataset: Any) -> str:
    """Hash of a data set's identity: class, split, image files (relative to its root) and keys."""
    root = getattr(dataset, "root", None)
    files = [str(f) for f in getattr(dataset, "files", [])]
    if root is not None:
        files = [os.path.relpath(f, root) if os.path.isabs(f) else f for f in files]
    record = {
        "type": type(dataset).__qualname__,
        "split": getattr(dataset, "split", None),
        "files": files,
        "keys": list(getattr(dataset, "keys", [])),
        "len": len(dataset) if hasattr(dataset, "__len__") else None,
    }
    return stats_key(**record)


class StatsCache:
    """``mu``/``sigma`` npz files under ``directory``, one per key; written atomically."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()

    def path(self, key: str) -> Path:
        return self.directory / f"stats-{key[:32]}.npz"

    def load(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            return {
                "mu": data["mu"],
                "sigma": data["sigma"],
                "n": int(data["n"]),
                "meta": json.loads(str(data["meta"])),
            }

    def save(self, key: str, mu: np.ndarray, sigma: np.ndarray, n: int, meta: dict[str, Any]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        try:
            np.savez(tmp, mu=mu, sigma=sigma, n=np.int64(n), key=np.str_(key), meta=np.str_(json.dumps(meta)))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # after a failed write: no half-written file left in the cache
        return path

    def get_or_compute(
        self, key: str, compute: Callable[[], tuple[np.ndarray, np.ndarray, int]], meta: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Cached stats for ``key``, or ``compute()`` them and store. -> (stats, was_cached)."""
        cached = self.load(key)
        if cached is not None:
            return cached, True
        mu, sigma, n = compute()
        self.save(key, mu, sigma, n, meta)
        return {"mu": mu, "sigma": sigma, "n": n, "meta": meta}, False
