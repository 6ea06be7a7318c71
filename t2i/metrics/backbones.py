"""Inception-v3 backbones for FID and IS, built from local weight files only (docs/metrics.md, backbone weights).

* ``fid_inception``: the TF-2015 FID Inception as pytorch-fid ports it (``pt_inception-2015-12-05-6726825d.pth``;
  torch-fidelity ships the same weights as ``weights-inception-2015-12-05-6726825d.pth``). The architecture comes from
  pytorch-fid (``FIDInceptionA/C/E_1/E_2`` patches of torchvision's Inception3); only the loading is ours, because
  pytorch-fid can only fetch the file from the network.
* ``torchvision_inception``: torchvision's ImageNet ``inception_v3_google`` weights, the backbone of the 2018
  pytorch-fid snapshot that DM-GAN's ``eval/FID/fid_score.py`` uses (pytorch-fid commit 802da39, before it moved to
  the TF FID weights).
* ``classifier_inception``: a torchvision Inception3 with a user-given number of classes (e.g. a PyTorch port of the
  CUB fine-tuned bird-IS model, which t2i cannot ship: the original is a TF1-slim checkpoint of the
  StackGAN-inception-model code).

The files are weights manifest entries (``fid_inception``, ``inception_v3_imagenet``): looked up in the weights folder
and, when absent, fetched there on first use (t2i/weights.py). Offline, or with ``T2I_OFFLINE=1``, a missing file
raises ``WeightsNotFoundError`` naming the file, its expected SHA-256, where to put it and the public URL.
``allow_random=True`` builds a seeded random-initialised network instead of fetching (tests), logged and recorded as
``"random-init"`` in every protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i import weights
from t2i.metrics.base import sha256_file
from t2i.weights import WeightsMismatchError, WeightsNotFoundError

__all__ = [
    "FID_INCEPTION",
    "TORCHVISION_INCEPTION",
    "InceptionBackbone",
    "WeightSpec",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "classifier_inception",
    "fid_inception",
    "locate_weights",
    "torchvision_inception",
]

RANDOM_INIT = "random-init"


@dataclass(frozen=True)
class WeightSpec:
    """A weights file. ``sha256`` may be a prefix (torch hub names files by the first 8 digits)."""

    filename: str
    sha256: str
    url: str
    description: str
    alternatives: tuple[tuple[str, str], ...] = ()  # other accepted (filename, sha256 or prefix)
    manifest_name: str | None = None  # fetched through the weights manifest when absent


def _spec(name: str, description: str) -> WeightSpec:
    e = weights.load_manifest(weights.PACKAGED_MANIFEST)[name]
    return WeightSpec(e.file, e.expected, e.urls[0], description, e.also_accepted, manifest_name=name)


FID_INCEPTION = _spec("fid_inception", "TF-2015 FID Inception (pytorch-fid port)")
TORCHVISION_INCEPTION = _spec("inception_v3_imagenet", "torchvision ImageNet Inception-v3 (IMAGENET1K_V1)")


def locate_weights(spec: WeightSpec, weights_dir: Path) -> tuple[Path, str]:
    """Find ``spec`` in ``weights_dir`` and check its hash. -> (path, full sha256)."""
    weights_dir = Path(weights_dir).expanduser()
    for filename, expected in ((spec.filename, spec.sha256), *spec.alternatives):
        path = weights_dir / filename
        if path.is_file():
            digest = sha256_file(path)
            if not digest.startswith(expected):
                raise WeightsMismatchError(
                    f"{path} has SHA-256 {digest}, expected {_describe_hash(expected)}: it is not the "
                    f"{spec.description} weights file (corrupt or partial download?). Replace it with the file "
                    f"from {spec.url}"
                )
            return path, digest
    alternatives = "".join(f" (or {name})" for name, _ in spec.alternatives)
    raise WeightsNotFoundError(
        f"weights file {spec.filename}{alternatives} not found in {weights_dir}. It holds the {spec.description}; "
        f"expected SHA-256 {_describe_hash(spec.sha256)}. Fetch it from {spec.url} and place it at "
        f"{weights_dir / spec.filename} (or point --weights-dir / the T2I_WEIGHTS environment variable at the "
        "directory that holds it)."
    )


def _describe_hash(expected: str) -> str:
    return expected if len(expected) == 64 else f"starting with {expected}"


class InceptionBackbone(nn.Module):
    """Inception-v3 trunk up to the 2048-d average pool, plus its classifier head for IS.

    ``forward`` takes images already resized to 299x299 and scaled as the weights expect; preprocessing is the
    metric's (it is part of the protocol). -> pool features (B, 2048).
    """

    def __init__(self, net: nn.Module, *, info: dict[str, Any], unbiased_logits: bool = False) -> None:
        super().__init__()
        self.net = net
        self.info = info
        self.unbiased_logits = unbiased_logits
        self.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, 299, 299) -> (B, 2048)
        n = self.net
        x = n.maxpool1(n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x))))
        x = n.maxpool2(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)))
        for block in (n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d, n.Mixed_6e):
            x = block(x)
        x = n.Mixed_7c(n.Mixed_7b(n.Mixed_7a(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def logits(self, pool: Tensor) -> Tensor:  # (B, 2048) -> (B, classes)
        # "logits_unbiased" (fc without its bias) is what improved-GAN / torch-fidelity feed the IS softmax.
        if self.unbiased_logits:
            return pool @ self.net.fc.weight.t()
        return self.net.fc(pool)

    def train(self, mode: bool = True) -> InceptionBackbone:  # always inference: BN running stats, no dropout
        return super().train(False)


def _torchvision_inception3(num_classes: int, aux_logits: bool = False) -> nn.Module:
    import torchvision

    # PyTorch's default layer init; torchvision's truncated-normal init is slow and pointless before loading.
    return torchvision.models.inception_v3(
        weights=None, num_classes=num_classes, aux_logits=aux_logits, init_weights=False
    )


def _load(net: nn.Module, path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as error:  # torch's message lists the keys and shapes but not the file
        raise weights.WeightsError(f"{path}: these weights do not fit {type(net).__name__}: {error}") from None


def fid_inception(weights_dir: Path, *, allow_random: bool = False, seed: int = 0) -> InceptionBackbone:
    """The pytorch-fid FID Inception (1008 classes; IS uses its unbiased logits)."""
    path, digest = _find_or_random(FID_INCEPTION, weights_dir, allow_random)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # a random backbone is the same in every process
        net = _fid_inception_net()
    if path is not None:
        _load(net, path)
    info = _info("fid_inception_tf2015", path, digest)
    return InceptionBackbone(net, info=info, unbiased_logits=True)


def _fid_inception_net() -> nn.Module:
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    net = _torchvision_inception3(1008)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


def torchvision_inception(weights_dir: Path, *, allow_random: bool = False, seed: int = 0) -> InceptionBackbone:
    """torchvision's ImageNet Inception-v3 (1000 classes), as ``inception_v3(pretrained=True)`` gave it in 2018."""
    path, digest = _find_or_random(TORCHVISION_INCEPTION, weights_dir, allow_random)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _torchvision_inception3(1000)
    if path is not None:
        _load(net, path)
    return InceptionBackbone(net, info=_info("torchvision_inception_v3_imagenet", path, digest))


