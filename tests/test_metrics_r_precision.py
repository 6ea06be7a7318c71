"""R-precision: DM-GAN's legacy protocol with its quirks on a hand-made example, and the corrected protocol."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from t2i.metrics.base import EvalContext, MetricError
from t2i.metrics.r_precision import (
    RPrecision,
    RPrecisionLegacy,
    RPrecisionLegacyParams,
    RPrecisionParams,
    apply_length_rule,
    legacy_fold_scores,
)

E1, E2 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
# token -> sentence code. Token 3 is a *different* caption with the same code as token 1 (a tie).
TABLE = torch.tensor([[0.0, 0.0, 1.0], E1, E2, E1, [0.0, 0.7, 0.7]])


class ToyText(nn.Module):
    """Sentence code = the table row of the first token; checks it is called with sorted lengths."""

    def forward(self, captions, lengths):
        assert torch.all(lengths[:-1] >= lengths[1:]), "captions must arrive sorted by length"
        return None, TABLE[captions[:, 0]]


class ToyImage(nn.Module):
    def forward(self, images):  # global code = the first pixel
        return images, images[:, :, 0, 0]


class ToyData:
    """Class 0: images 0, 1 with caption "1" (and "4"); class 1: images 2, 3 with captions "2" and "3"."""

    vocab = SimpleNamespace(convention="A")
    words_num = 5
    captions = [[[1], [4]], [[1], [4]], [[2], [3]], [[2], [3]]]
    classes = [0, 0, 1, 1]

    def __len__(self):
        return 4

    def captions_of(self, i):
        return self.captions[i]

    def class_id(self, i):
        return self.classes[i]


def _context(batch_size=4):
    networks = {"text_encoder": ToyText(), "image_encoder": ToyImage()}
    return EvalContext(batch_size=batch_size, dataset=ToyData(), networks=networks, seed=3)


def _batch(codes):
    """Items of class 0 conditioned on caption "1"; image codes as given."""
    b = len(codes)
    fake = torch.zeros(b, 3, 4, 4)
    fake[:, :, 0, 0] = torch.tensor(codes)
    info = {"captions": torch.tensor([[1, 0, 0, 0, 0]] * b), "lengths": torch.ones(b, dtype=torch.long),
            "class_ids": torch.zeros(b, dtype=torch.long), "sentence_embeddings": TABLE[[1] * b],
            "indices": torch.zeros(b, dtype=torch.long), "keys": ["k"] * b}  # fmt: skip
    return fake, info


def test_fold_slice_bug_by_hand():
    hits = np.array([1.0] * 10 + [0.0] * 10)
    mean, std, folds = legacy_fold_scores(hits, folds=2)  # folds average hits[0:9] and hits[10:19]
    assert list(folds) == [1.0, 0.0] and mean == 0.5 and std == 0.5
    only_dropped = np.zeros(20)
    only_dropped[9] = only_dropped[19] = 1.0  # the last item of every fold is never counted
    assert legacy_fold_scores(only_dropped, folds=2)[0] == 0.0


def test_negatives_exclude_the_class_and_use_the_global_rng():
    metric = RPrecisionLegacy(RPrecisionLegacyParams(n_samples=20, folds=2, negatives=50), context=_context())
    np.random.seed(7)
    first = metric.draw_negatives(0)
    np.random.seed(7)
    again = metric.draw_negatives(0)
    tokens = [int(c[0]) for c, _ in first]
    assert set(tokens) <= {2, 3} and {2, 3} <= set(tokens)  # only class-1 captions; repeats allowed
    assert tokens == [int(c[0]) for c, _ in again] and len(tokens) == 50
    # DM-GAN's draw, step by step: an image index (rejected when of the same class), then a caption index
    np.random.seed(7)
    expected = []
    while len(expected) < 50:
        index = np.random.randint(0, 4)
        if ToyData.classes[index] == 0:
            continue
        expected.append(ToyData.captions[index][np.random.randint(0, 2)][0])
    assert sorted(tokens) == sorted(expected)


def test_legacy_by_hand_ties_go_to_the_true_caption():
    metric = RPrecisionLegacy(RPrecisionLegacyParams(n_samples=20, folds=2, negatives=99), context=_context())
    # 12 images that show caption "1" (code E1) and 8 that do not (code E2), in batches of 4.
    codes = [E1] * 12 + [E2] * 8
    for start in range(0, 20, 4):
        metric.update(*_batch(codes[start : start + 4]))
    # E1 images: GT cos 1, negatives "2" (cos 0) or "3" (cos 1, a tie) -> always a hit.
    # E2 images: some negative "2" has cos 1 > GT cos 0 -> a miss.
    assert metric.hits == [1.0] * 12 + [0.0] * 8
    state = np.random.get_state()
    result = metric.compute()
    np.random.set_state(state)
    expected = np.array([1.0] * 12 + [0.0] * 8)
    np.random.shuffle(expected)  # DM-GAN shuffles with the global RNG, then folds [0:9], [10:19]
    folds = [expected[0:9].mean(), expected[10:19].mean()]
    assert result.value == pytest.approx(np.mean(folds)) and result.std == pytest.approx(np.std(folds))
    assert result.n == 20 and result.protocol["metric"] == "r_precision_legacy.v1"
    assert set(result.protocol["evaluator"]) == {"text_encoder", "image_encoder"}


def test_legacy_batch_size_must_divide_n_samples():
    with pytest.raises(MetricError, match="must divide"):
        RPrecisionLegacy(RPrecisionLegacyParams(), context=_context(batch_size=64))  # 30000 % 64 != 0
    metric = RPrecisionLegacy(RPrecisionLegacyParams(n_samples=20, folds=2), context=_context())
    with pytest.raises(MetricError, match="exactly n_samples=20"):
        metric.compute()


def test_corrected_differs_ties_are_shared_and_negatives_distinct():
    metric = RPrecision(RPrecisionParams(negatives=3, folds=2), context=_context())
    fake, info = _batch([E1] * 6 + [E2] * 2)
    metric.update(fake, info)
    # 3 distinct negatives out of the 4 class-1 captions ("2", "3", "2", "3"): one or two ties with the GT.
    assert all(h in (1 / 2, 1 / 3) for h in metric.hits[:6]) and metric.hits[6:] == [0.0, 0.0]
    groups = [metric.draw_negatives(0, 0, (1,)) for _ in range(5)]
    for group in groups:
        assert sorted(int(c[0]) for c, _ in group) in ([2, 2, 3], [2, 3, 3])
    result = metric.compute()
    assert result.value == pytest.approx(np.mean(metric.hits)) and result.value < 0.75
    assert result.protocol["judge_is_trainer"] is False


def test_corrected_flags_a_judge_that_trained_the_generator():
    from t2i.metrics.base import module_fingerprint

    ctx = _context()
    ctx.training_network_hashes = {"image_encoder": module_fingerprint(ctx.networks["image_encoder"])}
    metric = RPrecision(RPrecisionParams(negatives=2), context=ctx)
    metric.update(*_batch([E1, E1]))
    assert metric.compute().protocol["judge_is_trainer"] is True


def test_length_rule_keeps_word_order_and_conventions():
    np.random.seed(0)
    ids, n = apply_length_rule(list(range(10, 40)), 25, "A")
    kept = ids[:n]
    assert n == 25 and list(kept) == sorted(kept) and set(kept) <= set(range(10, 40))
    ids, n = apply_length_rule([0, 5, 6, 1], 6, "B")
    assert list(ids) == [0, 5, 6, 1, 2, 2] and n == 4
    ids, n = apply_length_rule([0, *range(10, 20), 1], 6, "B", np.random.default_rng(0))
    assert n == 6 and ids[0] == 0 and ids[-1] == 1 and list(ids[1:5]) == sorted(ids[1:5])
