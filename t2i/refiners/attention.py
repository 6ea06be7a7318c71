"""``attention.v1``: AttnGAN's word attention refiner (Xu et al., "AttnGAN", CVPR 2018, eq. 2).

For every pixel j with feature h_j and words projected to the image space u_t = W_c e_t
(``conv_context``, 1x1, no bias)::

    s_{j,t} = h_j · u_t,     β_{j,t} = softmax_t(s_{j,t})   (padded words at -inf),
    c_j = Σ_t β_{j,t} u_t                                    (word-context vector, eq. 2)

The residual input of the stage is the join ``[h ; c]`` (2g channels). The CA code is ignored.
``mask="legacy"`` reproduces the originals' mask-row bug, ``"per_sample"`` fixes it (docs/models.md, quirks).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from t2i.models.blocks import conv1x1
from t2i.refiners._masking import MaskMode, masked_word_softmax
from t2i.registry import Params, register

MASK_DESCRIPTION = (
    "'legacy' reproduces the originals' padding-mask row bug (docs/models.md, quirks; published recipes); "
    "'per_sample' masks each sample's own padding"
)


class AttentionParams(Params):
    mask: Literal["legacy", "per_sample"] = Field("per_sample", description=MASK_DESCRIPTION)


def word_attention(h: Tensor, u: Tensor, mask: Tensor | None, mode: MaskMode) -> tuple[Tensor, Tensor]:
    """Attend from pixels to words.

    h: (B, g, H, W) image features, u: (B, g, T) projected words, mask: (B, T) bool.
    Returns the context (B, g, H, W) and the attention map β (B, T, H, W).
    """
    batch, channels, height, width = h.shape
    query = h.reshape(batch, channels, height * width).transpose(1, 2)  # (B, N, g)
    beta = masked_word_softmax(torch.bmm(query, u), mask, mode).transpose(1, 2)  # (B, T, N)
    context = torch.bmm(u, beta)  # (B, g, N)
    return context.view(batch, channels, height, width), beta.reshape(batch, -1, height, width)


class WordAttention(nn.Module):
    """AttnGAN's ``GlobalAttentionGeneral``: W_c projection + masked word attention."""

    def __init__(self, image_dim: int, word_dim: int, mask: MaskMode = "per_sample"):
        super().__init__()
        self.conv_context = conv1x1(word_dim, image_dim)  # W_c
        self.mask_mode = mask

    def forward(self, h: Tensor, words: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        u = self.conv_context(words.unsqueeze(3)).squeeze(3)  # (B, g, T)
        return word_attention(h, u, mask, self.mask_mode)


class AttentionRefiner(nn.Module):
    """Word attention; residual input ``[h ; c]``."""

    def __init__(self, params: AttentionParams, *, image_dim: int, word_dim: int, cond_dim: int, size: int):
        super().__init__()
        self.att = WordAttention(image_dim, word_dim, params.mask)

    def forward(self, h: Tensor, words: Tensor, mask: Tensor | None, c_code: Tensor) -> tuple[Tensor, Tensor]:
        context, beta = self.att(h, words, mask)  # (B, g, H, W), (B, T, H, W)
        return torch.cat((h, context), dim=1), beta


register(
    "refiner",
    "attention.v1",
    AttentionRefiner,
    params=AttentionParams,
    description="AttnGAN word attention: join image features with a word-context vector per pixel",
)
