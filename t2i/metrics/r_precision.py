"""R-precision: does the evaluator rank an image's own caption above 99 others? (Xu et al. 2018, AttnGAN)

For each generated image x with caption c: image code v = image_encoder(x) global (e), sentence codes s_0 (the
true caption) and s_1..s_99 (negatives); score_k = cos(v, s_k); hit if s_0 scores highest.

* ``r_precision_legacy.v1`` - DM-GAN's ``sampling`` code, quirks kept for comparability with 72.31 / 88.56:
  the true code is the sentence embedding the generator was conditioned on; negatives drawn with numpy's *global*
  RNG (``np.random.randint`` image index, rejected when of the same class, then a caption index; negatives may
  repeat; the caption length rule's word subset also from the global RNG), sorted by length and encoded; cosine with
  the norm product clamped at 1e-8; ties go to the true caption (``argmax == 0``); the ``n_samples`` (30,000) hits are
  shuffled with the global RNG and cut into 10 folds with ``R[i*3000:(i+1)*3000-1]`` (2,999 items each); mean and
  population std of the fold means. DM-GAN indexes a fixed 30,000-slot array, so the batch size must divide
  ``n_samples``: reported here as a clear error instead of an IndexError. The global RNG is seeded with the context
  seed when the metric is built (DM-GAN seeds it with 100 at start-up).
* ``r_precision.v1`` - corrected: distinct negatives (no repeats, none identical to the true caption) from other
  classes, drawn from the metric's own seeded generator; the true caption is re-encoded by the evaluator; a tie
  counts as 1/(1+k) (the expectation of a random tie-break); any N; value = mean hit rate, std over 10 folds
  (``np.array_split``). Give it evaluator encoders that were *not* used to train the generator: the protocol records
  the evaluator's weight hashes and flags ``judge_is_trainer`` when they match the training ones
  (the bias TISE, Dinh et al. 2022, describes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from t2i.metrics.base import EvalContext, Metric, MetricError, MetricResult, module_fingerprint
from t2i.registry import Params, register

__all__ = [
    "RPrecision",
    "RPrecisionLegacy",
    "RPrecisionLegacyParams",
    "RPrecisionParams",
    "apply_length_rule",
    "encode_sentences",
    "legacy_fold_scores",
]


def apply_length_rule(
    caption: Sequence[int], words_num: int, convention: str, rng: Any = np.random
) -> tuple[np.ndarray, int]:
    """The originals' caption length rule with a numpy RNG: keep a random, order-preserving word subset when too long.

    ``caption`` as ``captions_of`` stores it (A: bare ids; B: wrapped in <start>/<end>). -> (ids (words_num,), length).
    ``rng`` is ``np.random`` (the global stream, as DM-GAN) or a ``np.random.Generator``.
    """
    words = np.asarray(caption, dtype=np.int64)
    if convention == "B":
        words, limit, pad = words[1:-1], words_num - 2, 2
    else:
        limit, pad = words_num, 0
    if len(words) > limit:
        order = list(np.arange(len(words)))
        rng.shuffle(order)
        words = words[np.sort(order[:limit])]
    out = np.full(words_num, pad, dtype=np.int64)
    if convention == "B":
        out[0], out[1 : 1 + len(words)], out[1 + len(words)] = 0, words, 1
        return out, len(words) + 2
    out[: len(words)] = words
    return out, len(words)


@torch.no_grad()
def encode_sentences(text_encoder: torch.nn.Module, captions: Tensor, lengths: Tensor, chunk: int = 1024) -> Tensor:
    """Sentence codes (N, e) of padded captions (N, L); sorted by length for the packed RNN, returned in input order."""
    order = torch.sort(lengths, descending=True, stable=True).indices
    codes = []
    for part in order.split(chunk):
        part_lengths = lengths[part]
        _, sentence = text_encoder(captions[part][:, : int(part_lengths.max())], part_lengths)
        codes.append(sentence)
    out = torch.cat(codes)
    result = torch.empty_like(out)
    result[order.to(out.device)] = out
    return result


def _cosine(image_code: Tensor, sentence_codes: Tensor) -> Tensor:  # (e,), (K, e) -> (K,)
    scores = sentence_codes @ image_code
    norm = sentence_codes.norm(dim=1) * image_code.norm()
    return scores / norm.clamp(min=1e-8)


def legacy_fold_scores(hits: np.ndarray, folds: int = 10) -> tuple[float, float, np.ndarray]:
    """DM-GAN's aggregation *after* its shuffle: fold i averages ``hits[i*s:(i+1)*s-1]`` (the slice bug)."""
    size = len(hits) // folds
    means = np.array([np.average(hits[i * size : (i + 1) * size - 1]) for i in range(folds)])
    return float(np.average(means)), float(np.std(means)), means


