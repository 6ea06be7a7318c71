"""Makes the synthetic shapes data set on disk: drawings, captions, files (read by ``shapes.v1`` in t2i/data/shapes.py).

``make_shapes(out, n, seed, size)`` draws one to three shapes (4 kinds, 6 palette colours, 3 sizes, solid /
outlined / striped) on a dark, plain or lightly textured background and writes about ten captions per image from
varied templates ("a small red circle above a large blue square", "two shapes: ..."). It writes the CUB layout
(``CUB_200_2011/images``, ``images.txt``, ``bounding_boxes.txt``, ``text/``, ``train|test/filenames.pickle`` and
``class_info.pickle``), so ``shapes.v1`` runs the very loader path of ``cub.v1``, and ``attributes.json`` with the
ground truth of every image (shapes, colours, sizes, boxes, and what each caption mentions) for evaluation.

Class of an image: colour and kind of its first shape (24 classes). Split: every fifth image is test (not
class-disjoint, unlike CUB, so every class is seen in training). Image ``i`` is drawn from its own RNG
``random.Random("t2i.shapes:<seed>:<i>")``: output is deterministic for a seed, however the work is split
across processes. Pixels are painted for batches of images at once (numpy); PNGs are written by a small encoder.
The data set does not flip images (``flip=false``): a flip would contradict "left of" captions.

This module imports only the standard library and numpy: its helper interpreters start in a fraction of the time
that pydantic and the registry would add.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import os
import pickle
import random
import shutil
import struct
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from t2i.data.layout_spec import CUB_LAYOUT

__all__ = [
    "COLOURS",
    "KINDS",
    "make_shapes",
    "png_bytes",
    "render_image",
    "render_images",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "orange": (250, 140, 20),
    "yellow": (245, 225, 40),
    "green": (40, 185, 65),
    "blue": (40, 95, 235),
    "purple": (155, 60, 205),
}
KINDS = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.11, "medium": 0.16, "large": 0.22}  # radius as a fraction of the image side
STYLES = ("solid", "outlined", "striped")

_KIND_WORDS = {"circle": ("circle", "disc"), "square": ("square", "box"), "triangle": ("triangle",),
               "diamond": ("diamond", "rhombus")}  # fmt: skip
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": ("medium", "medium sized"), "large": ("large", "big")}
_STYLE_WORDS = {"solid": ("", "solid", "filled"), "outlined": ("outlined", "hollow"), "striped": ("striped",)}
_RELATION_WORDS = {
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
}
_GROUND_WORDS = ("dark", "gray", "grey")
_ROWS, _COLS = ("top", "middle", "bottom"), ("left", "center", "right")
_COLOUR_NAMES, _SIZE_CLASSES = tuple(COLOURS), tuple(SIZES)
# choices() with precomputed cumulative weights: the same draws as weights=..., without re-accumulating per call
_STYLE_CUM = tuple(itertools.accumulate((0.6, 0.2, 0.2)))
_COUNT_CUM = tuple(itertools.accumulate((0.3, 0.4, 0.3)))
FORMAT = "t2i.shapes/1"


# -- drawing ---------------------------------------------------------------------------
# Pixels are painted for a whole batch of images at once (numpy over (K shapes, W, W) windows); the per-image
# Python work is only the random draws (placement, captions). Float32 arithmetic as in a per-shape loop, so the
# pixels do not depend on how images are batched.
_KIND_CODE = {kind: code for code, kind in enumerate(KINDS)}


def _inside(kind: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Masks of K shapes of radius r (K,) float64 centred at (0, 0); kind (K,) codes, dx (K, 1, W), dy (K, W, 1)."""
    mask = np.zeros((len(kind), dy.shape[1], dx.shape[2]), dtype=bool)
    for code, name in enumerate(KINDS):
        sel = np.flatnonzero((kind == code) & (r > 0))
        if not len(sel):
            continue
        x, y, rk = dx[sel], dy[sel], r[sel]

        def f32(v: np.ndarray) -> np.ndarray:
            return v.astype(np.float32)[:, None, None]

        if name == "circle":
            mask[sel] = x * x + y * y <= f32(rk * rk)
        elif name == "square":
            mask[sel] = np.maximum(np.abs(x), np.abs(y)) <= f32(0.82 * rk)
        elif name == "diamond":
            mask[sel] = np.abs(x) + np.abs(y) <= f32(1.1 * rk)
        else:  # triangle, apex up: from y = -r to y = 0.75 r, half width 1.05 r at the base
            t = (y + f32(rk)) / f32(1.75 * rk)
            mask[sel] = (t >= 0) & (t <= 1) & (np.abs(x) <= f32(1.05 * rk) * t)
    return mask


