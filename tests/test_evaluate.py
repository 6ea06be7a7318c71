"""``t2i eval`` and the evaluation driver on a tiny trained checkpoint: eval.jsonl rows with protocol records."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from test_train import tiny_overrides
from typer.testing import CliRunner

from t2i import recipe as recipe_mod
from t2i.cli import app
from t2i.train import checkpoint as ckpt
from t2i.train import run_dir as run_dirs
from t2i.train.loop import GANTrainer

# r_precision's default 99 negatives need more captions than the 4-image test split of the tiny set has.
METRICS = 'eval.metrics=[{name="caption_consistency"},{name="r_precision",negatives=5}]'


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A 2-step tiny DM-GAN run folder (shared with test_compare.py)."""
    base = tmp_path_factory.mktemp("eval")
    recipe = recipe_mod.load("dmgan_shapes", tiny_overrides(base / "shapes") + ["train.steps=2"])
    dataset = recipe.data.dataset.build(split="train", image_sizes=recipe.stage_sizes())
    trainer = GANTrainer(recipe, run_dirs.create(recipe, base / "runs"), dataset, quiet=True)
    trainer.fit()
    return trainer.run.path


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_eval_appends_rows_with_protocols_and_writes_images(trained_run, tmp_path):
    images = tmp_path / "images"
    before = len((trained_run / "eval.jsonl").read_text().splitlines()) if (trained_run / "eval.jsonl").exists() else 0
    result = invoke("eval", trained_run, "--n", "8", "--batch-size", "4", "--set", METRICS, "--write-images", images)
    assert result.exit_code == 0, result.output
    assert "images/s" in result.output
    lines = (trained_run / "eval.jsonl").read_text().splitlines()[before:]
    rows = {row["metric"]: row for row in map(json.loads, lines)}
    assert set(rows) == {"caption_consistency.v1", "r_precision.v1"}
    checkpoint_sha = sha256(trained_run / "checkpoints" / "last.pt")
    for row in rows.values():
        protocol = row["protocol"]
        assert row["n"] == 8 and protocol["n_samples"] == 8
        assert protocol["checkpoint"]["sha256"] == checkpoint_sha
        assert protocol["checkpoint"]["step"] == row["step"] == 2
        assert protocol["seed"] == 100 and protocol["batch_size"] == 4 and protocol["split"] == "test"
        assert re.fullmatch(r"[0-9a-f]{12}", row["protocol_id"])
    # the values are what the evaluation API computes for the same checkpoint, seed and number of images
    from t2i.evaluate import evaluate, load_evaluators, load_model, metric_specs

    model = load_model(trained_run)
    recipe = recipe_mod.validate(recipe_mod.apply_overrides(model.recipe.to_dict(), [METRICS]))
    dataset = recipe.data.dataset.build(split="test", image_sizes=[recipe.stage_sizes()[-1]])
    again = evaluate(model.generator, model.text_encoder, dataset, metric_specs(recipe, None, dataset),
                     evaluators=load_evaluators(model), z_dim=recipe.model.z_dim, cond_dim=recipe.model.cond_dim,
                     n=8, batch_size=4, seed=100)  # fmt: skip
    assert {r["metric"]: r["value"] for r in again.rows} == {k: r["value"] for k, r in rows.items()}
    assert rows["r_precision.v1"]["value"] * 8 == round(rows["r_precision.v1"]["value"] * 8)  # hits out of 8
    # a 2-step generator draws noise: far below the real images' consistency (> 0.9, test_metrics_consistency)
    assert rows["caption_consistency.v1"]["value"] < 0.6
    assert rows["caption_consistency.v1"]["protocol"]["judge"].startswith("shapes-judge")
    assert set(rows["caption_consistency.v1"]["details"]) >= {"colour_rate", "kind_rate"}
    # Default judges are the encoders G was trained against, and the record says so.
    assert rows["r_precision.v1"]["protocol"]["judge_is_trainer"] is True
    # 8 images from a 4-image split: two passes, original file names <key>_s-1_<pass>.png.
    files = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    assert len(files) == 8
    assert {f.rsplit("_", 1)[1] for f in files} == {"0.png", "1.png"}
    assert all(re.search(r"_s-1_[01]\.png$", f) for f in files)