class _RPrecisionBase(Metric):
    requires = ("text_encoder", "image_encoder")

    def __init__(self, params: Any, *, context: EvalContext) -> None:
        super().__init__(context)
        self.params = params
        dataset = context.dataset
        if dataset is None or not hasattr(dataset, "captions_of") or not hasattr(dataset, "class_id"):
            raise MetricError(f"{self.name} needs the test data set (captions_of(i), class_id(i)) in the context")
        self.dataset = dataset
        self.class_ids = np.array([dataset.class_id(i) for i in range(len(dataset))])
        if len(np.unique(self.class_ids)) < 2:
            raise MetricError(f"{self.name}: the data set has a single class, so there are no negatives to draw")
        self.convention = getattr(getattr(dataset, "vocab", None), "convention", "A")
        self.words_num = params.words_num or getattr(dataset, "words_num", None) or 25
        self.text_encoder = context.networks["text_encoder"].eval()
        self.image_encoder = context.networks["image_encoder"].eval()
        self.hits: list[float] = []

    def per_item(self) -> dict[str, Any]:
        # Hits in generation order (compute shuffles a copy). The legacy value averages folds that each drop an
        # item, so for it the mean of these hits is close to, not equal to, the reported value.
        return {"scores": np.asarray(self.hits, dtype=np.float64)}

    @torch.no_grad()
    def image_codes(self, fake: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, e)
        device = self.context.device
        return torch.cat([self.image_encoder(c.to(device))[1] for c in fake.split(self.context.batch_size)]).cpu()

    def encode_negatives(self, groups: list[list[tuple[np.ndarray, int]]]) -> Tensor:  # -> (B, K, e)
        captions = torch.from_numpy(np.stack([c for g in groups for c, _ in g]))
        lengths = torch.tensor([n for g in groups for _, n in g], dtype=torch.int64)
        device = self.context.device
        codes = encode_sentences(self.text_encoder, captions.to(device), lengths.to(device)).cpu()
        return codes.view(len(groups), -1, codes.shape[-1])

    def evaluator_record(self) -> dict[str, Any]:
        return {
            name: {"class": type(self.context.networks[name]).__qualname__, "state_sha256": module_fingerprint(net)}
            for name, net in (("text_encoder", self.text_encoder), ("image_encoder", self.image_encoder))
        }


class RPrecisionLegacyParams(Params):
    n_samples: int = Field(30000, ge=1, description="results collected (DM-GAN: 30,000)")
    folds: int = Field(10, ge=1, description="folds (DM-GAN: 10 of n_samples/10, each missing its last item)")
    negatives: int = Field(99, ge=1, description="mismatched captions per image")
    words_num: int | None = Field(None, description="caption length limit for negatives (default: the data set's)")
    seed_global_rng: bool = Field(True, description="np.random.seed(context.seed) when built, as DM-GAN seeds at start")