@functools.cache
def _noise_windows(size: int) -> np.ndarray:
    """(size + 1, size + 1, size, size) views into one fixed noise field; an image takes window [oy, ox] of it.

    The field is in [-7, 7] and pre-multiplied by 0x010101: added to a packed pixel it shifts R, G and B alike.
    """
    tile = np.random.default_rng(size).integers(-7, 8, size=(2 * size, 2 * size, 1), dtype=np.int16)[..., 0]
    return np.lib.stride_tricks.sliding_window_view(tile.astype(np.int32) * 0x010101, (size, size))


def _background(rng: random.Random, size: int) -> tuple[dict[str, Any], tuple[int, int]]:
    """Background attributes and the noise offset (oy, ox); the pixels are painted by ``_paint``."""
    level = rng.randrange(25, 95)
    base = [min(255, max(0, level + rng.randint(-8, 8))) for _ in range(3)]
    texture = rng.choice(("plain", "plain", "noise", "gradient"))
    offset = (rng.randrange(size), rng.randrange(size)) if texture == "noise" else (0, 0)
    return {"rgb": base, "texture": texture}, offset


def _packed(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours -> (...) little-endian uint32 pixels (R, G, B, 0): one element per pixel."""
    four = np.zeros((*rgb.shape[:-1], 4), dtype=np.uint8)
    four[..., :3] = rgb
    return four.view("<u4")[..., 0]


def _paint(images: list[dict[str, Any]], offsets: list[tuple[int, int]], size: int) -> np.ndarray:
    """PNG scanlines of planned images: (B, size, 1 + 3 size) uint8, each row led by its filter byte (0, none).

    Sets each shape's ``bbox`` (x0, y0, x1, y1). The pixels are ``_pixels(rows)``.
    """
    count = len(images)
    base = np.array([a["background"]["rgb"] for a in images], dtype=np.int16)  # (B, 3)
    texture = np.array([a["background"]["texture"] for a in images])
    shapes = [(b, s) for b, a in enumerate(images) for s in a["shapes"]]
    cx = np.array([s["centre"][0] for _, s in shapes], dtype=np.float64)
    cy = np.array([s["centre"][1] for _, s in shapes], dtype=np.float64)
    r = np.array([s["radius"] for _, s in shapes], dtype=np.float64)
    # Each shape is drawn inside its window [x0, x1) x [y0, y1) (clipped to the image), as a loop over shapes would.
    x0, y0 = np.maximum(0, (cx - r - 1).astype(np.int64)), np.maximum(0, (cy - r - 1).astype(np.int64))
    x1, y1 = np.minimum(size, (cx + r + 2).astype(np.int64)), np.minimum(size, (cy + r + 2).astype(np.int64))
    win = int(max((x1 - x0).max(initial=1), (y1 - y0).max(initial=1)))
    # One packed uint32 per pixel (RGB + a spare byte), so that filling and painting move 4 bytes at a time; padded
    # by the window size at the bottom and right, where windows may run past the image.
    side = size + win
    canvas = np.empty((count, side, side), dtype="<u4")

    plain = np.flatnonzero(texture == "plain")
    canvas[plain] = _packed(base[plain].astype(np.uint8))[:, None, None]
    noisy = np.flatnonzero(texture == "noise")
    if len(noisy):
        oy, ox = np.array([offsets[b] for b in noisy]).T
        # Background levels lie in 17..102 (``_background``): base + noise stays inside 0..255 in every channel, so
        # adding the noise to the packed pixel never carries from one channel byte into the next.
        assert base[noisy].min() >= 7 and base[noisy].max() <= 248
        packed = _packed(base[noisy].astype(np.uint8)).view(np.int32)
        canvas[noisy, :size, :size] = (packed[:, None, None] + _noise_windows(size)[oy, ox]).view("<u4")
    graded = np.flatnonzero(texture == "gradient")
    if len(graded):
        ramp = np.linspace(-15, 15, size, dtype=np.float32)[:, None, None]
        rows_rgb = np.clip(base[graded, None, None, :] + ramp, 0, 255).astype(np.uint8)  # (Bg, S, 1, 3)
        canvas[graded, :size, :size] = _packed(rows_rgb)

    if shapes:
        layer = np.concatenate([np.arange(len(a["shapes"])) for a in images])  # index of a shape in its image
        _paint_shapes(canvas, shapes, layer, (cx, cy, r), (x0, y0, x1, y1), win, size)
    rows = np.zeros((count, size, 1 + 3 * size), dtype=np.uint8)
    pixels, painted = _pixels(rows), canvas.view(np.uint8).reshape(count, side, side, 4)[:, :size, :size]
    for c in range(3):  # one channel at a time: runs of `size` pixels, 5x faster than copying (..., :3) at once
        pixels[..., c] = painted[..., c]
    return rows


def _pixels(rows: np.ndarray) -> np.ndarray:
    """The (B, S, S, 3) pixel view of (B, S, 1 + 3 S) PNG scanlines (no copy)."""
    count, size = rows.shape[:2]
    pixels = rows[:, :, 1:].reshape(count, size, size, 3)
    assert np.shares_memory(pixels, rows)  # a copy would silently drop writes
    return pixels


def _paint_shapes(canvas, shapes, layer, circles, boxes, win: int, size: int) -> None:
    """Paint the shapes into the packed canvas (later shapes of an image cover earlier ones); set their ``bbox``.

    ``circles`` = centres and radii (cx, cy, r) and ``boxes`` = windows (x0, y0, x1, y1) of the K shapes.
    """
    (cx, cy, r), (x0, y0, x1, y1) = circles, boxes
    ar = np.arange(win)
    gx, gy = x0[:, None] + ar, y0[:, None] + ar  # (K, W) pixel columns / rows of each window
    dx = ((gx.astype(np.float32) + 0.5) - cx.astype(np.float32)[:, None])[:, None, :]  # (K, 1, W)
    dy = ((gy.astype(np.float32) + 0.5) - cy.astype(np.float32)[:, None])[:, :, None]  # (K, W, 1)
    kind = np.array([_KIND_CODE[s["kind"]] for _, s in shapes])
    style = np.array([s["style"] for _, s in shapes])
    mask = _inside(kind, dx, dy, r)  # (K, W, W)
    mask &= (ar[None, :] < (x1 - x0)[:, None])[:, None, :] & (ar[None, :] < (y1 - y0)[:, None])[:, :, None]
    outlined = np.flatnonzero(style == "outlined")
    if len(outlined):
        inner = r[outlined] - np.maximum(1.5, 0.28 * r[outlined])
        mask[outlined] &= ~_inside(kind[outlined], dx[outlined], dy[outlined], inner)

    rgb = np.array([s["rgb"] for _, s in shapes], dtype=np.uint8)
    light, dark = _packed(rgb), _packed((rgb * 0.45).astype(np.uint8))  # (K,) packed pixels
    colour = np.broadcast_to(light[:, None, None], mask.shape).copy()  # (K, W, W)
    striped = np.flatnonzero(style == "striped")
    if len(striped):
        stripe = max(2, size // 16)
        on = ((gx[striped, None, :] + gy[striped, :, None] + 1) // stripe) % 2 == 0  # stripes along x + y = const
        colour[striped] = np.where(on, light[striped, None, None], dark[striped, None, None])

    # Every (W, W) window of every image, as a writable view: a shape's window is windows[image, y0, x0]. Windows
    # stay inside their image's padded canvas, and shapes of one depth lie in different images: no two overlap.
    windows = np.lib.stride_tricks.sliding_window_view(canvas, (win, win), axis=(1, 2), writeable=True)
    image = np.array([b for b, _ in shapes])
    for depth in range(int(layer.max()) + 1):  # in order: later shapes of an image cover earlier ones
        sel = np.flatnonzero(layer == depth)
        at = (image[sel], y0[sel], x0[sel])
        painted = windows[at]  # (Ks, W, W) copy
        np.copyto(painted, colour[sel], where=mask[sel])
        windows[at] = painted
    rows, cols = mask.any(axis=2), mask.any(axis=1)  # (K, W)
    top, left = rows.argmax(axis=1), cols.argmax(axis=1)
    bottom, right = win - rows[:, ::-1].argmax(axis=1), win - cols[:, ::-1].argmax(axis=1)
    for q, (_, s) in enumerate(shapes):
        s["bbox"] = [int(x0[q] + left[q]), int(y0[q] + top[q]), int(x0[q] + right[q]), int(y0[q] + bottom[q])]


def _place(rng: random.Random, size: int, count: int) -> list[dict[str, Any]]:
    colours = rng.sample(_COLOUR_NAMES, count)  # distinct colours keep captions unambiguous
    shapes: list[dict[str, Any]] = []
    for j in range(count):
        size_class = rng.choice(_SIZE_CLASSES)
        r = SIZES[size_class] * size * rng.uniform(0.92, 1.08)
        for _attempt in range(30):
            cx, cy = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)
            if all(
                (cx - s["centre"][0]) ** 2 + (cy - s["centre"][1]) ** 2 > (r + s["radius"] + 2) ** 2 for s in shapes
            ):
                break
        else:
            continue  # no free spot: draw fewer shapes rather than let them overlap
        colour = colours[j]
        shapes.append(
            {
                "kind": rng.choice(KINDS),
                "colour": colour,
                "rgb": list(COLOURS[colour]),
                "size": size_class,
                "radius": round(r, 3),
                "centre": [round(cx, 3), round(cy, 3)],
                "style": rng.choices(STYLES, cum_weights=_STYLE_CUM)[0],
            }
        )
    return shapes


# -- captions ----------------------------------------------------------------------------
# A pick from k options is options[int(random() * k)]: faster than randrange (this is the generator's hot path)
_ORDERS = {n: tuple(itertools.permutations(range(n))) for n in (1, 2, 3)}


@functools.cache
def _phrases(size_class: str, style: str, colour: str, kind: str) -> tuple[tuple, tuple]:
    """Every wording of a shape: ``[size word][style word][kind word]``, and ``[style word][kind word]`` without size.

    Looked up with one draw per word (``_captions``), so the draws are those of building the phrase word by word.
    """

    def phrase(*words: str) -> str:
        kept = [w for w in words if w]  # the solid style may go unsaid ("")
        return ("an " if kept[0][0] in "aeiou" else "a ") + " ".join(kept)

    styles, kinds = _STYLE_WORDS[style], _KIND_WORDS[kind]
    sized = tuple(
        tuple(tuple(phrase(sw, st, colour, kw) for kw in kinds) for st in styles) for sw in _SIZE_WORDS[size_class]
    )
    unsized = tuple(tuple(phrase(st, colour, kw) for kw in kinds) for st in styles)
    return sized, unsized


def _relation(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Where a is relative to b (dominant axis; image y grows downwards)."""
    dx, dy = a["centre"][0] - b["centre"][0], a["centre"][1] - b["centre"][1]
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left of" if dx < 0 else "right of"


def _position(shape: dict[str, Any], size: int) -> str:
    row = _ROWS[min(2, int(3 * shape["centre"][1] / size))]
    col = _COLS[min(2, int(3 * shape["centre"][0] / size))]
    if row == "middle" and col == "center":
        return "in the center"
    if row == "middle":
        return f"on the {col}"
    if col == "center":
        return f"at the {row}"
    return f"in the {row} {col}"


def _captions(rng: random.Random, shapes: list[dict[str, Any]], size: int, count: int = 10) -> list[dict]:
    out: list[dict[str, Any]] = []
    n, orders, draw = len(shapes), _ORDERS[len(shapes)], rng.random
    tables = [_phrases(s["size"], s["style"], s["colour"], s["kind"]) for s in shapes]
    where = _position(shapes[0], size)
    for _ in range(count):
        order = orders[int(draw() * len(orders))]
        full = n < 3 or draw() < 0.5  # three shapes: sizes sometimes omitted to stay short
        nps = []
        for i in order:
            sized, table = tables[i]
            if full or draw() < 0.3:
                table = sized[int(draw() * len(sized))]
            words = table[int(draw() * len(table))]
            nps.append(words[int(draw() * len(words))])
        relation = None
        if n == 1:
            template = int(draw() * 5)
            ground = _GROUND_WORDS[int(draw() * 3)]  # drawn whatever the template: the set's draws stay the same
            np0 = nps[0]
            if template == 0:
                text = np0
            elif template == 2:
                text = f"a picture of {np0}"
            elif template == 3:
                text = f"{np0} on a {ground} background"
            else:
                text = f"there is {np0} {where}" if template == 4 else f"{np0} {where}"
        else:
            a, b = order[0], order[1]
            rel = _relation(shapes[a], shapes[b])
            rel_words = _RELATION_WORDS[rel]
            rel_words = rel_words[int(draw() * len(rel_words))]
            if n == 2:
                template = int(draw() * 4)
                if template <= 1:
                    text = f"{nps[0]} {rel_words} {nps[1]}"
                    relation = [a, rel, b]
                    if template == 1:
                        text = f"a picture of {text}"
                elif template == 2:
                    text = f"two shapes: {nps[0]} and {nps[1]}"
                else:
                    text = f"{nps[0]} and {nps[1]}"
            else:
                template = int(draw() * 3)
                if template == 0:
                    text = f"three shapes: {nps[0]}, {nps[1]} and {nps[2]}"
                elif template == 1:
                    text = f"{nps[0]} {rel_words} {nps[1]} and {nps[2]}"
                    relation = [a, rel, b]
                else:
                    text = f"{nps[0]}, {nps[1]} and {nps[2]}"
        out.append({"text": text, "shapes": order, "relation": relation})
    return out


# -- images, PNG files and the whole set ----------------------------------------------------------------
def _plan(seed: int, index: int, size: int) -> tuple[dict[str, Any], tuple[int, int]]:
    """The random draws of image ``index``: its ground truth (without boxes) and the background noise offset."""
    rng = random.Random(f"t2i.shapes:{seed}:{index}")  # str seeds hash with sha512: stable across runs
    background, offset = _background(rng, size)
    count = rng.choices((1, 2, 3), cum_weights=_COUNT_CUM)[0]
    shapes = _place(rng, size, count)
    first = shapes[0]
    class_id = 1 + list(COLOURS).index(first["colour"]) * len(KINDS) + KINDS.index(first["kind"])
    attributes = {
        "class_id": class_id,
        "class_dir": f"{class_id:03d}.{first['colour']}_{first['kind']}",
        "background": background,
        "shapes": shapes,
        "captions": _captions(rng, shapes, size),
    }
    return attributes, offset


def render_images(seed: int, indices: Sequence[int], size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Images ``indices`` of the set drawn with ``seed``: (B, size, size, 3) uint8 and their ground truth."""
    rows, images = _render_rows(seed, indices, size)
    return _pixels(rows), images


def _render_rows(seed: int, indices: Sequence[int], size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    plans = [_plan(seed, i, size) for i in indices]
    images = [a for a, _ in plans]
    return _paint(images, [o for _, o in plans], size), images


def render_image(seed: int, index: int, size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Image ``index`` of the set drawn with ``seed``: (size, size, 3) uint8 and its ground truth."""
    pixels, attributes = render_images(seed, [index], size)
    return pixels[0], attributes[0]


def png_bytes(image: np.ndarray, level: int = 1) -> bytes:
    """A PNG file (8-bit RGB, no filter, zlib ``level``) of an (H, W, 3) uint8 array.

    Written by hand because PIL's writer costs ~4x more per small image than the compression itself.
    """
    h, w, _ = image.shape
    rows = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # each scanline starts with filter type 0
    rows[:, 1:] = image.reshape(h, 3 * w)
    return _png(rows, level)


def _png(rows: np.ndarray, level: int = 1) -> bytes:
    """A PNG file of (H, 1 + 3 W) uint8 scanlines, each led by its filter byte."""
    h, w = rows.shape[0], (rows.shape[1] - 1) // 3
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, colour type 2 (RGB), no interlace
    return b"".join((_PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", zlib.compress(rows, level)), _PNG_END))


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
_RECORD_FIELDS = ("class_id", "background", "shapes", "captions")  # per image in attributes.json


def _write(path: str, data: bytes) -> None:
    # os.open/write/close: three system calls (open() adds fstat and ioctl); file creation is the cost here
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _render_chunk(job: tuple[Path, int, int, int, int]) -> list[tuple[str, int, str]]:
    """Write images ``start:stop`` -> per image (key, class id, its attributes.json entry as JSON text).

    The JSON is encoded here, in parallel, rather than by the process that assembles attributes.json.
    """
    out_dir, seed, size, start, stop = job
    images_dir, text_dir = os.path.join(out_dir, CUB_LAYOUT.images_dir), os.path.join(out_dir, CUB_LAYOUT.text_dir)
    batch = max(1, 2**20 // (size * size))  # images painted together: ~1 M pixels (256 at 64 px)
    records, made = [], set()
    collecting = gc.isenabled()
    gc.disable()  # thousands of small dicts and lists and no cycles: the collector's passes are pure cost
    try:
        for first in range(start, stop, batch):
            indices = range(first, min(stop, first + batch))
            rows, attributes = _render_rows(seed, indices, size)
            for i, scanlines, attrs in zip(indices, rows, attributes, strict=True):
                class_dir = attrs["class_dir"]
                if class_dir not in made:  # per chunk: another process may be creating the same folder
                    os.makedirs(os.path.join(images_dir, class_dir), exist_ok=True)
                    os.makedirs(os.path.join(text_dir, class_dir), exist_ok=True)
                    made.add(class_dir)
                key = f"{class_dir}/shape_{i:06d}"
                _write(f"{images_dir}/{key}.png", _png(scanlines))
                captions = "\n".join([c["text"] for c in attrs["captions"]]) + "\n"
                _write(f"{text_dir}/{key}.txt", captions.encode("ascii"))
                entry = json.dumps({k: attrs[k] for k in _RECORD_FIELDS}, separators=(",", ":"))
                records.append((key, attrs["class_id"], entry))
    finally:
        if collecting:
            gc.enable()
    return records


def make_shapes(out: str | Path, n: int = 2000, seed: int = 0, size: int = 64, workers: int | None = None) -> Path:
    """Generate the shapes data set into ``out`` (which must not exist or be empty) in the CUB layout.

    ``workers`` processes share the images (default: CPU count, at most 4): this one and ``workers - 1`` helper
    interpreters (``_render_with_helpers``), started only for ``_HELPER_MIN_IMAGES`` images or more.
    """
    out = Path(out)
    if n < 1:
        raise ValueError("n must be at least 1")
    if size < 16:
        raise ValueError("size must be at least 16 pixels")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already exists and is not empty; choose another directory or delete it")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        workers = min(os.cpu_count() or 1, 4) if workers is None else max(1, workers)
        chunk = min(512, max(64, -(-n // (workers * 8))))
        jobs = [(tmp, seed, size, s, min(n, s + chunk)) for s in range(0, n, chunk)]
        if workers > 1 and n >= _HELPER_MIN_IMAGES:
            parts = _render_with_helpers(jobs, workers - 1)
        else:
            parts = [_render_chunk(job) for job in jobs]
        _write_index(tmp, [record for part in parts for record in part], n=n, seed=seed, size=size)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


_HELPER_MIN_IMAGES = 1000  # a helper costs ~0.3 s to start (a fresh interpreter importing numpy)


def _render_with_helpers(jobs: list[tuple[Path, int, int, int, int]], helpers: int) -> list[list[tuple[str, int, str]]]:
    """Render chunks here (from the back of the list) and in ``helpers`` fresh interpreters (from the front).

    Helpers are ``python -c`` subprocesses fed over pipes: no fork of this process (it may run torch's thread
    pools, and a forked child can deadlock on them) and, unlike multiprocessing's spawn/forkserver, no re-run
    of the caller's ``__main__`` script. A chunk a helper fails on is redone here, so errors surface here.
    """
    import collections
    import subprocess
    import threading

    todo = collections.deque(enumerate(jobs))  # popleft / pop are atomic: helpers and this thread share it
    parts: list[list[tuple[str, int, str]] | None] = [None] * len(jobs)

    def feed() -> None:
        command = [sys.executable, "-c", "from t2i.data.shapes_maker import _helper_main; _helper_main()"]
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}  # numpy's BLAS threads: unused
        with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env) as helper:
            assert helper.stdin is not None and helper.stdout is not None
            try:
                while todo:
                    try:
                        k, job = todo.popleft()
                    except IndexError:
                        break
                    pickle.dump(job, helper.stdin)
                    helper.stdin.flush()
                    ok, result = pickle.load(helper.stdout)
                    if not ok:
                        break  # left for this process, which raises the error itself
                    parts[k] = result
            except (OSError, EOFError, pickle.UnpicklingError):
                pass  # the helper died: its chunk is redone below
            finally:
                helper.stdin.close()

    threads = [threading.Thread(target=feed, daemon=True) for _ in range(helpers)]
    for thread in threads:
        thread.start()
    while todo:
        try:
            k, job = todo.pop()
        except IndexError:
            break
        parts[k] = _render_chunk(job)
    for thread in threads:
        thread.join()
    return [part if part is not None else _render_chunk(job) for part, job in zip(parts, jobs, strict=True)]


def _helper_main() -> None:
    """A helper's loop: read pickled chunk jobs from stdin, write (ok, records or error text) to stdout."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            job = pickle.load(stdin)
        except EOFError:
            return
        try:
            reply = (True, _render_chunk(job))
        except Exception as exc:  # reported by redoing the chunk in the parent
            reply = (False, f"{type(exc).__name__}: {exc}")
        pickle.dump(reply, stdout)
        stdout.flush()


def _write_index(root: Path, records: list[tuple[str, int, str]], *, n: int, seed: int, size: int) -> None:
    cub = root / (CUB_LAYOUT.bbox_dir or "")
    lines = [f"{i + 1} {key}.png" for i, (key, _, _) in enumerate(records)]
    (cub / "images.txt").write_text("\n".join(lines) + "\n", encoding="ascii")
    # Whole-image boxes: with crop_bbox=true the CUB crop is then the identity.
    boxes = [f"{i + 1} 0.0 0.0 {size}.0 {size}.0" for i in range(len(records))]
    (cub / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n", encoding="ascii")
    for split, test in (("train", False), ("test", True)):
        chosen = [r for i, r in enumerate(records) if (i % 5 == 4) == test]
        (root / split).mkdir()
        # Protocol-2 pickles, as the originals ship them, so the same (safe) reader runs.
        (root / split / "filenames.pickle").write_bytes(pickle.dumps([key for key, _, _ in chosen], protocol=2))
        (root / split / "class_info.pickle").write_bytes(pickle.dumps([c for _, c, _ in chosen], protocol=2))
    meta = {
        "format": FORMAT,
        "generator": {"n": n, "seed": seed, "size": size},
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "kinds": list(KINDS),
        "sizes": SIZES,
    }
    # The same text as json.dumps(meta | {"images": {key: entry}}), from the entries the workers encoded.
    images = ",".join(f"{json.dumps(key)}:{entry}" for key, _, entry in records)
    text = json.dumps(meta, separators=(",", ":"))[:-1] + ',"images":{' + images + "}}"
    (root / "attributes.json").write_text(text, encoding="utf-8")
