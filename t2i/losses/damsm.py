"""DAMSM word and sentence matching losses (AttnGAN, Xu et al., CVPR 2018, eqs. 7-14).

Word level, for image i (regions v_r, r = 1..N = 17·17) and caption k (words e_t, t = 1..T_k):

1. s_{t,r} = e_tᵀ v_r                                   (eq. 7)
2. s̄_{t,r} = softmax over the words t                   (eq. 8)
3. α_{t,r} = softmax_r(γ1 · s̄_{t,r}); c_t = Σ_r α_{t,r} v_r   (eq. 9)
4. R(c_t, e_t) = cos(c_t, e_t); R_w(i,k) = log Σ_t exp(γ2 · R(c_t, e_t))   (eq. 10)

The original code (``words_loss`` in AttnGAN's ``miscc/losses.py``) omits the paper's 1/γ2 in step 4; we keep
its form so released encoders and their tuned γ's stay comparable. Scores are scaled by γ3 (eq. 11), other
same-class pairs are set to −∞ (class masking), and cross-entropy runs both ways: images pick
captions (loss0, eq. 12) and captions pick images (loss1, eq. 13). Sentence level uses
cos(v̄_i, ē_k) the same way (eq. 14). The registered ``damsm.v1`` alignment term adds
``weight · (w0 + w1 + s0 + s1)`` on the last fake image through the frozen image encoder.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from t2i.batch import TextFeatures
from t2i.registry import Params, register

__all__ = ["DamsmLoss", "DamsmParams", "sentence_loss", "words_loss"]


def _cosine(x1: Tensor, x2: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise cosine over dim 1 with the norm product clamped at eps (the originals' helper)."""
    dot = (x1 * x2).sum(dim=1)
    return dot / (x1.norm(2, dim=1) * x2.norm(2, dim=1)).clamp(min=eps)


def _class_mask(class_ids: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
    """(B, B) bool: True where i != j share a class (never on the diagonal)."""
    if class_ids is None:
        return None
    same = class_ids.view(-1, 1) == class_ids.view(1, -1)
    return same & ~torch.eye(batch, dtype=torch.bool, device=device)


def _matching_losses(scores: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """scores (B images, B captions), already × γ3 -> (images→captions CE, captions→images CE)."""
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    labels = torch.arange(scores.size(0), device=scores.device)
    return F.cross_entropy(scores, labels), F.cross_entropy(scores.t(), labels)


def word_attention(words: Tensor, regions: Tensor, gamma1: float) -> tuple[Tensor, Tensor]:
    """words (B, e, T), regions (B, e, H, W) -> contexts c_t (B, e, T), attention α (B, T, H, W)."""
    batch, channels, height, width = regions.shape
    context = regions.reshape(batch, channels, height * width)  # (B, e, N)
    scores = torch.bmm(context.transpose(1, 2), words)  # (B, N, T): s_{t,r}
    scores = F.softmax(scores, dim=2)  # eq. 8: over the words, per region
    attention = F.softmax(gamma1 * scores.transpose(1, 2), dim=2)  # (B, T, N) eq. 9: over regions
    contexts = torch.bmm(context, attention.transpose(1, 2))  # (B, e, T)
    return contexts, attention.reshape(batch, -1, height, width)


def words_loss(
    regions: Tensor,
    words: Tensor,
    lengths: Tensor,
    class_ids: Tensor | None,
    gamma1: float,
    gamma2: float,
    gamma3: float,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """regions (B, e, H, W), words (B, e, T), lengths (B,) -> loss0, loss1, attention maps.

    ``attention_maps[i]`` is (1, T_i, H, W): caption i attending over image i. ``class_ids=None``
    disables class masking.
    """
    batch = regions.size(0)
    columns = []
    maps = []
    for i, length in enumerate(lengths.tolist()):
        # Caption i against every image j (only its first T_i words).
        caption = words[i : i + 1, :, :length].expand(batch, -1, -1)  # (B, e, T_i)
        contexts, attention = word_attention(caption, regions, gamma1)
        maps.append(attention[i : i + 1])
        similarity = _cosine(
            caption.transpose(1, 2).reshape(batch * length, -1), contexts.transpose(1, 2).reshape(batch * length, -1)
        )
        similarity = similarity.view(batch, length)
        columns.append(torch.log(torch.exp(gamma2 * similarity).sum(dim=1, keepdim=True)))  # R_w(j, i)
    scores = torch.cat(columns, dim=1) * gamma3  # [j, i] = image j, caption i
    loss0, loss1 = _matching_losses(scores, _class_mask(class_ids, batch, regions.device))
    return loss0, loss1, maps


def sentence_loss(
    global_code: Tensor, sentence: Tensor, class_ids: Tensor | None, gamma3: float, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """global_code (B, e) image codes v̄, sentence (B, e) ē -> loss0 (images→captions), loss1."""
    dots = global_code @ sentence.t()  # (B, B)
    norms = global_code.norm(2, dim=1, keepdim=True) @ sentence.norm(2, dim=1, keepdim=True).t()
    scores = dots / norms.clamp(min=eps) * gamma3
    return _matching_losses(scores, _class_mask(class_ids, global_code.size(0), global_code.device))


class DamsmParams(Params):
    weight: float = Field(
        5.0, description="λ on w_loss0 + w_loss1 + s_loss0 + s_loss1 (AttnGAN/DM-GAN bird 5, coco 50)."
    )
    gamma1: float = Field(4.0, description="γ1: sharpness of the word→region attention.")
    gamma2: float = Field(5.0, description="γ2: how much the best-matching words dominate R_w.")
    gamma3: float = Field(10.0, description="γ3: scale of the matching scores before the softmax.")
    class_masking: bool = Field(
        True,
        description="Set other same-class pairs to -inf (the originals); False: every off-diagonal pair is a negative.",
    )


class DamsmLoss(nn.Module):
    """``damsm.v1``: DAMSM matching of the last fake image with its caption through the frozen image encoder."""

    requires: tuple[str, ...] = ("image_encoder",)

    def __init__(self, params: DamsmParams, *, networks: Mapping[str, nn.Module]):
        super().__init__()
        self.params = params
        encoder = networks["image_encoder"]
        encoder.eval()
        encoder.requires_grad_(False)  # frozen: gradients reach the image, never the encoder
        self._networks = {"image_encoder": encoder}  # a plain dict: not a submodule of the loss

    def forward(self, fake_last: Tensor, text: TextFeatures) -> tuple[Tensor, dict[str, Tensor]]:
        regions, global_code = self._networks["image_encoder"](fake_last)  # (B, e, R, R), (B, e)
        return self.from_features(regions, global_code, text)

    def from_features(
        self, regions: Tensor, global_code: Tensor, text: TextFeatures
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss on precomputed image-encoder outputs (the fixtures stub the encoder this way)."""
        p = self.params
        class_ids = text.class_ids if p.class_masking else None
        w0, w1, _ = words_loss(regions, text.words, text.lengths, class_ids, p.gamma1, p.gamma2, p.gamma3)
        s0, s1 = sentence_loss(global_code, text.sentence, class_ids, p.gamma3)
        total = p.weight * (w0 + w1) + p.weight * (s0 + s1)
        logs = {"w_loss0": w0, "w_loss1": w1, "s_loss0": s0, "s_loss1": s1}
        return total, logs


register(
    "alignment_loss",
    "damsm.v1",
    DamsmLoss,
    params=DamsmParams,
    description="DAMSM word + sentence matching on the last image through the frozen image encoder (AttnGAN, DM-GAN)",
)
