"""``train.recompute``: recomputing activations in backward changes nothing but memory."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from t2i.bench import synthetic
from t2i.networks import SetupError
from t2i.recipe import RecipeError, load
from t2i.train.loop import GANTrainer
from t2i.train.run_dir import RunDir

TINY = ["data.batch_size=4", "model.gf_dim=4", "model.df_dim=4", "model.text_dim=8", "model.base_size=16",
        "model.stages=3", 'train.pretrained.text_encoder="random"']  # fmt: skip


def trainer(recipe: str, recompute: str, extra: list[str]) -> tuple[GANTrainer, object]:
    r = load(recipe, [*TINY, *extra, f"train.recompute={recompute}"])
    torch.manual_seed(0)
    vocab = synthetic.synthetic_vocab(50)
    run = RunDir(Path(tempfile.mkdtemp(prefix="t2i_recompute_")))
    return GANTrainer(r, run, synthetic.SyntheticCaptions(vocab, 18), quiet=True), vocab


def state(t: GANTrainer) -> dict[str, torch.Tensor]:
    out = dict(t.nets.generator.state_dict())
    for i, d in enumerate(t.nets.discriminators):
        out.update({f"D{i}.{k}": v for k, v in d.state_dict().items()})
    return out


@pytest.mark.parametrize(
    ("recipe", "extra"),
    [
        ("dmgan_shapes", ['train.pretrained.image_encoder="random"']),  # spectral-norm Ds: u, v change per call
        ("attngan_shapes", ['train.pretrained.image_encoder="random"']),  # BatchNorm Ds: running statistics
    ],
)
def test_recomputed_training_equals_plain_training(recipe, extra):
    torch.set_default_dtype(torch.float64)
    try:
        fast, vocab = trainer(recipe, '["discriminators", "generator.init_stage"]', extra)
        plain, _ = trainer(recipe, "[]", extra)
        for step in range(2):
            batch = synthetic.synthetic_batch(fast.recipe.stage_sizes(), 4, vocab, 18, seed=step)
            a, b = fast.train_step(batch), plain.train_step(batch)
            assert a.keys() == b.keys()
            for key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key
        sa, sb = state(fast), state(plain)
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], rtol=1e-12, atol=1e-12, msg=key)
    finally:
        torch.set_default_dtype(torch.float32)


def test_recompute_targets_are_checked():
    with pytest.raises(RecipeError, match="generator.<submodule path>"):
        load("dmgan_shapes", ['train.recompute=["encoder"]'])
    with pytest.raises(SetupError, match="no submodule 'first_stage'.*init_stage"):
        trainer("dmgan_shapes", '["generator.first_stage"]', ['train.pretrained.image_encoder="random"'])


def test_recomputation_reruns_the_forward_in_backward_and_restores_state():
    calls = []
    module = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    # a pre-hook: the re-run in backward stops early, once it has recomputed what backward needs
    module.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    from t2i.train.memory import Recomputed

    wrapped = Recomputed(module)
    x = torch.randn(4, 3, requires_grad=True)
    out = wrapped(x)
    assert len(calls) == 1
    after_forward = module[1].running_mean.clone()
    out.square().sum().backward()
    assert len(calls) == 2, "backward did not run the forward again: nothing was recomputed"
    torch.testing.assert_close(module[1].running_mean, after_forward, rtol=0, atol=0)  # state moved once only
    with torch.no_grad():
        wrapped(x)
    assert len(calls) == 3  # no graph, nothing to recompute


def test_heap_release_is_installed_as_hooks_around_the_generator_step(monkeypatch):
    """On the CPU the free C heap is released before each training G forward and when G's backward starts; a
    generator call without gradients (sample grids, evaluation) releases nothing."""
    import t2i.train.memory as memory

    calls = []
    monkeypatch.setattr(memory, "release_free_heap", lambda: calls.append("release") or True)
    fast, vocab = trainer("dmgan_shapes", "[]", ['train.pretrained.image_encoder="random"'])
    batch = synthetic.synthetic_batch(fast.recipe.stage_sizes(), 4, vocab, 18, seed=0)
    assert fast.train_step(batch) is not None
    assert calls == ["release", "release"]
    calls.clear()
    m = fast.recipe.model
    with torch.no_grad():
        text = torch.randn(4, m.text_dim), torch.randn(4, m.text_dim, 18), torch.zeros(4, 18, dtype=torch.bool)
        fast.g_model(torch.randn(4, m.z_dim), *text, eps=torch.randn(4, m.cond_dim))
    assert calls == []
