"""Caption consistency, rule by rule: the judge's counts on hand-drawn images whose answer is known, the thirds grid
and relation boundaries, the tally's bookkeeping, the metric's protocol record, and ``reference_scores``' choice of
images and partner captions (on a small in-memory stand-in for the shapes data set)."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.data import shapes_maker
from t2i.data.shapes import COLOURS, png_bytes
from t2i.data.shapes_maker import SIZES
from t2i.data.vocab import Vocabulary, tokenize
from t2i.metrics.base import EvalContext, MetricError
from t2i.metrics.caption_consistency import (
    ATTRIBUTES,
    CaptionConsistency,
    CaptionConsistencyParams,
    Judge,
    _real_image,
    _relation,
    _Tally,
    framing_scale,
    grid_cell,
    parse_caption,
    reference_scores,
)

GREY = (70, 70, 70)  # background: no chroma, so no pixel of it is labelled
WORDS = ["<end>", "a", "picture", "of", "small", "medium", "large", "square", "circle", "above", "below", "at", "the",
         "top", "bottom", "in", "center", "left", "right", *COLOURS]  # fmt: skip


def canvas(side: int) -> np.ndarray:
    return np.full((side, side, 3), GREY, dtype=np.uint8)


def square(image: np.ndarray, colour: str, cx: int, cy: int, half: int) -> np.ndarray:
    """A solid square of side 2 * half centred on the pixel corner (cx, cy): its centroid is exactly (cx, cy)."""
    image[cy - half : cy + half, cx - half : cx + half] = COLOURS[colour]
    return image


def req(text: str):
    return parse_caption(tokenize(text), list(COLOURS))


def counts(**nonzero: tuple[int, int]) -> dict[str, tuple[int, int]]:
    return {a: nonzero.get(a, (0, 0)) for a in ATTRIBUTES}


@pytest.fixture(scope="module")
def judge() -> Judge:
    return Judge(COLOURS, SIZES)


def two_squares() -> np.ndarray:
    """60 px, full framing: a medium red square (centre 20, 14) above a large blue one (centre 40, 44)."""
    image = square(canvas(60), "red", 20, 14, 8)  # radius 8 / 60 / 0.82 = 0.163: medium
    return square(image, "blue", 40, 44, 11)  # 11 / 60 / 0.82 = 0.224: large


# -- geometry rules --------------------------------------------------------------------------------------------------
def test_grid_cell_thirds_include_the_far_edges():
    """A centre at exactly 1.0 (either axis) is in the last row / column; 0.0 in the first."""
    assert grid_cell((1.0, 1.0)) == ("bottom", "right")
    assert grid_cell((1.0, 0.0)) == ("top", "right")
    assert grid_cell((0.0, 1.0)) == ("bottom", "left")
    assert grid_cell((0.5, 0.5)) == ("middle", "center")
    assert grid_cell((0.99, 0.34)) == ("middle", "right")


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        ((0.25, 0.25), (0.5, 0.5), "above"),  # |dy| == |dx|: the vertical axis wins
        ((0.75, 0.25), (0.5, 0.5), "above"),
        ((0.25, 0.75), (0.5, 0.5), "below"),
        ((0.5, 0.5), (0.5, 0.5), "below"),  # dy == 0 (and dx == 0): not above
        ((0.25, 0.5), (0.5, 0.5), "left of"),
        ((0.75, 0.625), (0.5, 0.5), "right of"),
    ],
)
def test_relation_ties_follow_the_data_set_definition(a, b, want):
    """Dominant axis with ties to the vertical and dy == 0 as "below", exactly as the data set captions them."""
    assert _relation(a, b) == want
    assert shapes_maker._relation({"centre": a}, {"centre": b}) == want


def test_framing_scale_is_the_training_resize_over_the_side():
    """train_crop: int(side * 76 / 64) / side (the pipeline's integer resize); full: 1."""
    assert framing_scale("train_crop", 64) == 76 / 64
    assert framing_scale("train_crop", 60) == 71 / 60
    assert framing_scale("full", 64) == 1.0


# -- the judge's counts ----------------------------------------------------------------------------------------------
def test_two_shape_caption_counts_each_check_once_per_shape(judge):
    """Two sized shapes and a relation: colour, kind and size are checked twice, the relation once, all pass."""
    got = judge.score(two_squares(), req("a medium red square above a large blue square"), 1.0)
    assert got == counts(colour=(2, 2), kind=(2, 2), size=(2, 2), relation=(1, 1))


def test_wrong_and_missing_shapes_are_checked_and_fail(judge):
    """A wrong kind / size fails its check; a missing colour fails colour, kind, size and the relation."""
    image = two_squares()
    got = judge.score(image, req("a small red circle above a large green square"), 1.0)
    assert got == counts(colour=(1, 2), kind=(0, 2), size=(0, 2), relation=(0, 1))
    got = judge.score(image, req("a medium red square below a large blue square"), 1.0)
    assert got == counts(colour=(2, 2), kind=(2, 2), size=(2, 2), relation=(0, 1))  # red is above blue
    got = judge.score(image, req("a blue square above a red square"), 1.0)  # no sizes asked: none checked
    assert got == counts(colour=(2, 2), kind=(2, 2), relation=(0, 1))


def test_position_of_a_lone_shape_is_checked_once(judge):
    """Position: (1, 1) in the right cell, (0, 1) in another or when the shape is missing."""
    image = square(canvas(60), "red", 10, 10, 8)  # centre (1/6, 1/6): top left
    assert judge.score(image, req("a red square in the top left"), 1.0) == counts(
        colour=(1, 1), kind=(1, 1), position=(1, 1)
    )
    assert judge.score(image, req("a red square at the bottom"), 1.0) == counts(
        colour=(1, 1), kind=(1, 1), position=(0, 1)
    )
    assert judge.score(image, req("a green square in the top left"), 1.0) == counts(
        colour=(0, 1), kind=(0, 1), position=(0, 1)
    )


def test_score_without_a_scale_judges_the_image_as_a_full_render(judge):
    """The default scale is 1 (no crop): size and position are those of the image as drawn."""
    image = square(canvas(60), "red", 10, 10, 8)
    got = judge.score(image, req("a medium red square in the top left"))
    assert got == counts(colour=(1, 1), kind=(1, 1), size=(1, 1), position=(1, 1))


def test_cache_keeps_labels_and_blobs_across_calls(judge, monkeypatch):
    """With one cache dict per image, pixels are labelled once however often the image is judged; blobs are kept."""
    calls = []
    label_pixels = Judge.label_pixels
    monkeypatch.setattr(Judge, "label_pixels", lambda self, image: calls.append(1) or label_pixels(self, image))
    image, cache = two_squares(), {}
    for text in ("a red square above a blue square", "a blue square above a green square"):
        judge.score(image, req(text), 1.0, cache)
    assert len(calls) == 1
    assert set(cache) == {"labels", "red", "blue", "green"} and cache["green"] is None
    assert cache["red"]["kind"] == "square" and cache["red"]["size"] == "medium"
    assert cache["red"]["centre"] == (20 / 60, 14 / 60) and cache["red"]["area"] == 256 / 3600
    judge.score(image, req("a red square"), 1.0)  # no cache: labels again
    assert len(calls) == 2


# -- the tally -------------------------------------------------------------------------------------------------------
def test_tally_starts_empty_and_rates_are_passed_over_checked():
    """Counts start at 0; score = passed / checked over all attributes; rates only for attributes checked."""
    tally = _Tally()
    assert tally.passed == dict.fromkeys(ATTRIBUTES, 0) and tally.checked == dict.fromkeys(ATTRIBUTES, 0)
    assert tally.details() == {} and math.isnan(tally.mean)
    tally.add(counts(colour=(1, 2), kind=(0, 2), relation=(1, 1)))
    tally.add(counts(colour=(1, 1), position=(0, 1)))
    assert tally.scores == [2 / 5, 1 / 2]
    assert tally.details() == {"colour_rate": 2 / 3, "kind_rate": 0.0, "relation_rate": 1.0, "position_rate": 0.0}


def test_tally_scores_an_image_with_nothing_to_check_as_one():
    """A caption with no checks (no colour + kind phrase) scores 1.0 and adds no rate."""
    tally = _Tally()
    tally.add(counts())
    tally.add(counts(colour=(0, 1)))
    assert tally.scores == [1.0, 0.0] and tally.mean == 0.5
    assert tally.details() == {"colour_rate": 0.0}


# -- the metric ------------------------------------------------------------------------------------------------------
class FakeShapes:
    """What the metric and ``reference_scores`` read of a shapes data set: root with attributes.json, vocab, images."""

    def __init__(self, root, precrops=(), captions=(), imsize=64, files=None):
        root.mkdir(parents=True, exist_ok=True)
        (root / "attributes.json").write_text(json.dumps({"colours": COLOURS, "sizes": SIZES}))
        self.root, self.vocab, self.imsize = root, Vocabulary(WORDS), imsize
        self._precrops, self.files = list(precrops), files
        self._captions = [[self.vocab.encode(t)[0] for t in texts] for texts in captions]
        self.caption_calls: list[int] = []

    def __len__(self) -> int:
        return len(self._precrops)

    def precrop(self, index: int) -> np.ndarray:
        return self._precrops[index]

    def captions_of(self, index: int) -> list[list[int]]:
        self.caption_calls.append(index)
        return self._captions[index]


def batch(dataset: FakeShapes, images: list[np.ndarray], texts: list[str]):
    fake = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 127.5 - 1 for im in images])
    ids = [dataset.vocab.encode(t)[0] for t in texts]
    captions = torch.tensor([c + [0] * (20 - len(c)) for c in ids])
    return fake, {"captions": captions, "lengths": torch.tensor([len(c) for c in ids])}


