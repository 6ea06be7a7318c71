"""Masked softmax over words shared by the word-attention refiners (docs/models.md, quirks: mask rows).

``scores`` are laid out ``(B, N, T)``: N query pixels, T words. Two ways to mask:

* ``"legacy"`` reproduces the originals: they flatten scores to ``(B·N, T)`` in batch-major
  order but expand the ``(B, T)`` mask with ``mask.repeat(N, 1)``, so row ``r = b·N + q`` gets
  the mask of sample ``r mod B`` instead of sample ``b`` (golden README "Mask quirk").
* ``"per_sample"`` masks each sample's own padding (the corrected behaviour).

Masked scores are set to -inf before the softmax, as in the originals; a sample whose words are
all masked therefore has no defined attention (the originals never mask every word).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

MaskMode = Literal["legacy", "per_sample"]


def expand_mask(mask: Tensor, queries: int, mode: MaskMode) -> Tensor:
    """(B, T) bool -> (B, N, T) bool: the mask each score row gets."""
    batch = mask.size(0)
    if mode == "per_sample":
        return mask[:, None, :].expand(batch, queries, mask.size(1))
    if mode == "legacy":
        rows = torch.arange(batch * queries, device=mask.device).view(batch, queries)
        return mask[rows % batch]
    raise ValueError(f"unknown mask mode {mode!r}; use 'legacy' or 'per_sample'")


def masked_word_softmax(scores: Tensor, mask: Tensor | None, mode: MaskMode) -> Tensor:
    """Softmax over words (last dim) of ``scores`` (B, N, T) with masked words at -inf."""
    if mask is not None:
        if mask.shape != (scores.size(0), scores.size(2)):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match (batch, words) = {(scores.size(0), scores.size(2))}"
            )
        scores = scores.masked_fill(expand_mask(mask.bool(), scores.size(1), mode), float("-inf"))
    return torch.softmax(scores, dim=-1)
