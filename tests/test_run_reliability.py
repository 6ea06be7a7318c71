"""Long runs that fail well: divergence caught and never checkpointed, safe resume overrides, one process per run
folder, no duplicated metrics, no dead run folders, global RNG state restored on resume. Tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_train import ROOT, make, run_cli, tiny_overrides

from t2i import recipe as recipe_mod
from t2i.train import checkpoint as ckpt
from t2i.train import run_dir as run_dirs
from t2i.train.loop import GANTrainer


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shapes") / "shapes"


def cli_sets(data_root: Path, extra: list[str] | None = None) -> list[str]:
    return [x for o in tiny_overrides(data_root) + list(extra or []) for x in ("--set", o)]


def all_finite(state: dict) -> bool:
    from t2i.train.finite import nonfinite_groups, state_groups

    return not nonfinite_groups(state_groups(state))


# -- divergence ---------------------------------------------------------------------------------------------------
def test_diverged_discriminator_output_is_a_message_not_a_traceback(data_root, tmp_path):
    # A huge generator learning rate: G's images, then D's probabilities, become NaN (BCE used to raise on them).
    run = tmp_path / "run"
    result = run_cli("train", "dmgan_shapes", *cli_sets(data_root, ["train.lr_g=1e38"]), "--run-dir", str(run), "-q")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "step 2: generator" in result.stderr and "NaN or Inf" in result.stderr
    assert "last good checkpoint" in result.stderr


NAN_GRAD_PLUGIN = textwrap.dedent("""
    import torch
    import t2i
    from t2i.registry import Params

    class NanGradParams(Params):
        weight: float = 1.0
        at_call: int = 3
        onwards: bool = False  # NaN gradients at every call from at_call on, not only at it

    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("nan")

    @t2i.register("alignment_loss", "nan_grad_at.v1", params=NanGradParams)
    class NanGradAt(torch.nn.Module):
        requires = ()
        def __init__(self, params, *, networks):
            super().__init__()
            self.params, self.calls = params, 0
        def forward(self, fake, text):  # a finite loss whose gradient is NaN at one call: G's Adam step goes NaN
            self.calls += 1
            if self.calls == self.params.at_call or (self.params.onwards and self.calls > self.params.at_call):
                return NanGrad.apply(fake).mean() * 0.0, {}
            return fake.mean() * 0.0, {}