def test_metric_value_std_rates_and_per_item_scores(tmp_path):
    """Mean of per-image scores, their std, rates pooled over images, per_item = the float64 scores in order."""
    dataset = FakeShapes(tmp_path / "set")
    metric = CaptionConsistency(CaptionConsistencyParams(framing="full"), context=EvalContext(dataset=dataset))
    image = two_squares()
    texts = ["a medium red square above a large blue square", "a medium red square below a large blue square"]
    metric.update(*batch(dataset, [image, image], texts))
    metric.update(*batch(dataset, [image], ["a picture"]))  # nothing to check: 1.0
    result = metric.compute()
    scores = [1.0, 6 / 7, 1.0]
    assert result.n == 3 and result.value == pytest.approx(np.mean(scores))
    assert result.std == pytest.approx(np.std(scores)) and result.std > 0
    assert result.details == {"colour_rate": 1.0, "kind_rate": 1.0, "size_rate": 1.0, "relation_rate": 0.5}
    items = metric.per_item()
    assert set(items) == {"scores"} and items["scores"].dtype == np.float64
    np.testing.assert_allclose(items["scores"], scores, rtol=0, atol=1e-12)


def test_metric_protocol_records_judge_framing_and_quantisation(tmp_path):
    """The protocol names the judge, its settings (from the params), framing, palette hash, quantisation, n."""
    dataset = FakeShapes(tmp_path / "set")
    params = CaptionConsistencyParams(framing="full", colour_tolerance=90.0, min_chroma=30.0, min_area=0.005)
    metric = CaptionConsistency(params, context=EvalContext(dataset=dataset))
    metric.update(*batch(dataset, [two_squares()] * 2, ["a red square", "a blue square"]))
    protocol = metric.compute().protocol
    want = {
        "metric": "caption_consistency.v1",
        "judge": "shapes-judge/1",
        "judge_settings": {"colour_tolerance": 90.0, "min_chroma": 30.0, "min_area": 0.005},
        "framing": "full",
        "attributes_sha256": hashlib.sha256((dataset.root / "attributes.json").read_bytes()).hexdigest(),
        "quantisation": "[-1,1] -> uint8 by rounding",
        "n_samples": 2,
    }
    assert {k: protocol.get(k) for k in want} == want


