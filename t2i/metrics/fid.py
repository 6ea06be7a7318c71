"""Fréchet Inception Distance in two protocols that must never share a table (Heusel et al. 2017).

FID = |mu_r - mu_g|^2 + tr(Sigma_r + Sigma_g - 2 (Sigma_r Sigma_g)^{1/2})   (Heusel et al. 2017, eq. 6)

* ``fid.v1`` - standard FID: the TF-2015 FID Inception (pytorch-fid / torch-fidelity weights), generated images
  quantised to uint8 as a PNG would store them (rounding), bilinear resize to 299 (``align_corners=False``, as
  pytorch-fid), input scaled to [-1, 1]. Comparable with pytorch-fid >= 0.3 and, to within interpolation
  differences, torch-fidelity / TTUR "TF FID" (e.g. DM-GAN released CUB 11.91).
* ``fid_dmgan2018.v1`` - DM-GAN's ``eval/FID`` (pytorch-fid 802da39, Feb 2018): torchvision ImageNet Inception
  weights, images quantised by truncation ``uint8((x+1)*127.5)``, PIL ``Resize((299, 299))`` bilinear, then the
  wrong normalisation ``x*std/0.5 + (mean-0.5)/0.5`` applied to [0, 1] input, and ``drop_last`` at batch 50.
  Comparable with AttnGAN 23.98 / DM-GAN 16.09 (CUB) and the DF-GAN / GALIP family - given their reference
  statistics file (``reference_stats = "bird_val.npz"``).

The matrix square-root trace uses the symmetric eigen-decomposition tr((S1^{1/2} S2 S1^{1/2})^{1/2}) in float64,
which equals tr(sqrtm(S1 S2)) without SciPy's deprecated ``sqrtm(disp=...)``.
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

from t2i.metrics.backbones import InceptionBackbone, fid_inception, torchvision_inception
from t2i.metrics.base import EvalContext, Metric, MetricError, MetricResult, sha256_file
from t2i.metrics.stats_cache import StatsCache, dataset_fingerprint, stats_key
from t2i.registry import Params, register

__all__ = ["FID", "FIDDMGAN2018", "FIDParams", "FeatureStats", "frechet_distance"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise MetricError(
            f"FID statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}"
        )
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # Sigma1^{1/2}
    m = root1 @ s2 @ root1  # symmetric PSD, same eigenvalues as Sigma1 Sigma2
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


class FeatureStats:
    """Streaming float64 sums for mean and covariance (as torchmetrics keeps them)."""

    def __init__(self) -> None:
        self.n = 0
        self.total: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def add(self, features: Tensor | np.ndarray) -> None:  # (N, D)
        f = np.asarray(features.detach().cpu() if isinstance(features, Tensor) else features, dtype=np.float64)
        if f.shape[0] == 0:
            return
        if self.total is None:
            self.total = np.zeros(f.shape[1])
            self.outer = np.zeros((f.shape[1], f.shape[1]))
        self.n += f.shape[0]
        self.total += f.sum(0)
        self.outer += f.T @ f

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise MetricError(f"FID needs at least 2 images on each side, got {self.n}")
        mu = self.total / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)  # = np.cov(rowvar=False)
        return mu, sigma


class FIDParams(Params):
    reference_stats: str | None = Field(
        None,
        description="npz file with real statistics (keys mu/sigma, or m1/s1), e.g. DM-GAN's bird_val.npz; "
        "default: computed from the data set's real images and cached",
    )
    max_real: int | None = Field(None, ge=2, description="use at most this many real images for the statistics")
    allow_random_backbone: bool = Field(
        False, description="random-initialised Inception when weights are missing (tests)"
    )


class FID(Metric):
    """Standard FID (TF-2015 FID Inception, [-1, 1] input, bilinear resize to 299)."""

    name = "fid.v1"
    higher_is_better = False  # a distance between feature distributions
    resize = "F.interpolate bilinear to 299x299, align_corners=False (pytorch-fid)"
    input_scaling = "[-1,1] -> uint8 by rounding (PNG) -> x/127.5 - 1"
    drop_last: int | None = None

    def __init__(self, params: FIDParams, *, context: EvalContext) -> None:
        super().__init__(context)
        self.params = params
        self.backbone = self.build_backbone().to(context.device)
        self.fake = FeatureStats()
        self._pending: list[Tensor] = []  # features waiting for a full drop_last batch
        self._items: list[Tensor] = []  # per-image features, kept only with context.keep_items
        self._reference: tuple[np.ndarray, np.ndarray] | None = None

    def build_backbone(self) -> InceptionBackbone:
        return fid_inception(self.context.weights_dir, allow_random=self.params.allow_random_backbone)

    # -- preprocessing: part of the protocol --------------------------------------------------------------------
    def prepare(self, images: Tensor, *, real: bool) -> Tensor:  # (B, 3, H, W) [-1, 1] -> (B, 3, 299, 299)
        x = ((images.float() + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
        if x.shape[-2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def features(self, images: Tensor, *, real: bool) -> Tensor:  # -> (B, 2048) float64
        out = []
        for chunk in images.split(self.context.batch_size):
            x = self.prepare(chunk, real=real).to(self.context.device)
            out.append(self.backbone(x).double().cpu())
        return torch.cat(out)

    def update(self, fake: Tensor, batch_info: Mapping[str, Any] | None = None) -> None:
        # Images read from files ("uint8") hold exact uint8 steps: quantise them as real images (rounding), since
        # float32 x/127.5 - 1 can land a hair below the step and truncation would take one away.
        feats = self.features(fake, real=bool(batch_info and batch_info.get("uint8")))
        if self.drop_last is None:
            self._add(feats)
            return
        self._pending.append(feats)
        pending = torch.cat(self._pending)
        full = (pending.shape[0] // self.drop_last) * self.drop_last
        self._add(pending[:full])
        self._pending = [pending[full:]]

    def _add(self, feats: Tensor) -> None:
        self.fake.add(feats)
        if self.context.keep_items:
            self._items.append(feats.float())  # float32 halves the memory; the statistics stay float64

    # -- real statistics ----------------------------------------------------------------------------------------------
    def reference(self) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        if self.params.reference_stats:
            return _load_reference(Path(self.params.reference_stats).expanduser())
        if self.context.real_images is None:
            raise MetricError(
                f"{self.name} needs real-image statistics: set reference_stats to an npz file or evaluate with a "
                "data set that provides real images"
            )
        backbone = self.backbone.info
        meta = {
            "source": "dataset real images",
            "protocol": self.name,
            "backbone_sha256": backbone["sha256"],
            "resize": self.resize,
            "max_real": self.params.max_real,
        }
        dataset = self.context.dataset
        if dataset is None:
            mu, sigma, n = self._real_stats()
            return mu, sigma, {**meta, "n": n, "cache_key": None}
        meta["dataset"] = dataset_fingerprint(dataset)
        meta["image_size"] = getattr(dataset, "imsize", None)
        key = stats_key(**meta)
        stats, cached = StatsCache(self.context.cache_dir).get_or_compute(key, self._real_stats, meta)
        return stats["mu"], stats["sigma"], {**meta, "n": stats["n"], "cache_key": key, "cached": cached}

    def _real_stats(self) -> tuple[np.ndarray, np.ndarray, int]:
        stats, limit = FeatureStats(), self.params.max_real
        for images in self.context.real_images():
            images = images[-1] if isinstance(images, (list, tuple)) else getattr(images, "images", images)
            if isinstance(images, list):
                images = images[-1]
            if limit is not None:
                images = images[: max(0, limit - stats.n)]
            stats.add(self.features(images, real=True))
            if limit is not None and stats.n >= limit:
                break
        mu, sigma = stats.mean_cov()
        return mu, sigma, stats.n

    def compute(self) -> MetricResult:
        mu_g, sigma_g = self.fake.mean_cov()
        mu_r, sigma_r, reference = self.reference()
        self._reference = (mu_r, sigma_r)
        value = frechet_distance(mu_g, sigma_g, mu_r, sigma_r)
        dropped = sum(p.shape[0] for p in self._pending)
        protocol = self.base_protocol(
            backbone=self.backbone.info,
            feature="pool3 2048-d",
            resize=self.resize,
            input_scaling=self.input_scaling,
            sqrtm="float64 symmetric eigen-decomposition",
            n_samples=self.fake.n,
            dropped_samples=dropped,
            reference=reference,
        )
        return MetricResult(value=value, std=None, n=self.fake.n, protocol=protocol)

    def per_item(self) -> dict[str, Any] | None:
        if not self.context.keep_items:
            return None
        if self._reference is None:
            self._reference = self.reference()[:2]
        features = torch.cat(self._items).numpy() if self._items else np.zeros((0, 0))
        mu_r, sigma_r = self._reference
        # The images dropped by drop_last are not part of the value, so they are not items either.
        return {"features": features, "reference_mu": np.asarray(mu_r), "reference_sigma": np.asarray(sigma_r)}


class FIDDMGAN2018(FID):
    """DM-GAN 2018 FID: torchvision Inception, truncating uint8, PIL resize, wrong normalisation, drop_last 50."""

    name = "fid_dmgan2018.v1"
    resize = "PIL Resize((299, 299)) bilinear of uint8 images (aspect not kept)"
    input_scaling = (
        "fake: uint8((x+1)*127.5) truncation; real: uint8 rounding; then [0,1] and the 2018 pytorch-fid "
        "normalisation x*std/0.5 + (mean-0.5)/0.5 (ImageNet mean/std) - not [-1,1]"
    )
    drop_last = 50

    def build_backbone(self) -> InceptionBackbone:
        return torchvision_inception(self.context.weights_dir, allow_random=self.params.allow_random_backbone)

    def prepare(self, images: Tensor, *, real: bool) -> Tensor:
        from PIL import Image

        scaled = ((images.detach().float().cpu() + 1) * 127.5).clamp(0, 255)
        # DM-GAN writes PNGs with uint8((x+1)*127.5): truncation. Real images are uint8 already: round float noise.
        q = (scaled.round() if real else scaled.floor()).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        resized = [np.asarray(Image.fromarray(im).resize((299, 299), Image.BILINEAR)) for im in q]
        x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255
        mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        return x * (std / 0.5) + (mean - 0.5) / 0.5  # the 2018 bug: meant for x in [-1, 1] ... applied to [0, 1]


def _load_reference(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    if not path.is_file():
        raise MetricError(f"reference statistics file {path} not found (an npz with keys mu and sigma)")
    with np.load(path, allow_pickle=False) as data:
        keys = ("mu", "sigma") if "mu" in data else ("m1", "s1")  # thesis-exp stores m1/s1
        if keys[0] not in data or keys[1] not in data:
            raise MetricError(f"{path}: expected keys mu and sigma (or m1 and s1), found {', '.join(data.files)}")
        mu, sigma = data[keys[0]], data[keys[1]]
    return mu, sigma, {"source": f"file {path.name}", "sha256": sha256_file(path), "n": None}


register(
    "metric", "fid.v1", FID, params=FIDParams, description="standard FID: TF-2015 FID Inception, [-1,1], 299 bilinear"
)
register(
    "metric",
    "fid_dmgan2018.v1",
    FIDDMGAN2018,
    params=FIDParams,
    description="DM-GAN 2018 'PyTorch FID' (torchvision Inception, wrong normalisation); for 23.98/16.09-style numbers",
)
