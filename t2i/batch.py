"""The two records that travel between data, encoders, generator and losses."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class Batch:
    """A collated batch, sorted by caption length (descending), as the originals do (training.md §1.7)."""

    images: list[Tensor]  # one per stage: (B, 3, S_i, S_i) in [-1, 1]
    captions: Tensor  # (B, L) int64 token ids, padded
    lengths: Tensor  # (B,) int64, descending
    class_ids: Tensor  # (B,) int64
    keys: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> Batch:
        return replace(
            self,
            images=[im.to(device, non_blocking=True) for im in self.images],
            captions=self.captions.to(device, non_blocking=True),
            lengths=self.lengths.to(device, non_blocking=True),
            class_ids=self.class_ids.to(device, non_blocking=True),
        )

    def pin_memory(self) -> Batch:
        """Page-locked copies (the DataLoader calls this with ``pin_memory=True``): asynchronous copies to a GPU."""
        return replace(
            self,
            images=[im.pin_memory() for im in self.images],
            captions=self.captions.pin_memory(),
            lengths=self.lengths.pin_memory(),
            class_ids=self.class_ids.pin_memory(),
        )

    def __len__(self) -> int:
        return int(self.captions.shape[0])


@dataclass
class TextFeatures:
    """What the frozen text encoder gives the generator and the losses."""

    words: Tensor  # (B, e, T) word features, T = max(lengths); zero beyond each length
    sentence: Tensor  # (B, e) sentence embedding
    mask: Tensor  # (B, T) bool, True = masked word slot
    captions: Tensor  # (B, L) token ids
    lengths: Tensor  # (B,)
    class_ids: Tensor  # (B,)
