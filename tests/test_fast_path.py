"""The fast path computes the same function as the plain path (identical math, float tolerance).

Everything runs in float64 at tiny widths, so any difference beyond rounding (~1e-12) is a real change of math.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_train import tiny_overrides
from torch import nn

from t2i import bench
from t2i.models.blocks import GLU, up_block

TOL = 1e-10


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> bool:
    return bool(((a - b).abs() <= tol * b.abs().clamp(min=1)).all())


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 1, 1), (3, 2, 8, 8)])
@pytest.mark.parametrize("bias", [False, True])
def test_up2_conv3x3_equals_upsample_then_conv(shape, bias):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(5, shape[1], 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True) if bias else None
    plain = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)
    fast = bench.up2_conv3x3(x, w, b)
    assert fast.shape == plain.shape == (shape[0], 5, 2 * shape[2], 2 * shape[3])
    assert _close(fast, plain)
    seed = torch.randn(plain.shape, dtype=torch.float64, generator=gen)
    grads_plain = torch.autograd.grad((plain * seed).sum(), [x, w])
    grads_fast = torch.autograd.grad((fast * seed).sum(), [x, w])
    for g_fast, g_plain in zip(grads_fast, grads_plain, strict=True):
        assert _close(g_fast, g_plain)


def test_fast_path_keeps_parameters_and_state_dict(float64):
    block = nn.Sequential(up_block(6, 4), nn.Sequential(GLU()))
    before = {k: v.clone() for k, v in block.state_dict().items()}
    params_before = [id(p) for p in block.parameters()]
    x = torch.randn(2, 6, 4, 4)
    plain = block.eval()(x)
    bench.fast_path(block)
    assert not any(isinstance(m, nn.Upsample) for m in block.modules())  # folded into the conv
    assert isinstance(block[0][3], bench.FusedGLU) and isinstance(block[1][0], bench.FusedGLU)
    assert [id(p) for p in block.parameters()] == params_before  # optimizers and EMA keep working
    after = block.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert _close(block(x), plain)


def test_fuse_bn_needs_eval_mode():
    with pytest.raises(ValueError, match="eval"):
        bench.fast_path(up_block(4, 2).train(), fuse_bn=True)


def _trainer(tmp_path, fast: bool):
    recipe = bench.bench_recipe("dmgan_shapes", None, tiny_overrides(tmp_path / "unused") + ["data.batch_size=2"])
    vocab = bench.synthetic_vocab(30)
    return recipe, vocab, bench.build_trainer(recipe, vocab, fast=fast)


def test_training_steps_equal_between_fast_and_plain_path(tmp_path, float64):
    """Same seed, same batches: every logged loss and every G/D parameter after 2 steps agree."""
    recipe, vocab, plain = _trainer(tmp_path, fast=False)
    _, _, fast = _trainer(tmp_path, fast=True)
    assert not any(isinstance(m, nn.Upsample) for m in fast.nets.generator.modules())
    for step in range(2):
        batch = bench.synthetic_batch(recipe.stage_sizes(), recipe.data.batch_size, vocab, 12, seed=step)
        assert batch.images[0].dtype == torch.float64
        logs_plain, logs_fast = plain.train_step(batch), fast.train_step(batch)
        assert logs_plain.keys() == logs_fast.keys()
        for key, value in logs_plain.items():
            assert abs(logs_fast[key] - value) <= TOL * max(1.0, abs(value)), key
    for a, b in [(plain.nets.generator, fast.nets.generator), (plain.nets.discriminators, fast.nets.discriminators)]:
        for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert _close(q, p, 1e-9), name  # Adam's division amplifies rounding a little


def test_sampling_equal_with_fused_batchnorm(tmp_path, float64):
    recipe, vocab, trainer = _trainer(tmp_path, fast=False)
    batch = bench.synthetic_batch(recipe.stage_sizes(), recipe.data.batch_size, vocab, 12, seed=0)
    trainer.train_step(batch)  # move the BN running statistics away from their initial values
    from t2i.batch import text_features

    text = text_features(trainer.nets.text_encoder, batch, trainer.mask_ids)
    z = torch.randn(len(batch), recipe.model.z_dim)
    eps = torch.randn(len(batch), recipe.model.cond_dim)
    plain = trainer.ema.model.eval()
    fast = bench.fast_path(copy.deepcopy(plain), fuse_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    with torch.no_grad():
        images_plain = plain(z, text.sentence, text.words, text.mask, eps=eps).images
    with torch.inference_mode():
        images_fast = fast(z, text.sentence, text.words, text.mask, eps=eps).images
    for a, b in zip(images_fast, images_plain, strict=True):
        assert _close(a, b)


def test_up_block_equals_upsample_then_conv_bn_glu(float64):
    """Holds for the committed up_block and for patches/upblock_phase_conv.diff (which folds the upsample)."""
    block = up_block(3, 2).train()
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    conv, bn = block[1], block[2]
    expected = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), conv.weight, padding=1)
    expected = F.batch_norm(expected, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    expected = F.glu(expected, dim=1)
    assert _close(block(x), expected)
    assert sorted(block.state_dict()) == [
        "1.weight",
        "2.bias",
        "2.num_batches_tracked",
        "2.running_mean",
        "2.running_var",
        "2.weight",
    ]
