"""The training loop at tiny size: exact resume, NaN handling, checkpoints, run folders, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from t2i import recipe as recipe_mod
from t2i.train import checkpoint as ckpt
from t2i.train import run_dir as run_dirs
from t2i.train.loop import GANTrainer, NonFiniteLossError

ROOT = Path(__file__).resolve().parent.parent


def tiny_overrides(data_root: Path) -> list[str]:
    return [
        f"data.dataset.root={str(data_root)!r}".replace("'", '"'),
        "data.dataset.n=24",
        "data.dataset.size=64",
        "data.batch_size=4",
        "model.base_size=32",
        "model.stages=2",
        "model.z_dim=4",
        "model.cond_dim=4",
        "model.text_dim=8",
        "model.gf_dim=4",
        "model.df_dim=2",
        "model.text_encoder.word_dim=8",
        "model.image_encoder.width=4",
        'train.pretrained.text_encoder="random"',
        'train.pretrained.image_encoder="random"',
        "train.log_every=1",
        "train.sample_every=1000",
        "train.checkpoint_every=2",
        "train.keep_checkpoints=5",
        "train.ema.half_life_steps=2",
    ]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shapes") / "shapes"


def make(data_root: Path, extra: list[str] | None = None):
    recipe = recipe_mod.load("dmgan_shapes", tiny_overrides(data_root) + list(extra or []))
    dataset = recipe.data.dataset.build(split="train", image_sizes=recipe.stage_sizes())
    return recipe, dataset


def params_of(trainer: GANTrainer) -> dict[str, torch.Tensor]:
    state = trainer.state()["models"]
    flat = {f"G.{k}": v for k, v in state["generator"].items()}
    flat.update({f"EMA.{k}": v for k, v in state["generator_ema"].items()})
    for i, d in enumerate(state["discriminators"]):
        flat.update({f"D{i}.{k}": v for k, v in d.items()})
    return flat


def test_resume_is_bit_exact(data_root, tmp_path):
    recipe, dataset = make(data_root)
    straight = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "a"), dataset, quiet=True)
    straight.fit(steps=4)

    first = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "b"), dataset, quiet=True)
    first.fit(steps=2)
    state = ckpt.load(first.run.checkpoints / "last.pt")
    assert state["step"] == 2
    resumed = GANTrainer(recipe, first.run, dataset, resume=state, quiet=True)
    resumed.fit(steps=4)

    a, b = params_of(straight), params_of(resumed)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resume is not exact: {different[:5]}"
    # ... and training changed something
    fresh = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "c"), dataset, quiet=True)
    assert any(not torch.equal(a[k], v) for k, v in params_of(fresh).items() if k.startswith("G."))


def _recording(trainer: GANTrainer) -> list[list[str]]:
    """The item keys of every batch ``trainer`` trains on, in order."""
    seen: list[list[str]] = []
    step = trainer.train_step

    def train_step(batch):
        seen.append(list(batch.keys))
        return step(batch)

    trainer.train_step = train_step
    return seen


def _flat(tree, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _flat(sub, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree}


def test_resume_across_an_epoch_boundary_with_a_data_worker_is_bit_exact(data_root, tmp_path):
    recipe, dataset = make(data_root, ["train.checkpoint_every=1000"])
    per_epoch = len(dataset) // recipe.data.batch_size
    stop, total = per_epoch + 1, per_epoch + 2  # the interruption falls inside the second epoch
    straight = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "a"), dataset, quiet=True)
    straight_keys = _recording(straight)
    straight.fit(steps=total)

    with_worker, _ = make(data_root, ["train.checkpoint_every=1000", "data.workers=1"])
    first = GANTrainer(with_worker, run_dirs.create(with_worker, tmp_path / "b"), dataset, quiet=True)
    first_keys = _recording(first)
    first.fit(steps=stop)
    state = ckpt.load(first.run.checkpoints / "last.pt")
    assert state["step"] == stop
    resumed = GANTrainer(with_worker, first.run, dataset, resume=state, quiet=True)
    resumed_keys = _recording(resumed)
    resumed.fit(steps=total)

    assert first_keys + resumed_keys == straight_keys
    assert straight_keys[per_epoch] != straight_keys[0], "the second epoch must not repeat the first one's order"
    a, b = _flat(straight.state()), _flat(resumed.state())
    keys = [k for k in a if k.startswith(("models.", "optimizers.")) and isinstance(a[k], torch.Tensor)]
    assert any(k.startswith("models.generator_ema.") for k in keys) and any(".exp_avg_sq" in k for k in keys)
    different = [k for k in keys if not torch.equal(a[k], b[k])]
    assert not different, f"resume across an epoch boundary is not exact: {different[:5]}"
    assert a["optimizers.generator.state.0.step"] == b["optimizers.generator.state.0.step"] == total


def test_alignment_terms_see_the_last_stage_image(data_root, tmp_path):
    recipe, dataset = make(data_root)
    trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, quiet=True)
    seen = []
    for term in trainer.nets.alignment:
        forward = term.forward
        term.forward = lambda fake, text, forward=forward: (seen.append(tuple(fake.shape)), forward(fake, text))[1]
    trainer.fit(steps=1)
    size = recipe.stage_sizes()[-1]
    assert seen and all(shape[-2:] == (size, size) for shape in seen), (seen, recipe.stage_sizes())


def test_run_folder_contents_and_no_reuse(data_root, tmp_path):
    recipe, dataset = make(data_root, ["train.sample_every=2"])
    run = run_dirs.create(recipe, tmp_path)
    trainer = GANTrainer(recipe, run, dataset, quiet=True)
    trainer.fit(steps=2)
    names = {p.name for p in run.path.iterdir()}
    assert {
        "config.resolved.toml",
        "overrides.txt",
        "env.json",
        "log.txt",
        "metrics.jsonl",
        "samples",
        "checkpoints",
        "recipe.toml",
    } <= names
    assert (run.samples / "step_00000002.png").is_file()
    assert (run.samples / "attention_step_00000002.png").is_file()
    rows = run.metrics_file.read_text().splitlines()
    assert len(rows) == 2 and '"loss/damsm"' in rows[0] and '"images_per_s"' in rows[0]
    with pytest.raises(run_dirs.RunDirError, match="not empty"):
        run_dirs.create(recipe, tmp_path, run_dir=run.path)
    state = ckpt.load(run.checkpoints / "last.pt")
    assert set(state["models"]) >= {"generator", "generator_ema", "discriminators", "text_encoder", "image_encoder"}
    assert state["vocab"]["words"] and state["recipe"]["model"]["refiner"]["name"] == "dm.v1"


NAN_PLUGIN = textwrap.dedent("""
    import torch
    import t2i
    from t2i.registry import Params

    class NanParams(Params):
        weight: float = 1.0
        at_call: int = 3

    @t2i.register("alignment_loss", "nan_at.v1", params=NanParams)
    class NanAt(torch.nn.Module):
        requires = ()
        def __init__(self, params, *, networks):
            super().__init__()
            self.params, self.calls = params, 0
        def forward(self, fake, text):
            self.calls += 1
            value = fake.mean() * 0 + (float("nan") if self.calls == self.params.at_call else 0.0)
            return value, {}
