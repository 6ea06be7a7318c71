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
across processes.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import pickle
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import Field

from t2i.data.layout import CUB_LAYOUT, DatasetParams, build_dataset
from t2i.registry import register

__all__ = ["COLOURS", "KINDS", "ShapesParams", "build_shapes", "make_shapes"]

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
def _inside(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of a shape of radius r centred at (0, 0); dx (1, w), dy (h, 1) broadcast."""
    if r <= 0:
        return np.zeros(np.broadcast_shapes(dx.shape, dy.shape), dtype=bool)
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.82 * r
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.1 * r
    # triangle, apex up: from y = -r to y = 0.75 r, half width 1.05 r at the base
    t = (dy + r) / (1.75 * r)
    return (t >= 0) & (t <= 1) & (np.abs(dx) <= 1.05 * r * t)


def _draw(canvas: np.ndarray, shape: dict[str, Any], stripe: int) -> None:
    size = canvas.shape[0]
    cx, cy, r = shape["centre"][0], shape["centre"][1], shape["radius"]
    x0, y0 = max(0, int(cx - r - 1)), max(0, int(cy - r - 1))
    x1, y1 = min(size, int(cx + r + 2)), min(size, int(cy + r + 2))
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    dx, dy = xs - cx, ys - cy
    mask = _inside(shape["kind"], dx, dy, r)
    rgb = np.array(shape["rgb"], dtype=np.uint8)
    window = canvas[y0:y1, x0:x1]
    if shape["style"] == "outlined":
        width = max(1.5, 0.28 * r)
        mask &= ~_inside(shape["kind"], dx, dy, r - width)
        window[mask] = rgb
    elif shape["style"] == "striped":
        on = ((xs + ys).astype(np.int32) // stripe) % 2 == 0
        window[mask & on] = rgb
        window[mask & ~on] = (rgb * 0.45).astype(np.uint8)
    else:
        window[mask] = rgb
    ys_in, xs_in = np.nonzero(mask)
    shape["bbox"] = [int(x0 + xs_in.min()), int(y0 + ys_in.min()), int(x0 + xs_in.max()) + 1, int(y0 + ys_in.max()) + 1]


@functools.cache
def _noise_tile(size: int) -> np.ndarray:
    # One fixed noise field per size; images take a random cyclic shift of it (cheaper than fresh noise).
    return np.random.default_rng(size).integers(-7, 8, size=(2 * size, 2 * size, 1), dtype=np.int16)


def _background(rng: random.Random, size: int) -> tuple[np.ndarray, dict[str, Any]]:
    level = rng.randrange(25, 95)
    base = np.array([min(255, max(0, level + rng.randint(-8, 8))) for _ in range(3)], dtype=np.int16)
    texture = rng.choice(("plain", "plain", "noise", "gradient"))
    if texture == "plain":
        canvas = np.empty((size, size, 3), dtype=np.uint8)
        canvas[:] = base.astype(np.uint8)
    elif texture == "noise":
        oy, ox = rng.randrange(size), rng.randrange(size)
        noise = _noise_tile(size)[oy : oy + size, ox : ox + size]
        canvas = np.clip(base + noise, 0, 255).astype(np.uint8)
    else:
        ramp = np.linspace(-15, 15, size, dtype=np.float32)[:, None, None]
        canvas = np.broadcast_to(np.clip(base + ramp, 0, 255).astype(np.uint8), (size, size, 3))
    return np.ascontiguousarray(canvas), {"rgb": [int(v) for v in base], "texture": texture}


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


# -- one image and the whole set ----------------------------------------------------------------
def render_image(seed: int, index: int, size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Image ``index`` of the set drawn with ``seed``: (size, size, 3) uint8 and its ground truth."""
    rng = random.Random(f"t2i.shapes:{seed}:{index}")  # str seeds hash with sha512: stable across runs
    canvas, background = _background(rng, size)
    count = rng.choices((1, 2, 3), weights=(0.3, 0.4, 0.3))[0]
    shapes = _place(rng, size, count)
    stripe = max(2, size // 16)
    for shape in shapes:
        _draw(canvas, shape, stripe)
    first = shapes[0]
    class_id = 1 + list(COLOURS).index(first["colour"]) * len(KINDS) + KINDS.index(first["kind"])
    attributes = {
        "class_id": class_id,
        "class_dir": f"{class_id:03d}.{first['colour']}_{first['kind']}",
        "background": background,
        "shapes": shapes,
        "captions": _captions(rng, shapes, size),
    }
    return canvas, attributes


def _render_chunk(job: tuple[str, int, int, int, int]) -> list[tuple[int, dict[str, Any]]]:
    out_dir, seed, size, start, stop = job
    images_dir, text_dir = Path(out_dir) / CUB_LAYOUT.images_dir, Path(out_dir) / CUB_LAYOUT.text_dir
    made_dirs: set[str] = set()
    results = []
    for i in range(start, stop):
        canvas, attrs = render_image(seed, i, size)
        rel = f"{attrs['class_dir']}/shape_{i:06d}"
        if attrs["class_dir"] not in made_dirs:
            (images_dir / attrs["class_dir"]).mkdir(parents=True, exist_ok=True)
            (text_dir / attrs["class_dir"]).mkdir(parents=True, exist_ok=True)
            made_dirs.add(attrs["class_dir"])
        Image.fromarray(canvas).save(images_dir / f"{rel}.png", compress_level=1)
        (text_dir / f"{rel}.txt").write_text("\n".join(c["text"] for c in attrs["captions"]) + "\n", encoding="ascii")
        attrs["key"] = rel
        results.append((i, attrs))
    return results


def make_shapes(out: str | Path, n: int = 2000, seed: int = 0, size: int = 64, workers: int | None = None) -> Path:
    """Generate the shapes data set into ``out`` (which must not exist or be empty) in the CUB layout."""
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
        chunk = max(64, -(-n // (workers * 4)))
        jobs = [(str(tmp), seed, size, s, min(n, s + chunk)) for s in range(0, n, chunk)]
        if workers > 1 and len(jobs) > 1:
            import multiprocessing

            # forkserver: workers start from a clean process, so a caller that already runs torch's
            # thread pools cannot deadlock them (plain fork can).
            with multiprocessing.get_context("forkserver").Pool(workers) as pool:
                parts = pool.map(_render_chunk, jobs)
        else:
            parts = [_render_chunk(job) for job in jobs]
        records = [attrs for part in parts for _i, attrs in part]
        _write_index(tmp, records, n=n, seed=seed, size=size)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


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


def build_shapes(params: ShapesParams, *, split: str, image_sizes: list[int], words_num: int | None = None):
    """Synthetic shapes with captions; generated on first use."""
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
