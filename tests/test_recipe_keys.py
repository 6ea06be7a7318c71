"""Recipe keys that must change what training does: each test shows the key's effect at tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_train import tiny_overrides

from t2i import recipe as recipe_mod
from t2i.train import run_dir as run_dirs
from t2i.train.loop import GANTrainer


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keys") / "shapes"


def load(data_root: Path, extra: list[str] | None = None, *, drop_half_life: bool = False):
    """The tiny dmgan_shapes recipe; ``drop_half_life`` removes ema.half_life_steps so that ema.decay applies."""
    data = recipe_mod.load_raw(recipe_mod.find_recipe("dmgan_shapes"))
    data.setdefault("name", "dmgan_shapes")
    overrides = tiny_overrides(data_root) + list(extra or [])
    data = recipe_mod.apply_overrides(data, overrides)
    if drop_half_life:
        del data["train"]["ema"]["half_life_steps"]
    return recipe_mod.validate(data, "dmgan_shapes", overrides)


def trainer_for(recipe, tmp_path: Path, **kwargs) -> GANTrainer:
    dataset = recipe.data.dataset.build(split="train", image_sizes=recipe.stage_sizes())
    return GANTrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, quiet=True, **kwargs)


def clone(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def last_row(trainer: GANTrainer) -> dict:
    return json.loads(trainer.run.metrics_file.read_text().splitlines()[-1])


# -- EMA ------------------------------------------------------------------------------------------------------
def test_ema_decay_sets_the_average_of_one_step(data_root, tmp_path):
    decay = 0.75
    trainer = trainer_for(load(data_root, [f"train.ema.decay={decay}"], drop_half_life=True), tmp_path)
    assert trainer.ema.decay == decay
    before = dict(trainer.ema.model.named_parameters())
    before = {k: v.detach().clone() for k, v in before.items()}
    trainer.fit(steps=1)
    live = dict(trainer.nets.generator.named_parameters())
    moved = 0
    for name, avg in trainer.ema.model.named_parameters():
        expected = decay * before[name] + (1 - decay) * live[name].detach()
        torch.testing.assert_close(avg, expected, rtol=1e-5, atol=1e-6)
        moved += not torch.equal(before[name], live[name].detach())
    assert moved > 0  # the live generator did move, so the check above is not vacuous


def test_half_life_overrides_decay(data_root, tmp_path):
    trainer = trainer_for(load(data_root, ["train.ema.decay=0.9", "train.ema.half_life_steps=1"]), tmp_path)
    assert trainer.ema.decay == pytest.approx(0.5)
    trainer = trainer_for(load(data_root, ["train.ema.decay=0.5", "train.ema.half_life_steps=2"]), tmp_path / "b")
    assert trainer.ema.decay == pytest.approx(0.5**0.5)


def test_ema_defaults_are_the_originals_and_the_average_is_frozen():
    from t2i.train.ema import EMA

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(net)
    assert ema.decay == 0.999 and ema.include_buffers is False  # AttnGAN / DM-GAN: 0.999, parameters only
    assert not any(p.requires_grad for p in ema.model.parameters())  # an optimizer or backward never touches it
    assert all(p.requires_grad for p in net.parameters()) and ema.model is not net


@pytest.mark.parametrize("include", [False, True])
def test_ema_include_buffers_averages_batchnorm_statistics(data_root, tmp_path, include):
    recipe = load(
        data_root, [f"train.ema.include_buffers={str(include).lower()}", "train.ema.decay=0.5"], drop_half_life=True
    )
    trainer = trainer_for(recipe, tmp_path)
    before = {k: v.clone() for k, v in trainer.ema.model.named_buffers() if v.is_floating_point()}
    assert any(k.endswith("running_mean") for k in before)
    trainer.fit(steps=1)
    live = dict(trainer.nets.generator.named_buffers())
    ema = dict(trainer.ema.model.named_buffers())
    changed = [k for k in before if not torch.equal(before[k], live[k])]
    assert changed  # the training step moved BatchNorm statistics
    for k in changed:
        if include:
            torch.testing.assert_close(ema[k], 0.5 * before[k] + 0.5 * live[k])
        else:  # the originals pair averaged weights with the live statistics
            assert torch.equal(ema[k], live[k])


# -- loss weights and learning rates -------------------------------------------------------------------------
def test_kl_weight_scales_the_logged_kl_term(data_root, tmp_path):
    rows = {}
    for weight in (0.0, 1.0, 3.0):
        trainer = trainer_for(load(data_root, [f"train.kl_weight={weight}"]), tmp_path / str(weight))
        trainer.fit(steps=1)
        rows[weight] = last_row(trainer)
    assert rows[0.0]["loss/kl"] == 0.0
    assert rows[1.0]["loss/kl"] > 0
    # Same seed, same first step: the term is the unweighted KL times the weight.
    assert rows[3.0]["loss/kl"] == pytest.approx(3.0 * rows[1.0]["loss/kl"], rel=1e-5)
    for row in rows.values():  # the G loss is the sum of its logged terms, kl included
        parts = [v for k, v in row.items() if k.startswith("loss/") and k not in ("loss/G",) and not k[5:6] == "D"]
        assert row["loss/G"] == pytest.approx(sum(parts), rel=1e-5)


def _d_trainable(trainer: GANTrainer) -> list[torch.Tensor]:
    # The loop's own list: the G update leaves requires_grad off on D, so it cannot be re-derived after a step.
    return [p.detach().clone() for params in trainer.d_trainable for p in params]


def unmoved(before: torch.Tensor, after: torch.Tensor) -> bool:
    # Learning rates must be > 0; at 1e-30 an Adam step (about lr in size) moves a weight by at most ~1e-30.
    return torch.allclose(before, after, rtol=0, atol=1e-25)


def test_lr_d_moves_only_the_discriminators(data_root, tmp_path):
    frozen_d = trainer_for(load(data_root, ["train.lr_d=1e-30"]), tmp_path / "tiny")
    d_before, g_before = _d_trainable(frozen_d), clone(frozen_d.nets.generator)
    frozen_d.fit(steps=1)
    d_after, g_after = _d_trainable(frozen_d), clone(frozen_d.nets.generator)
    assert all(unmoved(a, b) for a, b in zip(d_before, d_after, strict=True))
    assert any(not torch.equal(g_before[k], g_after[k]) for k in g_before)

    normal = trainer_for(load(data_root, ["train.lr_d=0.01"]), tmp_path / "normal")
    before = _d_trainable(normal)
    normal.fit(steps=1)
    after = _d_trainable(normal)
    assert sum(not torch.equal(a, b) for a, b in zip(before, after, strict=True)) > len(before) // 2


def test_lr_g_moves_only_the_generator(data_root, tmp_path):
    trainer = trainer_for(load(data_root, ["train.lr_g=1e-30"]), tmp_path)
    g_before, d_before = clone(trainer.nets.generator), _d_trainable(trainer)
    trainer.fit(steps=1)
    g_after = clone(trainer.nets.generator)
    params = {k for k, _ in trainer.nets.generator.named_parameters()}
    assert all(unmoved(g_before[k], g_after[k]) for k in params)
    assert any(not torch.equal(a, b) for a, b in zip(d_before, _d_trainable(trainer), strict=True))


# -- process settings ----------------------------------------------------------------------------------------
@pytest.fixture
def restore_torch_globals():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def test_deterministic_switches_torch_deterministic_algorithms(data_root, tmp_path, restore_torch_globals):
    trainer_for(load(data_root, ["train.deterministic=true"]), tmp_path / "on")
    assert torch.are_deterministic_algorithms_enabled()
    trainer_for(load(data_root, ["train.deterministic=false"]), tmp_path / "off")
    assert not torch.are_deterministic_algorithms_enabled()


def test_threads_sets_torch_intra_op_threads(data_root, tmp_path, restore_torch_globals):
    torch.set_num_threads(2)
    trainer_for(load(data_root, ["train.threads=1"]), tmp_path / "one")
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    trainer_for(load(data_root), tmp_path / "default")  # unset: torch's choice is left alone
    assert torch.get_num_threads() == 2


def test_data_workers_reach_the_training_loader_without_changing_results(data_root, tmp_path, monkeypatch):
    from t2i.train import loop

    seen = []
    real = loop.make_loader

    def spy(*args, **kwargs):
        made = real(*args, **kwargs)
        seen.append(made.num_workers)
        return made

    monkeypatch.setattr(loop, "make_loader", spy)
    results = []
    for workers in (0, 1):
        trainer = trainer_for(load(data_root, [f"data.workers={workers}"]), tmp_path / str(workers))
        trainer.fit(steps=2)
        results.append(clone(trainer.nets.generator))
    assert seen == [0, 1]
    # Worker processes load the same items in the same order: identical training.
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


# -- evaluation split ------------------------------------------------------------------------------------------
def test_eval_split_picks_the_in_training_evaluation_data(data_root, tmp_path):
    # eval.split is what in-training evaluation uses when the selection split is the originals' "test" way
    extra = ["eval.every_steps=1", "eval.n_samples=4", "eval.batch_size=4", 'eval.metrics=["caption_consistency"]',
             'eval.selection_split="test"']  # fmt: skip
    sizes = {}
    for split in ("train", "test"):
        trainer = trainer_for(load(data_root, [*extra, f'eval.split="{split}"']), tmp_path / split)
        trainer.fit(steps=1)
        sizes[split] = len(trainer._eval_set)
        assert (trainer.run.path / "eval.jsonl").is_file()
    train_set = load(data_root).data.dataset.build(split="train", image_sizes=[64])
    test_set = load(data_root).data.dataset.build(split="test", image_sizes=[64])
    assert sizes == {"train": len(train_set), "test": len(test_set)} and len(train_set) != len(test_set)
    # with selection_split = "val" the evaluation runs on the held-out items, whatever eval.split says
    held_out = trainer_for(load(data_root, [*extra[:-1], 'eval.selection_split="val"', "eval.val_size=3",
                                            'eval.split="test"']), tmp_path / "val")  # fmt: skip
    held_out.fit(steps=1)
    assert len(held_out._eval_set) == 3 and held_out._eval_set.split == "val"
    bad = trainer_for(load(data_root, [*extra, 'eval.split="nosuch"']), tmp_path / "bad")
    with pytest.raises(Exception, match="no split 'nosuch'"):
        bad.fit(steps=1)


# -- checkpoints -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("keep", "steps", "expected"), [(2, 4, [3, 4]), (0, 2, [])])
def test_keep_checkpoints_prunes_periodic_checkpoints(data_root, tmp_path, keep, steps, expected):
    recipe = load(data_root, [f"train.keep_checkpoints={keep}", "train.checkpoint_every=1"])
    trainer = trainer_for(recipe, tmp_path)
    trainer.fit(steps=steps)
    names = sorted(p.name for p in trainer.run.checkpoints.glob("step_*.pt"))
    assert names == [f"step_{s:08d}.pt" for s in expected]
    assert (trainer.run.checkpoints / "last.pt").is_file()


# -- pretraining schedules -------------------------------------------------------------------------------------
def _pretrain_rows(run) -> list[dict]:
    return [json.loads(line) for line in run.metrics_file.read_text().splitlines()]


def test_damsm_schedule_keys_set_epochs_lr_decay_floor_and_snapshots(data_root, tmp_path):
    from t2i.train.pretrain import DamsmPretrainer

    recipe = load(
        data_root,
        [
            "pretrain.damsm.batch_size=10",  # 20 training images: 2 steps an epoch
            "pretrain.damsm.image_size=64",
            "pretrain.damsm.epochs=4",
            "pretrain.damsm.lr=0.01",
            "pretrain.damsm.lr_decay=0.5",
            "pretrain.damsm.lr_floor=0.004",
            "pretrain.damsm.snapshot_every=2",
        ],
    )
    dataset = recipe.data.dataset.build(split="train", image_sizes=[64])
    trainer = DamsmPretrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, quiet=True)
    trainer.fit()
    rows = _pretrain_rows(trainer.run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    # lr decays by lr_decay after each epoch while it is above lr_floor: 0.01, 0.005, 0.0025, then it stays.
    by_epoch = {r["epoch"]: r["lr"] for r in rows}
    assert by_epoch == pytest.approx({0: 0.01, 1: 0.005, 2: 0.0025, 3: 0.0025})
    # snapshot_every=2 epochs: after epochs 0 and 2 (steps 2 and 6).
    names = sorted(p.name for p in trainer.run.checkpoints.glob("step_*.pt"))
    assert names == ["step_00000002.pt", "step_00000006.pt"]


def test_damsm_grad_clip_changes_the_text_encoder_updates(data_root, tmp_path):
    from t2i.train.pretrain import DamsmPretrainer

    weights = {}
    for clip in (1e-6, 100.0):
        recipe = load(
            data_root,
            ["pretrain.damsm.batch_size=10", "pretrain.damsm.image_size=64", "pretrain.damsm.epochs=2",
             f"pretrain.damsm.grad_clip={clip}", "pretrain.damsm.lr=0.01"],
        )  # fmt: skip
        dataset = recipe.data.dataset.build(split="train", image_sizes=[64])
        trainer = DamsmPretrainer(recipe, run_dirs.create(recipe, tmp_path / str(clip)), dataset, quiet=True)
        trainer.fit()
        weights[clip] = clone(trainer.modules["text_encoder"])
    a, b = weights.values()
    assert any(not torch.allclose(a[k], b[k]) for k in a)


STREAM_TINY = [
    "model.captioner.embed_size=8",
    "model.captioner.hidden_size=8",
    "model.captioner.small_width=4",
    'train.pretrained.captioner="random"',
]


def test_stream_schedule_keys_set_epochs_batch_lr_and_snapshots(data_root, tmp_path):
    from t2i.train.pretrain import StreamPretrainer

    data = recipe_mod.load_raw(recipe_mod.find_recipe("mirrorgan_shapes"))
    data.setdefault("name", "mirrorgan_shapes")
    overrides = tiny_overrides(data_root) + STREAM_TINY
    overrides += ["pretrain.stream.batch_size=5", "pretrain.stream.epochs=3", "pretrain.stream.lr=0.003"]
    overrides += ["pretrain.stream.snapshot_every=2"]
    recipe = recipe_mod.validate(recipe_mod.apply_overrides(data, overrides), "mirrorgan_shapes", overrides)
    dataset = recipe.data.dataset.build(split="train", image_sizes=[recipe.stage_sizes()[-1]])
    trainer = StreamPretrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, quiet=True)
    trainer.fit()
    rows = _pretrain_rows(trainer.run)
    per_epoch = len(dataset) // 5
    assert [r["step"] for r in rows] == list(range(1, 3 * per_epoch + 1))
    assert {r["lr"] for r in rows} == {0.003}  # no decay schedule for STREAM
    assert sorted(p.name for p in trainer.run.checkpoints.glob("step_*.pt")) == [
        f"step_{per_epoch:08d}.pt",
        f"step_{3 * per_epoch:08d}.pt",
    ]
