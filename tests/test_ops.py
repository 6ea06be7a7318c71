"""Each kernel of t2i.ops computes the plain composition it stands for: values and gradients in float64.

Plus what each one is for: fewer bytes kept for backward, and the one BatchNorm-folding cache rule.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from t2i import ops
from t2i.ops import _chunks


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def saved_bytes(fn):
    """Bytes of the distinct tensors autograd keeps for backward while ``fn()`` runs (parameters excluded)."""
    seen: dict[int, int] = {}

    def pack(t):
        if not isinstance(t, nn.Parameter):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def grads_of(out: torch.Tensor, target: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad((out * target).sum(), tensors)


def randomized_bn(channels: int) -> nn.BatchNorm2d:
    """A BatchNorm with trained-looking affine parameters and statistics."""
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.normal_(1, 0.3), bn.bias.normal_(0, 0.3)
        bn.running_mean.normal_(0, 0.3), bn.running_var.uniform_(0.5, 2.0)
    return bn


# -- phase (sub-pixel) upsample conv ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_up2_conv3x3_equals_nearest_upsample_then_conv3x3(monkeypatch, bias):
    torch.manual_seed(4)
    x = torch.randn(5, 3, 6, 7, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True) if bias else None
    inputs = (x, weight) if b is None else (x, weight, b)
    target = torch.randn(5, 4, 12, 14)
    plain = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, b, padding=1)
    expected = grads_of(plain, target, *inputs)

    whole = ops.up2_conv3x3(x, weight, b)
    torch.testing.assert_close(whole, plain, rtol=1e-10, atol=1e-12)
    for a, e in zip(grads_of(whole, target, *inputs), expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    monkeypatch.setattr(_chunks, "CHUNK_BYTES", 2 * 4 * 4 * 7 * 8 * 8)  # two samples' phase maps: chunks 2, 2, 1
    assert _chunks.chunk_ranges(5, 4 * 4 * 7 * 8 * 8) == [(0, 2), (2, 4), (4, 5)]
    chunked = ops.up2_conv3x3(x, weight, b)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    for a, e in zip(grads_of(chunked, target, *inputs), expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


def test_upsample_conv_module_is_a_conv3x3_with_the_same_keys():
    conv = ops.UpsampleConv3x3(3, 4)
    assert list(conv.state_dict()) == ["weight"] and conv.weight.shape == (4, 3, 3, 3)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(F.interpolate(x, scale_factor=2.0), conv.weight, padding=1),
                               rtol=1e-10, atol=1e-12)  # fmt: skip


# -- BatchNorm + GLU -------------------------------------------------------------------------------------------------
def test_bn_glu_equals_batchnorm_then_glu_and_keeps_only_the_bn_input():
    torch.manual_seed(0)
    bn = randomized_bn(6).train()
    plain = copy.deepcopy(bn)
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    target = torch.randn(4, 3, 5, 5)
    kept_fast, out = saved_bytes(lambda: ops.bn_glu(x, bn))
    kept_plain, ref = saved_bytes(lambda: F.glu(plain(x), dim=1))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_of(out, target, x, bn.weight, bn.bias), grads_of(ref, target, x, plain.weight, plain.bias),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bn, name), getattr(plain, name), rtol=0, atol=0)
    assert kept_fast <= kept_plain - x.numel() * 8  # bn(x) is not kept


def test_bn_glu_in_eval_and_without_grad_is_the_plain_composition():
    bn = randomized_bn(4).eval()
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(ops.bn_glu(x, bn), F.glu(bn(x), dim=1), rtol=0, atol=0)
    with torch.no_grad():
        expected = F.glu(F.batch_norm(x, None, None, bn.weight, bn.bias, True), dim=1)
        torch.testing.assert_close(ops.bn_glu(x, bn.train()), expected, rtol=1e-12, atol=1e-12)


def test_bn_glu_backward_in_channel_groups_equals_one_group(monkeypatch):
    torch.manual_seed(5)
    x = torch.randn(3, 10, 4, 5, requires_grad=True)
    bn = randomized_bn(10).train()
    target = torch.randn(3, 5, 4, 5)

    def run():
        return grads_of(ops.bn_glu(x, bn), target, x, bn.weight, bn.bias)

    whole = run()
    monkeypatch.setattr(_chunks, "CHUNK_BYTES", 2 * 2 * 3 * 4 * 5 * 8)  # two channel pairs at a time: 2, 2, 1
    for a, b in zip(whole, run(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


class CountingRecompute(ops.RecomputeGLUOutputs):
    """RecomputeGLUOutputs that counts the bytes it still keeps (the innermost saved-tensor hooks are the ones used)."""

    def __init__(self):
        super().__init__()
        self.kept: dict[int, int] = {}

    def _pack(self, t):
        packed = super()._pack(t)
        if isinstance(packed, torch.Tensor) and not isinstance(packed, nn.Parameter):
            self.kept[packed.untyped_storage().data_ptr()] = packed.untyped_storage().nbytes()
        return packed


def test_recompute_glu_outputs_keeps_no_copy_for_the_next_conv():
    torch.manual_seed(9)
    bn, weight = randomized_bn(8).train(), torch.randn(5, 4, 3, 3, requires_grad=True)
    x = torch.randn(3, 8, 6, 6, requires_grad=True)
    target = torch.randn(3, 5, 6, 6)

    def layer():
        return F.conv2d(ops.bn_glu(x, bn), weight, padding=1)

    kept_plain, ref = saved_bytes(layer)
    with CountingRecompute() as context:
        out = layer()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for a, b in zip(grads_of(out, target, x, weight), grads_of(ref, target, x, weight), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the recomputed output has the kept one's bits
    assert sum(context.kept.values()) <= kept_plain - 3 * 4 * 6 * 6 * 8  # the GLU output (B, 4, 6, 6) is not kept


# -- BatchNorm folding -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("conv_bias", [False, True])
def test_fold_batchnorm_equals_batchnorm_of_the_conv(conv_bias):
    torch.manual_seed(1)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=conv_bias), randomized_bn(4).eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        weight, bias = ops.fold_batchnorm(conv, bn)
        torch.testing.assert_close(F.conv2d(x, weight, bias, padding=1), bn(conv(x)), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ops.conv_bn(conv, bn, x), bn(conv(x)), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ops.conv_bn_glu(conv, bn, x), F.glu(bn(conv(x)), dim=1), rtol=1e-10, atol=1e-12)


def test_fold_batchnorm_caching_rule():
    conv, bn = nn.Conv2d(3, 4, 1, bias=False), randomized_bn(4).eval()
    x = torch.randn(2, 3, 4, 4)
    assert ops.fold_batchnorm(conv, bn) is None  # autograd on and trainable weights: run the modules
    with torch.no_grad():
        first = ops.fold_batchnorm(conv, bn)
        again = ops.fold_batchnorm(conv, bn)
        assert again[0] is first[0] and again[1] is first[1]  # unchanged sources: the cached pair
        bn.running_mean.add_(1.0)  # an in-place change (a load, an EMA step) is seen at the next call
        torch.testing.assert_close(ops.conv_bn(conv, bn, x), bn(conv(x)), rtol=1e-10, atol=1e-12)
        conv.load_state_dict({"weight": torch.randn(4, 3, 1, 1)})
        torch.testing.assert_close(ops.conv_bn(conv, bn, x), bn(conv(x)), rtol=1e-10, atol=1e-12)
        assert ops.fold_batchnorm(conv, bn.train()) is None  # batch statistics: nothing to fold
    conv.requires_grad_(False), bn.requires_grad_(False)
    assert ops.fold_batchnorm(conv, bn.eval()) is not None  # frozen: folded with autograd on (gradient to x only)


def test_a_fold_made_in_inference_mode_can_be_saved_for_backward():
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=False).requires_grad_(False), randomized_bn(4).eval()
    bn.requires_grad_(False)
    x = torch.randn(2, 3, 5, 5)
    with torch.inference_mode():
        ops.conv_bn(conv, bn, x)
    x.requires_grad_(True)
    out = ops.frozen_conv_relu(x, *ops.fold_batchnorm(conv, bn), 1, 1)  # saves the cached W' for backward
    (grad,) = grads_of(out, torch.ones_like(out), x)
    x2 = x.detach().requires_grad_(True)
    (expected,) = grads_of(F.relu(bn(conv(x2))), torch.ones_like(out), x2)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


# -- frozen conv + ReLU ----------------------------------------------------------------------------------------------
def test_frozen_conv_relu_equals_conv_then_relu_and_keeps_a_mask():
    torch.manual_seed(2)
    weight, bias = torch.randn(6, 4, 3, 3), torch.randn(6)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    target = torch.randn(2, 6, 5, 5)
    kept_fast, out = saved_bytes(lambda: ops.frozen_conv_relu(x, weight, bias, 2, 1))
    kept_plain, ref = saved_bytes(lambda: F.relu(F.conv2d(x, weight, bias, 2, 1)))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads_of(out, target, x)[0], grads_of(ref, target, x)[0], rtol=1e-10, atol=1e-12)
    assert kept_fast <= out.numel() + weight.numel() * 8  # a 1-byte mask and the (frozen) kernel
    assert kept_fast < kept_plain


def test_frozen_pool_conv1x1_relu_equals_pool_then_conv_then_relu():
    torch.manual_seed(3)
    weight, bias = torch.randn(3, 8, 1, 1), torch.randn(3)
    x = torch.randn(2, 8, 7, 7, requires_grad=True)
    target = torch.randn(2, 3, 7, 7)
    out = ops.frozen_pool_conv1x1_relu(x, weight, bias)
    ref = F.relu(F.conv2d(F.avg_pool2d(x, 3, 1, 1), weight, bias))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads_of(out, target, x)[0], grads_of(ref, target, x)[0], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="1x1 kernel"):
        ops.frozen_pool_conv1x1_relu(x, torch.randn(3, 8, 3, 3), bias)


# -- conv over a channel concatenation -------------------------------------------------------------------------------
def test_concat_conv1x1_equals_the_conv_of_the_concatenation():
    torch.manual_seed(7)
    conv = ops.ConcatConv1x1(7, 3, bias=True)
    parts = (torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 4, 4, 4, requires_grad=True))
    target = torch.randn(2, 3, 4, 4)
    out, ref = conv(parts), F.conv2d(torch.cat(parts, 1), conv.weight, conv.bias)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    inputs = (*parts, conv.weight, conv.bias)
    for a, b in zip(grads_of(out, target, *inputs), grads_of(ref, target, *inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert list(conv.state_dict()) == ["weight", "bias"] and isinstance(conv, nn.Conv2d)
    with pytest.raises(ValueError, match="the parts have 3 channels, the conv takes 7"):
        conv(parts[:1])


def test_conv_of_a_duplicated_part_sums_the_kernel_halves():
    torch.manual_seed(8)
    conv = ops.ConcatConv2d(8, 6, kernel_size=3, padding=1, bias=False)
    r = torch.randn(2, 4, 5, 5, requires_grad=True)
    target = torch.randn(2, 6, 5, 5)
    kept_fast, out = saved_bytes(lambda: conv((r, r)))
    kept_plain, ref = saved_bytes(lambda: F.conv2d(torch.cat((r, r), 1), conv.weight, padding=1))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_of(out, target, r, conv.weight), grads_of(ref, target, r, conv.weight), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    summed_kernel = conv.weight.numel() // 2 * 8
    assert kept_fast - summed_kernel <= kept_plain - r.numel() * 8  # [r; r] is never built nor kept: r is
    y = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(ops.add_channels(y, (r, r)), y + torch.cat((r, r), 1), rtol=0, atol=0)
    assert ops.concat((r, r)).shape == (2, 8, 5, 5) and ops.concat(r) is r