class RPrecisionLegacy(_RPrecisionBase):
    """DM-GAN's R-precision, quirks included."""

    name = "r_precision_legacy.v1"
    higher_is_better = True

    def __init__(self, params: RPrecisionLegacyParams, *, context: EvalContext) -> None:
        if params.n_samples % context.batch_size:
            raise MetricError(
                f"{self.name}: DM-GAN's loop fills a fixed array of n_samples={params.n_samples} results batch by "
                f"batch, so the evaluation batch size must divide it; batch_size={context.batch_size} does not "
                f"(it would overflow the array). Use a divisor such as 10, 20, 25, 50 or 100."
            )
        if params.n_samples % params.folds:
            raise MetricError(f"{self.name}: folds={params.folds} must divide n_samples={params.n_samples}")
        super().__init__(params, context=context)
        if params.seed_global_rng:
            np.random.seed(context.seed)

    def draw_negatives(self, class_id: int) -> list[tuple[np.ndarray, int]]:
        """99 captions of images from other classes, numpy global RNG, repeats allowed; sorted by length (desc)."""
        negatives, n = [], len(self.dataset)
        while len(negatives) < self.params.negatives:
            index = np.random.randint(0, n)  # exclusive upper bound (DM-GAN's random.randint could draw n)
            if self.class_ids[index] == class_id:
                continue
            captions = self.dataset.captions_of(index)
            caption = captions[np.random.randint(0, len(captions))]
            negatives.append(apply_length_rule(caption, self.words_num, self.convention, np.random))
        order = np.argsort([-length for _, length in negatives], kind="stable")
        return [negatives[i] for i in order]

    @torch.no_grad()
    def update(self, fake: Tensor, batch_info: Mapping[str, Any]) -> None:
        b = fake.shape[0]
        if len(self.hits) + b > self.params.n_samples:
            raise MetricError(
                f"{self.name}: {len(self.hits)} + {b} results exceed n_samples={self.params.n_samples}; DM-GAN's "
                "array would overflow: every batch must have the context batch size, which must divide n_samples"
            )
        class_ids = [int(c) for c in batch_info["class_ids"]]
        groups = [self.draw_negatives(c) for c in class_ids]  # image by image, in batch order, as DM-GAN
        negatives = self.encode_negatives(groups)  # (B, 99, e)
        truth = batch_info.get("sentence_embeddings")
        if truth is None:
            truth = encode_sentences(self.text_encoder, batch_info["captions"], batch_info["lengths"])
        truth = truth.detach().cpu().float()
        codes = self.image_codes(fake)
        for j in range(b):
            scores = _cosine(codes[j], torch.cat([truth[j : j + 1], negatives[j]]))
            self.hits.append(float(torch.argmax(scores) == 0))  # first maximum: ties go to the true caption

    def compute(self) -> MetricResult:
        if len(self.hits) != self.params.n_samples:
            raise MetricError(
                f"{self.name} needs exactly n_samples={self.params.n_samples} results, got {len(self.hits)}: "
                f"generate {self.params.n_samples} images (or set n_samples)"
            )
        hits = np.array(self.hits)
        np.random.shuffle(hits)  # a copy: self.hits keeps generation order for per_item
        mean, std, _ = legacy_fold_scores(hits, self.params.folds)
        protocol = self.base_protocol(
            evaluator=self.evaluator_record(),
            negatives=f"{self.params.negatives} per image, other classes, numpy global RNG, repeats allowed",
            words_num=self.words_num,
            true_caption="the generator's conditioning sentence embedding",
            ties="to the true caption",
            folds=f"{self.params.folds} folds with the [i*s:(i+1)*s-1] slice",
            n_samples=len(hits),
        )
        return MetricResult(value=mean, std=std, n=len(hits), protocol=protocol)


class RPrecisionParams(Params):
    negatives: int = Field(99, ge=1, description="distinct mismatched captions per image")
    folds: int = Field(10, ge=1, description="folds for the spread (np.array_split)")
    words_num: int | None = Field(None, description="caption length limit (default: the data set's)")
    exclude_same_class: bool = Field(True, description="negatives come from images of other classes")


