"""``dm.v1``: DM-GAN's dynamic memory refiner (Zhu et al., "DM-GAN", CVPR 2019, eqs. 3-7).

With image features r_j (B × g × H × W, N = H·W pixels), words w_t (B × e × T) and r̄ = (1/N) Σ_j r_j:

    memory writing gate (eq. 3):  g^w_t = σ(A w_t + B r̄)
    memory writing (eq. 4):       m_t = M_w(w_t) · g^w_t + M_r(r̄) · (1 − g^w_t)        (M = 1×1 conv + ReLU)
    key addressing (eq. 5):       α_{t,j} = softmax_t(φ_K(m_t)ᵀ r_j)                    (padded words at −∞)
    value reading (eq. 6):        o_j = Σ_t α_{t,j} φ_V(m_t)
    response gate (eq. 7):        g^r_j = σ(W[o_j ; r_j] + b),   r^new_j = o_j · g^r_j + r_j · (1 − g^r_j)

Kept from the original code, for comparability (docs/models.md, quirks): the residual input is r^new duplicated,
``[r^new ; r^new]`` (2g channels), returned as the channel parts ``(r^new, r^new)`` so the first residual block
convolves r^new once; r̄ is detached (no gradient to earlier stages through the memory writing); the response
gate's kernel takes the channels in the order ``[r ; o]``. r̄ is a global average pool (the original's fixed pool
kernel equals the stage size). ``legacy_unused_conv`` adds DMM-GAN's never-used conv1x1(3g → 2g) so original
DMM-GAN checkpoints load strictly and parameter counts match.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from t2i.models.blocks import conv1x1
from t2i.ops import ConcatConv1x1
from t2i.refiners._masking import masked_word_softmax
from t2i.refiners.attention import MASK_DESCRIPTION
from t2i.refiners.gates import GateRecorder
from t2i.registry import Params, register

UNUSED_CONV_DESCRIPTION = (
    "keep DMM-GAN's unused conv1x1(3g->2g) (docs/models.md, quirks) so original DMM-GAN checkpoints load strictly "
    "and parameter counts match; it never receives a gradient"
)


class DynamicMemoryParams(Params):
    mask: Literal["legacy", "per_sample"] = Field("per_sample", description=MASK_DESCRIPTION)
    legacy_unused_conv: bool = Field(False, description=UNUSED_CONV_DESCRIPTION)


def _conv1d_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(in_channels, out_channels, kernel_size=1, bias=True), nn.ReLU())


class DynamicMemory(GateRecorder, nn.Module):
    """Gated memory writing, key addressing, value reading and a sigmoid response gate.

    ``last_gates`` (t2i/refiners/gates.py) receives g^w as ``write`` and g^r as ``response`` while recording.
    """

    def __init__(self, params: DynamicMemoryParams, *, image_dim: int, word_dim: int, cond_dim: int, size: int):
        super().__init__()
        self._add_memory(params, image_dim, word_dim)
        self.response_gate = nn.Sequential(ConcatConv1x1(2 * image_dim, 1, bias=True), nn.Sigmoid())  # W, b of eq. 7
        self._add_unused_conv(params, image_dim)

    def _add_memory(self, params: DynamicMemoryParams, g: int, e: int) -> None:
        """The layers of eqs. 3-6 (memory slots of N_m = 2g channels; keys and values of g)."""
        self.mask_mode = params.mask
        self.A = nn.Linear(e, 1, bias=False)  # writing gate, word term
        self.B = nn.Linear(g, 1, bias=False)  # writing gate, image term
        self.M_r = _conv1d_relu(g, 2 * g)  # image → memory
        self.M_w = _conv1d_relu(e, 2 * g)  # words → memory
        self.key = _conv1d_relu(2 * g, g)  # φ_K
        self.value = _conv1d_relu(2 * g, g)  # φ_V

    def _add_unused_conv(self, params: DynamicMemoryParams, g: int) -> None:
        if params.legacy_unused_conv:
            self.conv = conv1x1(3 * g, 2 * g)  # never called: kept for checkpoint compatibility only

    def forward(self, r: Tensor, words: Tensor, mask: Tensor | None, c_code: Tensor):
        """r (B, g, H, W), words (B, e, T), mask (B, T) -> residual input ``(r^new, r^new)``, α (B, T, H, W)."""
        memory, _ = self.write(r, words)  # eqs. 3-4
        o, alpha = self.read(r, memory, mask)  # eqs. 5-6
        g_r = self.response_gate((r, o))  # eq. 7, (B, 1, H, W)
        r_new = o * g_r + r * (1 - g_r)
        if self.last_gates is not None:
            self._record(response=g_r[:, 0], padding=mask)
        return (r_new, r_new), alpha  # [r^new ; r^new], as the original

    def write(self, r: Tensor, words: Tensor) -> tuple[Tensor, Tensor]:
        """Memory writing: slots m (B, 2g, T) and the detached mean image feature r̄ (B, g)."""
        r_bar = r.mean(dim=(2, 3)).detach()
        g_w = torch.sigmoid(self.A(words.transpose(1, 2)).transpose(1, 2) + self.B(r_bar)[:, :, None])  # (B, 1, T)
        memory = self.M_w(words) * g_w + self.M_r(r_bar[:, :, None]) * (1 - g_w)
        if self.last_gates is not None:
            self._record(write=g_w[:, 0])
        return memory, r_bar

    def read(self, r: Tensor, memory: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Key addressing and value reading: o (B, g, H, W) and α (B, T, H, W)."""
        batch, channels, height, width = r.shape
        key = self.key(memory)  # φ_K(m), (B, g, T)
        value = self.value(memory)  # φ_V(m), (B, g, T)
        query = r.reshape(batch, channels, height * width).transpose(1, 2)  # (B, N, g)
        alpha = masked_word_softmax(torch.bmm(query, key), mask, self.mask_mode).transpose(1, 2)  # (B, T, N)
        o = torch.bmm(value, alpha).view(batch, channels, height, width)
        return o, alpha.reshape(batch, -1, height, width)


register(
    "refiner",
    "dm.v1",
    DynamicMemory,
    params=DynamicMemoryParams,
    description="DM-GAN dynamic memory: gated memory writing, key addressing, value reading, response gate",
)