def test_metric_train_crop_framing_undoes_the_training_zoom(tmp_path):
    """train_crop (default) measures a 64 px image through the 76/64 zoom: the same square is medium there and
    large in full framing."""
    dataset = FakeShapes(tmp_path / "set")
    image = square(canvas(64), "red", 32, 32, 10)  # 10 / 76 / 0.82 = 0.160 vs 10 / 64 / 0.82 = 0.191
    results = {}
    for framing in ("train_crop", "full"):
        metric = CaptionConsistency(CaptionConsistencyParams(framing=framing), context=EvalContext(dataset=dataset))
        metric.update(*batch(dataset, [image], ["a medium red square in the center"]))
        results[framing] = metric.compute()
    assert results["train_crop"].value == 1.0 and results["train_crop"].protocol["framing"] == "train_crop"
    assert results["full"].value == 3 / 4 and results["full"].details["size_rate"] == 0.0


def test_metric_without_images_says_so(tmp_path):
    """compute before any update: a MetricError that says no images were evaluated."""
    metric = CaptionConsistency(CaptionConsistencyParams(), context=EvalContext(dataset=FakeShapes(tmp_path / "s")))
    with pytest.raises(MetricError, match=r"caption_consistency\.v1: no images were evaluated"):
        metric.compute()


# -- reference scores ------------------------------------------------------------------------------------------------
def blank_set(root, count: int, imsize: int = 16) -> FakeShapes:
    pre = int(imsize * 76 / 64)
    return FakeShapes(root, [canvas(pre)] * count, [["a red square"]] * count, imsize=imsize)


