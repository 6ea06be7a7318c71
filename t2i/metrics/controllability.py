"""Controllability on the synthetic ``shapes`` data set: does editing one attribute word change that attribute only?

For every generated item the metric edits its caption one attribute at a time - a shape's colour, kind or size, the
position of a lone shape, or (when asked) the relation between two shapes - generates each edited caption with the
item's own noise (z and the conditioning-augmentation eps), and reads the original and the edited image with the
caption-consistency judge (``t2i.metrics.caption_consistency``: no learned network). Per edit:

* correct change: the edited attribute shows the new value now and did not before (colour: the new colour appears,
  the old one is gone, and the new one was absent before);
* unwanted change: anything else the judge reads for the caption changed (presence, kind and stated size of every
  shape, the stated relation, the stated position). Shapes are found by colour, so after a colour edit the edited
  shape's other attributes are compared only when it did change colour (old colour before, new colour after).

This is the "change what the text changes, keep the rest" criterion of text-guided image manipulation (ManiGAN,
Li et al., CVPR 2020), measured exactly, since every attribute of the data set is known.

Edits keep the caption's token count (a word for a word; a position phrase for one of the same length), and the
original is regenerated next to its edits, so every image of a comparison comes from the same batch layout: under the
originals' padding-mask quirk an image depends on the padding of the other captions in its batch.
"""

from __future__ import annotations

import copy
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator
from torch import Tensor

from t2i.metrics.base import EvalContext, Metric, MetricError, MetricResult
from t2i.metrics.caption_consistency import (
    _KIND_WORDS,
    _RELATION_WORDS,
    _SIZE_WORDS,
    JUDGE_VERSION,
    CaptionConsistencyParams,
    Judge,
    Requirements,
    _judge_from,
    _load_attributes,
    _relation,
    _to_uint8,
    framing_scale,
    grid_cell,
    parse_caption,
)
from t2i.registry import register

__all__ = ["EDITABLE", "Controllability", "ControllabilityParams", "Edit", "EditOutcome", "candidate_edits"]

EDITABLE = ("colour", "kind", "size", "position", "relation")
# The word each new value is written with (the data set's first wording of it).
_KIND_WORD = {"circle": "circle", "square": "square", "triangle": "triangle", "diamond": "diamond"}
_SIZE_WORD = {"small": "small", "medium": "medium", "large": "large"}
# A relation word -> (the opposite relation, the word that says it); "left"/"right" only where "of" follows.
_OPPOSITE = {"above": ("below", "below"), "below": ("above", "above"),
             "left of": ("right of", "right"), "right of": ("left of", "left")}  # fmt: skip
_ROWS, _COLS = ("top", "middle", "bottom"), ("left", "center", "right")
_POSITIONS = tuple((row, col) for row in _ROWS for col in _COLS)


def _position_words(row: str, col: str) -> list[str]:
    """The data set's wording of a position (shapes_maker ``_position``) without its leading article."""
    if row == "middle" and col == "center":
        return ["in", "the", "center"]
    if row == "middle":
        return ["on", "the", col]
    if col == "center":
        return ["at", "the", row]
    return ["in", "the", row, col]


SWAPS = {
    "colour": "the colour word -> a palette colour the caption does not name; a/an just before it follows the new word",
    "kind": f"the kind word -> another kind: {', '.join(_KIND_WORD.values())}",
    "size": f"the size word -> another size class: {', '.join(_SIZE_WORD.values())}",
    "relation": "above/over -> below; below/under/beneath -> above; left <-> right in '(to the) left/right of'",
    "position": "the position phrase -> another of as many words: "
    + " | ".join(" ".join(_position_words(*p)) for p in _POSITIONS),
}


@dataclass(frozen=True)
class Edit:
    """One attribute of a caption changed: which word (index into the caption's words) becomes which."""

    attribute: str
    shape: int | None  # index of the edited noun phrase; None for relation and position
    old: Any  # the value the caption asked for: colour, kind, size class, relation, (row, column)
    new: Any
    swaps: tuple[tuple[int, str], ...]  # (word index, new word)

    def apply(self, words: Sequence[str]) -> list[str]:
        out = list(words)
        for i, word in self.swaps:
            out[i] = word
        return out

    def requirements(self, req: Requirements) -> Requirements:
        """What the edited caption asks for."""
        out = copy.deepcopy(req)
        if self.shape is not None:
            out.shapes[self.shape][self.attribute] = self.new
        else:
            setattr(out, self.attribute, self.new)
        return out


