"""Controllability, rule by rule: which caption word belongs to which attribute (``_locate``), the exact edits a
caption allows (``candidate_edits``), the verdict of one edit on hand-drawn before/after images (``judge_edit``),
and the metric's bookkeeping (drawn edits, regeneration calls, per-item scores, protocol) with a generator that
looks its images up by caption, so every expected number is known."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from test_metrics_consistency_rules import FakeShapes, canvas, req, square

from t2i.data.shapes import COLOURS
from t2i.data.shapes_maker import SIZES
from t2i.data.vocab import Vocabulary, tokenize
from t2i.metrics.base import EvalContext, MetricError
from t2i.metrics.caption_consistency import Judge, Requirements
from t2i.metrics.controllability import (
    SWAPS,
    Controllability,
    ControllabilityParams,
    Edit,
    EditOutcome,
    _locate,
    _position_words,
    _Reading,
    candidate_edits,
    judge_edit,
)

PALETTE = list(COLOURS)
SIDE = 60
# A small vocabulary: kinds square/circle, sizes medium/large, colours red/green only - so a caption has few edits.
SMALL = ["<end>", "a", "an", "picture", "of", "the", "in", "at", "on", "to", "medium", "large", "square", "circle",
         "above", "below", "top", "bottom", "left", "right", "center", "red", "green"]  # fmt: skip
FULL = [*SMALL, "small", "triangle", "diamond", "orange", "yellow", "blue", "purple"]


def words(text: str) -> list[str]:
    return tokenize(text)


def disc(image: np.ndarray, colour: str, cx: int, cy: int, r: int) -> np.ndarray:
    """A solid disc of radius r centred on the pixel corner (cx, cy): its centroid is exactly (cx, cy)."""
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    image[(xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r] = COLOURS[colour]
    return image


def draw(*shapes: tuple[str, str, int, int, int], side: int = SIDE) -> np.ndarray:
    """(colour, "square" | "circle", cx, cy, half side or radius) on a grey canvas. In 60 px, full framing: square
    half 5 / 8 / 11 is small / medium / large, disc radius 7 / 10 / 13 likewise."""
    image = canvas(side)
    for colour, kind, cx, cy, half in shapes:
        (square if kind == "square" else disc)(image, colour, cx, cy, half)
    return image


@pytest.fixture(scope="module")
def judge() -> Judge:
    return Judge(COLOURS, SIZES)


def reading(judge: Judge, *shapes) -> _Reading:
    return _Reading(judge, draw(*shapes), 1.0)


def verdict(judge: Judge, text: str, edit: Edit, before, after) -> tuple[bool, bool]:
    return judge_edit(reading(judge, *before), reading(judge, *after), req(text), edit)


# -- which word is which ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "phrases", "relation_at", "place"),
    [
        (
            "a small red circle above a blue square",
            [{"size": 1, "colour": 2, "kind": 3}, {"colour": 6, "kind": 7}],
            4,
            [],
        ),
        # a second relation word after the second phrase is not the relation (it is between shapes 0 and 1)
        (
            "a red circle above a blue square below a green triangle",
            [{"colour": 1, "kind": 2}, {"colour": 5, "kind": 6}, {"colour": 9, "kind": 10}],
            3,
            [],
        ),
        ("a red circle to the left of a blue square", [{"colour": 1, "kind": 2}, {"colour": 8, "kind": 9}], 5, []),
        ("a red circle right of a blue square", [{"colour": 1, "kind": 2}, {"colour": 6, "kind": 7}], 3, []),
        # "left of" after two phrases: neither the relation nor a position
        (
            "a red circle above a blue square left of a green disc",
            [{"colour": 1, "kind": 2}, {"colour": 5, "kind": 6}, {"colour": 10, "kind": 11}],
            3,
            [],
        ),
        ("a red circle on the right", [{"colour": 1, "kind": 2}], None, [5]),  # position word as the last word
        ("a red circle on the left", [{"colour": 1, "kind": 2}], None, [5]),
        ("a red circle at the bottom", [{"colour": 1, "kind": 2}], None, [5]),
        ("a red circle at the top", [{"colour": 1, "kind": 2}], None, [5]),
        ("a red circle in the center", [{"colour": 1, "kind": 2}], None, [5]),
        ("a big red box in the bottom right", [{"size": 1, "colour": 2, "kind": 3}], None, [6, 7]),
        ("a red circle in the top left", [{"colour": 1, "kind": 2}], None, [5, 6]),
        # "of" as the last word: the look-ahead still sees it, so "left" is the relation, not a place
        ("a red circle to the left of", [{"colour": 1, "kind": 2}], 5, []),
        # a relation word before any phrase is not the relation
        ("above a red circle", [{"colour": 2, "kind": 3}], None, []),
        # a kind without a colour ends no phrase, and its size does not carry over
        ("a big square and a red circle", [{"colour": 5, "kind": 6}], None, []),
        ("a picture", [], None, []),
    ],
)
def test_locate_maps_each_attribute_word_to_its_index(text, phrases, relation_at, place):
    """Per noun phrase its size/colour/kind word, the relation word (after the first phrase only; "left"/"right"
    only when "of" follows), the position words (left/right/top/bottom/center)."""
    assert _locate(words(text), set(PALETTE)) == (phrases, relation_at, place)


def test_position_words_are_the_data_set_wording():
    """The nine cells as the data set writes them, without the article."""
    got = [" ".join(_position_words(r, c)) for r in ("top", "middle", "bottom") for c in ("left", "center", "right")]
    assert got == ["in the top left", "at the top", "in the top right", "on the left", "in the center",
                   "on the right", "in the bottom left", "at the bottom", "in the bottom right"]  # fmt: skip


# -- the edits of a caption ------------------------------------------------------------------------------------------
def test_candidate_edits_of_two_shapes_with_a_relation():
    """Colours not in the caption (the article follows), the other kinds per shape, the opposite relation."""
    got = candidate_edits(words("a red square above a blue circle"), PALETTE)
    colour = [Edit("colour", 0, "red", c, ((1, c), (0, "an" if c == "orange" else "a")))
              for c in ("orange", "yellow", "green", "purple")]  # fmt: skip
    colour += [Edit("colour", 1, "blue", c, ((5, c), (4, "an" if c == "orange" else "a")))
               for c in ("orange", "yellow", "green", "purple")]  # fmt: skip
    assert got == {
        "colour": colour,
        "kind": [Edit("kind", 0, "square", k, ((2, k),)) for k in ("circle", "triangle", "diamond")]
        + [Edit("kind", 1, "circle", k, ((6, k),)) for k in ("square", "triangle", "diamond")],
        "size": [],
        "position": [],
        "relation": [Edit("relation", None, "above", "below", ((3, "below"),))],
    }


@pytest.mark.parametrize(
    ("text", "edit"),
    [
        ("a red square beneath a blue circle", Edit("relation", None, "below", "above", ((3, "above"),))),
        ("a red square over a blue circle", Edit("relation", None, "above", "below", ((3, "below"),))),
        ("a red square to the left of a blue circle", Edit("relation", None, "left of", "right of", ((5, "right"),))),
        ("a red square right of a blue circle", Edit("relation", None, "right of", "left of", ((3, "left"),))),
        (
            "a red square above a blue circle below a green disc",
            Edit("relation", None, "above", "below", ((3, "below"),)),
        ),
    ],
)
def test_candidate_relation_edit_writes_the_opposite_at_the_relation_word(text, edit):
    """above/over -> below, below/under/beneath -> above, left of <-> right of; only the first relation word."""
    assert candidate_edits(words(text), PALETTE)["relation"] == [edit]


def test_candidate_edits_of_sizes_and_synonyms_are_written_with_the_first_wording():
    """A "big red disc": sizes small/medium and kinds square/triangle/diamond in the data set's first wording."""
    got = candidate_edits(words("a big red disc"), PALETTE)
    assert got["size"] == [Edit("size", 0, "large", s, ((1, s),)) for s in ("small", "medium")]
    assert got["kind"] == [Edit("kind", 0, "circle", k, ((3, k),)) for k in ("square", "triangle", "diamond")]
    assert [e.new for e in got["colour"]] == ["orange", "yellow", "green", "blue", "purple"]
    assert got["colour"][0].swaps == ((2, "orange"),)  # the article goes with "big", not the colour
    assert got["position"] == got["relation"] == []


