"""Spectral normalisation as the DM-GAN / DMM-GAN discriminators do it.

Miyato et al., ICLR 2018: ``W_SN = W / σ(W)`` with σ estimated by power iteration. This is the
originals' own wrapper (``spectral.py``), not ``torch.nn.utils.spectral_norm``:

* the wrapped module keeps three Parameters under the original names: ``weight_bar`` (the
  trainable raw weight), ``weight_u`` (out) and ``weight_v`` (in·k·k), the last two with
  ``requires_grad=False`` so they sit in the state dict but are never optimised;
* one power iteration runs at EVERY forward, in ``train()`` and ``eval()`` alike, so u and v
  drift with every extra discriminator call inside a loss;
* σ = u·(W v) is differentiable w.r.t. ``weight_bar`` only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from t2i.runtime import full_precision

__all__ = ["SpectralNorm", "l2_normalize"]


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``x / (‖x‖ + eps)`` — eps is added to the norm, as in the original."""
    return x / (x.norm() + eps)


class SpectralNorm(nn.Module):
    """Wrap a conv (or linear) layer; its ``weight`` becomes ``weight_bar`` + ``weight_u``/``weight_v``."""

    def __init__(self, module: nn.Module, *, power_iterations: int = 1, eps: float = 1e-12):
        super().__init__()
        if not hasattr(module, "_conv_forward") and not isinstance(module, nn.Linear):
            raise TypeError(f"SpectralNorm wraps convolutions or nn.Linear, got {type(module).__name__}")
        self.module = module
        self.power_iterations = power_iterations
        self.eps = eps
        weight = module.weight
        height = weight.shape[0]
        width = weight[0].numel()
        del module._parameters["weight"]
        # Registration order gives the original state-dict order: bias, weight_u, weight_v, weight_bar.
        module.register_parameter(
            "weight_u", nn.Parameter(l2_normalize(weight.new_empty(height).normal_(), eps), requires_grad=False)
        )
        module.register_parameter(
            "weight_v", nn.Parameter(l2_normalize(weight.new_empty(width).normal_(), eps), requires_grad=False)
        )
        module.register_parameter("weight_bar", nn.Parameter(weight.detach().clone()))

    def sigma(self) -> Tensor:
        """One power iteration (mutating u, v), then σ = u·(W v), differentiable w.r.t. weight_bar.

        Always in fp32: under mixed precision autocast is switched off here (σ of a bf16 weight is coarse).
        """
        with full_precision(self.module.weight_bar):
            return self._sigma()

    def _sigma(self) -> Tensor:
        module = self.module
        weight_bar = module.weight_bar
        height = weight_bar.shape[0]
        with torch.no_grad():
            matrix = weight_bar.reshape(height, -1)  # a view, unless the weight is channels-last (then a copy)
            u, v = module.weight_u, module.weight_v
            for _ in range(self.power_iterations):
                v = l2_normalize(matrix.t() @ u, self.eps)
                u = l2_normalize(matrix @ v, self.eps)
            # Written through ``.data`` like the original (``u.data = ...``): no version bump, so a
            # pending backward of an earlier call reads the newest u, v — the fixtures' gradients
            # depend on this when D runs several times before one backward.
            module.weight_v.data.copy_(v)
            module.weight_u.data.copy_(u)
        return torch.dot(module.weight_u, weight_bar.reshape(height, -1) @ module.weight_v)

    def normalized_weight(self) -> Tensor:
        return self.module.weight_bar / self.sigma()

    def forward(self, x: Tensor) -> Tensor:
        weight = self.normalized_weight()
        if isinstance(self.module, nn.Linear):
            return nn.functional.linear(x, weight, self.module.bias)
        return self.module._conv_forward(x, weight, self.module.bias)