class RPrecision(_RPrecisionBase):
    """Corrected R-precision with an independent evaluator."""

    name = "r_precision.v1"
    higher_is_better = True

    def __init__(self, params: RPrecisionParams, *, context: EvalContext) -> None:
        super().__init__(params, context=context)
        self.rng = np.random.default_rng(context.seed)
        self.flat = [(i, k) for i in range(len(self.dataset)) for k in range(len(self.dataset.captions_of(i)))]

    def draw_negatives(self, index: int | None, class_id: int, truth: tuple[int, ...]) -> list[tuple[np.ndarray, int]]:
        chosen: set[tuple[int, int]] = set()
        out = []
        for _attempt in range(100 * self.params.negatives + 1000):
            if len(out) == self.params.negatives:
                break
            i, k = self.flat[int(self.rng.integers(len(self.flat)))]
            if (i, k) in chosen or i == index or (self.params.exclude_same_class and self.class_ids[i] == class_id):
                continue
            caption = self.dataset.captions_of(i)[k]
            if tuple(caption) == truth:
                continue
            chosen.add((i, k))
            out.append(apply_length_rule(caption, self.words_num, self.convention, self.rng))
        if len(out) < self.params.negatives:
            raise MetricError(f"{self.name}: could not find {self.params.negatives} distinct negatives")
        return out

    @torch.no_grad()
    def update(self, fake: Tensor, batch_info: Mapping[str, Any]) -> None:
        captions, lengths = batch_info["captions"].cpu(), batch_info["lengths"].cpu()
        indices = batch_info.get("indices")
        groups = []
        for j in range(fake.shape[0]):
            words = captions[j, : int(lengths[j])].tolist()
            index = int(indices[j]) if indices is not None else None
            groups.append(self.draw_negatives(index, int(batch_info["class_ids"][j]), tuple(words)))
        negatives = self.encode_negatives(groups)
        device = self.context.device
        truth = encode_sentences(self.text_encoder, captions.to(device), lengths.to(device)).cpu()
        codes = self.image_codes(fake)
        for j in range(fake.shape[0]):
            scores = _cosine(codes[j], torch.cat([truth[j : j + 1], negatives[j]]))
            above = int((scores[1:] > scores[0]).sum())
            ties = int((scores[1:] == scores[0]).sum())
            self.hits.append(0.0 if above else 1.0 / (1 + ties))

    def compute(self) -> MetricResult:
        hits = np.array(self.hits)
        if len(hits) == 0:
            raise MetricError(f"{self.name}: no images were evaluated")
        shuffled = hits[self.rng.permutation(len(hits))]
        folds = [f.mean() for f in np.array_split(shuffled, min(self.params.folds, len(hits)))]
        evaluator = self.evaluator_record()
        trained = set(self.context.training_network_hashes.values())
        protocol = self.base_protocol(
            evaluator=evaluator,
            judge_is_trainer=any(e["state_sha256"] in trained for e in evaluator.values()),
            negatives=f"{self.params.negatives} distinct per image"
            + (", other classes" if self.params.exclude_same_class else ", other images")
            + f", numpy default_rng(seed={self.context.seed})",
            words_num=self.words_num,
            true_caption="re-encoded by the evaluator text encoder",
            ties="1/(1+k) credit",
            folds=f"{len(folds)} folds (np.array_split) for the std",
            n_samples=len(hits),
        )
        return MetricResult(value=float(hits.mean()), std=float(np.std(folds)), n=len(hits), protocol=protocol)


register("metric", "r_precision_legacy.v1", RPrecisionLegacy, params=RPrecisionLegacyParams,
         description="DM-GAN's R-precision, quirks included (1 vs 99, 10 folds, slice bug)")  # fmt: skip
register("metric", "r_precision.v1", RPrecision, params=RPrecisionParams,
         description="corrected R-precision: distinct seeded negatives, independent evaluator")  # fmt: skip