def test_candidate_position_edits_swap_only_the_words_that_differ():
    """ "at the bottom" -> the other three-word cells, in grid order; only changed words are swapped."""
    got = candidate_edits(words("a red square at the bottom"), PALETTE)["position"]
    old = ("bottom", "center")
    assert got == [
        Edit("position", None, old, ("top", "center"), ((5, "top"),)),
        Edit("position", None, old, ("middle", "left"), ((3, "on"), (5, "left"))),
        Edit("position", None, old, ("middle", "center"), ((3, "in"), (5, "center"))),
        Edit("position", None, old, ("middle", "right"), ((3, "on"), (5, "right"))),
    ]
    four = candidate_edits(words("a red square in the top left"), PALETTE)["position"]
    assert [(e.new, e.swaps) for e in four] == [(("top", "right"), ((6, "right"),)),
                                                 (("bottom", "left"), ((5, "bottom"),)),
                                                 (("bottom", "right"), ((5, "bottom"), (6, "right")))]  # fmt: skip


def test_candidate_position_needs_the_data_set_phrase():
    """A position not in the data set's wording ("at the top left") gets no position edit."""
    assert candidate_edits(words("a red square at the top left"), PALETTE)["position"] == []


def test_candidate_position_phrase_anywhere_in_the_caption():
    """The phrase is found where its words are, also at the caption's start and followed by other words."""
    text = words("in the top left a red square")
    got = candidate_edits(text, PALETTE)["position"]
    assert [(e.new, e.swaps) for e in got] == [(("top", "right"), ((3, "right"),)),
                                                (("bottom", "left"), ((2, "bottom"),)),
                                                (("bottom", "right"), ((2, "bottom"), (3, "right")))]  # fmt: skip


