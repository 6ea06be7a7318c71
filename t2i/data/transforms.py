"""Per-item preprocessing, caption sampling and sorted collation.

The steps are the original AttnGAN code's (``datasets.py``: ``get_imgs``, ``get_caption``, ``prepare_data``).

Images: optional bbox crop -> resize the shorter side to ``int(imsize*76/64)`` (this
"pre-crop" image is what the cache stores) -> random ``imsize`` crop -> random horizontal flip (data set param
``flip``; off for shapes, whose captions say "left of") -> a pyramid of smaller
sizes resized from the same crop -> [-1, 1]. Items carry uint8 tensors; ``collate_sorted`` converts the whole batch
to float at once (faster, and 4x less data between DataLoader workers and the main process).

Randomness (crop, flip, caption choice, word subset) comes from torch's RNG: DataLoader seeds it per worker and
``torch.manual_seed`` makes a run reproducible (the originals' numpy global RNG repeated itself across workers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from t2i.batch import Batch
from t2i.data.image_modes import to_rgb

__all__ = [
    "DataError",
    "Item",
    "bbox_crop_box",
    "collate_sorted",
    "crop_flip_pyramid",
    "load_precrop",
    "precrop_size",
    "resize_shorter",
    "sample_caption",
]

# (images per scale uint8 (3,S,S), caption (L,) int64, length, class id, key)
Item = tuple[list[Tensor], Tensor, int, int, str]


class DataError(Exception):
    """A problem with the data on disk; the message names the file and what to fix."""

    t2i_user_error = True


def precrop_size(imsize: int) -> int:
    """Shorter side before the random crop: 304 for 256, 355 for 299 (the DAMSM Inception size)."""
    return int(imsize * 76 / 64)


def bbox_crop_box(bbox: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """CUB crop around a bbox (x, y, w, h): a 1.5*max(w, h) box, clipped to the image (the originals' ``get_imgs``)."""
    x, y, w, h = (int(v) for v in bbox)  # the originals truncate bbox values to int
    r = int(np.maximum(w, h) * 0.75)
    cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
    return max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Bilinear resize so the shorter side is ``size`` (torchvision ``Resize(int)`` rounding)."""
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), Image.BILINEAR)


def load_precrop(path: str | Path, bbox: Sequence[float] | None, imsize: int) -> np.ndarray:
    """Decode, bbox-crop and resize one image to its pre-crop size. -> (H, W, 3) uint8.

    Raises ``DataError`` naming the file when it is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as opened:
            image = to_rgb(opened)  # converting forces the full decode, so truncation shows here
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing") from None
    except Exception as exc:
        raise DataError(
            f"{path}: cannot decode image ({type(exc).__name__}: {exc}); replace the file, "
            "or pass skip_bad=true / --skip-bad to skip it"
        ) from None
    if bbox is not None:
        image = image.crop(bbox_crop_box(bbox, *image.size))
    return np.asarray(resize_shorter(image, precrop_size(imsize)))


def crop_flip_pyramid(
    precrop: np.ndarray,
    image_sizes: Sequence[int],
    generator: torch.Generator | None = None,
    *,
    flip: bool = True,
):
    """Random crop to max(image_sizes), random horizontal flip (if ``flip``), then every smaller size from that crop.

    ``precrop`` (H, W, 3) uint8 -> list of (3, S, S) uint8 tensors in the order of ``image_sizes``.
    """
    imsize = max(image_sizes)
    h, w = precrop.shape[:2]
    if h < imsize or w < imsize:
        raise DataError(
            f"pre-crop image {w}x{h} is smaller than the crop {imsize}; the cache was built for another size"
        )
    top = int(torch.randint(0, h - imsize + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - imsize + 1, (1,), generator=generator))
    crop = precrop[top : top + imsize, left : left + imsize]
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        crop = crop[:, ::-1]
    crop = np.array(crop, copy=True)  # own, writable memory (the source may be a read-only memory map)
    pil = None
    out = []
    for size in image_sizes:
        if size == imsize:
            array = crop
        else:
            if pil is None:
                pil = Image.fromarray(crop)
            array = np.array(pil.resize((size, size), Image.BILINEAR))
        out.append(torch.from_numpy(array).permute(2, 0, 1))  # (3, S, S) uint8
    return out


def sample_caption(
    captions: Sequence[Sequence[int]],
    words_num: int,
    convention: str,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """Pick one caption uniformly and apply the originals' length rule. -> (caption (L,) int64, cap_len).

    ``captions`` hold bare word ids (no specials). A: pad 0, ``cap_len = n``; B: ``<start> w.. <end>``, pad 2,
    ``cap_len = n + 2``. Longer captions keep a random, order-preserving subset of their words (``get_caption``).
    """
    choice = int(torch.randint(0, len(captions), (1,), generator=generator))
    words = np.asarray(captions[choice], dtype=np.int64)
    limit = words_num if convention == "A" else words_num - 2
    if limit < 1:
        raise ValueError(f"words_num={words_num} leaves no room for words under convention {convention}")
    if len(words) > limit:
        keep = torch.randperm(len(words), generator=generator)[:limit].sort().values.numpy()
        words = words[keep]
    caption = np.full(words_num, 0 if convention == "A" else 2, dtype=np.int64)
    if convention == "A":
        caption[: len(words)] = words
        length = len(words)
    else:
        caption[0] = 0
        caption[1 : 1 + len(words)] = words
        caption[1 + len(words)] = 1
        length = len(words) + 2
    return torch.from_numpy(caption), length


def collate_sorted(items: Sequence[Item]) -> Batch:
    """Stack items and sort them by caption length, descending, as packed RNNs need. Works for a batch of one."""
    lengths = torch.tensor([item[2] for item in items], dtype=torch.int64)
    order = torch.argsort(lengths, descending=True, stable=True)
    num_scales = len(items[0][0])
    images = []
    for s in range(num_scales):
        stacked = torch.stack([items[i][0][s] for i in order.tolist()])  # (B, 3, S, S) uint8
        images.append(stacked.float().div_(127.5).sub_(1.0) if stacked.dtype == torch.uint8 else stacked)
    return Batch(
        images=images,
        captions=torch.stack([items[i][1] for i in order.tolist()]),  # (B, L)
        lengths=lengths[order],
        class_ids=torch.tensor([items[i][3] for i in order.tolist()], dtype=torch.int64),
        keys=[items[i][4] for i in order.tolist()],
    )