@dataclass(frozen=True)
class EditOutcome:
    item: int  # data set index of the item (or its running number when the caller gives none)
    edit: Edit
    correct: bool
    unwanted: bool


def _locate(words: Sequence[str], colours: Container[str]) -> tuple[list[dict[str, int]], int | None, list[int]]:
    """Word indices of what ``parse_caption`` reads: per noun phrase its size/colour/kind, the relation word, the
    position words. Mirrors the parser's walk so that the indices line up with its requirements."""
    phrases: list[dict[str, int]] = []
    current: dict[str, int] = {}
    relation_at, place = None, []
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else None
        if word in _SIZE_WORDS:
            current["size"] = i
        elif word in colours:
            current["colour"] = i
        elif word in _KIND_WORDS:
            current["kind"] = i
            if "colour" in current:
                phrases.append(current)
            current = {}
        elif word in _RELATION_WORDS and len(phrases) == 1:
            relation_at = i
        elif word in ("left", "right"):
            if following == "of":
                if len(phrases) == 1:
                    relation_at = i
            else:
                place.append(i)
        elif word in ("top", "bottom", "center"):
            place.append(i)
    return phrases, relation_at, place


def candidate_edits(
    words: Sequence[str], colours: Sequence[str], known: Container[str] | None = None
) -> dict[str, list[Edit]]:
    """Every single-attribute edit of a caption (its words) that keeps its length, uses ``known`` words only, and
    that the judge's parser reads as exactly that change; per attribute, in a fixed order."""
    req = parse_caption(words, colours)
    phrases, relation_at, place = _locate(words, colours)
    found: dict[str, list[Edit]] = {a: [] for a in EDITABLE}
    used = {s["colour"] for s in req.shapes}
    for j, (shape, at) in enumerate(zip(req.shapes, phrases, strict=True)):
        for colour in colours:
            if colour in used:
                continue  # two shapes of one colour would make the caption ambiguous (the data set never does)
            swaps = [(at["colour"], colour)]
            if at["colour"] > 0 and words[at["colour"] - 1] in ("a", "an"):
                swaps.append((at["colour"] - 1, "an" if colour[0] in "aeiou" else "a"))
            found["colour"].append(Edit("colour", j, shape["colour"], colour, tuple(swaps)))
        for kind, word in _KIND_WORD.items():
            if kind != shape["kind"]:
                found["kind"].append(Edit("kind", j, shape["kind"], kind, ((at["kind"], word),)))
        if "size" in shape:
            for size, word in _SIZE_WORD.items():
                if size != shape["size"]:
                    found["size"].append(Edit("size", j, shape["size"], size, ((at["size"], word),)))
    if req.relation is not None and relation_at is not None:
        new, word = _OPPOSITE[req.relation]
        found["relation"].append(Edit("relation", None, req.relation, new, ((relation_at, word),)))
    if req.position is not None and place:
        start, phrase = place[0] - 2, _position_words(*req.position)
        if start >= 0 and list(words[start : place[-1] + 1]) == phrase:
            for where in _POSITIONS:
                other = _position_words(*where)
                if where != req.position and len(other) == len(phrase):
                    swaps = tuple((start + k, w) for k, w in enumerate(other) if w != phrase[k])
                    found["position"].append(Edit("position", None, req.position, where, swaps))
    return {
        attribute: [
            edit
            for edit in edits
            if (known is None or all(w in known for _, w in edit.swaps))
            and parse_caption(edit.apply(words), colours) == edit.requirements(req)
        ]
        for attribute, edits in found.items()
    }