def test_candidate_edits_need_what_the_parser_reads():
    """A relation word in a one-shape caption, or a position word in a two-shape caption, gives no edit of it."""
    lone = candidate_edits(words("a red circle above a grey background"), PALETTE)
    assert lone["relation"] == [] and len(lone["colour"]) == 5
    pair = candidate_edits(words("a red square above a blue circle on the left"), PALETTE)
    assert pair["position"] == [] and len(pair["relation"]) == 1


def test_candidate_colour_edit_fixes_only_the_article_just_before_it():
    """ "an" -> "a" before a consonant colour; a colour as the first word has no article (no wrap-around to the end)."""
    got = candidate_edits(words("an orange square"), PALETTE)["colour"]
    assert [(e.new, e.swaps) for e in got][:2] == [
        ("red", ((1, "red"), (0, "a"))),
        ("yellow", ((1, "yellow"), (0, "a"))),
    ]
    first = candidate_edits(["red", "square", "and", "a"], PALETTE)["colour"]
    assert [e.swaps for e in first] == [((0, c),) for c in ("orange", "yellow", "green", "blue", "purple")]


def test_candidate_edits_use_known_words_only():
    """With ``known``, an edit that writes an unknown word (colour, kind, or the article "an") is left out."""
    text = words("a red square")
    known = set(text) | {"green", "orange", "circle"}  # no "an": orange cannot be written
    got = candidate_edits(text, PALETTE, known)
    assert [e.new for e in got["colour"]] == ["green"] and [e.new for e in got["kind"]] == ["circle"]


def test_edit_apply_and_requirements_leave_the_original_alone():
    """apply returns new words, requirements a changed deep copy (shape attribute or caption-level attribute)."""
    text = words("a red square above a blue circle")
    original = req("a red square above a blue circle")
    edit = Edit("kind", 1, "circle", "square", ((6, "square"),))
    assert edit.apply(text) == words("a red square above a blue square") and text[6] == "circle"
    assert edit.requirements(original).shapes[1] == {"colour": "blue", "kind": "square"}
    assert original.shapes[1]["kind"] == "circle"
    flipped = Edit("relation", None, "above", "below", ((3, "below"),)).requirements(original)
    assert flipped.relation == "below" and original.relation == "above" and flipped.shapes == original.shapes


# -- what the judge reads ---------------------------------------------------------------------------------------------
def test_reading_state_lists_every_checked_attribute(judge):
    """Keys (attribute, phrase) for colour/kind and stated sizes, the relation and the position; None when missing."""
    two = reading(judge, ("red", "square", 20, 14, 8), ("blue", "square", 40, 44, 11))
    assert two.state(req("a medium red square above a blue square")) == {
        ("colour", 0): True, ("kind", 0): "square", ("size", 0): "medium",
        ("colour", 1): True, ("kind", 1): "square", ("relation", None): "above"}  # fmt: skip
    assert two.state(req("a large green square below a red square")) == {
        ("colour", 0): False, ("kind", 0): None, ("size", 0): None,
        ("colour", 1): True, ("kind", 1): "square", ("relation", None): None}  # fmt: skip
    one = reading(judge, ("red", "circle", 50, 50, 7))
    assert one.state(req("a small red disc in the top left")) == {
        ("colour", 0): True,
        ("kind", 0): "circle",
        ("size", 0): "small",
        ("position", None): ("bottom", "right"),
    }
    assert one.state(req("a green disc in the top left")) == {
        ("colour", 0): False,
        ("kind", 0): None,
        ("position", None): None,
    }


def test_reading_finds_each_colour_once(judge, monkeypatch):
    """Blobs are looked up once per colour and image, however many requirements are read."""
    calls = []
    find = Judge.find
    monkeypatch.setattr(Judge, "find", lambda self, *a: calls.append(a[1]) or find(self, *a))
    seen = reading(judge, ("red", "square", 20, 14, 8))
    seen.state(req("a red square above a blue square"))
    seen.state(req("a blue square above a red square"))
    assert calls == ["red", "blue"] and seen.blob("blue") is None and seen.blob("red")["kind"] == "square"


# -- one edit's verdict ----------------------------------------------------------------------------------------------
RED_ABOVE_BLUE = "a medium red square above a blue square"
RED, BLUE = ("red", "square", 20, 14, 8), ("blue", "square", 40, 44, 11)
TO_GREEN = Edit("colour", 0, "red", "green", ((2, "green"),))


@pytest.mark.parametrize(
    ("after", "want"),
    [
        ([("green", "square", 20, 14, 8), BLUE], (True, False)),  # followed, nothing else moved
        ([("green", "circle", 20, 14, 10), BLUE], (True, True)),  # followed, but its kind changed
        ([("green", "square", 20, 14, 11), BLUE], (True, True)),  # followed, but its size changed
        ([("green", "square", 40, 50, 8), ("blue", "square", 20, 14, 8)], (True, True)),  # moved below blue
        ([RED, BLUE], (False, False)),  # edit ignored: nothing to follow, nothing changed
        ([("red", "circle", 20, 14, 10), BLUE], (False, False)),  # not followed: red's kind is not compared
        ([RED, ("green", "square", 40, 44, 11)], (False, True)),  # blue turned green: blue is gone
        ([("green", "square", 20, 14, 8), ("red", "square", 52, 8, 5), BLUE], (False, False)),  # red still there
    ],
)
def test_colour_edit_verdicts(judge, after, want):
    """A colour edit is correct when the new colour appears and the old one is gone; the edited shape's kind, size
    and the relation count as unwanted changes only when it turned from the old colour to the new."""
    assert verdict(judge, RED_ABOVE_BLUE, TO_GREEN, [RED, BLUE], after) == want


