"""Generator building blocks shared by every model (models.md §2).

Submodule layouts (``nn.Sequential`` indices) follow the originals so that original
state dicts map onto these modules by renaming prefixes only (t2i/legacy/generator.py).
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from t2i.runtime import autocast_inputs


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


def conv1x1_of_concat(parts: list[Tensor] | tuple[Tensor, ...], conv: nn.Conv2d) -> Tensor:
    """``conv(cat(parts, dim=1))`` for a 1x1 conv as a sum of per-part convs (the kernel split by input channels).

    The same function to float rounding, without the concatenated copy, which autograd would keep for the weight
    gradient next to the parts it keeps anyway (issue 8, memory).
    """
    out, start = None, 0
    for i, part in enumerate(parts):
        width = part.shape[1]
        term = F.conv2d(part, conv.weight[:, start : start + width], conv.bias if i == 0 else None)
        out = term if out is None else out + term
        start += width
    if start != conv.in_channels:
        raise ValueError(f"conv1x1_of_concat: parts have {start} channels, the conv takes {conv.in_channels}")
    return out


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
    phase_bias = None if bias is None else bias.repeat(4)
    x, kernels, phase_bias = autocast_inputs(x, kernels, phase_bias)  # mixed precision: one type in backward
    return _PhaseConv.apply(x, kernels, phase_bias, weight.shape[0])  # (B, O, 2H, 2W)


_CHUNK_BYTES = 16 * 2**20  # phase maps per batch chunk in _PhaseConv


class _PhaseConv(torch.autograd.Function):
    """The four phase convolutions of :func:`up2_conv3x3` and their interleaving into the upsampled image.

    One conv with padding 1 gives all four phases as (B, 4O, H+1, W+1) maps: output row r reads source rows
    {r-1, r}, so phase a (source rows {i-1+a, i+a}) is map rows a .. a+H-1; the same for columns. Pixel
    (2i+a, 2j+b) of the image is phase (a, b) at (i+a, j+b).

    Forward and backward run over batch chunks of at most ``_CHUNK_BYTES`` of phase maps, so neither the full phase
    maps nor their gradient (with oneDNN's reordered copies) exist next to the full-size image or its gradient: this
    conv's backward was the generator's memory peak (issue 8). Per sample the math is unchanged; the kernel gradient
    is summed over the chunks.
    """

    @staticmethod
    def forward(ctx, x: Tensor, kernels: Tensor, bias: Tensor | None, out_channels: int) -> Tensor:
        batch, _, height, width = x.shape
        out = x.new_empty(batch, out_channels, height, 2, width, 2)  # (B, O, H, a, W, b) = (B, O, 2H, 2W)
        for lo, hi in _chunks(batch, _phase_map_bytes(x, out_channels)):
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
        for lo, hi in _chunks(batch, _phase_map_bytes(x, channels)):
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


def _chunks(count: int, bytes_per_item: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges over ``count`` items, each range at most ``_CHUNK_BYTES`` (at least one item)."""
    size = max(1, min(count, _CHUNK_BYTES // max(1, bytes_per_item)))
    return [(lo, min(lo + size, count)) for lo in range(0, count, size)]


def _phase_map_bytes(x: Tensor, out_channels: int) -> int:
    """Bytes of one sample's four phase maps (4O, H+1, W+1) for input x (B, I, H, W)."""
    return 4 * out_channels * (x.shape[2] + 1) * (x.shape[3] + 1) * x.element_size()


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
    scratch memory than autograd's (issue 8). Statistics and running-statistics update are nn.BatchNorm2d's kernels;
    values equal the plain composition to float rounding. Inside :class:`RecomputeGLUOutputs` the output is also
    registered as recomputable from x, so the layer after it need not keep it either.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, bn: nn.BatchNorm2d) -> Tensor:
        factor = _running_stats_factor(bn)  # bn_glu only sends a BatchNorm2d with running statistics
        mean, var = torch.batch_norm_update_stats(x, bn.running_mean, bn.running_var, factor)
        invstd = (var + bn.eps).rsqrt()
        ctx.eps = bn.eps
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        scale, shift = _scale_shift(weight, bias, mean, invstd)
        out = _glu_of_normalized(x, scale, shift)
        _note_recomputable(out, functools.partial(_glu_of_normalized, x, scale, shift))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        half = x.shape[1] // 2
        scale, shift = _scale_shift(weight, bias, mean, invstd)
        need = list(ctx.needs_input_grad[:3])
        grads = [torch.empty_like(t) if n else None for t, n in zip((x, weight, bias), need, strict=True)]
        # Channel groups c and c + half (a and its gate b) at a time: BatchNorm's backward is per channel, so ∂L/∂z
        # never exists at full size next to ∂L/∂x (the last upBlock's backward is the generator's memory peak).
        for lo, hi in _chunks(half, 2 * x[:, :1].numel() * x.element_size()):
            g = grad[:, lo:hi]
            gate = torch.sigmoid(_normalized(x, scale, shift, half + lo, half + hi))  # σ(b)
            dz_a = g * gate  # ∂L/∂a = g σ(b)
            # ∂L/∂b = g a σ(b) (1 − σ(b))
            dz_b = _normalized(x, scale, shift, lo, hi).mul_(g).mul_(gate).mul_(gate.neg_().add_(1))
            del gate
            for c0, dz in ((lo, dz_a), (half + lo, dz_b)):
                c1 = c0 + hi - lo
                parts = torch.ops.aten.native_batch_norm_backward(
                    dz, x[:, c0:c1], weight[c0:c1], None, None, mean[c0:c1], invstd[c0:c1], True, ctx.eps, need
                )
                for full, part in zip(grads, parts, strict=True):
                    if full is not None:
                        (full[:, c0:c1] if full.dim() > 1 else full[c0:c1]).copy_(part)
            del dz_a, dz_b
        return *grads, None


def _scale_shift(weight: Tensor, bias: Tensor, mean: Tensor, invstd: Tensor) -> tuple[Tensor, Tensor]:
    """bn(x) = x * scale + shift per channel."""
    scale = invstd * weight
    return scale, bias - mean * scale


def _normalized(x: Tensor, scale: Tensor, shift: Tensor, lo: int, hi: int) -> Tensor:
    """Channels lo..hi of bn(x), as a new tensor."""
    return torch.addcmul(shift[lo:hi, None, None], x[:, lo:hi], scale[lo:hi, None, None])


def _glu_of_normalized(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """glu(bn(x)) one half at a time; forward and recomputation share it, so both give the same bits."""
    half = x.shape[1] // 2
    return _normalized(x, scale, shift, 0, half).mul_(_normalized(x, scale, shift, half, 2 * half).sigmoid_())


class _Recompute:
    """What autograd keeps instead of a registered tensor: how to compute it again, and which view of it was kept."""

    __slots__ = ("fn", "size", "stride", "offset")

    def __init__(self, fn, t: Tensor):
        self.fn, self.size, self.stride, self.offset = fn, t.size(), t.stride(), t.storage_offset()

    def materialize(self) -> Tensor:
        return self.fn().as_strided(self.size, self.stride, self.offset)


_tables: list[dict[int, tuple[weakref.ref, int, Any]]] = []  # one per active RecomputeGLUOutputs


def _note_recomputable(out: Tensor, fn) -> None:
    if _tables:
        _tables[-1][out.untyped_storage().data_ptr()] = (weakref.ref(out), out._version, fn)


class RecomputeGLUOutputs(torch.autograd.graph.saved_tensors_hooks):
    """Within this context, a layer that keeps a training-mode ``bn_glu`` output for backward keeps instead the
    means to recompute it from the BN input, which that block keeps anyway (issue 8, memory).

    The generator's residual blocks feed the GLU output to a conv, and the last stage feeds it to the image head; both
    convs keep their input for the weight gradient. Recomputing costs one elementwise pass per use in backward and
    gives the same bits as the forward (same function, same inputs). A tensor changed in place after it was made is
    kept as it is.
    """

    def __init__(self):
        self.table: dict[int, tuple[weakref.ref, int, Any]] = {}
        super().__init__(self._pack, self._unpack)

    def __enter__(self):
        _tables.append(self.table)
        return super().__enter__()

    def __exit__(self, *exc):
        _tables.remove(self.table)
        self.table.clear()
        return super().__exit__(*exc)

    def _pack(self, t: Tensor):
        entry = self.table.get(t.untyped_storage().data_ptr()) if t.layout == torch.strided else None
        if entry is not None:
            out = entry[0]()
            if out is not None and out._version == entry[1] and t._version == entry[1] and t.dtype == out.dtype:
                return _Recompute(entry[2], t)
        return t

    @staticmethod
    def _unpack(packed):
        return packed.materialize() if isinstance(packed, _Recompute) else packed


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
        # Statistics in the weights' type (fp32) under mixed precision, as autocast keeps BatchNorm in fp32.
        return _BatchNormGLU.apply(x.to(bn.weight.dtype), bn.weight, bn.bias, bn)
    return F.glu(bn(x), dim=1)  # eval, no grad, or another norm (SyncBatchNorm under DDP): the plain composition


def inference_folded(conv: nn.Module, bn: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(W', b')`` with ``conv'(x) = bn(conv(x))`` when ``bn`` uses running statistics and no gradient is recorded.

    For sampling and evaluation: one pass over the activations less per BatchNorm (issue 8). Folded per call (a pass
    over the weights, not the activations) rather than cached, so nothing stays in memory and an EMA update or a
    load is always seen; the state dict is unchanged. None in training, with autograd on, or for anything but a
    plain BatchNorm2d after a Conv2d.
    """
    plain = type(bn) is nn.BatchNorm2d and bn.track_running_stats and bn.running_mean is not None
    if not plain or bn.training or torch.is_grad_enabled() or not isinstance(conv, nn.Conv2d):
        return None
    return fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)


class UpBlock(nn.Sequential):
    """Nearest x2 upsample -> conv3x3(i, 2o) -> BN -> GLU: (B, i, H, W) -> (B, o, 2H, 2W).

    The upsample is folded into the conv (2.25x fewer FLOPs, issue 8); index 0 stays a parameter-free placeholder so
    the Sequential indices, and therefore the original state-dict keys, are unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int):
        conv = UpsampleConv3x3(in_channels, out_channels * 2)
        super().__init__(nn.Identity(), conv, nn.BatchNorm2d(out_channels * 2), GLU())

    def forward(self, x: Tensor) -> Tensor:
        folded = inference_folded(self[1], self[2])
        if folded is not None:
            return F.glu(up2_conv3x3(x, *folded), dim=1)
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

    def _folded(self, x: Tensor, doubled: bool) -> Tensor | None:
        """The block without its residual, BatchNorms folded into the convs (inference only; else None)."""
        first, second = inference_folded(self.block[0], self.block[1]), inference_folded(self.block[3], self.block[4])
        if first is None or second is None:
            return None
        weight, bias = first
        if doubled:
            half = weight.shape[1] // 2
            weight = weight[:, :half] + weight[:, half:]
        conv0, conv3 = self.block[0], self.block[3]
        y = F.glu(F.conv2d(x, weight, bias, conv0.stride, conv0.padding, conv0.dilation, conv0.groups), dim=1)
        return F.conv2d(y, *second, conv3.stride, conv3.padding, conv3.dilation, conv3.groups)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        y = self._folded(x, doubled=False)
        return (self._tail(self.block[0](x)) if y is None else y) + x

    def forward_doubled(self, r: Tensor) -> Tensor:
        """``forward(cat((r, r), 1))`` without building the doubled input: (B, C/2, H, W) -> (B, C, H, W).

        DM-GAN's refiners hand the residual blocks ``[r; r]`` (models.md §6.3, §12 Q2). A conv of [r; r] is the conv
        of r with the two input halves of the kernel summed: half the first conv's FLOPs, and no doubled tensor.
        """
        y = self._folded(r, doubled=True)
        if y is None:
            conv = self.block[0]
            half = conv.weight.shape[1] // 2
            y = self._tail(F.conv2d(r, conv.weight[:, :half] + conv.weight[:, half:], conv.bias, padding=1))
        batch, channels = y.shape[:2]
        return (y.view(batch, 2, channels // 2, *y.shape[2:]) + r.unsqueeze(1)).view_as(y)


def image_head(channels: int) -> nn.Sequential:
    """GET_IMAGE_G: conv3x3(g, 3) -> tanh, images in [-1, 1]."""
    return nn.Sequential(conv3x3(channels, 3), nn.Tanh())
