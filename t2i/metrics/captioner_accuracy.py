"""Captioner accuracy: how much of an image's caption a frozen captioner reads back from it.

The STREAM alignment loss (MirrorGAN, Qiao et al. 2019, eq. 8; the DMM-GAN thesis) trains the generator so that a
pretrained captioner, teacher-forced with the caption, predicts each of its words from the image: the cross-entropy
``L_stream = -sum_t log p(w_t | I, w_<t)``. This metric measures that same captioner on evaluated images: the share of
caption tokens it predicts (argmax) from the image and the words before them, and the mean cross-entropy per token.

It explains what the STREAM term can teach. Run on real images with their own captions, on real images with shuffled
captions (``t2i eval --references``) and on generated images: when the captioner is barely more accurate on the real
image than on another one, most of what it predicts comes from the language prior (``w_<t``), and a generator
lowering its loss learns little about the picture.

``captioner_accuracy.v1`` needs the ``captioner`` evaluator network (a recipe with ``model.captioner`` and its
``train.pretrained.captioner`` file). The value is the mean over images of each image's token accuracy; per-image
records support paired comparisons. The captioner is the one the generator trained against when it used STREAM:
the protocol records ``judge_is_trainer``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence

from t2i.metrics.base import EvalContext, Metric, MetricResult, module_fingerprint
from t2i.registry import Params, register

__all__ = ["CaptionerAccuracy", "CaptionerAccuracyParams", "token_scores"]


class CaptionerAccuracyParams(Params):
    pass


@torch.no_grad()
def token_scores(
    captioner: torch.nn.Module, images: Tensor, captions: Tensor, lengths: Tensor
) -> tuple[Tensor, Tensor]:
    """Teacher-forced scores of each image's caption: -> (token accuracy (B,), mean cross-entropy per token (B,)).

    ``captions`` (B, L) padded ids and ``lengths`` (B,) in any order; the decoder packs them sorted by length.
    """
    order = torch.sort(lengths, descending=True, stable=True).indices
    captions, lengths = captions[order], lengths[order]
    logits = captioner(captioner.encode(images[order]), captions, lengths)  # (Σ L, V), packed order
    packed = pack_padded_sequence(captions, lengths.cpu(), batch_first=True)
    rows = torch.arange(len(lengths), device=captions.device)[:, None].expand_as(captions)
    owner = pack_padded_sequence(rows, lengths.cpu(), batch_first=True).data  # which image each packed token is
    hits = (logits.argmax(1) == packed.data).double()
    ce = F.cross_entropy(logits.double(), packed.data, reduction="none")
    count = lengths.to(captions.device).double()
    accuracy = torch.zeros(len(lengths), dtype=torch.float64, device=captions.device).index_add_(0, owner, hits)
    loss = torch.zeros_like(accuracy).index_add_(0, owner, ce)
    result_acc, result_ce = torch.empty_like(accuracy), torch.empty_like(loss)
    result_acc[order], result_ce[order] = accuracy / count, loss / count
    return result_acc.cpu(), result_ce.cpu()


class CaptionerAccuracy(Metric):
    """Token accuracy of a frozen captioner on the evaluated images (teacher-forced with their captions)."""

    name = "captioner_accuracy.v1"
    higher_is_better = True
    requires = ("captioner",)

    def __init__(self, params: CaptionerAccuracyParams, *, context: EvalContext) -> None:
        super().__init__(context)
        self.params = params
        self.captioner = context.networks["captioner"].eval()
        self.accuracy: list[np.ndarray] = []
        self.cross_entropy: list[np.ndarray] = []

    def update(self, fake: Tensor, batch_info: Mapping[str, Any]) -> None:
        device = self.context.device
        accuracy, ce = token_scores(
            self.captioner, fake.to(device), batch_info["captions"].to(device), batch_info["lengths"].to(device)
        )
        self.accuracy.append(accuracy.numpy())
        self.cross_entropy.append(ce.numpy())

    def per_item(self) -> dict[str, Any]:
        return {"scores": np.concatenate(self.accuracy) if self.accuracy else np.zeros(0)}

    def compute(self) -> MetricResult:
        accuracy = np.concatenate(self.accuracy) if self.accuracy else np.zeros(0)
        ce = np.concatenate(self.cross_entropy) if self.cross_entropy else np.zeros(0)
        fingerprint = module_fingerprint(self.captioner)
        trained = self.context.training_network_hashes.get("captioner")
        protocol = self.base_protocol(
            n_samples=len(accuracy),
            captioner={"class": type(self.captioner).__qualname__, "state_sha256": fingerprint},
            judge_is_trainer=trained == fingerprint,
        )
        value = float(accuracy.mean()) if len(accuracy) else float("nan")
        std = float(accuracy.std()) if len(accuracy) else None
        return MetricResult(value, std, len(accuracy), protocol, details={"cross_entropy": float(ce.mean())})


register(
    "metric",
    "captioner_accuracy.v1",
    CaptionerAccuracy,
    params=CaptionerAccuracyParams,
    description="token accuracy of the frozen STREAM captioner on the images (what the STREAM loss can teach)",
)