def test_colour_edit_with_the_new_colour_already_there_is_not_correct(judge):
    """The new colour must be absent before: a green shape already in the original makes the edit not correct."""
    before = [RED, BLUE, ("green", "square", 50, 10, 5)]
    assert verdict(judge, RED_ABOVE_BLUE, TO_GREEN, before, [("green", "square", 20, 14, 8), BLUE]) == (False, False)


def test_colour_edit_without_the_old_colour_before_is_not_followed(judge):
    """Old colour missing in the original: the change is read as correct, but the shape is not followed (its kind and
    the relation are not compared)."""
    assert verdict(judge, RED_ABOVE_BLUE, TO_GREEN, [BLUE], [("green", "circle", 20, 14, 10), BLUE]) == (True, False)
    # the other shape is still compared: blue turned into a circle
    after = [("green", "circle", 20, 14, 10), ("blue", "circle", 40, 44, 13)]
    assert verdict(judge, RED_ABOVE_BLUE, TO_GREEN, [BLUE], after) == (True, True)


def test_unfollowed_colour_edit_of_the_second_shape_ignores_the_relation(judge):
    """Shape 1 not followed (blue -> green, no green drawn): the relation (shape 0 vs 1) is not compared."""
    edit = Edit("colour", 1, "blue", "green", ((6, "green"),))
    swapped = [("red", "square", 20, 44, 8), ("blue", "square", 40, 14, 11)]
    assert verdict(judge, RED_ABOVE_BLUE, edit, [RED, BLUE], swapped) == (False, False)
    # shape 0 is still compared: red changed kind
    assert verdict(judge, RED_ABOVE_BLUE, edit, [RED, BLUE], [("red", "circle", 20, 14, 10), BLUE]) == (False, True)


THREE = "a red square above a blue square and a green square"
R3, B3, G3 = ("red", "square", 15, 15, 6), ("blue", "square", 15, 45, 6), ("green", "square", 45, 30, 6)


@pytest.mark.parametrize(
    ("after", "want"),
    [
        ([("red", "square", 15, 45, 6), ("blue", "square", 15, 15, 6), G3], (False, True)),  # relation flipped
        ([R3, B3, ("yellow", "circle", 45, 30, 7)], (True, True)),  # followed, kind changed
        ([R3, B3, ("yellow", "square", 45, 30, 6)], (True, False)),
        ([R3, B3, ("green", "circle", 45, 30, 7)], (False, False)),  # not followed: its kind is not compared
    ],
)
def test_colour_edit_of_a_third_shape_keeps_the_relation_checked(judge, after, want):
    """The relation is between shapes 0 and 1: an edit of shape 2 never excuses a changed relation."""
    edit = Edit("colour", 2, "green", "yellow", ((9, "yellow"),))
    assert verdict(judge, THREE, edit, [R3, B3, G3], after) == want


def test_unfollowed_colour_edit_excuses_the_position_of_shape_zero_only(judge):
    """Position belongs to shape 0: an unfollowed edit of shape 1 does not excuse a moved shape 0. (Parsed captions
    have a position only with one shape; the rule is pinned on hand-made requirements.)"""
    two = Requirements(shapes=[{"colour": "red", "kind": "square"}, {"colour": "blue", "kind": "square"}],
                       position=("top", "left"))  # fmt: skip
    before = reading(judge, ("red", "square", 10, 10, 5), ("blue", "square", 10, 50, 5))
    after = reading(judge, ("red", "square", 50, 10, 5), ("blue", "square", 50, 50, 5))  # both moved right
    edit = Edit("colour", 1, "blue", "green", ((5, "green"),))
    assert judge_edit(before, after, two, edit) == (False, True)
    shape0 = Edit("colour", 0, "red", "green", ((1, "green"),))
    assert judge_edit(before, after, two, shape0) == (False, False)  # shape 0 unfollowed: its position excused


