"""``[log] tensorboard``: event files beside metrics.jsonl that TensorBoard's own reader opens, with the same values;
a resume that logs no step twice; a clear error when the package is missing; nothing when off. Tiny sizes."""

from __future__ import annotations

import json
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from test_train import tiny_overrides
from typer.testing import CliRunner

from t2i import recipe as recipe_mod
from t2i.cli import app
from t2i.train import run_dir as run_dirs
from t2i.train.pretrain import DamsmPretrainer

needs_tensorboard = pytest.mark.skipif(
    find_spec("tensorboard") is None, reason="tensorboard is not installed (pip install 't2i[tensorboard]')"
)

EVAL = ["eval.every_steps=3", "eval.n_samples=4", "eval.batch_size=4", 'eval.metrics=["caption_consistency"]']


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shapes") / "shapes"


def train(*args: str, sets: list[str] = ()):
    return CliRunner().invoke(app, ["train", *args, *[x for s in sets for x in ("--set", s)], "-q"])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def scalar_series(accumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def assert_scalars_match_metrics(accumulator, run: Path) -> None:
    metrics = rows(run / "metrics.jsonl")
    keys = {k for row in metrics for k in row} - {"step", "time"}
    assert "images_per_s" in keys and any("loss" in k for k in keys)
    assert keys <= set(accumulator.Tags()["scalars"])
    for key in keys:
        expected = [(row["step"], row[key]) for row in metrics if key in row]
        got = scalar_series(accumulator, key)
        assert [s for s, _ in got] == [s for s, _ in expected], key  # every step once, in order
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), key  # float32 in events


@needs_tensorboard
def test_a_run_logs_metrics_evaluation_and_sample_grids_and_a_resume_logs_no_step_twice(data_root, tmp_path):
    run = tmp_path / "run"
    sets = [*tiny_overrides(data_root), *EVAL, "log.tensorboard=true"]
    result = train("dmgan_shapes", "--run-dir", str(run), "--steps", "3", sets=sets)
    assert result.exit_code == 0, result.output
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    accumulator = events(run)
    assert_scalars_match_metrics(accumulator, run)
    assert any(k.startswith("gates/") for k in accumulator.Tags()["scalars"])  # the memory gates' means too
    (evaluated,) = rows(run / "eval.jsonl")
    assert scalar_series(accumulator, f"eval/{evaluated['metric']}") == [
        (3, pytest.approx(evaluated["value"], rel=1e-6))
    ]
    assert {"samples", "attention"} <= set(accumulator.Tags()["images"])
    (grid,) = accumulator.Images("samples")
    assert grid.step == 3 and grid.width > 0 and grid.height > 0

    # As if killed after step 3 was logged but before its checkpoint: the resume logs step 3 again.
    (run / "checkpoints" / "last.pt").unlink()
    again = train("--resume", str(run))
    assert again.exit_code == 0, again.output
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # the same folder, appended to
    accumulator = events(run)
    assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2, 3]
    assert_scalars_match_metrics(accumulator, run)
    assert [e.step for e in accumulator.Images("samples")] == [3]
    assert [s for s, _ in scalar_series(accumulator, f"eval/{evaluated['metric']}")] == [3]


@needs_tensorboard
def test_off_by_default_and_may_be_turned_on_when_resuming(data_root, tmp_path):
    assert recipe_mod.Recipe().log.tensorboard is False
    run = tmp_path / "run"
    first = train("dmgan_shapes", "--run-dir", str(run), "--steps", "2", sets=tiny_overrides(data_root))
    assert first.exit_code == 0, first.output
    assert (run / "metrics.jsonl").is_file() and not (run / "tensorboard").exists()

    more = train("--resume", str(run), "--steps", "3", sets=["log.tensorboard=true"])
    assert more.exit_code == 0, more.output
    assert scalar_series(events(run), "loss/G") == [(3, pytest.approx(rows(run / "metrics.jsonl")[-1]["loss/G"]))]


def test_missing_tensorboard_is_an_error_before_training(data_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now fails as when not installed
    run = tmp_path / "run"
    sets = [*tiny_overrides(data_root), "log.tensorboard=true"]
    result = train("dmgan_shapes", "--run-dir", str(run), "--steps", "1", sets=sets)
    assert result.exit_code == 1
    assert "pip install 't2i[tensorboard]'" in result.output and "Traceback" not in result.output
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()


@needs_tensorboard
def test_pretraining_logs_its_losses_and_validation(tmp_path):
    recipe = recipe_mod.load(
        "dmgan_shapes",
        tiny_overrides(tmp_path / "shapes")
        + ["data.dataset.n=40", "pretrain.damsm.batch_size=8", "pretrain.damsm.image_size=64"]
        + ["pretrain.damsm.epochs=2", "log.tensorboard=true"],
    )
    train_set = recipe.data.dataset.build(split="train", image_sizes=[64])
    held_out = recipe.data.dataset.build(split="test", image_sizes=[64])
    run = run_dirs.create(recipe, tmp_path / "run")
    DamsmPretrainer(recipe, run, train_set, quiet=True, val_dataset=held_out).fit()
    accumulator = events(run.path)
    assert_scalars_match_metrics(accumulator, run.path)
    validation = rows(run.validation_file)
    for key in ("val/w_loss", "val/s_loss", "val/r_at_1"):
        assert scalar_series(accumulator, key) == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in validation]
