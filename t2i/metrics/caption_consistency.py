"""Caption consistency on the synthetic ``shapes`` data set: does an image show what its caption asks for?

A deterministic judge (no learned network, so it cannot share a bias with the generator):
1. Requirements come from the caption's words with the data set's vocabulary of attributes (``t2i/data/shapes.py``):
   each noun phrase ``[size] [style] colour kind``, the relation between the first two phrases ("above", "to the
   left of", ...) and, for one-shape captions, the position ("in the top left", "at the bottom", ...).
2. Image analysis: every pixel is given the nearest palette colour (the data set's ``attributes.json`` palette, plus
   its 0.45-dark stripe shade) if it is close enough and saturated (the background is grey); per asked colour the
   largest connected component with holes filled (outlined shapes) is the shape. Kind from fill ratio and vertical
   centroid offset inside the bounding box (circle pi/4, square 1, diamond 1/2, triangle 1/2 with its centroid at 2/3);
   size class from the area (radius = sqrt(area / kind constant), nearest of the data set's size fractions in log
   scale); relation from the centroids (dominant axis, as the data set defines it); position from the thirds grid.
3. Score of one image = the fraction of its caption's checks that pass (colour present, kind, size when mentioned,
   relation, position); the metric is the mean, with per-attribute rates in ``details``.

Framing: the training pipeline resizes to ``int(S*76/64)`` and crops S (as the originals), so a generator learns
shapes 76/64 larger than drawn. ``framing="train_crop"`` (default) maps measurements back through a centre crop of that
scale; ``"full"`` judges uncropped renders. ``reference_scores`` gives the ceiling (real images, their own captions)
and the floor (real images, captions of other images).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from scipy import ndimage
from torch import Tensor

from t2i.metrics.base import EvalContext, Metric, MetricError, MetricResult
from t2i.registry import Params, register

__all__ = [
    "ATTRIBUTES",
    "CaptionConsistency",
    "CaptionConsistencyParams",
    "Judge",
    "Requirements",
    "parse_caption",
    "reference_scores",
]

JUDGE_VERSION = "shapes-judge/1"
ATTRIBUTES = ("colour", "kind", "size", "relation", "position")

_KIND_WORDS = {"circle": "circle", "disc": "circle", "square": "square", "box": "square", "triangle": "triangle",
               "diamond": "diamond", "rhombus": "diamond"}  # fmt: skip
_SIZE_WORDS = {
    "small": "small",
    "little": "small",
    "tiny": "small",
    "medium": "medium",
    "large": "large",
    "big": "large",
}
_RELATION_WORDS = {"above": "above", "over": "above", "below": "below", "under": "below", "beneath": "below"}
# area = constant * r^2 for the data set's shapes (shapes.py ``_inside``)
_AREA_CONSTANT = {"circle": math.pi, "square": 4 * 0.82**2, "diamond": 2 * 1.1**2, "triangle": 0.5 * 2.1 * 1.75}
# (fill ratio of the bounding box, centroid height inside the box from the top)
_KIND_PROTOTYPES = {"circle": (math.pi / 4, 0.5), "square": (1.0, 0.5), "diamond": (0.5, 0.5), "triangle": (0.5, 2 / 3)}
_DARK = 0.45  # striped shapes alternate the colour and colour * 0.45 (shapes.py ``_paint``)


@dataclass
class Requirements:
    """What one caption asks for."""

    shapes: list[dict[str, str]] = field(default_factory=list)  # {"colour", "kind", optional "size"}
    relation: str | None = None  # between shapes[0] and shapes[1]
    position: tuple[str, str] | None = None  # (row, column) of shapes[0]


def parse_caption(words: Sequence[str], colours: Sequence[str]) -> Requirements:
    """Requirements of a caption given as words (the data set's templates, shapes.py ``_captions``)."""
    colours = set(colours)
    req, current = Requirements(), {}
    row = col = None
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else None
        if word in _SIZE_WORDS:
            current["size"] = _SIZE_WORDS[word]
        elif word in colours:
            current["colour"] = word
        elif word in _KIND_WORDS:
            current["kind"] = _KIND_WORDS[word]
            if "colour" in current:
                req.shapes.append(current)
            current = {}
        elif word in _RELATION_WORDS and len(req.shapes) == 1:
            req.relation = _RELATION_WORDS[word]
        elif word in ("left", "right"):
            if following == "of":
                if len(req.shapes) == 1:
                    req.relation = f"{word} of"
            else:
                col = word
        elif word in ("top", "bottom"):
            row = word
        elif word == "center":
            row, col = row or "middle", col or "center"
    if (row or col) and len(req.shapes) == 1:
        req.position = (row or "middle", col or "center")
    if req.relation and len(req.shapes) < 2:
        req.relation = None
    return req


def grid_cell(centre: tuple[float, float]) -> tuple[str, str]:
    """(row, column) of the thirds grid that a centre (x, y in [0, 1], y down) falls in."""
    rows, cols = ("top", "middle", "bottom"), ("left", "center", "right")
    return rows[min(2, int(3 * centre[1]))], cols[min(2, int(3 * centre[0]))]


def _relation(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Where centroid a lies relative to b (x, y; y down), dominant axis - as shapes.py ``_relation``."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left of" if dx < 0 else "right of"


class Judge:
    """Deterministic image analysis against the data set's palette, kinds and size classes."""

    def __init__(
        self,
        palette: Mapping[str, Sequence[int]],
        sizes: Mapping[str, float],
        *,
        colour_tolerance: float = 80.0,
        min_chroma: float = 40.0,
        min_area: float = 0.004,
    ) -> None:
        self.names = list(palette)
        base = np.array([palette[n] for n in self.names], dtype=np.float32)
        self.candidates = np.concatenate([base, base * _DARK])  # (2C, 3)
        self.sizes = dict(sizes)
        self.colour_tolerance, self.min_chroma, self.min_area = colour_tolerance, min_chroma, min_area

    def settings(self) -> dict[str, Any]:
        return {"colour_tolerance": self.colour_tolerance, "min_chroma": self.min_chroma, "min_area": self.min_area}

    def label_pixels(self, image: np.ndarray) -> np.ndarray:  # (H, W, 3) uint8 -> (H, W) colour index or -1
        pixels = image.reshape(-1, 3).astype(np.float32)
        dist = ((pixels[:, None, :] - self.candidates[None]) ** 2).sum(-1)  # (HW, 2C)
        nearest = dist.argmin(1)
        ok = (np.sqrt(dist[np.arange(len(pixels)), nearest]) <= self.colour_tolerance) & (
            pixels.max(1) - pixels.min(1) >= self.min_chroma
        )
        return np.where(ok, nearest % len(self.names), -1).reshape(image.shape[:2])

    def find(self, labels: np.ndarray, colour: str, scale: float) -> dict[str, Any] | None:
        """The largest blob of ``colour``; geometry mapped back to the uncropped render (side 1)."""
        side = labels.shape[0]
        mask = ndimage.binary_fill_holes(labels == self.names.index(colour))
        components, count = ndimage.label(mask)
        if count == 0:
            return None
        areas = np.bincount(components.ravel())[1:]
        best = int(areas.argmax()) + 1
        area = float(areas[best - 1]) / (scale * side) ** 2  # fraction of the render's area
        if area < self.min_area:
            return None
        ys, xs = np.nonzero(components == best)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        fill = float(len(ys)) / (h * w)
        offset = (float(ys.mean()) + 0.5 - ys.min()) / h
        kind = min(_KIND_PROTOTYPES, key=lambda k: (fill - _KIND_PROTOTYPES[k][0]) ** 2
                   + (2 * (offset - _KIND_PROTOTYPES[k][1])) ** 2)  # fmt: skip
        radius = math.sqrt(area / _AREA_CONSTANT[kind])
        size = min(self.sizes, key=lambda s: abs(math.log(radius / self.sizes[s])))
        shift = (scale - 1) * side / 2  # centre crop of the magnified render
        centre = ((float(xs.mean()) + 0.5 + shift) / (scale * side), (float(ys.mean()) + 0.5 + shift) / (scale * side))
        return {"kind": kind, "size": size, "centre": centre, "area": area}

    def score(
        self, image: np.ndarray, req: Requirements, scale: float = 1.0, cache: dict[str, Any] | None = None
    ) -> dict[str, tuple[int, int]]:
        """-> per attribute (passed, checked) for one image (H, W, 3) uint8 and its caption's requirements.

        ``cache`` (one dict per image) keeps the pixel labels and blobs when one image is judged many times.
        """
        cache = {} if cache is None else cache
        if "labels" not in cache:
            cache["labels"] = self.label_pixels(image)
        labels = cache["labels"]
        checks = {a: [0, 0] for a in ATTRIBUTES}
        found = []
        for shape in req.shapes:
            if shape["colour"] not in cache:
                cache[shape["colour"]] = self.find(labels, shape["colour"], scale)
            blob = cache[shape["colour"]]
            found.append(blob)
            checks["colour"][0] += blob is not None
            checks["colour"][1] += 1
            checks["kind"][0] += blob is not None and blob["kind"] == shape["kind"]
            checks["kind"][1] += 1
            if "size" in shape:
                checks["size"][0] += blob is not None and blob["size"] == shape["size"]
                checks["size"][1] += 1
        if req.relation is not None:
            a, b = found[0], found[1]
            checks["relation"][0] += (
                a is not None and b is not None and _relation(a["centre"], b["centre"]) == req.relation
            )
            checks["relation"][1] += 1
        if req.position is not None:
            a = found[0]
            if a is not None:
                checks["position"][0] += grid_cell(a["centre"]) == req.position
            checks["position"][1] += 1
        return {k: (int(v[0]), int(v[1])) for k, v in checks.items()}


def framing_scale(framing: str, side: int) -> float:
    return int(side * 76 / 64) / side if framing == "train_crop" else 1.0


class _Tally:
    def __init__(self) -> None:
        self.scores: list[float] = []
        self.passed = dict.fromkeys(ATTRIBUTES, 0)
        self.checked = dict.fromkeys(ATTRIBUTES, 0)

    def add(self, result: Mapping[str, tuple[int, int]]) -> None:
        total = sum(c for _, c in result.values())
        self.scores.append(sum(p for p, _ in result.values()) / total if total else 1.0)
        for k, (p, c) in result.items():
            self.passed[k] += p
            self.checked[k] += c

    def details(self) -> dict[str, float]:
        return {f"{k}_rate": self.passed[k] / self.checked[k] for k in ATTRIBUTES if self.checked[k]}

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores)) if self.scores else float("nan")


