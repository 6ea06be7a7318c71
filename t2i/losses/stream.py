"""STREAM caption re-description loss (MirrorGAN, Qiao et al., CVPR 2019, eq. 9).

``L_stream = weight · CE(captioner(f(x̂), captions), captions)``: the frozen captioner encodes the
last fake image, is teacher-forced on the batch's captions, and the mean cross-entropy over all
packed tokens is taken against the packed captions (the image feature predicts the first token).
Gradients flow through the frozen captioner into the image only.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from t2i.batch import TextFeatures
from t2i.encoders.stream_captioner import packed_targets
from t2i.registry import Params, register

__all__ = ["StreamLoss", "StreamParams"]


class StreamParams(Params):
    weight: float = Field(
        20.0, description="λ on the caption CE (DMM-GAN LAMBDA_STREAM 20; official MirrorGAN LAMBDA1 10, thesis 20)."
    )


class StreamLoss(nn.Module):
    """``stream.v1``: caption CE of the last fake image through the frozen captioner."""

    requires: tuple[str, ...] = ("captioner",)

    def __init__(self, params: StreamParams, *, networks: Mapping[str, nn.Module]):
        super().__init__()
        self.params = params
        captioner = networks["captioner"]
        # The originals keep the CNN in eval (BN running stats) and freeze everything; the decoder's
        # mode does not matter (one-layer LSTM, no dropout).
        captioner.eval()
        captioner.requires_grad_(False)
        self._networks = {"captioner": captioner}  # a plain dict: not a submodule of the loss

    def forward(self, fake_last: Tensor, text: TextFeatures) -> tuple[Tensor, dict[str, Tensor]]:
        captioner = self._networks["captioner"]
        return self._caption_loss(captioner.encode(fake_last), text)

    def from_backbone_features(self, pooled: Tensor, text: TextFeatures) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss from precomputed backbone features (B, F) (the fixtures stub the ResNet this way)."""
        return self._caption_loss(self._networks["captioner"].encoder.head(pooled), text)

    def _caption_loss(self, features: Tensor, text: TextFeatures) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self._networks["captioner"](features, text.captions, text.lengths)  # (Σ L, V)
        ce = F.cross_entropy(logits, packed_targets(text.captions, text.lengths))
        return self.params.weight * ce, {"caption_ce": ce}


register(
    "alignment_loss",
    "stream.v1",
    StreamLoss,
    params=StreamParams,
    description="STREAM caption re-description CE on the last image through the frozen captioner (MirrorGAN, DMM-GAN)",
)
