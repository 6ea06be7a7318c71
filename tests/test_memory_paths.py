"""The memory- and FLOP-saving paths compute the plain composition's values and gradients.

Each fast path is compared in float64 with the composition it replaces: BatchNorm + GLU that keeps only the BN
input for backward, the residual block that folds DM-GAN's doubled input, and the frozen Inception blocks that fold
their BatchNorm into the conv. Plus: each one really keeps fewer bytes for backward.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from t2i.models.blocks import ResBlock, bn_glu, up_block
from t2i.registry import get_registry


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd keeps for backward while ``fn()`` runs (parameters excluded)."""
    seen: dict[int, int] = {}

    def pack(t):
        if not isinstance(t, nn.Parameter):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def grads(module: nn.Module, *inputs: torch.Tensor) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()] + [x.grad.clone() for x in inputs]


def test_bn_glu_matches_batchnorm_then_glu():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6)
    nn.init.normal_(bn.weight, 1.0, 0.3), nn.init.normal_(bn.bias, 0.0, 0.3)
    plain = copy.deepcopy(bn)
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    target = torch.randn(4, 3, 5, 5)

    kept_fast, out = saved_bytes(lambda: bn_glu(x, bn))
    kept_plain, ref = saved_bytes(lambda: F.glu(plain(x2), dim=1))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    (out * target).sum().backward()
    (ref * target).sum().backward()
    for a, b in zip(grads(bn, x), grads(plain, x2), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bn, name), getattr(plain, name), rtol=0, atol=0)
    assert kept_fast <= kept_plain - x.numel() * 8  # bn(x) is not kept