class CaptionConsistencyParams(Params):
    framing: Literal["train_crop", "full"] = Field(
        "train_crop", description="train_crop: images framed like the training crop (76/64 zoom); full: raw renders"
    )
    colour_tolerance: float = Field(80.0, gt=0, description="max RGB distance to a palette colour")
    min_chroma: float = Field(40.0, ge=0, description="min max-min RGB spread for a pixel to count as coloured")
    min_area: float = Field(0.004, gt=0, description="min blob area as a fraction of the image to count as present")


def _load_attributes(dataset: Any) -> tuple[dict[str, Any], str]:
    root = getattr(dataset, "root", None)
    path = Path(root) / "attributes.json" if root is not None else None
    if path is None or not path.is_file():
        raise MetricError(
            "caption_consistency.v1 judges the synthetic shapes data set only: no attributes.json in the data set "
            f"root ({root}); evaluate on dataset shapes.v1"
        )
    raw = path.read_bytes()
    return json.loads(raw), hashlib.sha256(raw).hexdigest()


def _judge_from(attributes: Mapping[str, Any], params: CaptionConsistencyParams) -> Judge:
    return Judge(
        attributes["colours"],
        attributes["sizes"],
        colour_tolerance=params.colour_tolerance,
        min_chroma=params.min_chroma,
        min_area=params.min_area,
    )


