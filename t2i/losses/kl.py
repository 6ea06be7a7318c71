"""KL term of conditioning augmentation (StackGAN, Zhang et al., ICCV 2017), added to the generator loss.

``L_KL = -½ · mean(1 + log σ² - μ² - σ²)`` over all batch × c elements: a mean, not a sum,
as all four originals compute it (their KL coefficient is 1).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["kl_loss"]


def kl_loss(mu: Tensor, logvar: Tensor) -> Tensor:
    """mu, logvar (B, c) -> scalar."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).mean()
