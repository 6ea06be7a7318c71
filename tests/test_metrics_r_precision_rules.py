"""R-precision's set-up checks, draws and records, exactly (rules the examples of test_metrics_r_precision.py miss)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_metrics_r_precision import E1, E2, ToyData, ToyImage, ToyText, _batch, _context

from t2i.metrics.base import EvalContext, MetricError
from t2i.metrics.r_precision import (
    RPrecision,
    RPrecisionLegacy,
    RPrecisionLegacyParams,
    RPrecisionParams,
    apply_length_rule,
    legacy_fold_scores,
)


def test_legacy_folds_default_to_dm_gans_ten():
    hits = np.arange(100) % 2 == 0
    assert legacy_fold_scores(hits)[2].shape == (10,)
    assert np.array_equal(legacy_fold_scores(hits)[2], legacy_fold_scores(hits, folds=10)[2])


@pytest.mark.parametrize("metric", [RPrecision, RPrecisionLegacy])
def test_a_data_set_without_what_is_needed_is_named(metric):
    params = RPrecisionParams() if metric is RPrecision else RPrecisionLegacyParams(n_samples=20, folds=2)
    networks = {"text_encoder": ToyText(), "image_encoder": ToyImage()}
    needs = f"{metric.name} needs the test data set (captions_of(i), class_id(i)) in the context"
    for dataset in (None, SimpleNamespace(captions_of=lambda i: []), SimpleNamespace(class_id=lambda i: 0)):
        with pytest.raises(MetricError) as info:
            metric(params, context=EvalContext(batch_size=4, dataset=dataset, networks=networks))
        assert str(info.value) == needs
    one_class = ToyData()
    one_class.classes = [0, 0, 0, 0]
    with pytest.raises(MetricError) as info:
        metric(params, context=EvalContext(batch_size=4, dataset=one_class, networks=networks))
    assert str(info.value) == f"{metric.name}: the data set has a single class, so there are no negatives to draw"


def test_caption_convention_and_length_limit_come_from_the_data_set():
    metric = RPrecision(RPrecisionParams(), context=_context())
    assert (metric.convention, metric.words_num) == ("A", 5)
    data = ToyData()
    data.vocab = SimpleNamespace()  # no convention recorded: bare ids (A)
    context = _context()
    context.dataset = data
    assert RPrecision(RPrecisionParams(), context=context).convention == "A"
    data.vocab = SimpleNamespace(convention="B")
    metric = RPrecision(RPrecisionParams(words_num=7), context=context)
    assert (metric.convention, metric.words_num) == ("B", 7)


def test_per_item_scores_are_the_hits_in_generation_order():
    metric = RPrecision(RPrecisionParams(negatives=2, folds=2), context=_context())
    metric.update(*_batch([E1, E2, E1]))
    scores = metric.per_item()["scores"]
    assert set(metric.per_item()) == {"scores"} and scores.dtype == np.float64
    assert np.array_equal(scores, np.asarray(metric.hits)) and scores[1] == 0.0 and scores[0] > 0


def test_evaluator_record_names_each_network_class():
    metric = RPrecision(RPrecisionParams(negatives=2), context=_context())
    record = metric.evaluator_record()
    assert {k: v["class"] for k, v in record.items()} == {"text_encoder": "ToyText", "image_encoder": "ToyImage"}


def test_legacy_folds_must_divide_the_samples():
    with pytest.raises(MetricError) as info:
        RPrecisionLegacy(RPrecisionLegacyParams(n_samples=20, folds=3), context=_context())
    assert str(info.value) == "r_precision_legacy.v1: folds=3 must divide n_samples=20"


def test_legacy_seeds_the_global_rng_with_the_evaluation_seed():
    np.random.seed(123)
    RPrecisionLegacy(RPrecisionLegacyParams(n_samples=20, folds=2), context=_context())  # context seed 3
    after = np.random.random()
    np.random.seed(3)
    assert after == np.random.random()


def test_legacy_negatives_are_sorted_longest_first_keeping_draw_order_among_equals():
    data = ToyData()
    data.captions = [[[1]], [[1]], [[2, 2, 2]], [[3]]]  # class 1: one 3-word and one 1-word caption
    context = _context()
    context.dataset = data
    metric = RPrecisionLegacy(RPrecisionLegacyParams(n_samples=20, folds=2, negatives=12), context=context)
    np.random.seed(5)
    drawn = metric.draw_negatives(0)
    lengths = [n for _, n in drawn]
    assert lengths == sorted(lengths, reverse=True) and set(lengths) == {1, 3}
    assert all(int(c[0]) == (2 if n == 3 else 3) for c, n in drawn)


def test_legacy_protocol_says_what_the_true_caption_is():
    metric = RPrecisionLegacy(RPrecisionLegacyParams(n_samples=4, folds=2, negatives=3), context=_context())
    metric.update(*_batch([E1, E1, E2, E2]))
    protocol = metric.compute().protocol
    assert protocol["true_caption"] == "the generator's conditioning sentence embedding"
    assert protocol["ties"] == "to the true caption" and protocol["words_num"] == 5


def test_corrected_negatives_follow_the_evaluation_seed():
    def draws(seed):
        context = _context()
        context.seed = seed
        metric = RPrecision(RPrecisionParams(negatives=2), context=context)
        return [[int(c[0]) for c, _ in metric.draw_negatives(None, 0, (1,))] for _ in range(6)]

    assert draws(3) == draws(3) and draws(3) != draws(4)


def test_corrected_gives_up_naming_how_many_negatives_it_could_not_find():
    metric = RPrecision(RPrecisionParams(negatives=5), context=_context())  # class 1 holds 4 captions
    with pytest.raises(MetricError) as info:
        metric.draw_negatives(None, 0, (1,))
    assert str(info.value) == "r_precision.v1: could not find 5 distinct negatives"


def test_corrected_value_of_one_image_and_of_none():
    metric = RPrecision(RPrecisionParams(negatives=2), context=_context())
    with pytest.raises(MetricError) as info:
        metric.compute()
    assert str(info.value) == "r_precision.v1: no images were evaluated"
    metric.update(*_batch([E2]))
    result = metric.compute()
    assert (result.value, result.std, result.n) == (0.0, 0.0, 1)


def test_corrected_spread_is_the_std_of_the_fold_means():
    metric = RPrecision(RPrecisionParams(negatives=2, folds=2), context=_context())
    metric.hits = [1.0, 1.0, 1.0, 1.0]
    result = metric.compute()
    assert (result.value, result.std) == (1.0, 0.0)
    assert result.protocol["folds"] == "2 folds (np.array_split) for the std"


def test_length_rule_pads_with_int64_ids():
    ids, n = apply_length_rule([7, 8], 4, "A")
    assert ids.dtype == np.int64 and list(ids) == [7, 8, 0, 0] and n == 2
    ids, n = apply_length_rule([0, 7, 1], 5, "B")
    assert ids.dtype == np.int64 and list(ids) == [0, 7, 1, 2, 2] and n == 3
    assert torch.from_numpy(ids).dtype == torch.int64