class _Reading:
    """What the judge sees in one image: blobs per colour, looked up once."""

    def __init__(self, judge: Judge, image: np.ndarray, scale: float) -> None:
        self.judge, self.scale = judge, scale
        self.labels = judge.label_pixels(image)
        self.blobs: dict[str, dict[str, Any] | None] = {}

    def blob(self, colour: str) -> dict[str, Any] | None:
        if colour not in self.blobs:
            self.blobs[colour] = self.judge.find(self.labels, colour, self.scale)
        return self.blobs[colour]

    def state(self, req: Requirements) -> dict[tuple[str, int | None], Any]:
        """Every attribute the judge checks for ``req``, keyed by (attribute, noun phrase index)."""
        out: dict[tuple[str, int | None], Any] = {}
        blobs = [self.blob(s["colour"]) for s in req.shapes]
        for j, (shape, blob) in enumerate(zip(req.shapes, blobs, strict=True)):
            out[("colour", j)] = blob is not None
            out[("kind", j)] = blob["kind"] if blob else None
            if "size" in shape:
                out[("size", j)] = blob["size"] if blob else None
        if req.relation is not None:
            a, b = blobs[0], blobs[1]
            out[("relation", None)] = _relation(a["centre"], b["centre"]) if a and b else None
        if req.position is not None:
            out[("position", None)] = grid_cell(blobs[0]["centre"]) if blobs[0] else None
        return out


def judge_edit(before: _Reading, after: _Reading, req: Requirements, edit: Edit) -> tuple[bool, bool]:
    """-> (correct change, unwanted change) of one edit, from the original image and the edited one."""
    old_state, new_state = before.state(req), after.state(edit.requirements(req))
    key = (edit.attribute, edit.shape)
    ignored = {key}
    if edit.attribute == "colour":
        correct = bool(new_state[key]) and after.blob(edit.old) is None and before.blob(edit.new) is None
        if not (correct and before.blob(edit.old) is not None):
            # Shapes are found by colour: unless this one turned from the old colour to the new, there is no single
            # shape to follow from one image to the other (a generator that ignores the edit changes nothing).
            j = edit.shape
            ignored |= {("kind", j), ("size", j)} | ({("relation", None)} if j < 2 else set())
            ignored |= {("position", None)} if j == 0 else set()
    else:
        correct = new_state[key] == edit.new and old_state[key] != edit.new
    unwanted = any(old_state[k] != new_state[k] for k in old_state if k not in ignored)
    return correct, unwanted


class ControllabilityParams(CaptionConsistencyParams):
    attributes: tuple[Literal["colour", "kind", "size", "position", "relation"], ...] = Field(
        ("colour", "kind", "size", "position"), min_length=1, description="attributes to edit, one at a time"
    )
    edits_per_attribute: int = Field(
        1, ge=1, description="edits per item and attribute (distinct phrase/value pairs, drawn with the seed)"
    )

    @field_validator("attributes")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"attributes are repeated: {list(value)}")
        return value


