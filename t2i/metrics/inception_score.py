"""Inception Score, 10 splits (Salimans et al. 2016, "Improved Techniques for Training GANs").

IS = exp( E_x KL( p(y|x) || p(y) ) ), p(y) = the split's mean prediction; reported as mean and (population) std
over ``splits`` contiguous splits of the shuffled predictions.

``is.v1`` uses, by default, the TF-2015 ImageNet Inception (the FID weights file) with the improved-GAN
"unbiased" logits (fc without bias, 1008 classes), as the COCO IS script and torch-fidelity's ``isc`` do; input
[-1, 1] quantised like a PNG, bilinear resize to 299. That is the COCO-style IS. The CUB "bird IS" (4.36 / 4.75 in
the papers) needs the TF1-slim Inception fine-tuned on CUB, which t2i cannot provide; a user with a PyTorch port of
it passes ``classifier_weights`` (torchvision layout, ``classifier_classes`` outputs, background class 0 dropped).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from t2i.metrics.backbones import classifier_inception, fid_inception
from t2i.metrics.base import EvalContext, Metric, MetricError, MetricResult
from t2i.registry import Params, register

__all__ = ["InceptionScore", "InceptionScoreParams", "inception_score"]


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS from class probabilities (N, C): mean and std over ``splits`` contiguous splits."""
    probs = np.asarray(probs, dtype=np.float64)
    n = probs.shape[0]
    if n < splits:
        raise MetricError(f"Inception Score with {splits} splits needs at least {splits} images, got {n}")
    scores = []
    for i in range(splits):
        part = probs[i * n // splits : (i + 1) * n // splits]
        marginal = part.mean(0, keepdims=True)  # p(y)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0).sum(1)  # KL(p(y|x) || p(y))
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


class InceptionScoreParams(Params):
    splits: int = Field(10, ge=1, description="number of splits (10 in every published protocol)")
    shuffle: bool = Field(True, description="shuffle predictions (seeded by the context seed) before splitting")
    classifier_weights: str | None = Field(
        None, description="local state dict of a torchvision-layout Inception-v3 classifier (e.g. a CUB bird-IS port)"
    )
    classifier_classes: int = Field(51, ge=2, description="outputs of classifier_weights (bird IS: 50 + background)")
    drop_first_class: bool = Field(True, description="drop output 0 (the TF-slim background class) before softmax")
    allow_random_backbone: bool = Field(
        False, description="random-initialised Inception when weights are missing (tests)"
    )


class InceptionScore(Metric):
    """Inception Score over generated images."""

    name = "is.v1"
    higher_is_better = True

    def __init__(self, params: InceptionScoreParams, *, context: EvalContext) -> None:
        super().__init__(context)
        self.params = params
        if params.classifier_weights:
            self.backbone = classifier_inception(Path(params.classifier_weights), params.classifier_classes)
            self.classes = "classifier outputs" + (" without class 0" if params.drop_first_class else "")
        else:
            self.backbone = fid_inception(context.weights_dir, allow_random=params.allow_random_backbone)
            self.classes = "1008 ImageNet (TF-2015) classes, unbiased logits"
        self.backbone.to(context.device)
        self.probs: list[Tensor] = []

    @torch.no_grad()
    def update(self, fake: Tensor, batch_info: Mapping[str, Any] | None = None) -> None:
        for chunk in fake.split(self.context.batch_size):
            x = ((chunk.float() + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
            if x.shape[-2:] != (299, 299):
                x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            logits = self.backbone.logits(self.backbone(x.to(self.context.device))).double()
            if self.params.classifier_weights and self.params.drop_first_class:
                logits = logits[:, 1:]
            self.probs.append(logits.softmax(1).float().cpu())

    def compute(self) -> MetricResult:
        probs = torch.cat(self.probs).numpy() if self.probs else np.zeros((0, 1))
        if self.params.shuffle:
            probs = probs[np.random.default_rng(self.context.seed).permutation(len(probs))]
        mean, std = inception_score(probs, self.params.splits)
        protocol = self.base_protocol(
            backbone=self.backbone.info,
            classes=self.classes,
            resize="F.interpolate bilinear to 299x299, align_corners=False",
            input_scaling="[-1,1] -> uint8 by rounding (PNG) -> x/127.5 - 1",
            splits=self.params.splits,
            shuffle=f"numpy default_rng(seed={self.context.seed})" if self.params.shuffle else "none",
            n_samples=len(probs),
        )
        return MetricResult(value=mean, std=std, n=len(probs), protocol=protocol)

    def per_item(self) -> dict[str, Any]:
        probs = torch.cat(self.probs).double().numpy() if self.probs else np.zeros((0, 1))
        # Generation order; compute's seeded shuffle is named so that the value can be recomputed exactly.
        shuffle = self.context.seed if self.params.shuffle else -1
        return {"probs": probs, "splits": self.params.splits, "shuffle_seed": shuffle}


register("metric", "is.v1", InceptionScore, params=InceptionScoreParams, description="Inception Score, 10 splits")