@pytest.mark.parametrize(
    ("text", "edit", "before", "after", "want"),
    [
        # kind: correct when the new kind shows now and did not before
        (
            "a medium red square",
            Edit("kind", 0, "square", "circle", ((2, "circle"),)),
            [("red", "square", 30, 30, 8)],
            [("red", "circle", 30, 30, 10)],
            (True, False),
        ),
        (
            "a medium red square",
            Edit("kind", 0, "square", "circle", ((2, "circle"),)),
            [("red", "square", 30, 30, 8)],
            [("red", "circle", 30, 30, 13)],
            (True, True),
        ),  # size changed too
        (
            "a medium red square",
            Edit("kind", 0, "square", "circle", ((2, "circle"),)),
            [("red", "circle", 30, 30, 10)],
            [("red", "circle", 30, 30, 10)],
            (False, False),
        ),  # circle already
        (
            "a medium red square",
            Edit("kind", 0, "square", "circle", ((2, "circle"),)),
            [("red", "square", 30, 30, 8)],
            [],
            (False, True),
        ),  # the shape vanished
        # size
        (
            "a medium red square in the top left",
            Edit("size", 0, "medium", "large", ((1, "large"),)),
            [("red", "square", 12, 12, 8)],
            [("red", "square", 12, 12, 11)],
            (True, False),
        ),
        (
            "a medium red square in the top left",
            Edit("size", 0, "medium", "large", ((1, "large"),)),
            [("red", "square", 12, 12, 8)],
            [("red", "square", 45, 45, 11)],
            (True, True),
        ),  # moved as well
        (
            "a medium red square in the top left",
            Edit("size", 0, "medium", "large", ((1, "large"),)),
            [("red", "square", 12, 12, 8)],
            [("red", "square", 12, 12, 8)],
            (False, False),
        ),
        # position
        (
            "a red square in the top left",
            Edit("position", None, ("top", "left"), ("bottom", "right"), ((5, "bottom"), (6, "right"))),
            [("red", "square", 10, 10, 8)],
            [("red", "square", 50, 50, 8)],
            (True, False),
        ),
        (
            "a red square in the top left",
            Edit("position", None, ("top", "left"), ("bottom", "right"), ((5, "bottom"), (6, "right"))),
            [("red", "square", 50, 50, 8)],
            [("red", "square", 50, 50, 8)],
            (False, False),
        ),  # there already
        (
            "a red square in the top left",
            Edit("position", None, ("top", "left"), ("bottom", "right"), ((5, "bottom"), (6, "right"))),
            [("red", "square", 10, 10, 8)],
            [("red", "circle", 50, 50, 10)],
            (True, True),
        ),
        # relation
        (
            RED_ABOVE_BLUE,
            Edit("relation", None, "above", "below", ((4, "below"),)),
            [RED, BLUE],
            [("red", "square", 20, 44, 8), ("blue", "square", 40, 14, 11)],
            (True, False),
        ),
        (
            RED_ABOVE_BLUE,
            Edit("relation", None, "above", "below", ((4, "below"),)),
            [RED, BLUE],
            [("red", "square", 20, 44, 11), ("blue", "square", 40, 14, 11)],
            (True, True),
        ),
        (
            RED_ABOVE_BLUE,
            Edit("relation", None, "above", "below", ((4, "below"),)),
            [RED, BLUE],
            [RED, BLUE],
            (False, False),
        ),
    ],
)
def test_other_edit_verdicts(judge, text, edit, before, after, want):
    """Kind, size, position and relation edits: correct = new value shown now and not before; unwanted = any other
    checked attribute differs (only the edited one is excused)."""
    assert verdict(judge, text, edit, before, after) == want


# -- the metric ------------------------------------------------------------------------------------------------------
def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(im.copy()).permute(2, 0, 1).float() / 127.5 - 1 for im in images])


class LookUp:
    """Generator stub: the image drawn for each caption's text (a blank canvas for any other); records its calls."""

    def __init__(self, vocab: Vocabulary, pictures: dict[str, np.ndarray], side: int = SIDE) -> None:
        self.vocab, self.pictures, self.side = vocab, pictures, side
        self.calls: list[tuple[list[str], torch.Tensor, torch.Tensor]] = []

    def text(self, row: list[int], length: int) -> str:
        return " ".join(self.vocab.words[t] for t in row[:length] if t not in self.vocab.mask_ids)

    def __call__(self, captions, lengths, z, eps):
        texts = [self.text(r, n) for r, n in zip(captions.tolist(), lengths.tolist(), strict=True)]
        self.calls.append((texts, z, eps))
        if not texts:
            return torch.zeros(0, 3, self.side, self.side)
        return to_tensor([self.pictures.get(t, canvas(self.side)) for t in texts])


def dataset(tmp_path, vocabulary=SMALL) -> FakeShapes:
    data = FakeShapes(tmp_path / "set")
    data.vocab = Vocabulary(vocabulary)
    return data


def metric(data, generate, seed=100, **params) -> Controllability:
    params = {"framing": "full", **params}
    context = EvalContext(dataset=data, batch_size=4, seed=seed, generate=generate)
    return Controllability(ControllabilityParams(**params), context=context)


def batch_info(data, texts: list[str], indices=None) -> dict:
    ids = [data.vocab.encode(t)[0] for t in texts]
    length = max((len(c) for c in ids), default=3)
    info = {
        "captions": torch.tensor([c + [0] * (length - len(c)) for c in ids], dtype=torch.long).reshape(-1, length),
        "lengths": torch.tensor([len(c) for c in ids], dtype=torch.long),
        "z": torch.arange(len(texts) * 4, dtype=torch.float32).reshape(-1, 4),
        "eps": -torch.arange(len(texts) * 2, dtype=torch.float32).reshape(-1, 2),
    }
    if indices is not None:
        info["indices"] = torch.tensor(indices)
    return info


