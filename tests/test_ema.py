"""The generator's EMA moves by exactly its formula, and the trainer's EMA is neither frozen nor a copy of G."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from t2i.train import run_dir as run_dirs
from t2i.train.ema import EMA, ema_decay
from t2i.train.loop import GANTrainer


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()


@pytest.mark.parametrize("include_buffers", [False, True])
def test_one_update_is_decay_times_old_plus_one_minus_decay_times_new(include_buffers):
    live = _net()
    ema = EMA(live, decay=0.75, include_buffers=include_buffers)
    old = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():  # move every parameter and buffer of the live model
        for p in live.parameters():
            p.add_(torch.randn_like(p))
    live.train()(torch.randn(5, 3, dtype=torch.float64))  # BatchNorm running stats and counter move
    new = {k: v.clone() for k, v in live.state_dict().items()}
    ema.update(live)
    params = {k for k, _ in live.named_parameters()}
    got = ema.model.state_dict()
    for key in new:
        if key in params or (include_buffers and new[key].is_floating_point()):
            expected = 0.75 * old[key] + 0.25 * new[key]
            assert not torch.allclose(expected, new[key]) and not torch.allclose(expected, old[key]), key
        else:  # live buffers (and integer counters) are copied
            expected = new[key]
        torch.testing.assert_close(got[key], expected, rtol=1e-12, atol=1e-12, msg=key)


def test_half_life_gives_the_decay():
    assert ema_decay(0.999, None) == 0.999
    assert ema_decay(0.999, 2) == pytest.approx(2**-0.5, rel=1e-15)  # half the weight left after 2 steps


def test_trainer_ema_differs_from_initial_and_from_raw_generator(tmp_path_factory, tmp_path):
    from test_train import make

    recipe, dataset = make(tmp_path_factory.mktemp("shapes") / "shapes")
    trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, quiet=True)
    initial = {k: v.clone() for k, v in trainer.ema.model.named_parameters()}
    trainer.fit(steps=2)
    ema = dict(trainer.ema.model.named_parameters())
    raw = dict(trainer.nets.generator.named_parameters())
    moved = [k for k in initial if not torch.equal(initial[k], ema[k])]
    assert len(moved) > len(initial) // 2, f"the EMA moved only {len(moved)} of {len(initial)} tensors"
    equal_to_raw = [k for k in raw if raw[k].requires_grad and torch.equal(raw[k], ema[k])]
    assert not [k for k in equal_to_raw if k in moved], f"EMA equals the raw generator: {equal_to_raw[:5]}"
    # after 2 steps at half-life 2 steps the EMA sits strictly between the start and the raw G
    key = moved[0]
    assert 0 < float((ema[key] - initial[key]).norm()) < float((raw[key].detach() - initial[key]).norm())
