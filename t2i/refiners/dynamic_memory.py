"""``dm.v1``: DM-GAN dynamic memory refiner (models.md §6.3(c); DM-GAN, Zhu et al. CVPR 2019, eqs. 1-7).

With image features r_j (= h, B × g × H × W), words w_t (B × e × T) and r̄ the mean image feature:

1. memory writing gate (eq. 3):  g^w_t = σ(A w_t + B r̄)
2. memory slots (eq. 4):         m_t = M_w(w_t) · g^w_t + M_r(r̄) · (1 − g^w_t)      (M = 1×1 conv + ReLU)
3. key addressing (eq. 5):       α_{t,j} = softmax_t(φ_K(m_t)ᵀ r_j)                 (padded words at −inf)
4. value reading (eq. 6):        o_j = Σ_t α_{t,j} φ_V(m_t)
5. response gate (eq. 7):        g^r_j = σ(W[o_j ; r_j] + b),  r_j^new = o_j · g^r_j + r_j · (1 − g^r_j)

The residual input is ``[r^new ; r^new]`` (the original duplicates the tensor to reach 2g channels,
§12 Q2). r̄ is a global average pool (the original's fixed AvgPool kernel equals the stage size, Q6)
and is detached, as in the original (Q5). ``legacy_unused_conv`` adds DMM-GAN's never-used
conv1x1(3g → 2g) so original DMM-GAN checkpoints load strictly and parameter counts match (Q3).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from t2i.models.blocks import conv1x1, conv1x1_of_concat
from t2i.refiners._masking import masked_word_softmax
from t2i.refiners.attention import MASK_DESCRIPTION
from t2i.registry import Params, register

UNUSED_CONV_DESCRIPTION = (
    "keep DMM-GAN's unused conv1x1(3g->2g) (models.md §12 Q3) so original DMM-GAN checkpoints load strictly "
    "and parameter counts match; it never receives a gradient"
)


class DynamicMemoryParams(Params):
    mask: Literal["legacy", "per_sample"] = Field("per_sample", description=MASK_DESCRIPTION)
    legacy_unused_conv: bool = Field(False, description=UNUSED_CONV_DESCRIPTION)


def _conv1d_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(in_channels, out_channels, kernel_size=1, bias=True), nn.ReLU())


class DynamicMemory(nn.Module):
    """Gated memory writing, key addressing, value reading and a sigmoid response gate."""

    def __init__(self, params: DynamicMemoryParams, *, image_dim: int, word_dim: int, cond_dim: int, size: int):
        super().__init__()
        g, e = image_dim, word_dim
        self.mask_mode = params.mask
        self.A = nn.Linear(e, 1, bias=False)  # writing gate, word term
        self.B = nn.Linear(g, 1, bias=False)  # writing gate, image term
        self.M_r = _conv1d_relu(g, 2 * g)  # image → memory (N_m = 2g)
        self.M_w = _conv1d_relu(e, 2 * g)  # words → memory
        self.key = _conv1d_relu(2 * g, g)  # φ_K
        self.value = _conv1d_relu(2 * g, g)  # φ_V
        self.response_gate = nn.Sequential(nn.Conv2d(2 * g, 1, kernel_size=1, bias=True), nn.Sigmoid())
        self._add_unused_conv(params, g)

    def _add_unused_conv(self, params: DynamicMemoryParams, g: int) -> None:
        if params.legacy_unused_conv:
            self.conv = conv1x1(3 * g, 2 * g)  # never called: kept for checkpoint compatibility only

    def write(self, h: Tensor, words: Tensor) -> tuple[Tensor, Tensor]:
        """Memory slots m (B, 2g, T) and the detached mean image feature r̄ (B, g)."""
        r_bar = h.mean(dim=(2, 3)).detach()  # (B, g), no gradient to earlier stages (Q5)
        gate = torch.sigmoid(self.A(words.transpose(1, 2)).transpose(1, 2) + self.B(r_bar)[:, :, None])  # (B, 1, T)
        memory = self.M_w(words) * gate + self.M_r(r_bar[:, :, None]) * (1 - gate)  # (B, 2g, T)
        return memory, r_bar

    def read(self, h: Tensor, memory: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Key addressing + value reading: o (B, g, H, W) and α (B, T, H, W)."""
        batch, channels, height, width = h.shape
        key = self.key(memory)  # (B, g, T)
        value = self.value(memory)  # (B, g, T)
        query = h.reshape(batch, channels, height * width).transpose(1, 2)  # (B, N, g)
        alpha = masked_word_softmax(torch.bmm(query, key), mask, self.mask_mode).transpose(1, 2)  # (B, T, N)
        out = torch.bmm(value, alpha).view(batch, channels, height, width)
        return out, alpha.reshape(batch, -1, height, width)

    def forward(self, h: Tensor, words: Tensor, mask: Tensor | None, c_code: Tensor) -> tuple[Tensor, Tensor]:
        h_new, alpha = self.forward_half(h, words, mask, c_code)
        return torch.cat((h_new, h_new), dim=1), alpha  # duplicated on purpose (Q2)

    def forward_half(self, h: Tensor, words: Tensor, mask: Tensor | None, c_code: Tensor) -> tuple[Tensor, Tensor]:
        """r^new (B, g, H, W) and α: ``forward`` without the duplication (the generator folds it, issue 8)."""
        memory, _ = self.write(h, words)
        out, alpha = self.read(h, memory, mask)
        gate = self.response_gate[1](conv1x1_of_concat((h, out), self.response_gate[0]))  # g^r (B, 1, H, W)
        return h * (1 - gate) + gate * out, alpha


register(
    "refiner",
    "dm.v1",
    DynamicMemory,
    params=DynamicMemoryParams,
    description="DM-GAN dynamic memory: gated memory writing, key addressing, value reading, response gate",
)