SQ_M, SQ_L = ("square", 30, 30, 8), ("square", 30, 30, 11)
CI_M, CI_L = ("circle", 30, 30, 10), ("circle", 30, 30, 13)
PICTURES = {
    "a medium red square": draw(("red", *SQ_M)),
    "a medium green square": draw(("green", *SQ_M)),  # colour edit followed
    "a large red square": draw(("red", *SQ_M)),  # size edit ignored
    "a large green circle": draw(("green", *CI_L)),
    "a large red circle": draw(("red", *SQ_L)),  # colour followed, but the kind changed
    "a medium green circle": draw(("green", *CI_M)),  # size edit followed
}


def run_two_items(tmp_path, **info):
    data = dataset(tmp_path)
    generate = LookUp(data.vocab, PICTURES)
    m = metric(data, generate, attributes=("colour", "size"))
    texts = ["a picture", "a medium red square", "a large green circle"]
    info = batch_info(data, texts, **info)
    m.update(to_tensor([PICTURES.get(t, canvas(SIDE)) for t in texts]), info)
    return m, generate, info


def test_update_regenerates_each_slot_of_edits_with_the_items_noise(tmp_path):
    """The original captions, then the s-th edit of every row in one call (rows without it keep their caption), all
    with the batch's own z and eps."""
    _, generate, info = run_two_items(tmp_path, indices=[7, 3, 9])
    assert [texts for texts, _, _ in generate.calls] == [
        ["a picture", "a medium red square", "a large green circle"],
        ["a picture", "a medium green square", "a large red circle"],
        ["a picture", "a large red square", "a medium green circle"],
    ]
    assert all(z is info["z"] and eps is info["eps"] for _, z, eps in generate.calls)


def test_update_records_outcomes_and_per_item_rates(tmp_path):
    """Per edit (item, edit, correct, unwanted); per item with edits its data set index and its two rates; an
    item without edits (first in its batch) is skipped and the next ones still count."""
    m, _, _ = run_two_items(tmp_path, indices=[7, 3, 9])
    assert m.outcomes == [
        EditOutcome(3, Edit("colour", 0, "red", "green", ((2, "green"),)), True, False),
        EditOutcome(3, Edit("size", 0, "medium", "large", ((1, "large"),)), False, False),
        EditOutcome(9, Edit("colour", 0, "green", "red", ((2, "red"),)), True, True),
        EditOutcome(9, Edit("size", 0, "large", "medium", ((1, "medium"),)), True, False),
    ]
    items = m.per_item()
    assert set(items) == {"scores", "index", "correct", "unwanted"}
    assert items["index"].tolist() == [3, 9] and items["index"].dtype == np.int64
    assert items["correct"].tolist() == items["scores"].tolist() == [0.5, 1.0]
    assert items["unwanted"].tolist() == [0.0, 0.5]
    assert items["correct"].dtype == items["unwanted"].dtype == np.float64
    assert m.baseline_drift == 0.0


def test_items_without_indices_are_numbered_in_order(tmp_path):
    """No ``indices`` in the batch: items are numbered by their running count over all updates."""
    m, _, _ = run_two_items(tmp_path)
    data = m.context.dataset
    m.update(to_tensor([PICTURES["a medium red square"]]), batch_info(data, ["a medium red square"]))
    assert m.per_item()["index"].tolist() == [0, 1, 2]
    assert [o.item for o in m.outcomes] == [0, 0, 1, 1, 2, 2]


def test_compute_value_std_details(tmp_path):
    """value = mean of per-item correct rates, std their spread; per-attribute rates and counts over edits."""
    m, _, _ = run_two_items(tmp_path, indices=[7, 3, 9])
    result = m.compute()
    assert (result.value, result.std, result.n) == (0.75, 0.25, 2)
    assert result.details == {
        "colour_correct": 1.0, "colour_unwanted": 0.5, "colour_edits": 2.0,
        "size_correct": 0.5, "size_unwanted": 0.0, "size_edits": 2.0,
        "unwanted": 0.25, "baseline_drift": 0.0}  # fmt: skip