def test_eval_is_deterministic_for_a_seed(trained_run, tmp_path):
    from t2i.evaluate import evaluate, load_evaluators, load_model, metric_specs

    model = load_model(trained_run)
    recipe = recipe_mod.validate(recipe_mod.apply_overrides(model.recipe.to_dict(), [METRICS]))
    dataset = recipe.data.dataset.build(split="test", image_sizes=[recipe.stage_sizes()[-1]])
    specs = metric_specs(recipe, None, dataset)
    kwargs = dict(z_dim=recipe.model.z_dim, cond_dim=recipe.model.cond_dim, n=6, batch_size=3, seed=7)
    evaluators = load_evaluators(model)
    runs = {}
    for name, seed in (("first", 7), ("second", 7), ("other", 8)):
        folder = tmp_path / name
        result = evaluate(model.generator, model.text_encoder, dataset, specs, evaluators=evaluators,
                          write_images=folder, **{**kwargs, "seed": seed})  # fmt: skip
        images = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}
        runs[name] = (result, images)
    (first, first_images), (second, second_images), (_, other_images) = runs.values()
    assert [r["value"] for r in first.rows] == [r["value"] for r in second.rows]
    assert first.images == 6 and [r["protocol_id"] for r in first.rows] == [r["protocol_id"] for r in second.rows]
    assert len(first_images) == 6 and first_images == second_images  # same seed: the same pixels
    assert len(other_images) == 6 and not set(other_images.values()) & set(first_images.values()), (
        "another seed must draw other images"
    )


def test_unknown_metric_exits_1_with_the_registry_message(trained_run):
    result = invoke("eval", trained_run, "--metric", "fid_typo", "--n", "4")
    assert result.exit_code == 1
    assert "unknown metric 'fid_typo'" in result.output
    assert "caption_consistency.v1" in result.output  # the registry lists what exists


def test_independent_evaluator_is_not_flagged_as_trainer(trained_run, tmp_path):
    state = ckpt.load(trained_run)
    recipe = recipe_mod.validate(state["recipe"])
    from t2i.networks import build_role, build_text_encoder

    torch.manual_seed(1234)
    vocab_size = len(state["vocab"]["words"])
    evaluator = {
        "format_version": ckpt.FORMAT_VERSION,
        "kind": "damsm",
        "step": 0,
        "recipe": state["recipe"],
        "vocab": state["vocab"],
        "models": {
            "text_encoder": build_text_encoder(recipe, vocab_size).state_dict(),
            "image_encoder": build_role(recipe, "image_encoder", vocab_size).state_dict(),
        },
    }
    path = ckpt.save_atomic(evaluator, tmp_path / "judge.pt")
    result = invoke("eval", trained_run, "--n", "4", "--batch-size", "4", "--set", METRICS, "-m", "r_precision",
                    "--evaluator", path)  # fmt: skip
    assert result.exit_code == 0, result.output
    row = json.loads((trained_run / "eval.jsonl").read_text().splitlines()[-1])
    assert row["metric"] == "r_precision.v1"
    assert row["protocol"]["judge_is_trainer"] is False
    assert row["protocol"]["checkpoint"]["evaluator"] == str(path)


def test_in_training_evaluation_returns_rows(tmp_path):
    recipe = recipe_mod.load("dmgan_shapes", tiny_overrides(tmp_path / "shapes") + [METRICS])
    train_set = recipe.data.dataset.build(split="train", image_sizes=recipe.stage_sizes())
    test_set = recipe.data.dataset.build(split="test", image_sizes=[recipe.stage_sizes()[-1]])
    trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "runs"), train_set, quiet=True)
    rows = trainer.evaluate(test_set, n=4)
    assert [r["metric"] for r in rows] == ["caption_consistency.v1", "r_precision.v1"]
    assert all(r["step"] == 0 for r in rows)
    written = [json.loads(line) for line in (trainer.run.path / "eval.jsonl").read_text().splitlines()]
    assert [r["metric"] for r in written] == [r["metric"] for r in rows]
    assert trainer.ema.model.training is False  # evaluated in eval mode and left as it was


@pytest.mark.parametrize(
    ("higher", "values", "expected"),
    [
        # a distance: lower is better; a tie is no improvement
        (False, [3.0, 3.0, 2.0, 5.0, 1.0], [0, None, 2, None, 4]),
        # a score: higher is better
        (True, [0.2, 0.2, 0.5, 0.1, 0.6], [0, None, 2, None, 4]),
    ],
)
def test_the_best_checkpoint_follows_the_metric_s_own_direction(tmp_path, monkeypatch, higher, values, expected):
    """A metric declares whether higher is better; the loop keeps its best by that, not by the metric's name."""
    import t2i.train.loop as loop
    from t2i.metrics.base import Metric
    from t2i.registry import Params, get_registry

    class MadeUpMeasure(Metric):  # a name that says nothing about its direction
        name = "made_up_measure.v1"
        higher_is_better = higher

    stream = iter(values)

    def fake_evaluation(*args, step, **kwargs):
        return [{"metric": "made_up_measure.v1", "value": next(stream), "step": step}]

    monkeypatch.setattr(loop, "evaluate_at_step", fake_evaluation)
    with get_registry("metric").snapshot() as metrics:
        metrics.register("made_up_measure.v1", MadeUpMeasure, params=Params)
        sets = tiny_overrides(tmp_path / "shapes") + [
            "eval.every_steps=1",
            'eval.best_metric="made_up_measure"',
            'eval.metrics=[{name="made_up_measure"}]',
        ]
        recipe = recipe_mod.load("dmgan_shapes", sets)
        dataset = recipe.data.dataset.build(split="train", image_sizes=recipe.stage_sizes())
        trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "runs"), dataset, quiet=True)
        trainer._eval_set = dataset  # the evaluation itself is replaced above
        kept = []
        for step in range(1, len(values) + 1):
            trainer.step = step
            kept.append(trainer.maybe_evaluate())
    assert kept == [None if i is None else "made_up_measure.v1" for i in expected]
    assert trainer.best == {"made_up_measure.v1": values[expected[-1]]}


