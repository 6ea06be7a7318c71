"""Nearest x2 upsample followed by a 3x3 convolution, computed as four 2x2 "phase" convolutions at the input size.

    up2_conv3x3(x, W, b) = conv3x3(upsample_nearest_x2(x), W, b)        (stride 1, zero padding 1)

Output pixel (2i+a, 2j+b) reads source rows {i-1, i} (a = 0) or {i, i+1} (a = 1), and the same for columns: the
3x3 taps that land on one source pixel are summed into one 2x2 kernel per phase (a, b). Same function to float
rounding, with 16 instead of 36 multiply-adds per source pixel and no 4x upsampled copy (sub-pixel convolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i.ops import _chunks
from t2i.runtime import autocast_inputs

_PHASES = ((0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3))  # (a, b, phase index a*2 + b)


def up2_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``conv3x3(nearest_upsample_x2(x), weight, bias)``: x (B, I, H, W), weight (O, I, 3, 3) -> (B, O, 2H, 2W)."""
    k0, k1, k2 = weight[:, :, 0], weight[:, :, 1], weight[:, :, 2]  # kernel rows, each (O, I, 3)
    rows = (torch.stack((k0, k1 + k2), dim=2), torch.stack((k0 + k1, k2), dim=2))  # (O, I, 2, 3) for a = 0, 1

    def cols(r: Tensor) -> tuple[Tensor, Tensor]:
        c0, c1, c2 = r[..., 0], r[..., 1], r[..., 2]
        return torch.stack((c0, c1 + c2), dim=3), torch.stack((c0 + c1, c2), dim=3)  # (O, I, 2, 2) for b = 0, 1

    kernels = torch.cat([k for r in rows for k in cols(r)], dim=0)  # (4O, I, 2, 2), phase a*2 + b major
    phase_bias = None if bias is None else bias.repeat(4)
    x, kernels, phase_bias = autocast_inputs(x, kernels, phase_bias)  # mixed precision: one type in backward
    return _PhaseConv.apply(x, kernels, phase_bias, weight.shape[0])


class UpsampleConv3x3(nn.Conv2d):
    """Nearest x2 upsample then conv3x3, by :func:`up2_conv3x3`; parameters (and keys) of a plain conv3x3."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # nn.Conv2d.forward calls it
        return up2_conv3x3(x, weight, bias)  # (B, I, H, W) -> (B, O, 2H, 2W)


def _phase_map_bytes(x: Tensor, out_channels: int) -> int:
    """Bytes of one sample's four phase maps (4O, H+1, W+1) for input x (B, I, H, W)."""
    return 4 * out_channels * (x.shape[2] + 1) * (x.shape[3] + 1) * x.element_size()


class _PhaseConv(torch.autograd.Function):
    """The four phase convolutions and their interleaving into the upsampled image.

    One conv with padding 1 gives all four phases as (B, 4O, H+1, W+1) maps: output row r reads source rows
    {r-1, r}, so phase a (source rows {i-1+a, i+a}) is map rows a .. a+H-1; the same for columns. Pixel
    (2i+a, 2j+b) of the image is phase (a, b) at (i+a, j+b).

    Forward and backward run over batch chunks of bounded size, so neither the full phase maps nor their gradient
    exist next to the full-size image or its gradient (this conv's backward was the generator's memory peak). Per
    sample the math is unchanged; the kernel gradient is summed over the chunks.
    """

    @staticmethod
    def forward(ctx, x: Tensor, kernels: Tensor, bias: Tensor | None, out_channels: int) -> Tensor:
        batch, _, height, width = x.shape
        out = x.new_empty(batch, out_channels, height, 2, width, 2)  # (B, O, H, a, W, b) = (B, O, 2H, 2W)
        for lo, hi in _chunks.chunk_ranges(batch, _phase_map_bytes(x, out_channels)):
            phases = F.conv2d(x[lo:hi], kernels, bias, padding=1)
            for a, b, k in _PHASES:
                out[lo:hi, :, :, a, :, b] = phases[:, k * out_channels : (k + 1) * out_channels, a : a + height,
                                                   b : b + width]  # fmt: skip
        ctx.save_for_backward(x, kernels)
        ctx.out_channels = out_channels
        return out.view(batch, out_channels, 2 * height, 2 * width)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, kernels = ctx.saved_tensors
        channels, (batch, _, height, width) = ctx.out_channels, x.shape
        need_x, need_k, need_b = ctx.needs_input_grad[:3]
        grad_x = torch.empty_like(x) if need_x else None
        grad_k = torch.zeros_like(kernels) if need_k else None
        grad_b = grad.new_zeros(4 * channels) if need_b else None
        image = grad.reshape(batch, channels, height, 2, width, 2)
        for lo, hi in _chunks.chunk_ranges(batch, _phase_map_bytes(x, channels)):
            phases = grad.new_empty(hi - lo, 4 * channels, height + 1, width + 1)
            for a, b, k in _PHASES:
                block = phases[:, k * channels : (k + 1) * channels]
                block[:, :, height if a == 0 else 0].zero_()  # the map row and column this phase does not use
                block[:, :, :, width if b == 0 else 0].zero_()
                block[:, :, a : a + height, b : b + width] = image[lo:hi, :, :, a, :, b]
            gx, gk, gb = torch.ops.aten.convolution_backward(
                phases, x[lo:hi], kernels, [4 * channels], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [need_x, need_k, need_b],
            )  # fmt: skip
            if need_x:
                grad_x[lo:hi] = gx
            if need_k:
                grad_k += gk
            if need_b:
                grad_b += gb
            del phases, gx, gk, gb
        return grad_x, grad_k, grad_b, None