""")


def test_nan_stops_with_term_and_step_and_keeps_last_good(data_root, tmp_path):
    from t2i.registry import import_user_file

    plugin = tmp_path / "nan_plugin.py"
    plugin.write_text(NAN_PLUGIN)
    import_user_file(plugin)
    recipe, dataset = make(data_root, ["train.checkpoint_every=1", 'train.alignment=[{name="nan_at", at_call=3}]'])
    trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "runs"), dataset, quiet=True)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(steps=5)
    assert str(info.value) == (
        f"loss term 'nan_at' is nan at step 3; stopped. The last good checkpoint is {trainer.run.checkpoints}/last.pt "
        '(set train.nan_policy = "skip" to skip such batches instead)'
    )
    assert ckpt.load(trainer.run.checkpoints / "last.pt")["step"] == 2

    recipe, dataset = make(data_root, ['train.alignment=[{name="nan_at", at_call=2}]', 'train.nan_policy="skip"'])
    skipping = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "runs2"), dataset, quiet=True)
    step, calls = skipping.train_step, []

    def train_step(batch):  # the generator's weights before and after each step
        before = {k: p.detach().clone() for k, p in skipping.nets.generator.named_parameters()}
        logs = step(batch)
        calls.append((logs, before, {k: p.detach().clone() for k, p in skipping.nets.generator.named_parameters()}))
        return logs

    skipping.train_step = train_step
    skipping.fit(steps=3)
    assert "step 2: loss term nan_at is nan; skipping this batch (nan_policy=skip)" in skipping.run.log_file.read_text()
    (first, *_), (skipped, before, after), (third, *_) = calls
    assert first is not None and skipped is None and third is not None
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped batch must not update the generator"
    steps = [json.loads(line)["step"] for line in skipping.run.metrics_file.read_text().splitlines()]
    assert steps == [1, 3]
    assert all(torch.isfinite(p).all() for p in skipping.nets.generator.parameters())


def test_corrupt_last_checkpoint_falls_back_to_periodic(data_root, tmp_path):
    recipe, dataset = make(data_root)
    trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, quiet=True)
    trainer.fit(steps=3)
    last = trainer.run.checkpoints / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as a crash mid-copy would leave a non-atomic write
    with pytest.raises(ckpt.CheckpointError, match="not a readable checkpoint"):
        ckpt.load(last)
    state = ckpt.CheckpointKeeper(trainer.run.checkpoints).latest_good()
    assert state["step"] == 2 and state["_path"].endswith("step_00000002.pt")


def test_unsafe_checkpoint_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "obj": object.__new__(run_dirs.RunDir)}, path)
    with pytest.raises(ckpt.CheckpointError, match="arbitrary unpickling"):
        ckpt.load(path)


def test_missing_pretrained_encoder_is_a_clear_error(data_root, tmp_path):
    recipe, dataset = make(data_root, ['train.pretrained.text_encoder="nowhere/damsm.pt"'])
    from t2i.networks import SetupError

    with pytest.raises(SetupError, match="does not exist: run `t2i pretrain damsm"):
        GANTrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, quiet=True)


def test_damsm_pretraining_loss_decreases(data_root, tmp_path):
    from t2i.train.pretrain import DamsmPretrainer

    recipe = recipe_mod.load(
        "dmgan_shapes",
        tiny_overrides(data_root)
        + [
            "pretrain.damsm.batch_size=8",
            "pretrain.damsm.image_size=64",
            "pretrain.damsm.epochs=6",
            "pretrain.damsm.lr=0.01",
        ],
    )
    dataset = recipe.data.dataset.build(split="train", image_sizes=[64])
    trainer = DamsmPretrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, quiet=True)
    rows = []
    trainer.fit()
    import json

    rows = [json.loads(line) for line in trainer.run.metrics_file.read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    state = ckpt.load(trainer.run.checkpoints / "last.pt")
    assert state["kind"] == "damsm" and set(state["models"]) == {"text_encoder", "image_encoder"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t2i", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_dry_run_and_errors(data_root, tmp_path):
    sets = [x for o in tiny_overrides(data_root) for x in ("--set", o)]
    result = run_cli("train", "dmgan_shapes", *sets, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout and "generator" in result.stdout and "stacked.v1 + dm.v1" in result.stdout
    bad = run_cli("train", "dmgan_shapes", *sets, "--set", "model.refiner=gdlm")
    assert bad.returncode == 1 and "unknown refiner 'gdlm'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_cli_train_then_sample_then_resume(data_root, tmp_path):
    sets = [x for o in tiny_overrides(data_root) for x in ("--set", o)]
    run = tmp_path / "run"
    result = run_cli("train", "dmgan_shapes", *sets, "--run-dir", str(run), "--steps", "2", "-q")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "grid.png"
    sampled = run_cli(
        "sample",
        str(run),
        "a big red circle",
        "a zorblax blue square",
        "--n",
        "2",
        "-o",
        str(out),
        "--attention",
        str(tmp_path / "maps.png"),
    )
    assert sampled.returncode == 0, sampled.stderr
    assert "zorblax" in sampled.stderr and out.is_file() and (tmp_path / "maps.png").is_file()
    again = run_cli("train", "--resume", str(run), "--steps", "3", "-q")
    assert again.returncode == 0, again.stderr
    assert ckpt.load(run / "checkpoints" / "last.pt")["step"] == 3


def test_in_training_evaluation_keeps_best_checkpoint(data_root, tmp_path):
    recipe, dataset = make(
        data_root,
        [
            "eval.every_steps=2",
            "eval.n_samples=8",
            "eval.batch_size=4",
            'eval.metrics=["caption_consistency"]',
            'eval.best_metric="caption_consistency"',
        ],
    )
    trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, quiet=True)
    trainer.fit(steps=4)
    import json

    rows = [json.loads(line) for line in (trainer.run.path / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["metric"].startswith("caption_consistency") and r["n"] == 8 for r in rows)
    best = list(trainer.run.checkpoints.glob("best-*.pt"))
    assert len(best) == 1 and "caption_consistency" in best[0].name
    assert ckpt.load(best[0])["metrics"]["best"]
    log = trainer.run.log_file.read_text()
    assert "step 2: caption_consistency.v1 = " in log and "new best caption_consistency.v1 = " in log
    assert trainer._eval_set.image_sizes == [recipe.stage_sizes()[-1]]  # the generator's output size


STREAM_TINY = [
    "model.captioner.embed_size=8",
    "model.captioner.hidden_size=8",
    "model.captioner.small_width=4",
    'train.pretrained.captioner="random"',
]


@pytest.mark.parametrize("recipe_name", ["mirrorgan_shapes", "dmmgan_shapes", "attngan_shapes"])
def test_every_shapes_recipe_trains_a_few_steps(data_root, tmp_path, recipe_name):
    extra = STREAM_TINY if recipe_name != "attngan_shapes" else []
    recipe = recipe_mod.load(recipe_name, tiny_overrides(data_root) + extra)
    dataset = recipe.data.dataset.build(split="train", image_sizes=recipe.stage_sizes())
    trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, quiet=True)
    before = {k: v.clone() for k, v in trainer.nets.generator.state_dict().items()}
    trainer.fit(steps=2)
    import json

    row = json.loads(trainer.run.metrics_file.read_text().splitlines()[-1])
    assert all(math.isfinite(row[f"loss/{t}"]) for t in ("G", "D0", "D1", "kl"))
    names = {c.entry.base for c in recipe.train.alignment}
    assert all(f"loss/{n}" in row for n in names)
    after = trainer.nets.generator.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_stream_pretraining_writes_a_captioner_the_gan_loads(data_root, tmp_path):
    from t2i.train.pretrain import StreamPretrainer

    recipe = recipe_mod.load(
        "mirrorgan_shapes",
        tiny_overrides(data_root)
        + STREAM_TINY
        + ["pretrain.stream.batch_size=8", "pretrain.stream.epochs=3", "pretrain.stream.lr=0.01"],
    )
    dataset = recipe.data.dataset.build(split="train", image_sizes=[recipe.stage_sizes()[-1]])
    trainer = StreamPretrainer(recipe, run_dirs.create(recipe, tmp_path / "pre"), dataset, quiet=True)
    last = trainer.fit()
    import json

    rows = [json.loads(line) for line in trainer.run.metrics_file.read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    gan = recipe_mod.load(
        "mirrorgan_shapes", tiny_overrides(data_root) + STREAM_TINY + [f'train.pretrained.captioner="{last}"']
    )
    gan_set = gan.data.dataset.build(split="train", image_sizes=gan.stage_sizes())
    trainer = GANTrainer(gan, run_dirs.create(gan, tmp_path / "gan"), gan_set, quiet=True)
    trainer.fit(steps=1)
    # the GAN's captioner is the pretrained one, weight for weight, and still is after a step (frozen)
    pretrained = ckpt.load(last)["models"]["captioner"]
    ours = trainer.nets.frozen["captioner"].state_dict()
    assert ours.keys() == pretrained.keys()
    different = [k for k in ours if not torch.equal(ours[k], pretrained[k])]
    assert not different, f"the GAN's captioner is not the pretrained checkpoint's: {different[:5]}"
    # and `t2i eval` judges with that captioner (captioner_accuracy.v1), on generated and on real images
    from typer.testing import CliRunner

    from t2i.cli import app
    from t2i.evaluate import load_evaluators, load_model

    judges = load_evaluators(load_model(trainer.run.path))
    assert all(torch.equal(judges["captioner"].state_dict()[k], pretrained[k]) for k in pretrained)
    result = CliRunner().invoke(app, ["eval", str(trainer.run.path), "-m", "captioner_accuracy", "--n", "4",
                                      "--batch-size", "4", "--references"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (trainer.run.path / "eval.jsonl").read_text().splitlines()]
    assert rows[-1]["metric"] == "captioner_accuracy.v1" and rows[-1]["protocol"]["judge_is_trainer"] is True
    assert 0 <= rows[-1]["value"] <= 1 and rows[-1]["n"] == 4
    references = (trainer.run.path / "references.jsonl").read_text().splitlines()
    assert [json.loads(line)["reference"] for line in references] == ["real", "shuffled"]
    random = recipe_mod.load("mirrorgan_shapes", tiny_overrides(data_root) + STREAM_TINY)
    untrained = GANTrainer(random, run_dirs.create(random, tmp_path / "gan3"), gan_set, quiet=True)
    floats = [k for k in ours if ours[k].is_floating_point()]
    assert any(not torch.equal(untrained.nets.frozen["captioner"].state_dict()[k], ours[k]) for k in floats)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_writes_a_checkpoint_and_exits_cleanly(data_root, tmp_path, name, code):
    import signal
    import time

    sets = [x for o in tiny_overrides(data_root) + ["train.checkpoint_every=1000"] for x in ("--set", o)]
    run = tmp_path / "run"
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
    proc.send_signal(getattr(signal, name))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err  # 128 + the signal's number, as a shell reports a killed command
    assert "Traceback" not in err
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert 2 <= state["step"] < 100000
    assert f"{name}: checkpoint written at step {state['step']}" in (run / "log.txt").read_text()
