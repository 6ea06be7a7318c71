"""Pretraining you can judge: held-out losses and image-to-text R@1 after every epoch, the best epoch kept."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import tiny_overrides

from t2i import recipe as recipe_mod
from t2i.train import checkpoint as ckpt
from t2i.train import run_dir as run_dirs
from t2i.train.pretrain import DamsmPretrainer, StreamPretrainer, retrieval_r_at_1


def test_r_at_1_counts_images_whose_own_caption_ranks_first():
    codes = torch.eye(6)
    assert retrieval_r_at_1(codes, codes) == 1.0
    assert retrieval_r_at_1(codes, codes.roll(1, 0)) == 0.0
    mixed = codes.clone()
    mixed[0], mixed[1] = codes[1], codes[0]  # images 0 and 1 swap captions: 4 of 6 right
    assert retrieval_r_at_1(codes, mixed) == pytest.approx(4 / 6)
    # Each image's own caption is second-best (the next image's is best). Against every other caption it never
    # wins; against 2 random others it wins when the best one is not drawn: C(4,2)/C(5,2) = 0.6 of the time.
    second = codes.roll(1, 0) + 0.5 * codes
    assert retrieval_r_at_1(codes, second) == 0.0
    mean = sum(retrieval_r_at_1(codes, second, candidates=3, seed=s) for s in range(40)) / 40
    assert 0.45 < mean < 0.75


def _recipe(root, extra):
    return recipe_mod.load("dmgan_shapes", tiny_overrides(root) + ["data.dataset.n=40", *extra])


def test_damsm_epochs_report_held_out_losses_and_r_at_1_and_keep_the_best(tmp_path):
    recipe = _recipe(tmp_path / "shapes", ["pretrain.damsm.batch_size=8", "pretrain.damsm.image_size=64",
                                           "pretrain.damsm.epochs=3", "pretrain.damsm.lr=0.01"])  # fmt: skip
    train = recipe.data.dataset.build(split="train", image_sizes=[64])
    held_out = recipe.data.dataset.build(split="test", image_sizes=[64])
    assert len(held_out) >= 8
    run = run_dirs.create(recipe, tmp_path / "run")
    trainer = DamsmPretrainer(recipe, run, train, quiet=True, val_dataset=held_out)
    trainer.fit()
    val = [json.loads(line) for line in run.validation_file.read_text().splitlines()]
    steps = [json.loads(line)["step"] for line in run.metrics_file.read_text().splitlines()]
    assert len(steps) == len(set(steps))  # one row per training step there; validation has its own file
    assert [r["epoch"] for r in val] == [0, 1, 2]
    assert all(r["val/w_loss"] > 0 and r["val/s_loss"] > 0 and 0 <= r["val/r_at_1"] <= 1 for r in val)
    best = max(val, key=lambda r: r["val/r_at_1"])  # first epoch with the highest R@1
    kept = ckpt.load(run.checkpoints / "best-val_r_at_1.pt")
    assert kept["step"] == best["step"] and kept["metrics"]["best"]["val/r_at_1"] == best["val/r_at_1"]
    assert "validation" in run.log_file.read_text()


def test_stream_epochs_report_held_out_token_accuracy(tmp_path):
    recipe = recipe_mod.load(
        "dmmgan_shapes",
        tiny_overrides(tmp_path / "shapes")
        + ["data.dataset.n=40", "pretrain.stream.batch_size=8", "pretrain.stream.epochs=2",
           'train.pretrained.captioner="random"'],
    )  # fmt: skip
    size = recipe.stage_sizes()[-1]
    train = recipe.data.dataset.build(split="train", image_sizes=[size])
    held_out = recipe.data.dataset.build(split="test", image_sizes=[size])
    run = run_dirs.create(recipe, tmp_path / "run")
    StreamPretrainer(recipe, run, train, quiet=True, val_dataset=held_out).fit()
    val = [json.loads(line) for line in run.validation_file.read_text().splitlines()]
    assert [r["epoch"] for r in val] == [0, 1] and all(r["val/loss"] > 0 for r in val)
    assert (run.checkpoints / "best-val_token_accuracy.pt").is_file()
