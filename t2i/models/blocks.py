"""Generator building blocks shared by every model (models.md §2).

Submodule layouts (``nn.Sequential`` indices) follow the originals so that original
state dicts map onto these modules by renaming prefixes only (t2i/legacy/generator.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GLU(nn.Module):
    """Gated linear unit over channels: ``a * σ(b)`` for ``[a, b] = split(x, 2, dim=1)``."""

    def forward(self, x: Tensor) -> Tensor:
        channels = x.size(1)
        if channels % 2:
            raise ValueError(f"GLU needs an even number of channels, got {channels}")
        return F.glu(x, dim=1)  # x[:, :C/2] * sigmoid(x[:, C/2:]) in one kernel


def conv3x3(in_channels: int, out_channels: int, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution, stride 1, padding 1 (no bias on the generator side)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)


def conv1x1(in_channels: int, out_channels: int, bias: bool = False) -> nn.Conv2d:
    """1x1 convolution (no bias unless asked)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0, bias=bias)


def up2_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``conv3x3(nearest_upsample_x2(x))`` (stride 1, padding 1) as one 2x2 convolution at the input size.

    Output pixel (2i+a, 2j+b) reads source rows {i-1, i} (a=0) or {i, i+1} (a=1), and the same for columns; the
    3x3 taps that land on one source pixel are summed into one 2x2 kernel per phase (a, b). The same function of
    x and W up to float rounding, with 16 instead of 36 multiply-adds per source pixel and no 4x upsampled copy.
    x (B, I, H, W), weight (O, I, 3, 3) -> (B, O, 2H, 2W).
    """
    k0, k1, k2 = weight[:, :, 0], weight[:, :, 1], weight[:, :, 2]  # kernel rows, each (O, I, 3)
    rows = (torch.stack((k0, k1 + k2), dim=2), torch.stack((k0 + k1, k2), dim=2))  # (O, I, 2, 3) for a = 0, 1

    def cols(r: Tensor) -> tuple[Tensor, Tensor]:
        c0, c1, c2 = r[..., 0], r[..., 1], r[..., 2]
        return torch.stack((c0, c1 + c2), dim=3), torch.stack((c0 + c1, c2), dim=3)  # (O, I, 2, 2) for b = 0, 1

    kernels = torch.cat([k for r in rows for k in cols(r)], dim=0)  # (4O, I, 2, 2), phase a*2 + b major
    # One conv for all four phases: with padding 1, output row r reads source rows {r-1, r}, so phase a
    # (source rows {i-1+a, i+a}) is output rows a .. a+H-1; the same for columns.
    out = _Interleave.apply(F.conv2d(x, kernels, None, padding=1), weight.shape[0])  # (B, O, 2H, 2W)
    return out if bias is None else out + bias[:, None, None]


class _Interleave(torch.autograd.Function):
    """Phase maps (B, 4O, H+1, W+1) -> image (B, O, 2H, 2W): pixel (2i+a, 2j+b) = phase (a, b) at (i+a, j+b).

    As a Function so that backward gathers the phases of the incoming gradient into one new tensor; autograd's
    version of four slice assignments kept several full-size copies alive at the generator's memory peak.
    """

    @staticmethod
    def forward(ctx, y: Tensor, out_channels: int) -> Tensor:
        batch, _, height, width = y.shape[0], y.shape[1], y.shape[2] - 1, y.shape[3] - 1
        out = y.new_empty(batch, out_channels, height, 2, width, 2)  # (B, O, H, a, W, b) = (B, O, 2H, 2W)
        for a, b, k in _PHASES:
            out[:, :, :, a, :, b] = y[:, k * out_channels : (k + 1) * out_channels, a : a + height, b : b + width]
        ctx.y_shape, ctx.out_channels = y.shape, out_channels
        return out.view(batch, out_channels, 2 * height, 2 * width)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (batch, _, rows, cols), channels = ctx.y_shape, ctx.out_channels
        height, width = rows - 1, cols - 1
        phases = grad.reshape(batch, channels, height, 2, width, 2)
        grad_y = grad.new_zeros(ctx.y_shape)
        for a, b, k in _PHASES:
            grad_y[:, k * channels : (k + 1) * channels, a : a + height, b : b + width] = phases[:, :, :, a, :, b]
        return grad_y, None


_PHASES = ((0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3))  # (a, b, phase index a*2 + b)


class UpsampleConv3x3(nn.Conv2d):
    """Nearest x2 upsample followed by conv3x3, computed by :func:`up2_conv3x3`; parameters as ``conv3x3``."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, I, H, W) -> (B, O, 2H, 2W)
        return up2_conv3x3(x, self.weight, self.bias)


