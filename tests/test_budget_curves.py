"""Budgets in eval.jsonl, `t2i plot`, and checkpoint selection on a validation split carved from training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import params_of, tiny_overrides

from t2i import recipe as recipe_mod
from t2i.data.holdout import build_split
from t2i.metrics.base import Metric, MetricResult
from t2i.registry import register
from t2i.train import checkpoint as ckpt
from t2i.train import run_dir as run_dirs
from t2i.train.loop import GANTrainer
from t2i.train.resume import ResumeOverrideError, check_resume_changes
from t2i.viz import LINE_COLOURS

ROOT = Path(__file__).resolve().parent.parent


class StubBest(Metric):
    """A metric whose values are set by the test, one per evaluation; it notes the data set it was given."""

    name = "stub_best.v1"
    higher_is_better = True
    values: list[float] = []
    calls: list[tuple[str, list[str]]] = []

    def __init__(self, params, *, context) -> None:
        super().__init__(context)

    def update(self, fake, info) -> None:
        pass

    def compute(self) -> MetricResult:
        index = len(StubBest.calls)
        StubBest.calls.append((self.context.dataset.split, list(self.context.dataset.keys)))
        return MetricResult(StubBest.values[index % len(StubBest.values)], None, 1, self.base_protocol())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shapes") / "shapes"


@pytest.fixture
def stub():
    register("metric", "stub_best.v1", StubBest, description="test stub")
    StubBest.values, StubBest.calls = [0.2, 0.9, 0.4, 0.1], []
    return StubBest


def make(data_root: Path, extra: list[str] = ()):
    sets = tiny_overrides(data_root) + [
        'eval.metrics=[{name="stub_best"}]',
        "eval.every_steps=1",
        'eval.best_metric="stub_best"',
        "eval.n_samples=2",
        "eval.batch_size=2",
        *extra,
    ]
    recipe = recipe_mod.load("dmgan_shapes", sets)
    return recipe, build_split(recipe, "train", recipe.stage_sizes())


def eval_rows(run) -> list[dict]:
    return [json.loads(line) for line in (run.path / "eval.jsonl").read_text().splitlines()]


# -- budget ------------------------------------------------------------------------------------------------------------
def test_eval_rows_carry_images_flops_and_seconds_across_resume(data_root, tmp_path, stub, monkeypatch):
    recipe, dataset = make(data_root)
    straight = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "a"), dataset, quiet=True)
    straight.fit(steps=4)
    rows = eval_rows(straight.run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    per_step = straight.budget.step_flops
    assert per_step and per_step > 0
    assert [r["images_seen"] for r in rows] == [4 * s for s in (1, 2, 3, 4)]  # steps x global batch (4)
    assert [r["train_flops"] for r in rows] == [per_step * s for s in (1, 2, 3, 4)]
    seconds = [r["train_seconds"] for r in rows]
    assert all(b > a for a, b in zip(seconds[:-1], seconds[1:], strict=True)) and seconds[0] > 0

    first = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "b"), dataset, quiet=True)
    first.fit(steps=2)
    state = ckpt.load(first.run.checkpoints / "last.pt")
    assert state["budget"]["step_flops"] == per_step  # the same count, kept with the run
    # the rows round to milliseconds; the checkpoint keeps the exact sum
    assert state["budget"]["seconds"] >= eval_rows(first.run)[-1]["train_seconds"] - 5e-4 > 0

    def no_recount(fn):
        raise AssertionError("a resumed run counted FLOPs again")

    monkeypatch.setattr("t2i.train.budget.count_flops", no_recount)
    resumed = GANTrainer(recipe, first.run, dataset, resume=state, quiet=True)
    resumed.fit(steps=4)
    later = [r for r in eval_rows(resumed.run) if r["step"] > 2]
    assert [r["train_flops"] for r in later] == [per_step * 3, per_step * 4]
    assert [r["images_seen"] for r in later] == [12, 16]
    assert later[0]["train_seconds"] > state["budget"]["seconds"]  # carried over, not restarted at zero


def test_counting_flops_does_not_change_the_training_step(data_root, tmp_path, stub):
    recipe, dataset = make(data_root, ["eval.every_steps=1000"])
    counted = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "a"), dataset, quiet=True)
    counted.fit(steps=2)
    assert counted.budget.step_flops > 0
    plain = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "b"), dataset, quiet=True)
    plain.budget.count = False
    plain.fit(steps=2)
    assert plain.budget.step_flops is None
    a, b = params_of(counted), params_of(plain)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# -- the selection split -----------------------------------------------------------------------------------------------
def test_val_split_is_carved_from_training_disjoint_and_seeded(data_root, stub):
    recipe, train = make(data_root, ["eval.val_size=3"])
    sizes = recipe.stage_sizes()
    val = build_split(recipe, "val", sizes)
    test = build_split(recipe, "test", sizes)
    whole = recipe.data.dataset.build(split="train", image_sizes=sizes)
    assert len(val) == 3 and val.split == "val"
    assert not set(val.keys) & set(train.keys) and not set(val.keys) & set(test.keys)
    assert sorted(val.keys + train.keys) == sorted(whole.keys)
    assert build_split(recipe, "val", [sizes[-1]]).keys == val.keys  # same items at any image size
    other, _ = make(data_root, ["eval.val_size=3", "eval.val_seed=1"])
    assert build_split(recipe_mod.load("dmgan_shapes", [*tiny_overrides(data_root), "eval.val_size=3",
                                                        "eval.val_seed=1"]), "val", sizes).keys != val.keys  # fmt: skip
    legacy = recipe_mod.load("dmgan_shapes", [*tiny_overrides(data_root), 'eval.selection_split="test"'])
    assert len(build_split(legacy, "train", sizes)) == len(whole)  # the originals' way: train on everything


def test_best_checkpoint_is_chosen_on_the_val_split(data_root, tmp_path, stub):
    recipe, dataset = make(data_root, ["eval.val_size=3"])
    val_keys = build_split(recipe, "val", recipe.stage_sizes()).keys
    trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, quiet=True)
    trainer.fit(steps=4)
    assert {split for split, _ in stub.calls} == {"val"}
    assert all(keys == val_keys for _, keys in stub.calls)
    assert all(r["protocol"]["split"] == "val" for r in eval_rows(trainer.run))
    best = ckpt.load(trainer.run.checkpoints / "best-stub_best.v1.pt")
    assert best["step"] == 2  # values 0.2, 0.9, 0.4, 0.1: the best is the second evaluation

    from t2i.evaluate import EvalSetupError, pick_checkpoint

    assert pick_checkpoint(trainer.run.path, "best").name == "best-stub_best.v1.pt"
    assert pick_checkpoint(trainer.run.path, "last").name == "last.pt"
    with pytest.raises(EvalSetupError, match="no checkpoint nothere.pt"):
        pick_checkpoint(trainer.run.path, "nothere")


def test_resume_refuses_to_move_the_selection_split():
    old = {"eval": {"selection_split": "val", "val_seed": 0, "every_steps": 5}}
    assert check_resume_changes(old, {"eval": {**old["eval"], "every_steps": 10}}) == ["eval.every_steps"]
    with pytest.raises(ResumeOverrideError, match="eval.val_seed"):
        check_resume_changes(old, {"eval": {**old["eval"], "val_seed": 1}})


# -- t2i plot ----------------------------------------------------------------------------------------------------------
def fake_run(folder: Path, values: list[float], *, batch: int = 4, per_step: int = 1000, metric="fid.v1") -> Path:
    folder.mkdir(parents=True)
    rows = [
        {"metric": metric, "value": v, "step": 2 * (i + 1), "images_seen": 2 * (i + 1) * batch,
         "train_flops": 2 * (i + 1) * per_step, "train_seconds": 1.5 * (i + 1),
         "protocol": {"checkpoint": {"in_training": True}, "split": "val"}}
        for i, v in enumerate(values)
    ]  # fmt: skip
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t2i", *args], capture_output=True, text=True, cwd=ROOT)


def test_curve_points_best_and_seed_band(tmp_path):
    from t2i.curves import curve

    one = curve(fake_run(tmp_path / "a", [30.0, 20.0, 25.0]), "fid", "flops")
    assert one.xs == [2000.0, 4000.0, 6000.0] and one.best == 1  # FID: lower is better
    seeds = tmp_path / "variant"
    fake_run(seeds / "seed-0", [30.0, 20.0, 26.0])
    fake_run(seeds / "seed-1", [34.0, 22.0, 18.0])
    band = curve(seeds, "fid", "images")
    assert band.seeds == 2 and band.xs == [8.0, 16.0, 24.0]
    assert band.ys == [32.0, 21.0, 22.0] and band.low == [30.0, 20.0, 18.0] and band.high == [34.0, 22.0, 26.0]
    assert band.best == 1 and "min-max" in band.label


def test_plot_command_writes_png_with_best_marker(tmp_path):
    a = fake_run(tmp_path / "a", [30.0, 20.0, 25.0])
    seeds = tmp_path / "variant"
    fake_run(seeds / "seed-0", [32.0, 28.0, 21.0], per_step=800)
    fake_run(seeds / "seed-1", [33.0, 27.0, 22.0], per_step=800)
    out = tmp_path / "curves.png"
    result = run_cli("plot", str(a), str(seeds), "--metric", "fid", "--x", "flops", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "best fid.v1 = 20 at flops 4000" in result.stdout
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    for colour in LINE_COLOURS[:2]:  # both lines drawn, each with a filled diamond of its colour
        assert (pixels == colour).all(axis=-1).sum() > 100


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty", ["--metric", "fid"], "has no eval.jsonl"),
        ("run", ["--metric", "r_precision"], "no rows of metric 'r_precision'; it has: fid.v1"),
        ("run", ["--metric", "fid", "--x", "epochs"], "unknown --x 'epochs'; choose one of: step, images, flops"),
    ],
)
def test_plot_errors_exit_1_with_a_message(tmp_path, setup, args, message):
    folder = fake_run(tmp_path / "run", [1.0, 2.0]) if setup == "run" else tmp_path / "run"
    folder.mkdir(exist_ok=True)
    (folder / "config.resolved.toml").write_text('name = "x"\n')
    result = run_cli("plot", str(folder), *args, "-o", str(tmp_path / "c.png"))
    assert result.returncode == 1
    assert message in " ".join((result.stdout + result.stderr).split())
