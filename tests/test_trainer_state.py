"""What a GAN checkpoint holds besides the networks, and what a resume takes back from it (GANTrainer.state /
load_state); what ``fit`` reports; the trainer's own evaluation entry point (GANTrainer.evaluate).

The resume tests in test_train.py compare whole runs; these pin each field, so that a resume which silently forgot
the best metric so far (and then overwrote ``best-*.pt`` with a worse model), the time spent, or the noise stream
fails here by name.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from test_train import data_root, make  # noqa: F401  (the module-scoped data fixture)

import t2i
from t2i.metrics.evaluation import read_rows
from t2i.train import checkpoint as ckpt
from t2i.train import run_dir as run_dirs
from t2i.train.loop import GANTrainer

# r_precision's default 99 negatives need more captions than the tiny test split has
METRICS = 'eval.metrics=[{name="caption_consistency"},{name="r_precision",negatives=5}]'


def trainer(data_root, tmp_path, name="run", resume=None, extra=()):  # noqa: F811
    recipe, dataset = make(data_root, [METRICS, "seed=3", *extra])  # not 0: seed * 1000 must differ from seed * 1001
    return GANTrainer(recipe, run_dirs.create(recipe, tmp_path / name), dataset, quiet=True, resume=resume)


def test_a_checkpoint_records_the_run_around_the_networks(data_root, tmp_path):  # noqa: F811
    run = trainer(data_root, tmp_path)
    run.step, run.steps_option, run.best = 6, 9, {"r_precision.v1": 0.25}
    state = run.state()
    assert set(state) == {"format_version", "t2i_version", "kind", "step", "recipe", "vocab", "models", "optimizers",
                          "rng", "data", "metrics", "budget", "world_size", "steps_option"}  # fmt: skip
    assert state["format_version"] == ckpt.FORMAT_VERSION and state["t2i_version"] == t2i.__version__
    assert state["kind"] == "gan" and state["step"] == 6 and state["steps_option"] == 9 and state["world_size"] == 1
    assert state["data"] == {"batches_consumed": 6, "seed": run.recipe.seed}
    assert state["metrics"] == {"best": {"r_precision.v1": 0.25}}
    assert state["recipe"] == run.recipe.to_dict() and state["vocab"] == run.vocab.to_dict()
    assert set(state["models"]) >= {"generator", "generator_ema", "discriminators", "text_encoder"}
    assert len(state["models"]["discriminators"]) == len(run.nets.discriminators)
    assert set(state["optimizers"]) == {"generator", "discriminators", "scalers"}


def test_a_resume_takes_back_step_best_budget_and_noise(data_root, tmp_path):  # noqa: F811
    first = trainer(data_root, tmp_path)
    first.fit(steps=2)
    first.best = {"r_precision.v1": 0.5}
    first.budget.seconds, first.budget.step_flops = 12.5, 1e9
    torch.randn(3, generator=first.noise)  # the stream has moved on since the start
    state = ckpt.load(first.save(periodic=False))
    resumed = trainer(data_root, tmp_path, "again", resume=state)
    assert resumed.step == 2 and resumed.steps_option == 2 and resumed.best == {"r_precision.v1": 0.5}
    assert resumed.budget.seconds == 12.5 and resumed.budget.step_flops == 1e9
    assert torch.equal(resumed.noise.get_state(), first.noise.get_state())
    for name, tensor in resumed.state()["models"]["generator"].items():
        assert torch.equal(tensor, state["models"]["generator"][name]), name
    # a checkpoint written before best values and budgets were kept resumes with none
    old = {k: v for k, v in state.items() if k not in ("metrics", "budget", "world_size", "steps_option")}
    old["optimizers"] = {k: v for k, v in state["optimizers"].items() if k != "scalers"}
    bare = trainer(data_root, tmp_path, "old", resume=old)
    assert bare.best == {} and bare.steps_option is None and bare.budget.seconds == 0.0
    assert torch.equal(bare.noise.get_state(), first.noise.get_state())  # same number of processes (1)
    # the learning rates are the recipe's, not the checkpoint's: a resume may change them
    changed = trainer(data_root, tmp_path, "lr", resume=state, extra=["train.lr_g=0.0005", "train.lr_d=0.0007"])
    assert [g["lr"] for g in changed.opt_g.param_groups] == [0.0005]
    assert {g["lr"] for o in changed.opt_d for g in o.param_groups} == {0.0007}


def test_a_resume_with_another_number_of_processes_reseeds_the_noise_stream(data_root, tmp_path):  # noqa: F811
    first = trainer(data_root, tmp_path)
    first.step = 4
    state = first.state()
    state["world_size"] = 2
    resumed = trainer(data_root, tmp_path, "again", resume=state)
    expected = torch.Generator().manual_seed(resumed.recipe.seed * 1000 + 0 + 7919 * 4)
    assert torch.equal(resumed.noise.get_state(), expected.get_state())


def test_trainer_evaluate_uses_its_judges_and_records_what_it_is_given(data_root, tmp_path):  # noqa: F811
    run = trainer(data_root, tmp_path)
    run.step = 3
    test_split = run.recipe.data.dataset.build(split="test", image_sizes=[run.recipe.stage_sizes()[-1]])
    rows = run.evaluate(test_split, metrics=["r_precision"], n=4, checkpoint={"step": 3, "path": "x.pt"})
    (row,) = rows
    assert row["metric"] == "r_precision.v1" and row["step"] == 3 and row["n"] == 4
    assert row["protocol"]["checkpoint"] == {"step": 3, "path": "x.pt"}
    # the text encoder the generator trained against is the judge, and the record says so by its hash
    assert row["protocol"]["judge_is_trainer"] is True
    assert row["images_seen"] == 3 * run.recipe.data.batch_size  # what the run had spent by then
    assert not (run.run.path / "eval_items").exists()  # per-image records only when asked for
    assert [r["metric"] for r in read_rows(run.run.path / "eval.jsonl")] == ["r_precision.v1"]
    kept = run.evaluate(test_split, n=4, keep_items=True)  # the recipe's metrics
    assert [r["metric"] for r in kept] == ["caption_consistency.v1", "r_precision.v1"]
    assert (run.run.path / "eval_items").is_dir()


def test_fit_logs_its_start_its_resume_and_its_end(data_root, tmp_path):  # noqa: F811
    first = trainer(data_root, tmp_path)
    last = first.fit(steps=2)
    assert last == first.run.checkpoints / "last.pt" and last.is_file()
    log = first.run.log_file.read_text()
    assert f"training {first.recipe.name}: 2 steps, batch 4, run folder {first.run.path}" in log
    assert f"done: 2 steps; last checkpoint {last}" in log
    assert "resumed at" not in log and "torch.compile" not in log  # no compiled first step to time apart
    rows = [json.loads(line) for line in first.run.metrics_file.read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    # step 2's speed is its batch over the time since step 1 was logged, at most the time between the two rows
    assert rows[1]["images_per_s"] >= 4 / (rows[1]["time"] - rows[0]["time"])
    assert re.search(r"step 2/2 [\d.]+ img/s D0=[-\d.]+ ", log)  # the line printed without a live progress bar
    # sample sheets every sample_every (1000) steps and at the last step
    assert sorted(p.name for p in first.run.samples.glob("step_*.png")) == ["step_00000002.png"]
    assert first.budget.step_flops > 0  # FLOPs counted in the first step (no torch.compile to count around)
    runtimes = json.loads((first.run.path / "env.json").read_text())["runtimes"]
    assert [r["device"] for r in runtimes] == ["cpu"]  # the resolved runtime, recorded once per start
    resumed = trainer(data_root, tmp_path, "again", resume=ckpt.load(last))
    assert resumed.fit() == resumed.run.checkpoints / "last.pt"  # nothing left to train: where last.pt belongs
    log = resumed.run.log_file.read_text()
    assert "resumed at step 2 of 2" in log and f"training {first.recipe.name}:" not in log


def test_fit_logs_every_log_every_steps_and_samples_every_sample_every_steps(data_root, tmp_path):  # noqa: F811
    run = trainer(data_root, tmp_path, extra=["train.log_every=2", "train.sample_every=2"])
    run.fit(steps=3)
    rows = [json.loads(line) for line in run.run.metrics_file.read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 3]  # and the last step, whatever log_every says
    assert sorted(p.name for p in run.run.samples.glob("step_*.png")) == ["step_00000002.png", "step_00000003.png"]


def test_a_signal_checkpoints_at_the_end_of_the_step_and_says_how_to_resume(data_root, tmp_path):  # noqa: F811
    from t2i.train.loop import Stop

    run = trainer(data_root, tmp_path)
    stop = Stop()
    stop.signal_name = "SIGTERM"  # as the handler sets it
    last = run.fit(steps=5, stop=stop)
    assert last == run.run.checkpoints / "last.pt" and ckpt.load(last)["step"] == 1 and run.step == 1
    log = run.run.log_file.read_text()
    assert f"SIGTERM: checkpoint written at step 1; resume with `t2i train --resume {run.run.path}`" in log
    assert "done:" not in log


def test_nonfinite_optimiser_state_is_named_before_a_checkpoint(data_root, tmp_path):  # noqa: F811
    from t2i.train.finite import NonFiniteError

    run = trainer(data_root, tmp_path)
    run.fit(steps=1)
    next(iter(run.opt_g.state.values()))["exp_avg"].fill_(float("nan"))
    assert run.check_networks(1, full=False) is True  # parameters only: still finite
    with pytest.raises(NonFiniteError) as info:
        run.check_networks(1, full=True)
    assert str(info.value).startswith("step 1: generator optimiser state hold NaN or Inf values; stopped.")


def test_trainer_evaluate_with_independent_judges(data_root, tmp_path):  # noqa: F811
    import copy

    run = trainer(data_root, tmp_path)
    test_split = run.recipe.data.dataset.build(split="test", image_sizes=[run.recipe.stage_sizes()[-1]])
    judges = {"text_encoder": copy.deepcopy(run.nets.text_encoder), "image_encoder": copy.deepcopy(
        run.nets.frozen["image_encoder"])}  # fmt: skip
    with torch.no_grad():
        for judge in judges.values():
            next(judge.parameters()).add_(1.0)  # other weights than the encoders G trains against
    (row,) = run.evaluate(test_split, metrics=["r_precision"], n=4, evaluators=judges)
    assert row["protocol"]["judge_is_trainer"] is False