def test_protocol_fields(tmp_path):
    """The protocol names the judge and its settings, framing, palette hash, edits, draws, swaps, noise, n."""
    data = dataset(tmp_path)
    generate = LookUp(data.vocab, PICTURES)
    m = metric(data, generate, seed=5, attributes=("size", "colour"), edits_per_attribute=2, colour_tolerance=90.0,
               min_chroma=30.0, min_area=0.005)  # fmt: skip
    m.update(to_tensor([PICTURES["a medium red square"]]), batch_info(data, ["a medium red square"]))
    protocol = m.compute().protocol
    assert protocol == {
        "metric": "controllability.v1", "name": "controllability", "version": 1, "seed": 5, "batch_size": 4,
        "judge": "shapes-judge/1",
        "judge_settings": {"colour_tolerance": 90.0, "min_chroma": 30.0, "min_area": 0.005},
        "framing": "full",
        "attributes_sha256": hashlib.sha256((data.root / "attributes.json").read_bytes()).hexdigest(),
        "edited": ["size", "colour"], "edits_per_attribute": 2,
        "edit_draws": "numpy default_rng(seed); per item and attribute, distinct (phrase, value) edits uniformly",
        "swaps": SWAPS,
        "noise": "each edited caption is generated with its item's z and eps, next to the regenerated original",
        "quantisation": "[-1,1] -> uint8 by rounding",
        "n_samples": 1,
    }  # fmt: skip
    assert SWAPS == {
        "colour": "the colour word -> a palette colour the caption does not name; a/an just before it follows the "
        "new word",
        "kind": "the kind word -> another kind: circle, square, triangle, diamond",
        "size": "the size word -> another size class: small, medium, large",
        "relation": "above/over -> below; below/under/beneath -> above; left <-> right in '(to the) left/right of'",
        "position": "the position phrase -> another of as many words: in the top left | at the top | in the top "
        "right | on the left | in the center | on the right | in the bottom left | at the bottom | in the bottom "
        "right",
    }


def test_details_leave_out_attributes_that_had_no_edit(tmp_path):
    """An asked-for attribute that no caption allowed (a relation in one-shape captions) gets no rates."""
    data = dataset(tmp_path)
    pictures = {"a medium red square": draw(("red", *SQ_M)), "a medium green square": draw(("green", *SQ_M))}
    m = metric(data, LookUp(data.vocab, pictures), attributes=("relation", "colour"))
    m.update(to_tensor([pictures["a medium red square"]]), batch_info(data, ["a medium red square"]))
    assert m.compute().details == {"colour_correct": 1.0, "colour_unwanted": 0.0, "colour_edits": 1.0,
                                   "unwanted": 0.0, "baseline_drift": 0.0}  # fmt: skip


def test_one_edit_per_item_is_still_judged(tmp_path):
    """A single attribute with one edit (one slot of edits) is regenerated and judged."""
    data = dataset(tmp_path)
    pictures = {"a medium red square": draw(("red", *SQ_M)), "a medium red circle": draw(("red", *CI_M))}
    generate = LookUp(data.vocab, pictures)
    m = metric(data, generate, attributes=("kind",))
    m.update(to_tensor([pictures["a medium red square"]]), batch_info(data, ["a medium red square"], [4]))
    assert len(generate.calls) == 2
    assert m.outcomes == [EditOutcome(4, Edit("kind", 0, "square", "circle", ((3, "circle"),)), True, False)]


def test_nothing_to_edit_generates_nothing(tmp_path):
    """An empty batch, or captions without an editable attribute: no generator call, nothing recorded."""
    data = dataset(tmp_path)
    generate = LookUp(data.vocab, {})
    m = metric(data, generate, attributes=("relation",))
    m.update(torch.zeros(0, 3, SIDE, SIDE), batch_info(data, []))
    m.update(to_tensor([canvas(SIDE)] * 2), batch_info(data, ["a picture", "a medium red square"]))
    assert generate.calls == [] and m.outcomes == [] and m.item_index == []
    items = m.per_item()
    assert items["index"].dtype == np.int64 and items["correct"].dtype == items["unwanted"].dtype == np.float64
    with pytest.raises(MetricError) as error:
        m.compute()
    assert str(error.value) == ("controllability.v1: no caption could be edited (no images evaluated, or none of "
                                "the attributes relation in the captions)")  # fmt: skip
    two = metric(data, generate, attributes=("kind", "size"))
    with pytest.raises(MetricError, match=r"none of the attributes kind, size in the captions\)$"):
        two.compute()


@pytest.mark.parametrize(("drop", "named"), [(("z", "eps"), "['z', 'eps']"), (("eps",), "['eps']")])
def test_update_without_noise_names_what_is_missing(tmp_path, drop, named):
    """z and eps are needed to regenerate: their absence is a MetricError naming the missing keys."""
    data = dataset(tmp_path)
    generate = LookUp(data.vocab, {})
    m = metric(data, generate)
    info = {k: v for k, v in batch_info(data, ["a medium red square"]).items() if k not in drop}
    with pytest.raises(MetricError) as error:
        m.update(to_tensor([canvas(SIDE)]), info)
    assert str(error.value) == f"controllability.v1 regenerates with each image's noise: the batch carries no {named}"
    assert generate.calls == []


def test_baseline_drift_is_the_largest_difference_to_the_evaluated_images(tmp_path):
    """|regenerated original - evaluated image|, max over pixels and batches; images of another shape are skipped."""
    data = dataset(tmp_path)
    pictures = {"a medium red square": draw(("red", *SQ_M))}
    m = metric(data, LookUp(data.vocab, pictures), attributes=("kind",))
    info = batch_info(data, ["a medium red square"])
    fake = to_tensor([pictures["a medium red square"]])
    fake[0, 1, 5, 7] += 0.25
    m.update(fake, info)
    assert m.baseline_drift == pytest.approx(0.25, abs=1e-6)
    m.update(to_tensor([pictures["a medium red square"]]), info)  # smaller drift keeps the largest
    assert m.baseline_drift == pytest.approx(0.25, abs=1e-6)
    m.update(torch.zeros(1, 3, 16, 16), info)  # another size: not compared
    assert m.baseline_drift == pytest.approx(0.25, abs=1e-6)
    fresh = metric(data, LookUp(data.vocab, pictures), attributes=("kind",))
    fresh.update(torch.zeros(1, 3, 16, 16), info)
    assert fresh.baseline_drift == 0.0 and len(fresh.outcomes) == 1