class Controllability(Metric):
    """Rate of edits of one attribute word that change that attribute (``value``) and of edits that change others."""

    name = "controllability.v1"

    def __init__(self, params: ControllabilityParams, *, context: EvalContext) -> None:
        super().__init__(context)
        if context.generate is None:
            raise MetricError(
                f"{self.name} generates edited captions itself: it needs a generator (t2i eval RUN, in-training "
                "evaluation, t2i ablate), not images made elsewhere"
            )
        self.params = params
        self.attributes, self.attributes_sha256 = _load_attributes(context.dataset)
        self.judge = _judge_from(self.attributes, params)
        vocab = context.dataset.vocab
        self.words, self.skip, self.word_id = vocab.words, set(vocab.mask_ids), vocab.word_to_id
        self.rng = np.random.default_rng(context.seed)
        self.outcomes: list[EditOutcome] = []
        # Per generated item with at least one edit (for paired statistics): its index and its two rates.
        self.item_index: list[int] = []
        self.item_correct: list[float] = []
        self.item_unwanted: list[float] = []
        self.baseline_drift = 0.0  # largest |regenerated original - evaluated image|: 0 unless G depends on more

    def draw_edits(self, words: Sequence[str]) -> list[Edit]:
        """Per attribute (in ``params.attributes`` order) up to ``edits_per_attribute`` distinct candidate edits."""
        candidates = candidate_edits(words, self.judge.names, self.word_id)
        chosen: list[Edit] = []
        for attribute in self.params.attributes:
            options = candidates[attribute]
            if options:
                picks = self.rng.choice(len(options), size=min(self.params.edits_per_attribute, len(options)),
                                        replace=False)  # fmt: skip
                chosen.extend(options[int(i)] for i in picks)
        return chosen

    def update(self, fake: Tensor, batch_info: Mapping[str, Any]) -> None:
        missing = [k for k in ("z", "eps") if k not in batch_info]
        if missing:
            raise MetricError(f"{self.name} regenerates with each image's noise: the batch carries no {missing}")
        captions, lengths = batch_info["captions"].cpu(), batch_info["lengths"].cpu()
        z, eps = batch_info["z"], batch_info["eps"]
        indices = batch_info.get("indices")
        plans = []  # per row: caption positions of its words, the words, the drawn edits
        for r in range(len(captions)):
            ids = captions[r, : int(lengths[r])].tolist()
            at = [p for p, t in enumerate(ids) if t not in self.skip]
            words = [self.words[ids[p]] for p in at]
            plans.append((at, words, self.draw_edits(words)))
        slots = max((len(edits) for _, _, edits in plans), default=0)
        if slots == 0:
            return
        original = self.context.generate(captions, lengths, z, eps)
        if original.shape == fake.shape:
            drift = (original - fake.to(original.device).float()).abs().max()
            self.baseline_drift = max(self.baseline_drift, float(drift))
        images = [_to_uint8(original)]
        for s in range(slots):  # the s-th edit of every row in one batch; rows with fewer edits keep their caption
            edited = captions.clone()
            for r, (at, _, edits) in enumerate(plans):
                if s < len(edits):
                    for i, word in edits[s].swaps:
                        edited[r, at[i]] = self.word_id[word]
            images.append(_to_uint8(self.context.generate(edited, lengths, z, eps)))
        scale = framing_scale(self.params.framing, images[0].shape[1])
        for r, (_, words, edits) in enumerate(plans):
            if not edits:
                continue
            item = int(indices[r]) if indices is not None else len(self.item_index)
            req = parse_caption(words, self.judge.names)
            before = _Reading(self.judge, images[0][r], scale)
            results = [judge_edit(before, _Reading(self.judge, images[s + 1][r], scale), req, edit)
                       for s, edit in enumerate(edits)]  # fmt: skip
            self.outcomes.extend(EditOutcome(item, e, c, u) for e, (c, u) in zip(edits, results, strict=True))
            self.item_index.append(item)
            self.item_correct.append(float(np.mean([c for c, _ in results])))
            self.item_unwanted.append(float(np.mean([u for _, u in results])))

    def per_item(self) -> dict[str, np.ndarray]:
        """Per generated item with an edit: data set index, correct-change rate and unwanted-change rate over its
        edits; ``scores`` (= ``correct``, whose mean is the value) is what paired comparisons resample."""
        correct = np.asarray(self.item_correct, dtype=np.float64)
        return {
            "scores": correct,
            "index": np.asarray(self.item_index, dtype=np.int64),
            "correct": correct,
            "unwanted": np.asarray(self.item_unwanted, dtype=np.float64),
        }

    def compute(self) -> MetricResult:
        if not self.item_correct:
            raise MetricError(
                f"{self.name}: no caption could be edited (no images evaluated, or none of the attributes "
                f"{', '.join(self.params.attributes)} in the captions)"
            )
        details: dict[str, float] = {}
        for attribute in self.params.attributes:
            rows = [o for o in self.outcomes if o.edit.attribute == attribute]
            if rows:
                details[f"{attribute}_correct"] = float(np.mean([o.correct for o in rows]))
                details[f"{attribute}_unwanted"] = float(np.mean([o.unwanted for o in rows]))
                details[f"{attribute}_edits"] = float(len(rows))
        details["unwanted"] = float(np.mean(self.item_unwanted))
        details["baseline_drift"] = self.baseline_drift
        protocol = self.base_protocol(
            judge=JUDGE_VERSION,
            judge_settings=self.judge.settings(),
            framing=self.params.framing,
            attributes_sha256=self.attributes_sha256,
            edited=list(self.params.attributes),
            edits_per_attribute=self.params.edits_per_attribute,
            edit_draws="numpy default_rng(seed); per item and attribute, distinct (phrase, value) edits uniformly",
            swaps=SWAPS,
            noise="each edited caption is generated with its item's z and eps, next to the regenerated original",
            quantisation="[-1,1] -> uint8 by rounding",
            n_samples=len(self.item_correct),
        )
        return MetricResult(
            value=float(np.mean(self.item_correct)),
            std=float(np.std(self.item_correct)),
            n=len(self.item_correct),
            protocol=protocol,
            details=details,
        )


register("metric", "controllability.v1", Controllability, params=ControllabilityParams,
         description="shapes data set: one attribute word edited, same noise; does only it change")  # fmt: skip