class _BatchNormGLU(torch.autograd.Function):
    """``glu(bn(x))`` for a BatchNorm2d in training mode that keeps only ``x`` (and the batch statistics).

    Autograd would keep both x (for BN) and z = bn(x) (for GLU). Here backward recomputes the two halves of z from x
    and the saved statistics, one half at a time, writes ∂L/∂z into one buffer and hands it to PyTorch's own
    BatchNorm backward kernel: the activation memory of the block drops by the size of z and backward needs no more
    scratch memory than autograd's (issue 8). The forward is nn.BatchNorm2d's: same kernel, same running-statistics
    update. Values are those of the plain composition; gradients equal them to float rounding (z is recomputed).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, bn: nn.BatchNorm2d) -> Tensor:
        factor = _running_stats_factor(bn)
        stats = bn.running_mean, bn.running_var
        z, mean, invstd = torch.native_batch_norm(x, weight, bias, *stats, True, factor, bn.eps)
        ctx.eps = bn.eps
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        return F.glu(z, dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        half = x.shape[1] // 2
        scale = invstd * weight  # z = x * scale + shift, per channel
        shift = bias - mean * scale

        def z_of(lo: int, hi: int) -> Tensor:
            return torch.addcmul(shift[lo:hi, None, None], x[:, lo:hi], scale[lo:hi, None, None])

        dz = torch.empty_like(x, memory_format=torch.contiguous_format)
        gate = torch.sigmoid(z_of(half, 2 * half))  # σ(b)
        torch.mul(grad, gate, out=dz[:, :half])  # ∂L/∂a = g σ(b)
        value = z_of(0, half).mul_(grad).mul_(gate)  # g a σ(b)
        dz[:, half:] = value.mul_(gate.neg_().add_(1))  # ∂L/∂b = g a σ(b) (1 − σ(b))
        del gate, value
        dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            dz, x, weight, None, None, mean, invstd, True, ctx.eps, list(ctx.needs_input_grad[:3])
        )
        return dx, dweight, dbias, None


def _running_stats_factor(bn: nn.BatchNorm2d) -> float:
    """The running-statistics momentum nn.BatchNorm2d uses for this call; counts the batch as the module does."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return factor


def bn_glu(x: Tensor, bn: nn.Module) -> Tensor:
    """``GLU(bn(x))``; in training, a plain BatchNorm2d keeps only x for backward (``_BatchNormGLU``)."""
    # Only an unmodified BatchNorm2d: a replaced forward or a hook on the module must still run.
    plain_bn = type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats and "forward" not in vars(bn)
    if plain_bn and bn.training and torch.is_grad_enabled() and not (bn._forward_hooks or bn._forward_pre_hooks):
        return _BatchNormGLU.apply(x, bn.weight, bn.bias, bn)
    return F.glu(bn(x), dim=1)  # eval, no grad, or another norm (SyncBatchNorm under DDP): the plain composition


class UpBlock(nn.Sequential):
    """Nearest x2 upsample -> conv3x3(i, 2o) -> BN -> GLU: (B, i, H, W) -> (B, o, 2H, 2W).

    The upsample is folded into the conv (2.25x fewer FLOPs, issue 8); index 0 stays a parameter-free placeholder so
    the Sequential indices, and therefore the original state-dict keys, are unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int):
        conv = UpsampleConv3x3(in_channels, out_channels * 2)
        super().__init__(nn.Identity(), conv, nn.BatchNorm2d(out_channels * 2), GLU())

    def forward(self, x: Tensor) -> Tensor:
        return bn_glu(self[1](x), self[2])


def up_block(in_channels: int, out_channels: int) -> UpBlock:
    """:class:`UpBlock` (models.md §2 upBlock)."""
    return UpBlock(in_channels, out_channels)


class ResBlock(nn.Module):
    """conv3x3(C, 2C) -> BN -> GLU -> conv3x3(C, C) -> BN, plus the input (no activation after the sum)."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            conv3x3(channels, channels * 2),
            nn.BatchNorm2d(channels * 2),
            GLU(),
            conv3x3(channels, channels),
            nn.BatchNorm2d(channels),
        )

    def _tail(self, y: Tensor) -> Tensor:
        """Everything after the first conv."""
        return self.block[4](self.block[3](bn_glu(y, self.block[1])))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return self._tail(self.block[0](x)) + x

    def forward_doubled(self, r: Tensor) -> Tensor:
        """``forward(cat((r, r), 1))`` without building the doubled input: (B, C/2, H, W) -> (B, C, H, W).

        DM-GAN's refiners hand the residual blocks ``[r; r]`` (models.md §6.3, §12 Q2). A conv of [r; r] is the conv
        of r with the two input halves of the kernel summed: half the first conv's FLOPs, and no doubled tensor.
        """
        conv = self.block[0]
        half = conv.weight.shape[1] // 2
        y = self._tail(F.conv2d(r, conv.weight[:, :half] + conv.weight[:, half:], conv.bias, padding=1))
        batch, channels = y.shape[:2]
        return (y.view(batch, 2, channels // 2, *y.shape[2:]) + r.unsqueeze(1)).view_as(y)


def image_head(channels: int) -> nn.Sequential:
    """GET_IMAGE_G: conv3x3(g, 3) -> tanh, images in [-1, 1]."""
    return nn.Sequential(conv3x3(channels, 3), nn.Tanh())
