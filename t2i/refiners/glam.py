"""``glam.v1``: MirrorGAN's global-local attention refiner (Qiao et al., "MirrorGAN", CVPR 2019, GLAM).

Local (word) attention exactly as AttnGAN (``attention.v1``), giving the word context c.
Global (sentence) attention on the CA code c_ca::

    s' = Linear(c → g)(c_ca)                           broadcast over pixels
    a  = softmax over CHANNELS of conv1x1(h ⊙ s')     (the original's softmax without dim picks dim 1)
    ŝ  = s' ⊙ a

Residual input: ``conv1x1(3g → 2g)([h ; c ; ŝ])``. The original hard-codes the Linear input as 100
(the bird CONDITION_DIM); here it is ``cond_dim`` (identical at 100). Only the word map is returned.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from t2i.models.blocks import conv1x1
from t2i.refiners._masking import MaskMode
from t2i.refiners.attention import MASK_DESCRIPTION, word_attention
from t2i.registry import Params, register


class GlamParams(Params):
    mask: Literal["legacy", "per_sample"] = Field("per_sample", description=MASK_DESCRIPTION)


class GlobalLocalAttention(nn.Module):
    """MirrorGAN's ``GLAttentionGeneral``: returns (word context, weighted sentence, word map, sentence map)."""

    def __init__(self, image_dim: int, word_dim: int, cond_dim: int, mask: MaskMode = "per_sample"):
        super().__init__()
        self.conv_context = conv1x1(word_dim, image_dim)  # W_c for the words
        self.conv_sentence_vis = conv1x1(image_dim, image_dim)
        self.linear = nn.Linear(cond_dim, image_dim)  # sentence → image space
        self.mask_mode = mask

    def forward(
        self, h: Tensor, words: Tensor, mask: Tensor | None, c_code: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        u = self.conv_context(words.unsqueeze(3)).squeeze(3)  # (B, g, T)
        context, word_map = word_attention(h, u, mask, self.mask_mode)  # (B, g, H, W), (B, T, H, W)
        sentence = self.linear(c_code)[:, :, None, None]  # s' (B, g, 1, 1)
        sentence_map = torch.softmax(self.conv_sentence_vis(h * sentence), dim=1)  # a, over channels
        weighted_sentence = sentence * sentence_map  # ŝ (B, g, H, W)
        return context, weighted_sentence, word_map, sentence_map


class GlamRefiner(nn.Module):
    """GLAM; residual input ``conv([h ; c ; ŝ])``."""

    def __init__(self, params: GlamParams, *, image_dim: int, word_dim: int, cond_dim: int, size: int):
        super().__init__()
        self.att = GlobalLocalAttention(image_dim, word_dim, cond_dim, params.mask)
        self.conv = conv1x1(3 * image_dim, 2 * image_dim)

    def forward(self, h: Tensor, words: Tensor, mask: Tensor | None, c_code: Tensor) -> tuple[Tensor, Tensor]:
        context, weighted_sentence, word_map, _sentence_map = self.att(h, words, mask, c_code)
        return self.conv(torch.cat((h, context, weighted_sentence), dim=1)), word_map


register(
    "refiner",
    "glam.v1",
    GlamRefiner,
    params=GlamParams,
    description="MirrorGAN global-local attention: word attention plus channel-wise sentence attention",
)