def test_train_crop_framing_judges_through_the_training_zoom(tmp_path):
    """framing=train_crop (default): a square that is large in full framing is medium through the 76/64 zoom, so a
    medium -> large edit drawn as half 15 -> 20 (96 px) is correct there and not in full framing."""
    data = dataset(tmp_path)
    pictures = {"a medium red square": draw(("red", "square", 48, 48, 15), side=96),
                "a large red square": draw(("red", "square", 48, 48, 20), side=96)}  # fmt: skip
    correct = {}
    for framing in ("train_crop", "full"):
        m = metric(data, LookUp(data.vocab, pictures, side=96), attributes=("size",), framing=framing)
        m.update(to_tensor([pictures["a medium red square"]]), batch_info(data, ["a medium red square"]))
        correct[framing] = m.outcomes[0].correct
    assert correct == {"train_crop": True, "full": False}


# -- drawing edits ---------------------------------------------------------------------------------------------------
def test_draw_edits_writes_only_vocabulary_words(tmp_path):
    """Candidates are limited to the vocabulary: with kinds square/circle and colours red/green only, "a red square"
    has one colour edit and one kind edit however many are asked for."""
    m = metric(dataset(tmp_path), LookUp(Vocabulary(SMALL), {}), attributes=("colour", "kind"), edits_per_attribute=5)
    assert m.draw_edits(words("a red square")) == [
        Edit("colour", 0, "red", "green", ((1, "green"), (0, "a"))),
        Edit("kind", 0, "square", "circle", ((2, "circle"),)),
    ]


def test_draw_edits_are_distinct_and_reproducible_from_the_seed(tmp_path):
    """Per attribute (in the params' order) min(k, options) distinct edits, drawn with numpy default_rng(seed)."""
    data = dataset(tmp_path, FULL)
    text = words("a small red square above a blue circle")
    options = candidate_edits(text, PALETTE, data.vocab.word_to_id)
    assert [len(options[a]) for a in ("relation", "kind", "size", "colour")] == [1, 6, 2, 8]
    m = metric(data, LookUp(data.vocab, {}), seed=11, attributes=("relation", "kind", "size", "colour"),
               edits_per_attribute=3)  # fmt: skip
    rng = np.random.default_rng(11)
    want = []
    for _ in range(2):  # the generator carries on from one caption to the next
        for attribute in ("relation", "kind", "size", "colour"):
            picks = rng.choice(len(options[attribute]), size=min(3, len(options[attribute])), replace=False)
            want.extend(options[attribute][int(i)] for i in picks)
    first, second = m.draw_edits(text), m.draw_edits(text)
    assert first + second == want
    for got in (first, second):
        assert [e.attribute for e in got] == ["relation"] + ["kind"] * 3 + ["size"] * 2 + ["colour"] * 3
        assert len(set(got)) == len(got)
    again = metric(data, LookUp(data.vocab, {}), seed=11, attributes=("relation", "kind", "size", "colour"),
                   edits_per_attribute=3)  # fmt: skip
    assert again.draw_edits(text) + again.draw_edits(text) == want
    every = metric(data, LookUp(data.vocab, {}), seed=3, attributes=("colour",), edits_per_attribute=8)
    drawn = every.draw_edits(text)
    assert len(drawn) == 8 and set(drawn) == set(options["colour"])


# -- params ----------------------------------------------------------------------------------------------------------
def test_params_defaults_and_validation():
    """Default: colour, kind, size, position, one edit each; repeated, unknown or no attributes and k < 1 refused."""
    params = ControllabilityParams()
    assert params.attributes == ("colour", "kind", "size", "position") and params.edits_per_attribute == 1
    assert params.framing == "train_crop"
    with pytest.raises(ValueError, match=r"attributes are repeated: \['kind', 'size', 'kind'\]"):
        ControllabilityParams(attributes=("kind", "size", "kind"))
    for bad in ({"attributes": ()}, {"attributes": ("shade",)}, {"edits_per_attribute": 0}):
        with pytest.raises(ValueError):
            ControllabilityParams(**bad)


def test_a_metric_without_a_generator_says_what_it_needs(tmp_path):
    """No ``generate`` in the context: a MetricError that names the metric and where a generator comes from."""
    with pytest.raises(MetricError) as error:
        Controllability(ControllabilityParams(), context=EvalContext(dataset=dataset(tmp_path)))
    assert str(error.value) == (
        "controllability.v1 generates edited captions itself: it needs a generator (t2i eval RUN, in-training "
        "evaluation, t2i ablate), not images made elsewhere"
    )
