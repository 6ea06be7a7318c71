"""Conditional + unconditional adversarial loss of all four models.

The joint form of StackGAN++ (Zhang et al., 2018) as AttnGAN (Xu et al., CVPR 2018) and its successors use it.
D outputs are sigmoid probabilities and every term is a BCE (mean), as in the originals (a logits + BCEWithLogits
form is equal in exact arithmetic but not bit-identical). Per stage, with U the unconditional head, C(·, s) the
conditional head and s the raw sentence embedding:

    L_D = ½[BCE(U(x),1) + BCE(C(x,s),1)] + ⅓[BCE(U(x̂),0) + BCE(C(x̂,s),0) + BCE(C(x_{0..B-2}, s_{1..B-1}),0)]
    L_G = BCE(U(x̂),1) + BCE(C(x̂,s),1)

Without an unconditional head: ``L_D = BCE(C(x,s),1) + ½[BCE(C(x̂,s),0) + BCE(wrong,0)]``. The
mismatched ("wrong") pairs are in-batch neighbours after length sorting, with no class check. D is called in
the originals' order — D(real), D(fake), C real, C fake, C wrong, U real, U fake — so BatchNorm
statistics and spectral-norm u/v evolve exactly as in the original code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from t2i.registry import Params, register
from t2i.runtime import full_precision

__all__ = ["CondUncondLoss", "CondUncondParams"]


class CondUncondParams(Params):
    mismatch: bool = Field(
        True,
        description="Add the mismatched-pair term (real image k with sentence k+1 labelled fake), as the originals.",
    )


def _bce(probabilities: Tensor, target: float) -> Tensor:
    """BCE in fp32, or NaN when a probability is not finite (a diverged network), so the loop's loss check can name
    the term.

    ``F.binary_cross_entropy`` refuses non-finite inputs (an exception on CPU, a device assert on CUDA); masking them
    needs no host sync, and for finite inputs value and gradient are exactly those of the plain call. It runs in
    fp32 even under mixed precision (CUDA autocast refuses BCE on probabilities as unsafe).
    """
    with full_precision(probabilities):
        if probabilities.dtype in (torch.float16, torch.bfloat16):
            probabilities = probabilities.float()
        bad = ~torch.isfinite(probabilities)
        loss = F.binary_cross_entropy(probabilities.masked_fill(bad, 0.5), torch.full_like(probabilities, target))
        return loss.masked_fill(bad.any(), float("nan"))


class CondUncondLoss:
    """``discriminator_loss`` and ``generator_loss`` for one stage's D."""

    def __init__(self, params: CondUncondParams):
        self.params = params

    def discriminator_loss(
        self, D: nn.Module, real: Tensor, fake: Tensor, sentence: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """real, fake (B, 3, S, S); sentence (B, e). The fake image is detached here."""
        real_features = D(real)  # (B, 8d, 4, 4)
        fake_features = D(fake.detach())
        real_cond = _bce(D.cond_logits(real_features, sentence), 1.0)
        fake_cond = _bce(D.cond_logits(fake_features, sentence), 0.0)
        logs = {"real_cond": real_cond, "fake_cond": fake_cond}
        negatives = [fake_cond]
        batch = real.size(0)
        if self.params.mismatch and batch > 1:
            wrong_cond = _bce(D.cond_logits(real_features[: batch - 1], sentence[1:batch]), 0.0)
            logs["wrong_cond"] = wrong_cond
            negatives.append(wrong_cond)
        if D.has_unconditional:
            real_probability = D.uncond_logits(real_features)
            fake_probability = D.uncond_logits(fake_features)
            real_uncond = _bce(real_probability, 1.0)
            fake_uncond = _bce(fake_probability, 0.0)
            logs.update(real_uncond=real_uncond, fake_uncond=fake_uncond)
            # DM-GAN's "Real_Acc" / "Fake_Acc": mean unconditional probabilities.
            logs.update(real_acc=real_probability.mean(), fake_acc=fake_probability.mean())
            loss = (real_uncond + real_cond) / 2 + (fake_uncond + sum(negatives)) / (len(negatives) + 1)
        else:
            loss = real_cond + sum(negatives) / len(negatives)
        return loss, {key: value.detach() for key, value in logs.items()}

    def generator_loss(self, D: nn.Module, fake: Tensor, sentence: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Non-saturating G loss of one stage: BCE(C(x̂, s), 1) [+ BCE(U(x̂), 1)]."""
        features = D(fake)
        fake_cond = _bce(D.cond_logits(features, sentence), 1.0)
        logs = {"fake_cond": fake_cond}
        loss = fake_cond
        if D.has_unconditional:
            fake_uncond = _bce(D.uncond_logits(features), 1.0)
            logs["fake_uncond"] = fake_uncond
            loss = fake_uncond + fake_cond
        return loss, {key: value.detach() for key, value in logs.items()}


register(
    "adversarial_loss",
    "cond_uncond.v1",
    CondUncondLoss,
    params=CondUncondParams,
    description="Sigmoid/BCE conditional + unconditional GAN loss with mismatched pairs (all four originals)",
)
