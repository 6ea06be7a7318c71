"""Controllability on the shapes data set: edit one attribute word, regenerate with the same noise, judge the change.

Stub generators make the expected answers exact: one that draws what the caption says (correct change 1, unwanted
0), one that ignores the text (no change at all), one that redraws everything whenever a word changes (unwanted
changes everywhere). A tiny trained run goes through ``t2i eval``, ``t2i compare`` and the in-training evaluation
that ``t2i ablate`` uses.
"""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
import torch
from test_evaluate import invoke, trained_run  # noqa: F401  (session fixture: a 2-step tiny DM-GAN run)

from t2i.data.shapes import ShapesParams, build_shapes, make_shapes, render_images
from t2i.data.shapes_maker import COLOURS, KINDS, SIZES, _paint, _pixels
from t2i.data.vocab import tokenize
from t2i.metrics.base import EvalContext, MetricError
from t2i.metrics.caption_consistency import parse_caption
from t2i.metrics.controllability import Controllability, ControllabilityParams, candidate_edits

ALL = ("colour", "kind", "size", "position", "relation")
_AT = {"top": 0.25, "middle": 0.5, "bottom": 0.75, "left": 0.25, "center": 0.5, "right": 0.75}
# Centres (x, y as fractions) of the first two shapes for a relation, and of a third shape: far enough apart that
# no two of the data set's largest shapes touch.
_PAIRS = {
    "above": ((0.25, 0.25), (0.25, 0.75), (0.75, 0.5)),
    "below": ((0.25, 0.75), (0.25, 0.25), (0.75, 0.5)),
    "left of": ((0.25, 0.25), (0.75, 0.25), (0.5, 0.75)),
    "right of": ((0.75, 0.25), (0.25, 0.25), (0.5, 0.75)),
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "set"
    make_shapes(root, n=120, seed=3, size=64, workers=1)
    return build_shapes(ShapesParams(root=str(root), cache=False), split="test", image_sizes=[64])


def _paint_shapes(plans: list[list[dict]], size: int = 64) -> torch.Tensor:
    """Solid shapes on a plain grey ground with the data set's painter -> (B, 3, S, S) in [-1, 1]."""
    images = [{"background": {"rgb": [60, 60, 60], "texture": "plain"}, "shapes": shapes} for shapes in plans]
    pixels = _pixels(_paint(images, [(0, 0)] * len(images), size))
    return torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1


def _shape(colour: str, kind: str, size: str, centre: tuple[float, float], side: int = 64) -> dict:
    return {"kind": kind, "colour": colour, "rgb": list(COLOURS[colour]), "size": size, "style": "solid",
            "radius": SIZES[size] * side, "centre": [centre[0] * side, centre[1] * side]}  # fmt: skip


class CaptionGenerator:
    """Reads each caption like the judge and draws it; ``scramble`` redraws kinds, sizes and places at random per
    caption (any edit then changes everything). Noise is ignored."""

    def __init__(self, dataset, scramble: bool = False) -> None:
        self.words, self.skip = dataset.vocab.words, set(dataset.vocab.mask_ids)
        self.scramble = scramble
        self.calls = 0

    def __call__(self, captions, lengths, z, eps):
        self.calls += 1
        plans = []
        for row, length in zip(captions.tolist(), lengths.tolist(), strict=True):
            words = [self.words[t] for t in row[:length] if t not in self.skip]
            req = parse_caption(words, list(COLOURS))
            rng = random.Random(hashlib.sha256(" ".join(words).encode()).hexdigest())
            if len(req.shapes) == 1:
                row_, col = req.position or ("middle", "center")
                centres = [(_AT[col], _AT[row_])]
            else:
                relation = rng.choice(list(_PAIRS)) if self.scramble else req.relation or "left of"
                centres = _PAIRS[relation]
            if self.scramble:
                centres = [(_AT[rng.choice(("left", "right"))], _AT[rng.choice(("top", "bottom"))])] + list(centres[1:])
            shapes = []
            for shape, centre in zip(req.shapes, centres, strict=False):
                kind = rng.choice(KINDS) if self.scramble else shape["kind"]
                size = rng.choice(list(SIZES)) if self.scramble else shape.get("size", "medium")
                shapes.append(_shape(shape["colour"], kind, size, centre))
            plans.append(shapes)
        return _paint_shapes(plans)


class NoiseGenerator:
    """Ignores the text: each image is a data set image picked by the noise."""

    def __call__(self, captions, lengths, z, eps):
        seeds = [int(hashlib.sha256(row.numpy().tobytes()).hexdigest()[:8], 16) for row in z.cpu()]
        pixels = np.stack([render_images(seed, [0], 64)[0][0] for seed in seeds])
        return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def _batches(dataset, per_item: int = 3, batch: int = 12, seed: int = 0):
    """(captions, info) over the first ``per_item`` captions of every test image, with fixed noise."""
    gen = torch.Generator().manual_seed(seed)
    items = [(i, c) for i in range(len(dataset)) for c in dataset.captions_of(i)[:per_item]]
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        length = max(len(c) for _, c in chunk)
        captions = torch.tensor([list(c) + [0] * (length - len(c)) for _, c in chunk])
        yield {
            "captions": captions,
            "lengths": torch.tensor([len(c) for _, c in chunk]),
            "indices": torch.tensor([i for i, _ in chunk]),
            "z": torch.randn(len(chunk), 4, generator=gen),
            "eps": torch.randn(len(chunk), 4, generator=gen),
        }


def _run(dataset, generator, attributes=ALL, seed: int = 100, edits: int = 1, per_item: int = 3) -> Controllability:
    context = EvalContext(dataset=dataset, batch_size=12, seed=seed, generate=generator)
    params = ControllabilityParams(framing="full", attributes=attributes, edits_per_attribute=edits)
    metric = Controllability(params, context=context)
    for info in _batches(dataset, per_item):
        metric.update(generator(info["captions"], info["lengths"], info["z"], info["eps"]), info)
    return metric


def test_a_generator_that_draws_the_caption_changes_exactly_the_edited_attribute(shapes):
    metric = _run(shapes, CaptionGenerator(shapes))
    result = metric.compute()
    assert result.value == 1.0 and result.details["unwanted"] == 0.0
    for attribute in ALL:  # every kind of edit was made, and each did exactly what it said
        assert result.details[f"{attribute}_edits"] >= 3, attribute
        assert result.details[f"{attribute}_correct"] == 1.0, attribute
        assert result.details[f"{attribute}_unwanted"] == 0.0, attribute
    assert result.details["baseline_drift"] == 0.0
    assert result.n == len(shapes) * 3  # every caption has a colour to edit
    per_item = metric.per_item()
    assert per_item["correct"].shape == per_item["unwanted"].shape == (result.n,)
    assert per_item["correct"].mean() == result.value
    from t2i.stats import statistic

    assert statistic(per_item)(None) == result.value  # what paired comparisons resample
    assert sorted(set(per_item["index"].tolist())) == list(range(len(shapes)))


def test_a_generator_that_ignores_the_text_changes_nothing(shapes):
    result = _run(shapes, NoiseGenerator()).compute()
    # the same noise gives the same image: no edit is followed, and nothing else moves either
    assert result.value == 0.0
    assert result.details["unwanted"] == 0.0
    assert result.details["colour_correct"] == result.details["kind_correct"] == 0.0


def test_a_generator_that_redraws_everything_on_any_edit_has_unwanted_changes(shapes):
    result = _run(shapes, CaptionGenerator(shapes, scramble=True)).compute()
    assert result.details["unwanted"] > 0.6
    for attribute in ("colour", "kind", "size", "position"):
        assert result.details[f"{attribute}_unwanted"] > 0.4, attribute
    # its colours still follow the caption, so colour edits land; kinds are redrawn at random
    assert result.details["colour_correct"] > 0.8 and result.details["kind_correct"] < 0.6


def test_protocol_records_edits_judge_and_seed(shapes):
    first, again, other = (_run(shapes, CaptionGenerator(shapes), seed=s, per_item=1) for s in (100, 100, 7))
    result = first.compute()
    protocol = result.protocol
    assert protocol["metric"] == "controllability.v1" and protocol["judge"] == "shapes-judge/1"
    assert protocol["edited"] == list(ALL) and protocol["edits_per_attribute"] == 1 and protocol["seed"] == 100
    assert len(protocol["attributes_sha256"]) == 64 and set(protocol["swaps"]) == set(ALL)
    assert protocol["n_samples"] == result.n
    # the edits are drawn from the context seed: the same seed draws the same edits, another seed others
    edits = [[o.edit for o in m.outcomes] for m in (first, again, other)]
    assert edits[0] == edits[1] and edits[0] != edits[2]


def test_edits_per_attribute_draws_distinct_edits(shapes):
    metric = _run(shapes, CaptionGenerator(shapes), attributes=("kind",), edits=3, per_item=1)
    assert metric.compute().details["kind_edits"] == 3 * len(metric.item_correct)  # every shape has 3 other kinds
    per_caption = [[o.edit for o in metric.outcomes[k : k + 3]] for k in range(0, len(metric.outcomes), 3)]
    assert all(len(set(edits)) == 3 and len({e.attribute for e in edits}) == 1 for edits in per_caption)


def test_candidate_edits_keep_the_length_and_change_one_requirement():
    colours = list(COLOURS)
    words = tokenize("an orange circle in the top left")
    edits = candidate_edits(words, colours)
    to_red = next(e for e in edits["colour"] if e.new == "red")
    assert to_red.apply(words) == tokenize("a red circle in the top left")  # the article follows the colour
    assert {" ".join(e.apply(words)[3:]) for e in edits["position"]} == {
        "in the top right", "in the bottom left", "in the bottom right"}  # fmt: skip
    centre = candidate_edits(tokenize("a big red circle in the center"), colours)
    assert {" ".join(e.apply(tokenize("a big red circle in the center"))[4:]) for e in centre["position"]} == {
        "on the left", "on the right", "at the top", "at the bottom"}  # fmt: skip
    assert {e.new for e in centre["size"]} == {"small", "medium"} and len(centre["colour"]) == 5
    two = tokenize("a blue square to the left of a medium sized green triangle")
    edits = candidate_edits(two, colours)
    assert [" ".join(e.apply(two)[3:7]) for e in edits["relation"]] == ["to the right of"]
    assert edits["position"] == [] and {e.shape for e in edits["colour"]} == {0, 1}
    assert len(edits["colour"]) == 2 * 4  # colours already in the caption are never used
    for attribute, found in edits.items():
        for edit in found:
            assert len(edit.apply(two)) == len(two)
            assert edit.attribute == attribute
    # a word the vocabulary lacks is never written
    assert all(e.new != "diamond" for e in candidate_edits(two, colours, set(two) | {"circle"})["kind"])


def test_images_made_elsewhere_cannot_be_judged(shapes):
    with pytest.raises(MetricError, match="generator"):
        Controllability(ControllabilityParams(), context=EvalContext(dataset=shapes))


def test_eval_compare_and_in_training_evaluation_report_it(trained_run, tmp_path):  # noqa: F811
    result = invoke("eval", trained_run, "--n", "8", "--batch-size", "4", "--metric", "controllability")
    assert result.exit_code == 0, result.output
    assert "controllability.v1" in result.output
    row = json.loads((trained_run / "eval.jsonl").read_text().splitlines()[-1])
    assert row["metric"] == "controllability.v1" and row["n"] == 8
    # a 2-step generator draws no controllable shapes: near the text-blind generator's 0
    assert row["value"] <= 0.15
    assert {"colour_correct", "colour_unwanted", "kind_correct", "unwanted"} <= set(row["details"])
    # the regenerated originals are the evaluated images: the metric got each image's caption and noise
    assert row["details"]["baseline_drift"] < 1e-5
    assert row["protocol"]["checkpoint"]["step"] == 2 and row["protocol"]["judge"] == "shapes-judge/1"

    out = tmp_path / "compare"
    result = invoke("compare", trained_run, trained_run / "checkpoints" / "last.pt", "-o", out)
    assert result.exit_code == 0, result.output
    assert "controllability.v1" in (out / "metrics.md").read_text()

    # ``t2i ablate`` evaluates each variant through the trainer's evaluation
    from t2i.evaluate import load_model
    from t2i.train import run_dir as run_dirs
    from t2i.train.loop import GANTrainer

    model = load_model(trained_run)
    test_set = model.recipe.data.dataset.build(split="test", image_sizes=[model.recipe.stage_sizes()[-1]])
    train_set = model.recipe.data.dataset.build(split="train", image_sizes=model.recipe.stage_sizes())
    trainer = GANTrainer(model.recipe, run_dirs.create(model.recipe, tmp_path / "runs"), train_set, quiet=True)
    rows = trainer.evaluate(test_set, metrics=["controllability"], n=4)
    assert [r["metric"] for r in rows] == ["controllability.v1"] and rows[0]["n"] == 4


def test_eval_of_a_folder_of_images_refuses_it(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16)).save(folder / "a.png")
    result = invoke("eval", "--images", folder, "--metric", "controllability")
    assert result.exit_code == 1
    assert "needs a generator" in result.output