""")


def nan_grad_trainer(data_root, tmp_path, extra: list[str], nan_grad: str = "at_call=3"):
    from t2i.registry import import_user_file

    plugin = tmp_path / "nan_grad_plugin.py"
    plugin.write_text(NAN_GRAD_PLUGIN)
    import_user_file(plugin)
    recipe, dataset = make(data_root, [f'train.alignment=[{{name="nan_grad_at", {nan_grad}}}]', *extra])
    return GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "runs"), dataset, quiet=True)


def test_nonfinite_parameters_stop_naming_network_step_and_last_good(data_root, tmp_path):
    from t2i.train.finite import NonFiniteError

    trainer = nan_grad_trainer(data_root, tmp_path, ["train.finite_check_every=1"])
    last = trainer.run.checkpoints / "last.pt"
    with pytest.raises(NonFiniteError, match=r"step 3: generator, generator EMA hold NaN") as info:
        trainer.fit(steps=6)
    assert f"last good checkpoint is {last}" in str(info.value)
    state = ckpt.load(last)
    assert state["step"] == 2 and all_finite(state)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_loss_from_diverged_networks_names_both(data_root, tmp_path, policy):
    """Networks that went NaN between network checks show up as a NaN loss: the networks are named with the loss."""
    from t2i.train.finite import NonFiniteError

    trainer = nan_grad_trainer(data_root, tmp_path, ["train.finite_check_every=1000", f'train.nan_policy="{policy}"'])
    last = trainer.run.checkpoints / "last.pt"
    # G's Adam step of step 3 goes NaN, unchecked (finite_check_every=1000); step 4's D loss on G's images is NaN
    what = "step 4: generator, generator EMA hold NaN or Inf values (loss term 'D0' is nan)"
    if policy == "stop":
        with pytest.raises(NonFiniteError) as info:
            trainer.fit(steps=6)
        assert str(info.value) == f"{what}; stopped. The last good checkpoint is {last}"
        return
    trainer.fit(steps=6)
    log = trainer.run.log_file.read_text()
    assert f"{what}; restored the networks and optimiser states of step 2 from last.pt and continuing" in log
    steps = [json.loads(line)["step"] for line in trainer.run.metrics_file.read_text().splitlines()]
    assert 4 not in steps and steps[-1] == 6  # the step that found them was skipped
    assert all_finite(ckpt.load(last))


def test_nonfinite_parameters_are_checked_before_every_checkpoint(data_root, tmp_path):
    from t2i.train.finite import NonFiniteError

    # No periodic check before step 4's checkpoint: the check before writing it still stops the run.
    trainer = nan_grad_trainer(data_root, tmp_path, ["train.finite_check_every=1000"])
    with pytest.raises(NonFiniteError, match=r"step 4: generator"):
        trainer.fit(steps=6)
    state = ckpt.load(trainer.run.checkpoints / "last.pt")
    assert state["step"] == 2 and all_finite(state)


def test_skip_restores_the_last_good_checkpoint_and_goes_on(data_root, tmp_path):
    trainer = nan_grad_trainer(data_root, tmp_path, ["train.finite_check_every=1", 'train.nan_policy="skip"'])
    trainer.fit(steps=6)
    log = trainer.run.log_file.read_text()
    assert "step 3: generator, generator EMA hold NaN or Inf values" in log
    assert "restored the networks and optimiser states of step 2" in log
    state = ckpt.load(trainer.run.checkpoints / "last.pt")
    assert state["step"] == 6 and all_finite(state)
    steps = [json.loads(line)["step"] for line in trainer.run.metrics_file.read_text().splitlines()]
    assert 3 not in steps and steps[-1] == 6


def test_a_checkpoint_is_never_written_with_nonfinite_tensors(tmp_path):
    from t2i.train.finite import NonFiniteError

    keeper = ckpt.CheckpointKeeper(tmp_path)
    state = {
        "format_version": 1,
        "models": {"generator": {"w": torch.ones(3)}, "discriminators": [{"w": torch.ones(2)}]},
        "optimizers": {"generator": {"state": {0: {"exp_avg_sq": torch.tensor([1.0, float("inf")])}}}},
    }
    with pytest.raises(NonFiniteError, match=r"optimizers.generator"):
        keeper.save(state, 1, periodic=True)
    state["optimizers"]["generator"]["state"][0]["exp_avg_sq"] = torch.ones(2)
    state["models"]["discriminators"][0]["w"][1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"models.discriminators\[0\]"):
        keeper.save_best(state, "fid")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr_g=inf", "train.lr_g"),
        ("train.lr_d=nan", "train.lr_d"),
        ("train.betas=[0.5, inf]", "train.betas[1]"),
        ("train.kl_weight=nan", "train.kl_weight"),
        ('train.alignment=[{name="damsm", weight=inf}]', "train.alignment[0](damsm.v1).weight"),
    ],
)
def test_nonfinite_recipe_values_are_refused(data_root, override, key):
    with pytest.raises(recipe_mod.RecipeError) as info:
        recipe_mod.load("dmgan_shapes", tiny_overrides(data_root) + [override])
    assert any(p.startswith(f"{key}: ") and "finite" in p for p in info.value.problems), info.value.problems


# -- resume -------------------------------------------------------------------------------------------------------
def metric_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_applies_allowed_overrides_keeps_steps_and_truncates_metrics(data_root, tmp_path):
    run = tmp_path / "run"
    first = run_cli("train", "dmgan_shapes", *cli_sets(data_root), "--run-dir", str(run), "--steps", "3", "-q")
    assert first.returncode == 0, first.stderr
    assert metric_steps(run) == [1, 2, 3]
    (run / "checkpoints" / "last.pt").unlink()  # as if killed after step 3's metrics but before its checkpoint

    refused = run_cli("train", "--resume", str(run), "--set", "model.gf_dim=32", "--set", "seed=5", "-q")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "model.gf_dim" in refused.stderr and "seed" in refused.stderr and "train.lr_g" in refused.stderr

    again = run_cli("train", "--resume", str(run), "--set", "train.lr_g=0.123", "-q")  # no --steps: the stored 3
    assert again.returncode == 0, again.stderr
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state["step"] == 3
    assert state["optimizers"]["generator"]["param_groups"][0]["lr"] == 0.123
    assert state["optimizers"]["discriminators"][0]["param_groups"][0]["lr"] == 2e-4
    assert metric_steps(run) == [1, 2, 3]
    assert (run / "overrides.txt").read_text().endswith("# resumed at step 2\ntrain.lr_g=0.123\n")
    assert recipe_mod.read_toml(run / "config.resolved.toml")["train"]["lr_g"] == 0.123
    assert not (run / "train.lock").exists()


def test_resume_without_steps_stops_where_the_run_was_told_to(data_root, tmp_path):
    recipe, dataset = make(data_root, ["train.steps=5"])
    trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, quiet=True)
    trainer.fit(steps=3)
    (trainer.run.checkpoints / "last.pt").unlink()
    state = ckpt.CheckpointKeeper(trainer.run.checkpoints).latest_good()
    assert state["step"] == 2
    GANTrainer(recipe, trainer.run, dataset, resume=state, quiet=True).fit()
    assert ckpt.load(trainer.run.checkpoints / "last.pt")["step"] == 3


def test_resume_restores_the_global_rng_state(data_root, tmp_path):
    recipe, dataset = make(data_root)
    GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "a"), dataset, quiet=True).fit(steps=4)
    straight = torch.get_rng_state().clone()

    first = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "b"), dataset, quiet=True)
    first.fit(steps=2)
    torch.manual_seed(12345)  # whatever happened in between
    state = ckpt.load(first.run.checkpoints / "last.pt")
    GANTrainer(recipe, first.run, dataset, resume=state, quiet=True).fit(steps=4)
    assert torch.equal(torch.get_rng_state(), straight)


# -- lock and run folders ---------------------------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_lock_refuses_a_second_holder_and_takes_over_a_stale_one(tmp_path):
    import socket

    from t2i.train.lock import RunLock, RunLockedError

    notes: list[str] = []
    with RunLock(tmp_path, log=notes.append) as lock:
        record = json.loads(lock.path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["started"]
        with pytest.raises(RunLockedError, match=rf"in use by pid {os.getpid()} on {socket.gethostname()}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / "train.lock").exists()

    stale = dead_pid()
    (tmp_path / "train.lock").write_text(json.dumps({"pid": stale, "host": socket.gethostname(), "started": "x"}))
    with RunLock(tmp_path, log=notes.append):
        assert json.loads((tmp_path / "train.lock").read_text())["pid"] == os.getpid()
    assert any(f"pid {stale}" in n and "stale" in n for n in notes)
    with pytest.raises(RuntimeError), RunLock(tmp_path):
        raise RuntimeError("boom")
    assert not (tmp_path / "train.lock").exists()


def test_resume_of_a_locked_run_is_refused(data_root, tmp_path):
    import socket

    recipe, _ = make(data_root)
    run = run_dirs.create(recipe, tmp_path)
    (run.path / "train.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    result = run_cli("train", "--resume", str(run.path), "-q")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"in use by pid {os.getpid()}" in result.stderr


def test_a_failed_start_leaves_no_run_folder(data_root, tmp_path):
    sets = cli_sets(data_root, ['train.pretrained.text_encoder="nowhere/damsm.pt"'])
    run = tmp_path / "run"
    result = run_cli("train", "dmgan_shapes", *sets, "--run-dir", str(run), "-q")
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert not run.exists()
    given = tmp_path / "given"
    given.mkdir()  # an empty folder given with --run-dir is kept, and is empty again
    result = run_cli("train", "dmgan_shapes", *sets, "--run-dir", str(given), "-q")
    assert result.returncode == 1 and given.is_dir() and not list(given.iterdir())


@pytest.mark.slow
def test_sigterm_with_the_lock_exits_cleanly_and_releases_it(data_root, tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    sets = cli_sets(data_root, ["train.checkpoint_every=1000"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "t2i", "train", "dmgan_shapes", *sets, "--run-dir", str(run), "--steps", "100000"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.5)
    assert json.loads((run / "train.lock").read_text())["pid"] == proc.pid
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert not (run / "train.lock").exists()


def test_skip_stops_after_three_restores_in_a_row(data_root, tmp_path):
    """A run that diverges again right after every restore is stopped at the fourth, not restored for ever."""
    from t2i.train.finite import NonFiniteError

    extra = ["train.finite_check_every=1", "train.checkpoint_every=5", 'train.nan_policy="skip"']
    trainer = nan_grad_trainer(data_root, tmp_path, extra, nan_grad="at_call=6, onwards=true")
    last = trainer.run.checkpoints / "last.pt"
    with pytest.raises(NonFiniteError) as info:
        trainer.fit(steps=12)
    assert str(info.value) == (
        "step 9: generator, generator EMA hold NaN or Inf values again after 3 restores in a row; stopped (the "
        f"training diverges from the last good checkpoint {last}: lower the learning rates?)"
    )
    log = trainer.run.log_file.read_text()
    assert [f"step {s}: generator" in log for s in (6, 7, 8)] == [True, True, True]
    assert ckpt.load(last)["step"] == 5


def test_divergence_before_the_first_checkpoint_says_there_is_none(data_root, tmp_path):
    from t2i.train.finite import NonFiniteError

    # G's first Adam step goes NaN, before any checkpoint exists
    trainer = nan_grad_trainer(data_root, tmp_path, ["train.finite_check_every=1"], nan_grad="at_call=1")
    with pytest.raises(NonFiniteError) as info:
        trainer.fit(steps=3)
    assert str(info.value).endswith("stopped. The last good checkpoint is none (no checkpoint written yet)")