def classifier_inception(path: str | Path, num_classes: int) -> InceptionBackbone:
    """A user's Inception-v3 classifier (torchvision layout, ``num_classes`` outputs) from a local state dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"classifier weights {path} not found. Give a torchvision-layout Inception-v3 state dict with "
            f"{num_classes} outputs (e.g. a PyTorch port of the CUB fine-tuned bird-IS model); t2i never downloads."
        )
    net = _torchvision_inception3(num_classes)
    _load(net, path)
    return InceptionBackbone(net, info=_info(f"classifier_inception_v3_{num_classes}", path, sha256_file(path)))


def _find_or_random(spec: WeightSpec, weights_dir: Path, allow_random: bool) -> tuple[Path | None, str]:
    try:
        return locate_weights(spec, weights_dir)
    except WeightsNotFoundError:
        if allow_random:
            weights.log.warning("%s: no weights file in %s, using a random-initialised network", spec.description,
                                weights_dir)  # fmt: skip
            return None, RANDOM_INIT
        if spec.manifest_name is None:
            raise
    path = weights.ensure(weights.entry(spec.manifest_name), Path(weights_dir).expanduser())
    return path, sha256_file(path)


def _info(name: str, path: Path | None, digest: str) -> dict[str, Any]:
    return {"name": name, "weights_file": path.name if path is not None else None, "sha256": digest}
