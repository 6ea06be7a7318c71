"""Metrics of a folder of images made by any program, and reference statistics as the originals store them.

This is the originals' evaluation workflow (DM-GAN's ``fid_score.py --path1 bird_val.npz --path2 DIR``, the
StackGAN/AttnGAN IS scripts walking a folder): images are read from disk as they were written (uint8), so the
metrics' own quantisation step leaves them unchanged, and compared against reference statistics given as an
``.npz`` (keys ``mu`` and ``sigma``, as pytorch-fid's ``--save-stats`` and the released ``bird_val.npz``) or as a
second folder of images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from t2i.metrics.base import EvalContext, MetricError

__all__ = ["IMAGE_SUFFIXES", "evaluate_folder", "image_batches", "image_files", "save_reference_stats"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
FID_METRICS = ("fid.v1", "fid_dmgan2018.v1")


class ImageFolderError(MetricError):
    """A folder of images that cannot be evaluated (missing, empty, an unreadable file)."""


def image_files(folder: str | Path) -> list[Path]:
    """Every image below ``folder`` (recursive, as the originals' IS script walks it), sorted by path."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ImageFolderError(f"image folder {root} not found")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ImageFolderError(f"{root} holds no image ({', '.join(IMAGE_SUFFIXES)}, searched recursively)")
    return files


def _read(path: Path) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    from t2i.data.image_modes import to_rgb

    try:
        with Image.open(path) as opened:
            pixels = np.asarray(to_rgb(opened))  # 16-bit, palette and alpha modes as the data sets read them
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ImageFolderError(f"cannot read image {path}: {exc}") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W) in [-1, 1]


def image_batches(files: Sequence[Path], batch_size: int) -> Iterator[Tensor]:
    """(B, 3, H, W) batches in [-1, 1], in file order; a new batch starts where the image size changes."""
    batch: list[Tensor] = []
    for path in files:
        image = _read(path)
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield torch.stack(batch)


def _reference_params(name: str, params: Any, reference: Path | None) -> Any:
    if reference is None or name not in FID_METRICS or reference.is_dir():
        return params
    if reference.suffix.lower() != ".npz":
        raise ImageFolderError(f"--reference {reference}: give an .npz with mu and sigma, or a folder of images")
    return params.model_copy(update={"reference_stats": str(reference)})


def evaluate_folder(
    folder: str | Path,
    specs: Sequence[tuple[str, Any]],
    *,
    reference: str | Path | None = None,
    batch_size: int = 50,
    seed: int = 100,
    device: torch.device | str = "cpu",
    weights_dir: str | Path | None = None,
    run_info: dict[str, Any] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Compute ``specs`` (registered metric name, params) on the images of ``folder``; -> one row per metric."""
    from t2i.evaluate import protocol_id
    from t2i.registry import get_registry

    files = image_files(folder)
    ref = Path(reference).expanduser() if reference is not None else None
    if ref is not None and not ref.exists():
        raise ImageFolderError(f"reference {ref} not found (an .npz with mu and sigma, or a folder of images)")
    real = None
    if ref is not None and ref.is_dir():
        real_files = image_files(ref)
        real = lambda: image_batches(real_files, batch_size)  # noqa: E731  (re-iterable on every call)
    info = {"images": str(Path(folder).expanduser()), "n_files": len(files), **(run_info or {})}
    if ref is not None:
        info["reference"] = str(ref)
    context = EvalContext(
        device=device,
        batch_size=batch_size,
        seed=seed,
        real_images=real,
        run_info=info,
        **({"weights_dir": Path(weights_dir)} if weights_dir is not None else {}),
    )
    registry = get_registry("metric")
    built = []
    for name, params in specs:
        built.append((name, registry.get(name).build(_reference_params(name, params, ref), context=context)))
    done = 0
    with torch.inference_mode():
        for images in image_batches(files, batch_size):
            for _name, metric in built:
                metric.update(images.to(device), {"uint8": True})  # values are exact uint8 steps: no re-quantising
            done += len(images)
            if on_batch is not None:
                on_batch(done)
    import datetime as dt

    stamp = dt.datetime.now().isoformat(timespec="seconds")
    rows = []
    for name, metric in built:
        result = metric.compute()
        row = {"time": stamp, "metric": name, **result.to_dict()}
        row["protocol_id"] = protocol_id(result.protocol)
        rows.append(row)
    return rows


def save_reference_stats(
    folder: str | Path,
    out: str | Path,
    *,
    metric: str = "fid.v1",
    params: Any = None,
    batch_size: int = 50,
    device: torch.device | str = "cpu",
    weights_dir: str | Path | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[Path, int]:
    """Write ``mu`` and ``sigma`` of ``folder``'s images under ``metric``'s protocol to ``out`` (.npz, the
    originals' keys), atomically. -> (path, number of images)."""
    from t2i.metrics.fid import FeatureStats
    from t2i.registry import get_registry

    entry = get_registry("metric").get(metric)
    if entry.name not in FID_METRICS:
        raise ImageFolderError(
            f"--save-stats writes FID statistics; {entry.name} is not one of {', '.join(FID_METRICS)}"
        )
    files = image_files(folder)
    context = EvalContext(
        device=device, batch_size=batch_size, **({"weights_dir": Path(weights_dir)} if weights_dir else {})
    )
    fid = entry.build(params if params is not None else entry.validate({}), context=context)
    stats = FeatureStats()
    with torch.inference_mode():
        for images in image_batches(files, batch_size):
            stats.add(fid.features(images.to(device), real=True))
            if on_batch is not None:
                on_batch(stats.n)
    mu, sigma = stats.mean_cov()
    path = Path(out).expanduser()
    if path.suffix.lower() != ".npz":
        raise ImageFolderError(f"--save-stats {path}: the file must end in .npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, mu=mu, sigma=sigma)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, stats.n
