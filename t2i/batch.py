"""The two records that travel between data, encoders, generator and losses, and how text and noise are drawn.

``text_features`` and ``item_noise`` are shared by training, sample grids and evaluation, so they live here, at the
bottom, beside the records they fill.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor, nn


@dataclass
class Batch:
    """A collated batch, sorted by caption length (descending), as the originals do (their text encoder packs it)."""

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


def text_features(text_encoder: nn.Module, batch: Batch, mask_ids: Tensor) -> TextFeatures:
    """Encode the batch's captions with the frozen text encoder; ``mask_ids`` are the token ids attention ignores."""
    with torch.no_grad():
        words, sentence = text_encoder(batch.captions, batch.lengths)  # (B, e, T), (B, e)
    T = words.shape[2]
    mask = torch.isin(batch.captions[:, :T], mask_ids)
    return TextFeatures(
        words=words.detach(),
        sentence=sentence.detach(),
        mask=mask,
        captions=batch.captions,
        lengths=batch.lengths,
        class_ids=batch.class_ids,
    )


def item_noise(keys: list[str], step: int, seed: int, z_dim: int, cond_dim: int) -> tuple[Tensor, Tensor] | None:
    """z (B, z_dim) and CA ε (B, cond_dim), each item's drawn from a seed of (run seed, step, item key).

    An item gets the same noise whatever the number of processes, its place in the length-sorted batch or the
    resume point, so 2 processes × B/2 see the noise 1 × B sees. None when keys are missing or repeated.
    """
    if not keys or len(set(keys)) != len(keys):
        return None
    z, eps = [], []
    for key in keys:
        words = np.frombuffer(hashlib.blake2b(key.encode(), digest_size=8).digest(), dtype=np.uint32)
        state = np.random.SeedSequence([seed, step, *words.tolist()]).generate_state(1, dtype=np.uint64)[0]
        gen = torch.Generator().manual_seed(int(state))
        z.append(torch.randn(z_dim, generator=gen))
        eps.append(torch.randn(cond_dim, generator=gen))
    return torch.stack(z), torch.stack(eps)
