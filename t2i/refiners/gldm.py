"""``gldm.v1``: DMM-GAN global-local dynamic memory (models.md §6.3(d); Lynggaard, DMM-GAN thesis, GLDM).

Steps 1-4 of DM-GAN's dynamic memory (``dm.v1``, DM-GAN eqs. 3-6) on the words give the local
output o and map α. A single global slot is written from the CA code c_ca, sharing M_r, φ_K and
φ_V with the local memory (§12 Q4)::

    g^c = σ(A_c c_ca + B_c r̄)
    m̄   = M_c(c_ca) · g^c + M_r(r̄) · (1 − g^c)                 (B × 2g × 1)
    β_j = softmax over CHANNELS of (r_j ⊙ φ_K(m̄))               (per pixel, no mask)
    ō_j = β_j ⊙ φ_V(m̄)
    [γ_h, γ_o, γ_ō] = softmax over 3 channels of conv1x1(3g → 3)([r ; o ; ō])
    r^new = γ_h r + γ_o o + γ_ō ō

The residual input is ``[r^new ; r^new]`` as in DM-GAN; the returned map is the local α.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from t2i.models.blocks import conv1x1_of_concat
from t2i.refiners.attention import MASK_DESCRIPTION
from t2i.refiners.dynamic_memory import UNUSED_CONV_DESCRIPTION, DynamicMemory, _conv1d_relu
from t2i.registry import Params, register


class GldmParams(Params):
    mask: Literal["legacy", "per_sample"] = Field("per_sample", description=MASK_DESCRIPTION)
    legacy_unused_conv: bool = Field(False, description=UNUSED_CONV_DESCRIPTION)


class GlobalLocalDynamicMemory(DynamicMemory):
    """DM-GAN's memory plus a global (sentence) slot and a three-way response gate."""

    def __init__(self, params: GldmParams, *, image_dim: int, word_dim: int, cond_dim: int, size: int):
        nn.Module.__init__(self)
        g, e, c = image_dim, word_dim, cond_dim
        self.mask_mode = params.mask
        self.A = nn.Linear(e, 1, bias=False)
        self.B = nn.Linear(g, 1, bias=False)
        self.M_r = _conv1d_relu(g, 2 * g)  # shared by local and global memory
        self.M_w = _conv1d_relu(e, 2 * g)
        self.key = _conv1d_relu(2 * g, g)  # shared
        self.value = _conv1d_relu(2 * g, g)  # shared
        self.response_gate = nn.Sequential(nn.Conv2d(3 * g, 3, kernel_size=1, bias=True), nn.Softmax(dim=1))
        self.A_c = nn.Linear(c, 1, bias=False)  # global writing gate, sentence term
        self.B_c = nn.Linear(g, 1, bias=False)  # global writing gate, image term
        self.M_c = _conv1d_relu(c, 2 * g)  # sentence → memory
        self._add_unused_conv(params, g)

    def forward(self, h: Tensor, words: Tensor, mask: Tensor | None, c_code: Tensor) -> tuple[Tensor, Tensor]:
        h_new, alpha = self.forward_half(h, words, mask, c_code)
        return torch.cat((h_new, h_new), dim=1), alpha  # duplicated as in DM-GAN (Q2)

    def forward_half(self, h: Tensor, words: Tensor, mask: Tensor | None, c_code: Tensor) -> tuple[Tensor, Tensor]:
        """r^new (B, g, H, W) and the local α: ``forward`` without the duplication (the generator folds it)."""
        memory, r_bar = self.write(h, words)
        out, alpha = self.read(h, memory, mask)  # local: (B, g, H, W), (B, T, H, W)

        gate_c = torch.sigmoid(self.A_c(c_code) + self.B_c(r_bar))[:, :, None]  # g^c (B, 1, 1)
        memory_c = self.M_c(c_code[:, :, None]) * gate_c + self.M_r(r_bar[:, :, None]) * (1 - gate_c)  # (B, 2g, 1)
        out_c, _ = self.read_global(h, memory_c)

        gates = self.response_gate[1](conv1x1_of_concat((h, out, out_c), self.response_gate[0]))  # (B, 3, H, W)
        return gates[:, 0:1] * h + gates[:, 1:2] * out + gates[:, 2:3] * out_c, alpha

    def read_global(self, h: Tensor, memory_c: Tensor) -> tuple[Tensor, Tensor]:
        """The global slot's reading: ō (B, g, H, W) and its channel weights β (B, g, H, W)."""
        key_c = self.key(memory_c)[..., None]  # (B, g, 1, 1)
        value_c = self.value(memory_c)[..., None]
        beta = torch.softmax(h * key_c, dim=1)  # over channels, per pixel
        return beta * value_c, beta


register(
    "refiner",
    "gldm.v1",
    GlobalLocalDynamicMemory,
    params=GldmParams,
    description="DMM-GAN global-local dynamic memory: DM-GAN memory plus a sentence slot and a 3-way gate",
)
