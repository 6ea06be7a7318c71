"""The models built on t2i.ops compute what their plain layers compute, values and gradients (float64).

The kernels themselves are checked in tests/test_ops.py; here: the upBlock and residual block (DM-GAN's duplicated
input given as channel parts), the generator with its GLU outputs recomputed, inference with BatchNorm folded, and
the frozen Inception blocks that fold their BatchNorm into the conv. Plus: each really keeps fewer bytes.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from t2i.models.blocks import ResBlock, up_block
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
    kept_fast, out = saved_bytes(lambda: block((r, r)))  # [r; r] as channel parts
    kept_plain, ref = saved_bytes(lambda: plain(torch.cat((r2, r2), dim=1)))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    (out * target).sum().backward()
    (ref * target).sum().backward()
    for a, b in zip(grads(block, r), grads(plain, r2), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert kept_fast < kept_plain


class JoinedOutput(nn.Module):
    """The refiner, its residual input given as one (B, 2g, H, W) tensor instead of channel parts."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        parts, attention = self.inner(*args)
        return torch.cat(parts, dim=1), attention


@pytest.mark.parametrize("refiner", ["dm", "gldm"])
def test_generator_with_and_without_the_duplicated_parts(refiner):
    from t2i.models.generator import init_weights
    from t2i.networks import build_generator
    from t2i.recipe import load

    recipe = load("dmgan_shapes", ["model.gf_dim=4", "model.text_dim=8", "model.base_size=8", "model.stages=3",
                                   f'model.refiner={{name="{refiner}"}}'])  # fmt: skip
    torch.manual_seed(2)
    g = init_weights(build_generator(recipe)).train()
    plain = copy.deepcopy(g)
    for stage in plain.stages:
        stage.refiner = JoinedOutput(stage.refiner)  # the doubled tensor, convolved as it is
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
        torch.testing.assert_close(res((r, r)), plain_res(torch.cat((r, r), 1)), rtol=1e-10, atol=1e-12)
        with torch.no_grad():  # a changed statistic (an EMA update, a load) is seen at once
            up[2].running_mean.add_(1.0)
        plain_up = F.glu(up[2](F.conv2d(F.interpolate(x, scale_factor=2.0), up[1].weight, padding=1)), dim=1)
        torch.testing.assert_close(up(x), plain_up, rtol=1e-10, atol=1e-12)
    from t2i.ops import fold_batchnorm

    assert fold_batchnorm(up[1], up[2]) is None  # autograd on: the plain modules run
    with torch.no_grad():
        assert fold_batchnorm(up[1], up[2].train()) is None  # batch statistics: nothing to fold


def test_frozen_inception_used_in_inference_mode_then_in_a_generator_step():
    """An evaluation under torch.inference_mode() (R-precision, a sample grid) before a generator step."""
    get_registry("image_encoder").discover()
    from t2i.encoders.damsm_image import DamsmInceptionEncoder, DamsmInceptionParams

    torch.manual_seed(10)
    encoder = DamsmInceptionEncoder(DamsmInceptionParams(weights="random"), text_dim=8).eval()
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        before = encoder(images)
    images.requires_grad_(True)
    regions, code = encoder(images)  # the folded kernels cached under inference mode are saved for backward
    (regions.sum() + code.sum()).backward()
    assert images.grad is not None and bool(images.grad.abs().sum() > 0)
    torch.testing.assert_close(regions.detach(), before[0], rtol=0, atol=0)