def partners(dataset: FakeShapes) -> list[int]:
    """Caption sources per image, from the order reference_scores asks: own captions, then the partner's."""
    calls, dataset.caption_calls = dataset.caption_calls, []
    assert calls[0::2] == list(range(len(calls) // 2))
    return calls[1::2]


def test_reference_partners_are_other_images_fixed_by_the_seed(tmp_path):
    """Floor partners: never the image itself, the same for a seed (default 0), another for another seed."""
    dataset = blank_set(tmp_path / "set", 8)
    reference_scores(dataset, seed=0)
    seed0 = partners(dataset)
    # default_rng(0).integers(1, 8, size=8) = [6, 5, 4, 2, 3, 1, 1, 1]: partner = (i + shift) % 8. Pinned so
    # that the floor of recorded runs (docs/metrics.md) stays reproducible.
    assert seed0 == [6, 6, 6, 5, 7, 6, 7, 0]
    reference_scores(dataset)
    assert partners(dataset) == seed0
    reference_scores(dataset, seed=1)
    seed1 = partners(dataset)
    assert seed1 != seed0 and all(p != i and 0 <= p < 8 for i, p in enumerate(seed1))


def test_reference_scores_of_one_and_two_items(tmp_path):
    """Two items swap captions; a single item has no other: its floor is its ceiling, without an error."""
    dataset = blank_set(tmp_path / "two", 2)
    reference_scores(dataset, seed=5)
    assert partners(dataset) == [1, 0]
    single = FakeShapes(tmp_path / "one", [square(canvas(19), "red", 9, 9, 3)], [["a red square at the bottom"]], 16)
    scores = reference_scores(single)
    assert partners(single) == [0]
    assert scores["floor"] == scores["ceiling"] == {"value": 2 / 3, "colour_rate": 1.0, "kind_rate": 1.0,
                                                    "position_rate": 0.0}  # fmt: skip


def test_reference_scores_n_takes_the_first_items(tmp_path):
    """n judges the first n images (partners among them too); n beyond the set's size means all of it."""
    dataset = blank_set(tmp_path / "set", 8)
    reference_scores(dataset, n=3)
    assert len(dataset.caption_calls) == 6 and all(p < 3 for p in partners(dataset))
    reference_scores(dataset, n=100)
    assert len(partners(dataset)) == 8


def reference_pair(root, files=None) -> FakeShapes:
    """Two 76 px pre-crops (64 px images): a medium red square at the top, a large blue one in the center."""
    red = square(canvas(76), "red", 38, 25, 10)  # 10 / 76 / 0.82 = 0.160, centre (0.5, 0.33) of the render
    blue = square(canvas(76), "blue", 38, 45, 14)  # 14 / 76 / 0.82 = 0.225, centre (0.5, 0.59)
    captions = [["a medium red square at the top"], ["a large blue square in the center"]]
    return FakeShapes(root, [red, blue], captions, imsize=64, files=files)


def test_reference_ceiling_and_floor_exact(tmp_path):
    """train_crop: real images score 1 on every attribute against their own captions, 0 against the other's."""
    scores = reference_scores(reference_pair(tmp_path / "set"))
    rates = ("colour_rate", "kind_rate", "size_rate", "position_rate")
    assert scores == {"ceiling": {"value": 1.0, **dict.fromkeys(rates, 1.0)},
                      "floor": {"value": 0.0, **dict.fromkeys(rates, 0.0)}}  # fmt: skip


def test_reference_full_framing_judges_the_files_on_disk(tmp_path):
    """framing=full reads each image file (here: squares drawn for 64 px), not the pre-crop (here: blank)."""
    files = []
    for i, (colour, centre, half) in enumerate([("red", (32, 21), 8), ("blue", (32, 38), 12)]):
        path = tmp_path / f"{i}.png"
        path.write_bytes(png_bytes(square(canvas(64), colour, *centre, half)))
        files.append(str(path))
    dataset = reference_pair(tmp_path / "set", files=files)
    dataset._precrops = [canvas(76)] * 2
    assert reference_scores(dataset, CaptionConsistencyParams(framing="full"))["ceiling"]["value"] == 1.0
    assert reference_scores(dataset)["ceiling"]["value"] == 0.0  # train_crop: the blank pre-crops


def test_reference_scores_label_each_image_once(tmp_path, monkeypatch):
    """Own and partner captions of an image share one cache: its pixels are labelled once, not once per caption."""
    calls = []
    label_pixels = Judge.label_pixels
    monkeypatch.setattr(Judge, "label_pixels", lambda self, image: calls.append(1) or label_pixels(self, image))
    dataset = FakeShapes(tmp_path / "set", [canvas(19)] * 3, [["a red square", "a blue square"]] * 3, imsize=16)
    reference_scores(dataset)
    assert len(calls) == 3


def test_real_image_crop_is_centred_in_both_axes(tmp_path):
    """train_crop: the imsize x imsize centre of a non-square pre-crop (offsets (H - S) // 2, (W - S) // 2)."""
    pre = np.arange(10 * 15 * 3).reshape(10, 15, 3).astype(np.uint8)
    dataset = FakeShapes(tmp_path / "set", [pre], [["a red square"]], imsize=4)
    got = _real_image(dataset, 0, "train_crop")
    np.testing.assert_array_equal(got, pre[3:7, 5:9])
    assert got.flags["C_CONTIGUOUS"]


def test_real_image_full_reads_the_file_as_rgb(tmp_path):
    """framing=full: the file's pixels as (H, W, 3) uint8, converted to RGB (a grey file gives equal channels)."""
    grey = (np.arange(5 * 7).reshape(5, 7) * 7).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    dataset = FakeShapes(tmp_path / "set", [canvas(4)], [["a red square"]], imsize=4, files=[str(tmp_path / "g.png")])
    got = _real_image(dataset, 0, "full")
    assert got.shape == (5, 7, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.repeat(grey[..., None], 3, axis=2))


def test_train_crop_maps_positions_back_through_a_centred_crop(judge):
    """The training crop is centred: the crop's centre is the render's centre, its edge lies (scale - 1) / 2 of the
    crop's side inside the render's edge."""
    scale = framing_scale("train_crop", 64)  # 76/64: the render was magnified, then centre-cropped to 64 px
    centred = judge.find(judge.label_pixels(square(canvas(64), "red", 32, 32, 6)), "red", scale)
    assert centred["centre"] == pytest.approx((0.5, 0.5), abs=1e-12)
    labels = judge.label_pixels(square(canvas(64), "red", 6, 58, 6))
    corner = judge.find(labels, "red", scale)
    margin = (scale - 1) / 2 / scale  # the render's fraction cut off each side
    assert corner["centre"] == pytest.approx((margin + 6 / 64 / scale, margin + 58 / 64 / scale), abs=1e-12)
    assert judge.find(labels, "red", 1.0)["centre"] == (6 / 64, 58 / 64)  # full framing: the image is the render