def test_registered_metrics_say_which_way_is_better():
    from t2i.metrics.evaluation import higher_is_better

    assert higher_is_better("fid.v1") is False
    assert higher_is_better("fid_dmgan2018.v1") is False
    for name in ("is.v1", "r_precision.v1", "r_precision_legacy.v1", "caption_consistency.v1"):
        assert higher_is_better(name) is True, name


def test_eval_references_score_real_images_above_shuffled_captions(trained_run):
    """--references: the split's real images under the same captions, judges and protocol (ceiling and floor)."""
    result = invoke(
        "eval", trained_run, "--n", "8", "--batch-size", "4", "--set", METRICS, "-m", "caption_consistency",
        "--references",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "(ceiling)" in result.output and "(floor)" in result.output
    rows = [json.loads(line) for line in (trained_run / "references.jsonl").read_text().splitlines()]
    by_kind = {row["reference"]: row for row in rows}
    assert set(by_kind) == {"real", "shuffled"} and all(r["metric"] == "caption_consistency.v1" for r in rows)
    for kind, row in by_kind.items():
        assert row["protocol"]["reference"] == kind and row["n"] == 8
        assert "checkpoint" not in row["protocol"]  # real images: no generator was evaluated
    assert by_kind["real"]["value"] > 0.9  # the judge reads the data set's own drawings
    assert by_kind["shuffled"]["value"] < by_kind["real"]["value"] - 0.2
    assert by_kind["real"]["protocol_id"] != by_kind["shuffled"]["protocol_id"]


def test_reference_images_are_the_batch_items_own_or_the_next_ones(trained_run, monkeypatch):
    """ "real" feeds each item's own image; "shuffled" the next item's, so every caption meets another image."""
    from t2i.evaluate import evaluate_reference, evaluate_references, load_model
    from t2i.metrics.base import Metric, MetricResult
    from t2i.registry import get_registry

    seen: list[tuple[torch.Tensor, list[str]]] = []

    class Spy(Metric):
        name = "spy.v1"

        def __init__(self, params, *, context):
            super().__init__(context)

        def update(self, images, info):
            seen.append((images.clone(), list(info["keys"])))

        def compute(self):
            return MetricResult(0.0, None, 0, dict(self.context.run_info))

    metrics = get_registry("metric")
    metrics.discover()
    monkeypatch.setattr(metrics, "_entries", dict(metrics._entries))  # registered for this test only
    metrics.register("spy", Spy)
    model = load_model(trained_run)
    recipe = model.recipe
    dataset = recipe.data.dataset.build(split="test", image_sizes=[recipe.stage_sizes()[-1]])
    specs = [("spy.v1", metrics.get("spy").validate(None))]
    for kind in ("real", "shuffled"):
        result = evaluate_reference(kind, model.text_encoder, dataset, specs, z_dim=recipe.model.z_dim,
                                    cond_dim=recipe.model.cond_dim, n=4, batch_size=4)  # fmt: skip
        assert result.rows[0]["protocol"] == {"reference": kind}
    (own, keys), (shuffled, same_keys) = seen
    assert keys == same_keys and len(set(keys)) == 4
    assert torch.equal(shuffled, own.roll(1, dims=0)) and not torch.equal(shuffled, own)
    with pytest.raises(ValueError, match="use one of real, shuffled"):
        evaluate_reference("fake", model.text_encoder, dataset, specs, z_dim=1, cond_dim=1, n=4)
    progress: list[tuple[str, int]] = []
    rows = evaluate_references(model.text_encoder, dataset, specs, z_dim=recipe.model.z_dim,
                               cond_dim=recipe.model.cond_dim, n=4, batch_size=2,
                               on_batch=lambda kind, done: progress.append((kind, done)))  # fmt: skip
    assert [row["reference"] for row in rows] == ["real", "shuffled"]
    assert progress == [("real", 2), ("real", 4), ("shuffled", 2), ("shuffled", 4)]  # what the progress bars show