def test_bn_glu_in_eval_and_without_grad_is_the_plain_composition():
    bn = nn.BatchNorm2d(4).eval()
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(bn_glu(x, bn), F.glu(bn(x), dim=1), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(bn_glu(x, bn.train()), F.glu(F.batch_norm(x, None, None, bn.weight, bn.bias, True),
                                                               dim=1), rtol=1e-12, atol=1e-12)  # fmt: skip


def test_up_block_keeps_the_original_keys():
    assert list(up_block(8, 4).state_dict()) == [
        "1.weight", "2.weight", "2.bias", "2.running_mean", "2.running_var", "2.num_batches_tracked",
    ]  # fmt: skip


def test_res_block_folds_the_doubled_input():
    torch.manual_seed(1)
    block = ResBlock(8)
    plain = copy.deepcopy(block)
    r = torch.randn(3, 4, 24, 24, requires_grad=True)
    r2 = r.detach().clone().requires_grad_(True)
    target = torch.randn(3, 8, 24, 24)
    kept_fast, out = saved_bytes(lambda: block.forward_doubled(r))
    kept_plain, ref = saved_bytes(lambda: plain(torch.cat((r2, r2), dim=1)))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    (out * target).sum().backward()
    (ref * target).sum().backward()
    for a, b in zip(grads(block, r), grads(plain, r2), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert kept_fast < kept_plain


class OnlyForward(nn.Module):
    """A refiner seen through its contract only (no ``forward_half``)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        return self.inner(*args)


@pytest.mark.parametrize("refiner", ["dm", "gldm"])
def test_generator_with_and_without_the_folded_doubling(refiner):
    from t2i.models.generator import init_weights
    from t2i.networks import build_generator
    from t2i.recipe import load

    recipe = load("dmgan_shapes", ["model.gf_dim=4", "model.text_dim=8", "model.base_size=8", "model.stages=3",
                                   f'model.refiner={{name="{refiner}"}}'])  # fmt: skip
    torch.manual_seed(2)
    g = init_weights(build_generator(recipe)).train()
    plain = copy.deepcopy(g)
    for stage in plain.stages:
        stage.refiner = OnlyForward(stage.refiner)  # the stage falls back to forward(): the doubled tensor
    B, T = 3, 5
    z, sentence = torch.randn(B, recipe.model.z_dim), torch.randn(B, 8)
    words, eps = torch.randn(B, 8, T), torch.randn(B, recipe.model.cond_dim)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 3:] = True
    outs = [m(z, sentence, words, mask, eps=eps) for m in (g, plain)]
    weights = [torch.randn_like(im) for im in outs[0].images]
    for out in outs:
        sum((im * w).sum() for im, w in zip(out.images, weights, strict=True)).backward()
    for a, b in zip(outs[0].images, outs[1].images, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for (name, p), q in zip(g.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10, msg=name)


def test_frozen_inception_folds_its_batchnorm():
    get_registry("image_encoder").discover()
    from t2i.encoders.damsm_image import DamsmInceptionEncoder, DamsmInceptionParams

    torch.manual_seed(3)
    encoder = DamsmInceptionEncoder(DamsmInceptionParams(weights="random"), text_dim=8)
    for m in encoder.modules():  # a trained trunk: BN statistics and affine parameters away from 0 / 1
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.1), m.bias.normal_(0, 0.1)
    encoder.eval()
    plain = copy.deepcopy(encoder)  # every block's BatchNorm run as a module (the unfolded branch), in eval too
    for m in plain.modules():
        if type(m).__name__ == "FoldingBasicConv2d":
            m.forward = lambda x, m=m: F.relu(m.bn(m.conv(x)))
        elif type(m).__name__ in ("InceptionA", "InceptionC", "InceptionE"):  # torchvision's own: pool, then conv
            m._forward = functools.partial(type(m).__mro__[1]._forward, m)

    def run(model, images):
        images = images.clone().requires_grad_(True)
        kept, (regions, code) = saved_bytes(lambda: model(images))
        (regions.sum() + code.sum()).backward()
        return kept, regions, code, images.grad

    images = torch.rand(2, 3, 64, 64) * 2 - 1
    fast, plain_run = run(encoder, images), run(plain, images)
    for a, b in zip(fast[1:], plain_run[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    # activations kept per image (the folded kernels are kept once, like parameters)
    per_image = [both[0] - run(model, images[:1])[0] for both, model in ((fast, encoder), (plain_run, plain))]
    assert per_image[0] < 0.5 * per_image[1]
    assert list(encoder.state_dict()) == list(plain.state_dict())  # original key names: original files still load


def test_upsample_conv_in_batch_chunks_equals_one_pass(monkeypatch):
    from t2i.models import blocks

    torch.manual_seed(4)
    x = torch.randn(5, 3, 6, 7, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    target = torch.randn(5, 4, 12, 14)

    def run():
        out = blocks.up2_conv3x3(x, weight)
        (out * target).sum().backward()
        result = out.detach(), x.grad.clone(), weight.grad.clone()
        x.grad = weight.grad = None
        return result

    whole = run()
    monkeypatch.setattr(blocks, "_CHUNK_BYTES", 2 * 4 * 4 * 7 * 8 * 8)  # two samples' phase maps: chunks 2, 2, 1
    assert blocks._chunks(5, 4 * 4 * 7 * 8 * 8) == [(0, 2), (2, 4), (4, 5)]
    chunked = run()
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    reference = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)
    torch.testing.assert_close(chunked[0], reference, rtol=1e-10, atol=1e-12)


def test_bn_glu_backward_in_channel_groups_equals_one_group(monkeypatch):
    from t2i.models import blocks

    torch.manual_seed(5)
    x = torch.randn(3, 10, 4, 5, requires_grad=True)
    bn = nn.BatchNorm2d(10)
    nn.init.normal_(bn.weight, 1.0, 0.3), nn.init.normal_(bn.bias, 0.0, 0.3)
    target = torch.randn(3, 5, 4, 5)

    def run():
        (bn_glu(x, bn) * target).sum().backward()
        result = x.grad.clone(), bn.weight.grad.clone(), bn.bias.grad.clone()
        x.grad = bn.weight.grad = bn.bias.grad = None
        return result

    whole = run()
    monkeypatch.setattr(blocks, "_CHUNK_BYTES", 2 * 2 * 3 * 4 * 5 * 8)  # two channel pairs at a time: 2, 2, 1
    for a, b in zip(whole, run(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_generator_recomputes_glu_outputs_instead_of_keeping_them():
    from t2i.models.generator import init_weights
    from t2i.networks import build_generator
    from t2i.recipe import load

    recipe = load("dmgan_shapes", ["model.gf_dim=4", "model.text_dim=8", "model.base_size=8", "model.stages=2"])
    torch.manual_seed(6)
    g = init_weights(build_generator(recipe)).train()
    keep = copy.deepcopy(g)
    B, T = 3, 5
    z, sentence = torch.randn(B, recipe.model.z_dim), torch.randn(B, 8)
    words, eps = torch.randn(B, 8, T), torch.randn(B, recipe.model.cond_dim)
    kept_fast, out = saved_bytes(lambda: g(z, sentence, words, None, eps=eps))
    kept_plain, ref = saved_bytes(lambda: keep._forward(z, sentence, words, None, eps))  # without the context
    weights = [torch.randn_like(im) for im in out.images]
    for o in (out, ref):
        sum((im * w).sum() for im, w in zip(o.images, weights, strict=True)).backward()
    for a, b in zip(out.images, ref.images, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for (name, p), q in zip(g.named_parameters(), keep.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)  # recomputed bits equal the kept ones
    # the last stage's GLU output (B, 4, 16, 16) is no longer kept for the image head, nor the residual blocks' GLUs
    assert kept_fast <= kept_plain - B * 4 * 16 * 16 * 8


def test_conv1x1_of_concat_equals_the_conv_of_the_concatenation():
    from t2i.models.blocks import conv1x1_of_concat

    torch.manual_seed(7)
    conv = nn.Conv2d(7, 3, kernel_size=1, bias=True)
    parts = (torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4))
    torch.testing.assert_close(conv1x1_of_concat(parts, conv), conv(torch.cat(parts, 1)), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="parts have 3 channels"):
        conv1x1_of_concat(parts[:1], conv)


def test_inference_folds_batchnorm_into_the_generator_convs():
    torch.manual_seed(8)
    blocks_ = [up_block(4, 3), ResBlock(6)]
    for block in blocks_:
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                with torch.no_grad():
                    m.running_mean.normal_(0, 0.3), m.running_var.uniform_(0.5, 2.0)
                    m.weight.normal_(1, 0.2), m.bias.normal_(0, 0.2)
        block.eval()
    up, res = blocks_
    x, r = torch.randn(2, 4, 5, 5), torch.randn(2, 3, 5, 5)
    plain_up = F.glu(up[2](F.conv2d(F.interpolate(x, scale_factor=2.0), up[1].weight, padding=1)), dim=1)
    b = res.block
    plain_res = lambda v: b[4](b[3](F.glu(b[1](b[0](v)), dim=1))) + v  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(up(x), plain_up, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res(torch.cat((r, r), 1)), plain_res(torch.cat((r, r), 1)), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res.forward_doubled(r), plain_res(torch.cat((r, r), 1)), rtol=1e-10, atol=1e-12)
        with torch.no_grad():  # a changed statistic (an EMA update, a load) is seen at once
            up[2].running_mean.add_(1.0)
        plain_up = F.glu(up[2](F.conv2d(F.interpolate(x, scale_factor=2.0), up[1].weight, padding=1)), dim=1)
        torch.testing.assert_close(up(x), plain_up, rtol=1e-10, atol=1e-12)
    from t2i.models.blocks import inference_folded

    assert inference_folded(up[1], up[2]) is None  # autograd on: the plain modules run
    with torch.no_grad():
        assert inference_folded(up[1], up[2].train()) is None  # batch statistics: nothing to fold
