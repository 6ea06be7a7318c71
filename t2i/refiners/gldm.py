"""``gldm.v1``: DMM-GAN's global-local dynamic memory (F. Lynggaard, DMM-GAN thesis, GLDM).

The local memory is DM-GAN's (``dm.v1``; Zhu et al. CVPR 2019, eqs. 3-6) on the words, giving o and the map α.
A single global slot is written from the conditioning code c_ca, sharing M_r, φ_K and φ_V with the local memory::

    global writing gate:   g^c = σ(A_c c_ca + B_c r̄)
    global slot:           m̄ = M_c(c_ca) · g^c + M_r(r̄) · (1 − g^c)                 (B × 2g × 1)
    global reading:        β_j = softmax over channels of (r_j ⊙ φ_K(m̄)),   ō_j = β_j ⊙ φ_V(m̄)   (no mask)
    three-way response:    [γ_r, γ_o, γ_ō] = softmax over 3 channels of conv1x1(3g → 3)([r ; o ; ō])
                           r^new = γ_r r + γ_o o + γ_ō ō

The residual input is ``[r^new ; r^new]`` as in DM-GAN; the returned map is the local α. The thesis figure draws
separate global and local memories; the code (and this) shares M_r, φ_K and φ_V between them.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from t2i.ops import ConcatConv1x1
from t2i.refiners.attention import MASK_DESCRIPTION
from t2i.refiners.dynamic_memory import UNUSED_CONV_DESCRIPTION, DynamicMemory, _conv1d_relu
from t2i.registry import Params, register


class GldmParams(Params):
    mask: Literal["legacy", "per_sample"] = Field("per_sample", description=MASK_DESCRIPTION)
    legacy_unused_conv: bool = Field(False, description=UNUSED_CONV_DESCRIPTION)


class GlobalLocalDynamicMemory(DynamicMemory):
    """DM-GAN's memory plus a global (sentence) slot and a three-way response gate.

    While recording (t2i/refiners/gates.py): ``write`` (local g^w), ``write_global`` (g^c) and ``shares`` (γ).
    """

    def __init__(self, params: GldmParams, *, image_dim: int, word_dim: int, cond_dim: int, size: int):
        nn.Module.__init__(self)  # DM-GAN's layers but another response gate, in the original's key order
        g, c = image_dim, cond_dim
        self._add_memory(params, g, word_dim)  # M_r, φ_K (key) and φ_V (value) serve both memories
        self.response_gate = nn.Sequential(ConcatConv1x1(3 * g, 3, bias=True), nn.Softmax(dim=1))
        self.A_c = nn.Linear(c, 1, bias=False)  # global writing gate, sentence term
        self.B_c = nn.Linear(g, 1, bias=False)  # global writing gate, image term
        self.M_c = _conv1d_relu(c, 2 * g)  # sentence → memory
        self._add_unused_conv(params, g)

    def forward(self, r: Tensor, words: Tensor, mask: Tensor | None, c_code: Tensor):
        """r (B, g, H, W), words (B, e, T), mask (B, T), c_code (B, c) -> ``(r^new, r^new)``, local α."""
        memory, r_bar = self.write(r, words)  # local memory (DM-GAN eqs. 3-4)
        o, alpha = self.read(r, memory, mask)  # (DM-GAN eqs. 5-6)
        o_c, _ = self.read_global(r, self.write_global(c_code, r_bar))
        gamma = self.response_gate((r, o, o_c))  # (B, 3, H, W)
        r_new = gamma[:, 0:1] * r + gamma[:, 1:2] * o + gamma[:, 2:3] * o_c
        if self.last_gates is not None:
            self._record(shares=gamma, padding=mask)
        return (r_new, r_new), alpha  # [r^new ; r^new], as DM-GAN

    def write_global(self, c_code: Tensor, r_bar: Tensor) -> Tensor:
        """The global slot m̄ (B, 2g, 1) from the conditioning code (B, c) and r̄ (B, g)."""
        g_c = torch.sigmoid(self.A_c(c_code) + self.B_c(r_bar))[:, :, None]  # (B, 1, 1)
        if self.last_gates is not None:
            self._record(write_global=g_c[:, 0, 0])
        return self.M_c(c_code[:, :, None]) * g_c + self.M_r(r_bar[:, :, None]) * (1 - g_c)

    def read_global(self, r: Tensor, memory_c: Tensor) -> tuple[Tensor, Tensor]:
        """The global slot's reading: ō (B, g, H, W) and its channel weights β (B, g, H, W)."""
        key_c = self.key(memory_c)[..., None]  # φ_K(m̄), (B, g, 1, 1)
        value_c = self.value(memory_c)[..., None]  # φ_V(m̄)
        beta = torch.softmax(r * key_c, dim=1)  # over channels, per pixel
        return beta * value_c, beta


register(
    "refiner",
    "gldm.v1",
    GlobalLocalDynamicMemory,
    params=GldmParams,
    description="DMM-GAN global-local dynamic memory: DM-GAN memory plus a sentence slot and a 3-way gate",
)
