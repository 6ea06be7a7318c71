"""The small numeric pieces under FID, IS and R-precision, pinned where the end-to-end tests could not tell.

Written from mutation-testing survivors (docs/testing.md): each test fails on a plausible slip that leaves the
metrics' hand-made examples unchanged (a fold slice that happens to agree for two folds, a cosine scaled by a
per-image constant, a batch of one image skipped, a shape check that needs both shapes wrong).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_metrics_fid import _stub

from t2i.metrics.base import EvalContext, MetricError
from t2i.metrics.fid import FID, FeatureStats, FIDParams, frechet_distance
from t2i.metrics.inception_score import inception_score
from t2i.metrics.r_precision import _cosine, apply_length_rule, legacy_fold_scores


def test_cosine_is_the_cosine_of_each_sentence_with_the_image():
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(8, generator=generator) * 3
    sentences = torch.randn(5, 8, generator=generator) * torch.tensor([0.1, 1, 10, 2, 5])[:, None]
    expected = F.cosine_similarity(sentences, image[None], dim=1)
    torch.testing.assert_close(_cosine(image, sentences), expected, rtol=1e-6, atol=1e-7)
    tiny = _cosine(torch.full((2,), 1e-9, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64))
    torch.testing.assert_close(tiny, torch.tensor([2e-9 / 1e-8], dtype=torch.float64))  # norm product clamped at 1e-8


def test_legacy_folds_each_drop_their_last_item_for_any_fold_count():
    hits = np.arange(30, dtype=np.float64)
    mean, std, means = legacy_fold_scores(hits, folds=3)  # folds average hits[0:9], [10:19], [20:29]
    np.testing.assert_allclose(means, [4.0, 14.0, 24.0])
    assert mean == pytest.approx(14.0) and std == pytest.approx(np.std([4.0, 14.0, 24.0]))


def test_length_rule_pads_with_zero_and_draws_only_when_too_long():
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    out, length = apply_length_rule([4, 5, 6], 5, "A", rng)
    assert out.tolist() == [4, 5, 6, 0, 0] and out.dtype == np.int64 and length == 3
    out, length = apply_length_rule([4, 5, 6, 7, 8], 5, "A", rng)  # exactly the limit: kept, no random draw
    assert out.tolist() == [4, 5, 6, 7, 8] and length == 5 and rng.bit_generator.state == state
    out, length = apply_length_rule([4, 5, 6, 7, 8, 9], 5, "A", rng)
    assert length == 5 and rng.bit_generator.state != state and sorted(out.tolist()) == out.tolist()


def test_inception_score_with_as_many_images_as_splits():
    probs = np.eye(4)[[0, 1, 2, 3]]
    mean, std = inception_score(probs, splits=4)  # one image per split: p(y) is that image's own prediction
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0)


def test_frechet_distance_refuses_a_mean_of_another_size_alone():
    with pytest.raises(MetricError, match=r"mu \(3,\) vs \(4,\), sigma \(3, 3\) vs \(3, 3\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(3))


def test_feature_stats_count_batches_of_one_and_two_images_make_a_covariance():
    stats = FeatureStats()
    rows = np.array([[1.0, 2.0], [3.0, 5.0]])
    for row in rows:
        stats.add(torch.tensor(row[None], dtype=torch.float32))  # batches of a single image count
    stats.add(np.zeros((0, 2)))
    assert stats.n == 2
    mu, sigma = stats.mean_cov()
    np.testing.assert_allclose(mu, rows.mean(0))
    np.testing.assert_allclose(sigma, np.cov(rows, rowvar=False))
    with pytest.raises(MetricError, match="at least 2 images on each side, got 1"):
        one = FeatureStats()
        one.add(rows[:1])
        one.mean_cov()


def test_fid_protocol_records_how_it_was_measured(tmp_path):
    mu, sigma = np.zeros(6), np.eye(6)
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma)
    ctx = EvalContext(weights_dir=tmp_path, cache_dir=tmp_path, batch_size=5)
    metric = _stub(FID)(FIDParams(reference_stats=str(tmp_path / "ref.npz")), context=ctx)
    images = torch.rand(7, 3, 8, 8) * 2 - 1
    metric.update(images[:5], {})
    metric.update(images[5:], {"uint8": True})  # images read from files: already uint8 steps
    result = metric.compute()
    p = result.protocol
    assert result.n == 7 and p["n_samples"] == 7 and p["dropped_samples"] == 0
    assert p["feature"] == "pool3 2048-d" and p["sqrtm"] == "float64 symmetric eigen-decomposition"
    assert p["resize"] == FID.resize and p["input_scaling"] == FID.input_scaling
    assert p["reference"]["source"] == "file ref.npz" and p["batch_size"] == 5
    features = torch.cat([metric.features(images[:5], real=False), metric.features(images[5:], real=True)])
    f = features.double().numpy()
    assert result.value == pytest.approx(frechet_distance(f.mean(0), np.cov(f, rowvar=False), mu, sigma), rel=1e-9)


def test_r_precision_protocols_say_how_negatives_ties_and_folds_were_handled():
    from test_metrics_r_precision import E1, _batch, _context

    from t2i.metrics.r_precision import RPrecision, RPrecisionLegacy, RPrecisionLegacyParams, RPrecisionParams

    corrected = RPrecision(RPrecisionParams(negatives=2, folds=2), context=_context())
    corrected.update(*_batch([E1] * 4))
    result = corrected.compute()
    p = result.protocol
    assert result.n == 4 and p["n_samples"] == 4 and p["words_num"] == 5  # the data set's caption length limit
    assert p["negatives"] == "2 distinct per image, other classes, numpy default_rng(seed=3)"
    assert p["true_caption"] == "re-encoded by the evaluator text encoder" and p["ties"] == "1/(1+k) credit"
    assert p["folds"] == "2 folds (np.array_split) for the std"
    assert set(p["evaluator"]) == {"text_encoder", "image_encoder"}
    other = RPrecision(RPrecisionParams(negatives=2, exclude_same_class=False, words_num=7), context=_context())
    other.update(*_batch([E1] * 2))
    assert other.compute().protocol["negatives"].startswith("2 distinct per image, other images,")
    assert other.words_num == 7

    legacy = RPrecisionLegacy(RPrecisionLegacyParams(n_samples=4, folds=2, negatives=2), context=_context())
    legacy.update(*_batch([E1] * 4))
    p = legacy.compute().protocol
    assert p["negatives"] == "2 per image, other classes, numpy global RNG, repeats allowed"
    assert p["folds"] == "2 folds with the [i*s:(i+1)*s-1] slice" and p["ties"] == "to the true caption"
    assert p["n_samples"] == 4 and p["words_num"] == 5


def test_r_precision_draws_negatives_in_the_data_sets_caption_convention():
    from types import SimpleNamespace

    from test_metrics_r_precision import ToyData, _context

    from t2i.metrics.r_precision import RPrecision, RPrecisionParams

    class ConventionB(ToyData):  # captions wrapped in <start>=0 ... <end>=1, padded with 2
        vocab = SimpleNamespace(convention="B")
        words_num = None
        captions = [[[0, 5, 1]], [[0, 5, 1]], [[0, 6, 7, 1]], [[0, 6, 1]]]

    context = _context()
    context.dataset = ConventionB()
    metric = RPrecision(RPrecisionParams(negatives=2), context=context)
    assert metric.convention == "B" and metric.words_num == 25  # no limit in the data set: the originals' 25
    drawn = sorted(tuple(ids[:n]) for ids, n in metric.draw_negatives(0, 0, (5,)))
    assert drawn == [(0, 6, 1), (0, 6, 7, 1)]
    for ids, n in metric.draw_negatives(0, 0, (5,)):
        assert (ids[n:] == 2).all()  # convention B pads with <pad>=2


def test_inception_score_protocol_and_seeded_shuffle(tmp_path, monkeypatch):
    from test_metrics_is import _StubBackbone

    import t2i.metrics.inception_score as module
    from t2i.metrics.inception_score import InceptionScore, InceptionScoreParams

    monkeypatch.setattr(module, "fid_inception", lambda *a, **k: _StubBackbone())
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(12, 3, 4, 4, generator=generator) * 2 - 1
    values = []
    for shuffle in (True, True, False):
        metric = InceptionScore(InceptionScoreParams(splits=3, shuffle=shuffle),
                                context=EvalContext(weights_dir=tmp_path, batch_size=12, seed=7))  # fmt: skip
        metric.update(images, {})
        result = metric.compute()
        values.append(result.value)
    assert values[0] == values[1] != values[2]  # the shuffle is seeded by the context seed, and it matters
    p = result.protocol
    assert p["splits"] == 3 and p["shuffle"] == "none" and p["n_samples"] == 12 and result.n == 12
    assert p["resize"] == "F.interpolate bilinear to 299x299, align_corners=False"
    assert p["input_scaling"] == "[-1,1] -> uint8 by rounding (PNG) -> x/127.5 - 1"
    assert p["classes"] == metric.classes and p["backbone"] == _StubBackbone.info
    probs = metric.per_item()["probs"]
    order = np.random.default_rng(7).permutation(12)
    assert values[0] == pytest.approx(inception_score(probs[order], 3)[0], rel=1e-12)


def test_standard_fid_input_is_png_quantised_then_bilinear_299(tmp_path):
    """pytorch-fid's path: [-1, 1] -> uint8 by rounding (what a PNG stores) -> bilinear to 299, align_corners=False."""
    metric = _stub(FID)(FIDParams(), context=EvalContext(weights_dir=tmp_path, cache_dir=tmp_path))
    images = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1  # a little out of range
    pixels = np.clip(np.rint((images.double().numpy() + 1) * 127.5), 0, 255)  # the PNG a user would have saved
    expected = F.interpolate(torch.from_numpy(pixels / 127.5 - 1).float(), size=(299, 299), mode="bilinear",
                             align_corners=False)  # fmt: skip
    out = metric.prepare(images, real=False)
    assert out.shape == (2, 3, 299, 299)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    same_size = torch.rand(1, 3, 299, 299) * 2 - 1
    torch.testing.assert_close(metric.prepare(same_size, real=False), torch.round((same_size + 1) * 127.5) / 127.5 - 1)
