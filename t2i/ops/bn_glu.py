"""BatchNorm followed by GLU, keeping only the BatchNorm input for backward.

    bn_glu(x, bn) = GLU(bn(x)) = a ⊙ σ(b),   [a; b] = bn(x) split in two halves over channels

In training, autograd would keep both x (for BN) and z = bn(x) (for GLU). Here backward recomputes the two halves
of z from x and the saved batch statistics, one group of channels at a time, and hands ∂L/∂z to PyTorch's own
BatchNorm backward kernel: the block's activation memory drops by the size of z, and backward needs no more scratch
memory than autograd's. Statistics and the running-statistics update are nn.BatchNorm2d's kernels.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i.ops import _chunks
from t2i.ops.recompute_glu import note_recomputable


def bn_glu(x: Tensor, bn: nn.Module) -> Tensor:
    """``F.glu(bn(x), dim=1)``; in training, a plain BatchNorm2d keeps only x for backward."""
    # Only an unmodified BatchNorm2d: a replaced forward or a hook on the module must still run.
    plain_bn = type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats and "forward" not in vars(bn)
    if plain_bn and bn.training and torch.is_grad_enabled() and not (bn._forward_hooks or bn._forward_pre_hooks):
        # Statistics in the weights' type (fp32) under mixed precision, as autocast keeps BatchNorm in fp32.
        return _BatchNormGLU.apply(x.to(bn.weight.dtype), bn.weight, bn.bias, bn)
    return F.glu(bn(x), dim=1)  # eval, no grad, or another norm (SyncBatchNorm under DDP): the plain composition


class _BatchNormGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, bn: nn.BatchNorm2d) -> Tensor:
        factor = _running_stats_factor(bn)
        mean, var = torch.batch_norm_update_stats(x, bn.running_mean, bn.running_var, factor)
        invstd = (var + bn.eps).rsqrt()
        ctx.eps = bn.eps
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        scale, shift = _scale_shift(weight, bias, mean, invstd)
        out = _glu_of_normalized(x, scale, shift)
        note_recomputable(out, functools.partial(_glu_of_normalized, x, scale, shift))
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
        for lo, hi in _chunks.chunk_ranges(half, 2 * x[:, :1].numel() * x.element_size()):
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


def _running_stats_factor(bn: nn.BatchNorm2d) -> float:
    """The running-statistics momentum nn.BatchNorm2d uses for this call; counts the batch as the module does."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return factor


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
