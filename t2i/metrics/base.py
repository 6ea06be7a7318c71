"""The metric protocol: ``EvalContext`` in, ``update`` per generated batch, ``compute`` -> ``MetricResult``.

A metric is a registered component (kind ``metric``) whose versioned name *is* its protocol:
``fid.v1`` and ``fid_dmgan2018.v1`` are two different metrics, never two settings of one. Every result carries a
``protocol`` record (backbone + hash of its weights, resize, input scaling, sample count, reference statistics and
their hash, seed, batch size) so a number can always be traced to how it was measured.

Factories are called as ``factory(params, *, context=EvalContext(...))``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = [
    "BATCH_INFO_KEYS",
    "EvalContext",
    "GenerateFn",
    "Metric",
    "MetricError",
    "MetricResult",
    "default_cache_dir",
    "default_weights_dir",
    "module_fingerprint",
    "sha256_file",
]

# What the evaluation loop passes with every generated batch (all in the batch's order):
BATCH_INFO_KEYS = (
    "captions",  # (B, L) int64 token ids of the generating captions
    "lengths",  # (B,) int64
    "class_ids",  # (B,) int64
    "keys",  # list[str] image keys of the data set items
    "sentence_embeddings",  # (B, e) sentence embeddings the generator was conditioned on
    "indices",  # (B,) int64 data set indices of the items
    "z",  # (B, z_dim) the noise each image was generated with
    "eps",  # (B, cond_dim) the conditioning augmentation noise each image was generated with
)
# A folder of images made elsewhere passes only {"uint8": True}: the values are exact uint8 steps.

# ``EvalContext.generate(captions, lengths, z, eps) -> images``: the evaluated generator behind its text encoder, for
# metrics that generate images themselves (controllability: edited captions with the same noise). captions (B, L)
# int64 padded token ids and lengths (B,) in any order; z (B, z_dim) and eps (B, cond_dim); returns (B, 3, S, S)
# fp32 in [-1, 1], in the order given. Set only while a generator is being evaluated (``t2i.evaluate.evaluate``).
GenerateFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


class MetricError(ValueError):
    """A metric cannot run as configured; the message says what to change (shown by the CLI, exit 1)."""

    t2i_user_error = True


def default_weights_dir() -> Path:
    """The weights cache folder (``$T2I_WEIGHTS``, else the XDG cache): where backbone weights are looked up."""
    from t2i.weights import cache_dir

    return cache_dir()


def default_cache_dir() -> Path:
    return Path(os.environ.get("T2I_CACHE", "~/.cache/t2i")).expanduser() / "metric-stats"


@dataclass
class EvalContext:
    """Everything a metric may need besides its own params; built once per evaluation by the caller."""

    device: torch.device | str = "cpu"
    batch_size: int = 50
    seed: int = 100  # DM-GAN's evaluation seed
    weights_dir: Path = field(default_factory=default_weights_dir)
    cache_dir: Path = field(default_factory=default_cache_dir)
    dataset: Any = None  # the test-split Dataset: .vocab, .collate, captions_of(i), class_id(i)
    networks: Mapping[str, nn.Module] = field(default_factory=dict)  # evaluator modules: "text_encoder", ...
    real_images: Callable[[], Iterable[Tensor]] | None = None  # yields (B, 3, H, W) in [-1, 1]
    run_info: dict[str, Any] = field(default_factory=dict)  # merged into every protocol (e.g. checkpoint sha256)
    training_network_hashes: dict[str, str] = field(default_factory=dict)  # what G was trained against
    keep_items: bool = False  # keep what ``Metric.per_item`` needs even where it costs memory (FID features)
    generate: GenerateFn | None = None  # None for images made elsewhere (a folder): nothing can be regenerated

    def __post_init__(self) -> None:
        self.weights_dir = Path(self.weights_dir).expanduser()
        self.cache_dir = Path(self.cache_dir).expanduser()
        if self.batch_size < 1:
            raise MetricError(f"batch_size must be positive, got {self.batch_size}")


@dataclass
class MetricResult:
    """One number with its spread, sample count and the full description of how it was measured."""

    value: float
    std: float | None
    n: int
    protocol: dict[str, Any]
    details: dict[str, float] = field(default_factory=dict)  # e.g. per-attribute rates

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "std": self.std, "n": self.n, "details": self.details, "protocol": self.protocol}


class Metric:
    """Base class: subclasses set ``name`` (= the registered, versioned name) and implement update/compute."""

    name: ClassVar[str] = "metric.v0"
    # Which way is better: a score (IS, R-precision) rises, a distance (FID) falls. The training loop keeps the
    # best checkpoint by it; every registered metric sets it.
    higher_is_better: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ()  # names of evaluator networks needed in ``context.networks``

    def __init__(self, context: EvalContext) -> None:
        self.context = context
        missing = [n for n in self.requires if n not in context.networks]
        if missing:
            raise MetricError(
                f"metric {self.name} needs the evaluator network(s) {', '.join(missing)}; "
                f"give them in the evaluation context (available: {', '.join(context.networks) or 'none'})"
            )

    def update(self, fake: Tensor, batch_info: Mapping[str, Any]) -> None:  # fake (B, 3, H, W) in [-1, 1]
        raise NotImplementedError

    def compute(self) -> MetricResult:
        raise NotImplementedError

    def per_item(self) -> dict[str, Any] | None:
        """What the value is made of, one entry per generated image in ``update`` order (for paired statistics).

        ``{"scores": (N,)}`` when the value is the mean of per-image scores, ``{"probs": (N, C), "splits": k}``
        for the Inception Score, ``{"features": (N, D), "reference_mu": (D,), "reference_sigma": (D, D)}`` for
        FID (which keeps its features only with ``context.keep_items``). Called after ``compute``; None when the
        metric cannot be split by image. ``t2i.stats`` recomputes the value from resampled images with it.
        """
        return None

    def base_protocol(self, **extra: Any) -> dict[str, Any]:
        """Fields every protocol record shares, then the metric's own."""
        base, _, version = self.name.rpartition(".v")
        record: dict[str, Any] = {
            "metric": self.name,
            "name": base,
            "version": int(version) if version.isdigit() else version,
            "seed": self.context.seed,
            "batch_size": self.context.batch_size,
        }
        record.update(extra)
        record.update(self.context.run_info)
        return record


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, memoised by (path, size, mtime) so large weights are hashed once per process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, shapes, dtypes, values): identifies an evaluator's weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