def _to_uint8(images: Tensor) -> np.ndarray:  # (B, 3, H, W) [-1, 1] -> (B, H, W, 3) uint8
    q = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return q.permute(0, 2, 3, 1).numpy()


class CaptionConsistency(Metric):
    """Fraction of the caption's colours, kinds, sizes, relation and position that the image shows."""

    name = "caption_consistency.v1"
    higher_is_better = True

    def __init__(self, params: CaptionConsistencyParams, *, context: EvalContext) -> None:
        super().__init__(context)
        self.params = params
        self.attributes, self.attributes_sha256 = _load_attributes(context.dataset)
        self.judge = _judge_from(self.attributes, params)
        vocab = context.dataset.vocab
        self.words, self.skip = vocab.words, set(vocab.mask_ids)
        self.tally = _Tally()

    def update(self, fake: Tensor, batch_info: Mapping[str, Any]) -> None:
        images = _to_uint8(fake)
        scale = framing_scale(self.params.framing, images.shape[1])
        captions, lengths = batch_info["captions"].cpu(), batch_info["lengths"].cpu()
        for j, image in enumerate(images):
            ids = captions[j, : int(lengths[j])].tolist()
            req = parse_caption([self.words[i] for i in ids if i not in self.skip], self.judge.names)
            self.tally.add(self.judge.score(image, req, scale))

    def compute(self) -> MetricResult:
        if not self.tally.scores:
            raise MetricError(f"{self.name}: no images were evaluated")
        protocol = self.base_protocol(
            judge=JUDGE_VERSION,
            judge_settings=self.judge.settings(),
            framing=self.params.framing,
            attributes_sha256=self.attributes_sha256,
            quantisation="[-1,1] -> uint8 by rounding",
            n_samples=len(self.tally.scores),
        )
        return MetricResult(
            value=self.tally.mean,
            std=float(np.std(self.tally.scores)),
            n=len(self.tally.scores),
            protocol=protocol,
            details=self.tally.details(),
        )

    def per_item(self) -> dict[str, Any]:
        return {"scores": np.asarray(self.tally.scores, dtype=np.float64)}


