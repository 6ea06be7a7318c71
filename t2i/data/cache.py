"""Decoded, pre-resized image cache (docs/data.md, the image cache).

The originals decode and resize every JPEG on every step. The cache does the first per-item steps (decode, bbox crop,
resize the shorter side to ``int(imsize*76/64)``) once per image and stores the uint8 result in one flat memory-mapped
file per split, so a step only crops, flips and resizes a small array. Images keep their own aspect ratio (the
random crop must see the same area as without the cache), so the file is ragged: ``index.npy`` holds
``(offset, height, width)`` per image, height 0 marking an unreadable image (listed in ``bad.json``).

Key: a hash of the image list, bounding boxes and pre-crop size, so changing any of them builds a new cache;
files changed in place under the same name are not noticed (delete the cache directory then).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from t2i.data.transforms import DataError, load_precrop, precrop_size

__all__ = ["ImageCache", "cache_key", "open_or_build"]

# 2: 16-bit, float and transparent images are converted to RGB properly (image_modes.to_rgb); older caches
# may hold them white or with whatever colour hid under alpha 0.
CACHE_VERSION = 2


def cache_key(files: Sequence[str], bboxes: Sequence[Sequence[float]] | None, imsize: int) -> str:
    payload = json.dumps(
        {"v": CACHE_VERSION, "files": list(files), "bboxes": bboxes and [list(b) for b in bboxes], "size": imsize}
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


class ImageCache:
    """Read side: ``cache[i]`` -> (H, W, 3) uint8 array (a view into the memory map)."""

    def __init__(self, directory: Path, rows: np.ndarray | None = None) -> None:
        self.directory = Path(directory)
        self.index = np.load(self.directory / "index.npy") if rows is None else rows  # (N, 3) offset, h, w
        self._data: np.ndarray | None = None  # opened lazily: each DataLoader worker maps the file itself

    @property
    def bad(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.index[:, 1] == 0)]

    @property
    def nbytes(self) -> int:
        return (self.directory / "images.u8").stat().st_size

    def subset(self, keep: Sequence[int]) -> ImageCache:
        return ImageCache(self.directory, self.index[np.asarray(keep, dtype=np.int64)])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._data is None:
            self._data = np.memmap(self.directory / "images.u8", dtype=np.uint8, mode="r")
        offset, h, w = (int(v) for v in self.index[i])
        if h == 0:
            raise DataError(f"image {i} of the cache {self.directory} was unreadable when the cache was built")
        return self._data[offset : offset + h * w * 3].reshape(h, w, 3)

    def __getstate__(self) -> dict:
        # Never pickle the memory map (it would copy the whole file into every worker).
        return {"directory": self.directory, "index": self.index, "_data": None}


def _decode(job: tuple[str, Sequence[float] | None, int]) -> tuple[np.ndarray | None, str]:
    path, bbox, imsize = job
    try:
        return load_precrop(path, bbox, imsize), ""
    except DataError as exc:
        return None, str(exc)


def open_or_build(
    cache_root: Path,
    split: str,
    files: Sequence[str],
    bboxes: Sequence[Sequence[float]] | None,
    imsize: int,
    *,
    skip_bad: bool = False,
    workers: int | None = None,
    quiet: bool = False,
) -> ImageCache:
    """Open the cache for this exact image list, or build it once (with a progress bar)."""
    directory = Path(cache_root) / f"{split}-{precrop_size(imsize)}-{cache_key(files, bboxes, imsize)}"
    if (directory / "index.npy").is_file():
        cache = ImageCache(directory)
        if cache.bad and not skip_bad:
            raise DataError(_bad_message(directory))
        return cache
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    jobs = [(f, bboxes[i] if bboxes is not None else None, imsize) for i, f in enumerate(files)]
    workers = min(os.cpu_count() or 1, 4) if workers is None else workers
    rows, bad, offset = np.zeros((len(jobs), 3), dtype=np.int64), [], 0
    from rich.markup import escape

    try:
        with open(tmp / "images.u8", "wb") as out, _progress(quiet) as progress:
            task = progress.add_task(escape(f"caching {split} images at {precrop_size(imsize)} px"), total=len(jobs))
            for i, (array, error) in enumerate(_map(_decode, jobs, workers)):
                if array is None:
                    if not skip_bad:
                        raise DataError(error)
                    bad.append({"file": jobs[i][0], "error": error})
                else:
                    out.write(array.tobytes())
                    rows[i] = (offset, array.shape[0], array.shape[1])
                    offset += array.size
                progress.advance(task)
        np.save(tmp / "index.npy", rows)
        (tmp / "bad.json").write_text(json.dumps(bad, indent=1), encoding="utf-8")
        (tmp / "info.json").write_text(
            json.dumps({"split": split, "images": len(jobs), "precrop": precrop_size(imsize), "bytes": offset}),
            encoding="utf-8",
        )
        if directory.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImageCache(directory)


def _bad_message(directory: Path) -> str:
    bad = json.loads((directory / "bad.json").read_text(encoding="utf-8"))
    first = bad[0]["error"] if bad else "?"
    return f"{len(bad)} unreadable image(s), first: {first}"


def _map(func, jobs, workers: int):
    if workers <= 1 or len(jobs) < 64:
        yield from map(func, jobs)
        return
    # Threads, not processes: PIL decodes and resizes without the GIL, and forking a process that has
    # started torch's thread pools can deadlock.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(func, jobs)


def _progress(quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=quiet,
    )
