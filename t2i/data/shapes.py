"""``shapes.v1``: a procedurally generated text-image data set, the built-in default (issue 5 item 4).

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
"""

from __future__ import annotations

import functools
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
from pydantic import Field

from t2i.data.params import CUB_LAYOUT, DatasetParams
from t2i.registry import register

__all__ = [
    "COLOURS",
    "KINDS",
    "ShapesParams",
    "build_shapes",
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
_INVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
_ROWS, _COLS = ("top", "middle", "bottom"), ("left", "center", "right")
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
def _noise_tile(size: int) -> np.ndarray:
    # One fixed noise field per size; images take a random cyclic shift of it (cheaper than fresh noise).
    return np.random.default_rng(size).integers(-7, 8, size=(2 * size, 2 * size, 1), dtype=np.int16)


def _background(rng: random.Random, size: int) -> tuple[dict[str, Any], tuple[int, int]]:
    """Background attributes and the noise offset (oy, ox); the pixels are painted by ``_paint``."""
    level = rng.randrange(25, 95)
    base = [min(255, max(0, level + rng.randint(-8, 8))) for _ in range(3)]
    texture = rng.choice(("plain", "plain", "noise", "gradient"))
    offset = (rng.randrange(size), rng.randrange(size)) if texture == "noise" else (0, 0)
    return {"rgb": base, "texture": texture}, offset


def _paint(images: list[dict[str, Any]], offsets: list[tuple[int, int]], size: int) -> np.ndarray:
    """Pixels of planned images. -> (B, size, size, 3) uint8; sets each shape's ``bbox`` (x0, y0, x1, y1)."""
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
    # RGB + one spare byte per pixel, so that a pixel is one uint32 when shapes are painted; padded by the window
    # size at the bottom and right, where windows may run past the image.
    side = size + win
    canvas = np.zeros((count, side, side, 4), dtype=np.uint8)

    plain = np.flatnonzero(texture == "plain")
    canvas[plain, :size, :size, :3] = base[plain, None, None, :].astype(np.uint8)
    noisy = np.flatnonzero(texture == "noise")
    if len(noisy):
        oy, ox = np.array([offsets[b] for b in noisy]).T
        ar = np.arange(size)
        patch = _noise_tile(size)[(oy[:, None] + ar)[:, :, None], (ox[:, None] + ar)[:, None, :]]  # (Bn, S, S, 1)
        canvas[noisy, :size, :size, :3] = np.clip(base[noisy, None, None, :] + patch, 0, 255).astype(np.uint8)
    ramp = np.linspace(-15, 15, size, dtype=np.float32)[:, None, None]
    graded = np.flatnonzero(texture == "gradient")
    canvas[graded, :size, :size, :3] = np.clip(base[graded, None, None, :] + ramp, 0, 255).astype(np.uint8)
    if not shapes:
        return canvas[:, :size, :size, :3]

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

    rgb = np.zeros((len(shapes), 4), dtype=np.uint8)
    rgb[:, :3] = [s["rgb"] for _, s in shapes]
    light, dark = rgb.view("<u4")[:, 0], (rgb * 0.45).astype(np.uint8).view("<u4")[:, 0]  # (K,) packed pixels
    colour = np.broadcast_to(light[:, None, None], mask.shape).copy()  # (K, W, W)
    striped = np.flatnonzero(style == "striped")
    if len(striped):
        stripe = max(2, size // 16)
        on = ((gx[striped, None, :] + gy[striped, :, None] + 1) // stripe) % 2 == 0  # stripes along x + y = const
        colour[striped] = np.where(on, light[striped, None, None], dark[striped, None, None])

    pixels = canvas.view("<u4").reshape(-1)  # every pixel of the batch, packed
    flat = (np.array([b for b, _ in shapes]) * side * side)[:, None, None] + gy[:, :, None] * side + gx[:, None, :]
    layer = np.concatenate([np.arange(len(a["shapes"])) for a in images])
    for j in range(int(layer.max()) + 1):  # later shapes of an image paint over earlier ones
        sel = np.flatnonzero(layer == j)
        inside = mask[sel]
        pixels[flat[sel][inside]] = colour[sel][inside]
    rows, cols = mask.any(axis=2), mask.any(axis=1)  # (K, W)
    top, left = rows.argmax(axis=1), cols.argmax(axis=1)
    bottom, right = win - rows[:, ::-1].argmax(axis=1), win - cols[:, ::-1].argmax(axis=1)
    for k, (_, s) in enumerate(shapes):
        s["bbox"] = [int(x0[k] + left[k]), int(y0[k] + top[k]), int(x0[k] + right[k]), int(y0[k] + bottom[k])]
    return canvas[:, :size, :size, :3]


def _place(rng: random.Random, size: int, count: int) -> list[dict[str, Any]]:
    colours = rng.sample(list(COLOURS), count)  # distinct colours keep captions unambiguous
    shapes: list[dict[str, Any]] = []
    for j in range(count):
        size_class = rng.choice(tuple(SIZES))
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
                "style": rng.choices(STYLES, weights=(0.6, 0.2, 0.2))[0],
            }
        )
    return shapes


# -- captions ----------------------------------------------------------------------------
def _pick(rng: random.Random, options: tuple[Any, ...]) -> Any:
    return options[int(rng.random() * len(options))]  # faster than randrange; this is the generator's hot path


_ORDERS = {n: tuple(itertools.permutations(range(n))) for n in (1, 2, 3)}


def _noun_phrase(rng: random.Random, shape: dict[str, Any], with_size: bool = True) -> str:
    words = []
    if with_size:
        words.append(_pick(rng, _SIZE_WORDS[shape["size"]]))
    style = _pick(rng, _STYLE_WORDS[shape["style"]])
    if style:
        words.append(style)
    words += [shape["colour"], _pick(rng, _KIND_WORDS[shape["kind"]])]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


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
    n = len(shapes)
    for _ in range(count):
        order = _pick(rng, _ORDERS[n])
        full = n < 3 or rng.random() < 0.5  # three shapes: sizes sometimes omitted to stay short
        nps = [_noun_phrase(rng, shapes[i], with_size=full or rng.random() < 0.3) for i in order]
        relation = None
        if n == 1:
            template = int(rng.random() * 5)
            np0 = nps[0]
            text = [np0, f"{np0} {_position(shapes[0], size)}", f"a picture of {np0}",
                    f"{np0} on a {_pick(rng, ('dark', 'gray', 'grey'))} background",
                    f"there is {np0} {_position(shapes[0], size)}"][template]  # fmt: skip
        else:
            a, b = order[0], order[1]
            rel = _relation(shapes[a], shapes[b])
            rel_words = _pick(rng, _RELATION_WORDS[rel])
            if n == 2:
                template = int(rng.random() * 4)
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
                template = int(rng.random() * 3)
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
    count = rng.choices((1, 2, 3), weights=(0.3, 0.4, 0.3))[0]
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

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, colour type 2 (RGB), no interlace
    return _PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + _PNG_END


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def _write(path: Path, data: bytes) -> None:
    # os.open/write/close: three system calls (open() adds fstat and ioctl); file creation is the cost here
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _render_chunk(job: tuple[Path, int, int, int, int]) -> list[dict[str, Any]]:
    out_dir, seed, size, start, stop = job
    images_dir, text_dir = out_dir / CUB_LAYOUT.images_dir, out_dir / CUB_LAYOUT.text_dir
    batch = max(1, 2**20 // (size * size))  # images painted together: ~1 M pixels (256 at 64 px)
    records, made = [], set()
    for first in range(start, stop, batch):
        indices = range(first, min(stop, first + batch))
        pixels, attributes = render_images(seed, indices, size)
        for i, image, attrs in zip(indices, pixels, attributes, strict=True):
            class_dir = attrs["class_dir"]
            if class_dir not in made:  # per chunk: another thread may be creating the same folder
                (images_dir / class_dir).mkdir(parents=True, exist_ok=True)
                (text_dir / class_dir).mkdir(parents=True, exist_ok=True)
                made.add(class_dir)
            key = f"{class_dir}/shape_{i:06d}"
            _write(images_dir / f"{key}.png", png_bytes(image))
            _write(text_dir / f"{key}.txt", ("\n".join(c["text"] for c in attrs["captions"]) + "\n").encode("ascii"))
            attrs["key"] = key
            records.append(attrs)
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
        _write_index(tmp, [attrs for part in parts for attrs in part], n=n, seed=seed, size=size)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


_HELPER_MIN_IMAGES = 1000  # a helper costs ~0.3 s to start (a fresh interpreter importing numpy)


def _render_with_helpers(jobs: list[tuple[Path, int, int, int, int]], helpers: int) -> list[list[dict[str, Any]]]:
    """Render chunks here (from the back of the list) and in ``helpers`` fresh interpreters (from the front).

    Helpers are ``python -c`` subprocesses fed over pipes: no fork of this process (it may run torch's thread
    pools, and a forked child can deadlock on them) and, unlike multiprocessing's spawn/forkserver, no re-run
    of the caller's ``__main__`` script. A chunk a helper fails on is redone here, so errors surface here.
    """
    import collections
    import subprocess
    import threading

    todo = collections.deque(enumerate(jobs))  # popleft / pop are atomic: helpers and this thread share it
    parts: list[list[dict[str, Any]] | None] = [None] * len(jobs)

    def feed() -> None:
        command = [sys.executable, "-c", "from t2i.data.shapes import _helper_main; _helper_main()"]
        with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as helper:
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


def _write_index(root: Path, records: list[dict[str, Any]], *, n: int, seed: int, size: int) -> None:
    cub = root / (CUB_LAYOUT.bbox_dir or "")
    lines = [f"{i + 1} {r['key']}.png" for i, r in enumerate(records)]
    (cub / "images.txt").write_text("\n".join(lines) + "\n", encoding="ascii")
    # Whole-image boxes: with crop_bbox=true the CUB crop is then the identity.
    boxes = [f"{i + 1} 0.0 0.0 {size}.0 {size}.0" for i in range(len(records))]
    (cub / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n", encoding="ascii")
    for split, test in (("train", False), ("test", True)):
        chosen = [r for i, r in enumerate(records) if (i % 5 == 4) == test]
        (root / split).mkdir()
        # Protocol-2 pickles, as the originals ship them, so the same (safe) reader runs.
        (root / split / "filenames.pickle").write_bytes(pickle.dumps([r["key"] for r in chosen], protocol=2))
        (root / split / "class_info.pickle").write_bytes(pickle.dumps([r["class_id"] for r in chosen], protocol=2))
    images = {}
    for r in records:
        images[r["key"]] = {k: r[k] for k in ("class_id", "background", "shapes", "captions")}
    meta = {
        "format": FORMAT,
        "generator": {"n": n, "seed": seed, "size": size},
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "kinds": list(KINDS),
        "sizes": SIZES,
        "images": images,
    }
    (root / "attributes.json").write_text(json.dumps(meta, separators=(",", ":")), encoding="utf-8")


# -- the registered data set -----------------------------------------------------------------
class ShapesParams(DatasetParams):
    root: str = Field("data/shapes", description="where the set lives; generated there if it does not exist")
    n: int = Field(2000, ge=1, description="number of images to generate (only used when generating)")
    seed: int = Field(0, description="generator seed (only used when generating)")
    size: int = Field(64, ge=16, description="generated image side in pixels (64, 128 or 256)")
    words_num: int = Field(18, ge=1, description="caption length limit for training")
    eval_words_num: int = Field(25, ge=1, description="caption length limit for test")
    captions_per_image: int = Field(10, ge=1, description="captions per image (10 are generated)")
    flip: bool = Field(False, description="random horizontal flip; off: it would contradict 'left of' captions")


def build_shapes(params: ShapesParams, *, split: str, image_sizes: list[int], words_num: int | None = None):
    """Synthetic shapes with captions; generated on first use."""
    from t2i.data.layout import build_dataset  # torch: only when a data set is built, not to generate one

    root = Path(params.root).expanduser()
    if not root.exists():
        print(
            f"t2i data: {root} does not exist; generating the shapes set there "
            f"(n={params.n}, seed={params.seed}, size={params.size})",
            file=sys.stderr,
            flush=True,
        )
        make_shapes(root, params.n, params.seed, params.size)
        print(f"t2i data: wrote {params.n} images with captions to {root}", file=sys.stderr, flush=True)
    return build_dataset(CUB_LAYOUT, params, split=split, image_sizes=image_sizes, words_num=words_num)


register("dataset", "shapes.v1", build_shapes, params=ShapesParams, description="synthetic shapes (built-in default)")