def reference_scores(
    dataset: Any, params: CaptionConsistencyParams | None = None, *, n: int | None = None, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Ceiling (real images judged against their own captions) and floor (against captions of other images).

    Real images are the data set's pre-crop images, centre-cropped to its image size (``train_crop``; the
    training pipeline adds only a random shift and flip), or the renders on disk (``full``). Every caption counts.
    """
    params = params or CaptionConsistencyParams()
    attributes, _ = _load_attributes(dataset)
    judge = _judge_from(attributes, params)
    count = min(n or len(dataset), len(dataset))
    rng = np.random.default_rng(seed)
    partner = (np.arange(count) + rng.integers(1, count, size=count)) % count if count > 1 else np.zeros(1, int)
    words, skip = dataset.vocab.words, set(dataset.vocab.mask_ids)
    ceiling, floor = _Tally(), _Tally()
    for i in range(count):
        image = _real_image(dataset, i, params.framing)
        scale = framing_scale(params.framing, image.shape[0])
        cache: dict[str, Any] = {}
        for tally, source in ((ceiling, i), (floor, int(partner[i]))):
            for caption in dataset.captions_of(source):
                req = parse_caption([words[t] for t in caption if t not in skip], judge.names)
                tally.add(judge.score(image, req, scale, cache))
    return {
        "ceiling": {"value": ceiling.mean, **ceiling.details()},
        "floor": {"value": floor.mean, **floor.details()},
    }


def _real_image(dataset: Any, index: int, framing: str) -> np.ndarray:
    if framing == "full":
        from PIL import Image

        from t2i.data.image_modes import to_rgb

        with Image.open(dataset.files[index]) as im:
            return np.asarray(to_rgb(im))
    pre, side = dataset.precrop(index), dataset.imsize
    top, left = (pre.shape[0] - side) // 2, (pre.shape[1] - side) // 2
    return np.ascontiguousarray(pre[top : top + side, left : left + side])


register("metric", "caption_consistency.v1", CaptionConsistency, params=CaptionConsistencyParams,
         description="shapes data set: share of caption attributes the image shows")  # fmt: skip
