"""The generator's folded convolutions compute the plain composition they replace.

Nearest x2 upsampling followed by a 3x3 convolution equals one 2x2 convolution per output phase at the input
resolution (the upBlock of Xu et al. 2018 and Zhu et al. 2019, with 2.25x fewer FLOPs), and in sampling the
BatchNorm after a convolution is folded into its weights. Everything runs in float64 at tiny widths, so any
difference beyond rounding (~1e-12) is a real change of math.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_train import tiny_overrides
from torch import nn

from t2i.bench.cases import build_trainer
from t2i.bench.synthetic import bench_recipe, synthetic_batch, synthetic_vocab
from t2i.models.blocks import up2_conv3x3, up_block

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
    folded = up2_conv3x3(x, w, b)
    assert folded.shape == plain.shape == (shape[0], 5, 2 * shape[2], 2 * shape[3])
    assert _close(folded, plain)
    seed = torch.randn(plain.shape, dtype=torch.float64, generator=gen)
    inputs = [x, w] + ([b] if bias else [])
    grads_plain = torch.autograd.grad((plain * seed).sum(), inputs)
    grads_folded = torch.autograd.grad((folded * seed).sum(), inputs)
    for g_folded, g_plain in zip(grads_folded, grads_plain, strict=True):
        assert _close(g_folded, g_plain)


def test_up_block_equals_upsample_then_conv_bn_glu(float64):
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


def test_sampling_without_autograd_equals_the_plain_generator(tmp_path, float64):
    """Without autograd the generator folds BatchNorm per call; with it, the plain modules run: same images."""
    from t2i.batch import text_features

    recipe = bench_recipe("dmgan_shapes", None, tiny_overrides(tmp_path / "unused") + ["data.batch_size=2"])
    vocab = synthetic_vocab(30)
    trainer = build_trainer(recipe, vocab)
    batch = synthetic_batch(recipe.stage_sizes(), recipe.data.batch_size, vocab, 12, seed=0)
    trainer.train_step(batch)  # move the BN running statistics away from their initial values
    generator = trainer.ema.model.eval()
    assert not any(isinstance(m, nn.Upsample) for m in generator.modules())  # the upsample is in the conv
    text = text_features(trainer.nets.text_encoder, batch, trainer.mask_ids)
    z = torch.randn(len(batch), recipe.model.z_dim)
    eps = torch.randn(len(batch), recipe.model.cond_dim)
    with torch.enable_grad():
        plain = generator(z, text.sentence, text.words, text.mask, eps=eps).images
    with torch.no_grad():
        folded = generator(z, text.sentence, text.words, text.mask, eps=eps).images
    for a, b in zip(folded, plain, strict=True):
        assert _close(a, b.detach())
