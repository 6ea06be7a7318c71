"""BatchNorm with fixed statistics folded into the convolution before it.

For a BatchNorm that uses its running statistics (μ, σ²), bn(conv(x; W, b)) is again a convolution::

    s = γ / √(σ² + ε)   (per output channel)
    W' = W · s,   b' = β + (b − μ) · s,   conv(x; W', b') = bn(conv(x; W, b))

so sampling, evaluation and frozen networks skip one pass over the activations per BatchNorm. Parameters and
state dict are unchanged; the folded pair is a cache next to them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i.ops.bn_glu import bn_glu

_CACHE = "_folded_into_conv"  # attribute of the BatchNorm holding (key, W', b')


def fold_batchnorm(conv: nn.Module, bn: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(W', b')`` with ``conv._conv_forward(x, W', b') == bn(conv(x))``, or None where that does not hold.

    Folded when ``bn`` is a plain BatchNorm2d in eval mode (running statistics) after a Conv2d, and no gradient of
    their parameters is asked for (autograd off, or all of them frozen): gradients may still flow to x. Else None,
    and the caller runs the two modules.

    Caching rule (the only one): the pair is kept on ``bn`` and reused while each source tensor (W, b, γ, β, μ, σ²)
    is the same storage at the same version, dtype and device; an in-place change (an optimiser or EMA step,
    ``load_state_dict``, ``.to()``) refolds at the next call. The pair is made outside inference mode, so a fold
    first needed under ``torch.inference_mode()`` can later be saved for a backward pass.
    """
    plain = type(bn) is nn.BatchNorm2d and bn.track_running_stats and bn.running_mean is not None
    if not plain or bn.training or not isinstance(conv, nn.Conv2d):
        return None
    sources = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in sources):
        return None
    key = (bn.eps, *((t.data_ptr(), t._version, t.dtype, t.device) if t is not None else None for t in sources))
    cached = getattr(bn, _CACHE, None)
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():
            cached = (key, *_fold(conv, bn))
        setattr(bn, _CACHE, cached)
    return cached[1], cached[2]


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """W' and b' (the operation order of torch.nn.utils.fusion.fuse_conv_bn_weights)."""
    mean, var = bn.running_mean, bn.running_var
    gamma = bn.weight if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    inv_std = torch.rsqrt(var + bn.eps)
    weight = conv.weight * (gamma * inv_std).reshape(-1, *[1] * (conv.weight.dim() - 1))
    bias_dtype = conv.bias.dtype if conv.bias is not None else conv.weight.dtype
    return weight.to(conv.weight.dtype), ((bias - mean) * inv_std * gamma + beta).to(bias_dtype)


def conv_bn(conv: nn.Conv2d, bn: nn.Module, x) -> Tensor:
    """``bn(conv(x))``, folded into one conv where :func:`fold_batchnorm` allows."""
    folded = fold_batchnorm(conv, bn)
    return bn(conv(x)) if folded is None else conv._conv_forward(x, *folded)  # nn.Conv2d.forward with W', b'


def conv_bn_glu(conv: nn.Conv2d, bn: nn.Module, x) -> Tensor:
    """``GLU(bn(conv(x)))``: folded where :func:`fold_batchnorm` allows, else :func:`~t2i.ops.bn_glu`."""
    folded = fold_batchnorm(conv, bn)
    return bn_glu(conv(x), bn) if folded is None else F.glu(conv._conv_forward(x, *folded), dim=1)
