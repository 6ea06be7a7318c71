"""Paired bootstrap differences (t2i.stats): coverage, detection with sign and words, pairing, FID and IS values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2i import stats
from t2i.metrics.base import EvalContext
from t2i.metrics.fid import FeatureStats, frechet_distance
from t2i.metrics.inception_score import InceptionScore, InceptionScoreParams


def correlated(rng, n=60, shared=1.0, own=0.3, shift=0.0):
    """Two models' per-image scores: a strong per-item part both share (the caption, the noise) and their own."""
    base = rng.normal(0, shared, n)
    return {"scores": base + rng.normal(0, own, n)}, {"scores": base + rng.normal(0, own, n) + shift}


def test_identical_models_give_a_zero_interval_and_no_difference():
    a = {"scores": np.random.default_rng(0).random(50)}
    diff = stats.paired_difference([a], [dict(a)], bootstrap=200)
    assert diff.estimate == diff.low == diff.high == 0.0
    assert stats.verdict(diff, True, "A", "B") == "no distinguishable difference"


def test_interval_covers_zero_at_close_to_the_stated_rate():
    # 200 synthetic comparisons of two models with the same distribution: a 95 % interval must cover the true
    # difference (0) about 95 % of the time. Independent resampling of the two models (broken pairing) makes the
    # interval ~3.5x too wide here and covers ~100 %; a too narrow interval covers far less.
    rng = np.random.default_rng(1)
    covered = 0
    for r in range(200):
        a, b = correlated(rng)
        diff = stats.paired_difference([a], [b], level=0.95, bootstrap=400, seed=r)
        covered += diff.low <= 0 <= diff.high
    assert 0.88 <= covered / 200 <= 0.985, covered


def test_level_changes_the_width():
    a, b = correlated(np.random.default_rng(2))
    wide = stats.paired_difference([a], [b], level=0.99, bootstrap=500)
    narrow = stats.paired_difference([a], [b], level=0.8, bootstrap=500)
    assert wide.high - wide.low > narrow.high - narrow.low > 0


def test_paired_interval_is_narrower_than_unpaired_for_correlated_scores():
    a, b = correlated(np.random.default_rng(3), n=200, shared=1.0, own=0.1)
    paired = stats.paired_difference([a], [b], bootstrap=500)
    unpaired = stats.paired_difference([a], [b], bootstrap=500, paired=False)
    assert paired.estimate == unpaired.estimate
    assert (paired.high - paired.low) < 0.3 * (unpaired.high - unpaired.low)


def test_a_shifted_copy_is_a_clear_difference_with_the_right_sign_and_words():
    rng = np.random.default_rng(4)
    scores = rng.random(80)
    a, b = {"scores": scores}, {"scores": scores + 0.2 + rng.normal(0, 0.02, 80)}
    rows = stats.pairwise(["A", "B"], {"caption_consistency.v1": {"A": [a], "B": [b]}}, bootstrap=300)
    (row,) = rows
    assert 0.19 < row["difference"] < 0.21 and 0 < row["low"] < row["difference"] < row["high"]
    assert row["verdict"] == "B better than A" and row["higher_is_better"]
    # For a lower-is-better metric the same increase makes A the better model.
    (row,) = stats.pairwise(["A", "B"], {"fid.v1": {"A": [a], "B": [b]}}, bootstrap=300)
    assert row["verdict"] == "A better than B" and not row["higher_is_better"]
    # A constant shift, however small, is real when paired ...
    (row,) = stats.pairwise(["A", "B"], {"caption_consistency.v1": {"A": [a], "B": [{"scores": scores + 1e-9}]}},
                            bootstrap=300)  # fmt: skip
    assert row["verdict"] == "B better than A"
    # ... while the same scores on other items (no shift, no pairing to exploit) are no difference.
    (row,) = stats.pairwise(
        ["A", "B"], {"caption_consistency.v1": {"A": [a], "B": [{"scores": rng.permutation(scores)}]}}, bootstrap=300
    )
    assert row["verdict"] == "no distinguishable difference" and row["low"] < 0 < row["high"]


def test_seeds_resample_within_each_seed_and_average_the_differences():
    rng = np.random.default_rng(5)
    a1, b1 = correlated(rng, n=40, shift=0.1)
    a2, b2 = correlated(rng, n=30, shift=0.3)
    diff = stats.paired_difference([a1, a2], [b1, b2], bootstrap=300)
    assert diff.images == [40, 30]
    per_seed = [b1["scores"].mean() - a1["scores"].mean(), b2["scores"].mean() - a2["scores"].mean()]
    assert diff.per_seed == pytest.approx(per_seed)
    assert diff.estimate == pytest.approx(np.mean(per_seed))
    assert diff.low < diff.estimate < diff.high


def test_items_that_are_not_paired_are_refused():
    a = {"scores": np.zeros(5), "keys": np.array(list("abcde"))}
    with pytest.raises(stats.StatsError, match="same items"):
        stats.paired_difference([a], [{"scores": np.zeros(4)}])
    with pytest.raises(stats.StatsError, match="same items"):
        stats.paired_difference([a], [{"scores": np.zeros(5), "keys": np.array(list("abcdf"))}])
    with pytest.raises(stats.StatsError, match="same seeds"):
        stats.paired_difference([a, a], [a])


def test_fid_from_features_matches_the_metric_formula_and_detects_a_shift():
    rng = np.random.default_rng(6)
    real = rng.normal(0, 1, (300, 6))
    reference = FeatureStats()
    reference.add(real)
    mu_r, sigma_r = reference.mean_cov()
    features = rng.normal(0, 1, (120, 6))
    a = {"features": features, "reference_mu": mu_r, "reference_sigma": sigma_r}
    generated = FeatureStats()
    generated.add(features)
    assert stats.statistic(a)(None) == pytest.approx(frechet_distance(*generated.mean_cov(), mu_r, sigma_r), rel=1e-9)
    # A resample is the FID of the resampled rows.
    idx = rng.integers(0, 120, 120)
    resampled = FeatureStats()
    resampled.add(features[idx])
    assert stats.statistic(a)(idx) == pytest.approx(frechet_distance(*resampled.mean_cov(), mu_r, sigma_r), rel=1e-9)
    b = {**a, "features": features + 0.5}  # every image moved away from the real distribution
    (row,) = stats.pairwise(["A", "B"], {"fid.v1": {"A": [a], "B": [b]}}, bootstrap=200)
    assert row["difference"] > 0 and row["low"] > 0 and row["verdict"] == "A better than B"
    same = stats.paired_difference([a], [dict(a)], bootstrap=50)
    assert same.low == same.high == 0.0


class _Classifier(torch.nn.Module):
    info = {"name": "stub", "weights_file": None, "sha256": "stub"}

    def forward(self, x):
        return x.mean((2, 3))

    def logits(self, features):
        return 8 * features


def test_inception_score_items_recompute_the_reported_value(tmp_path, monkeypatch):
    import t2i.metrics.inception_score as module

    monkeypatch.setattr(module, "fid_inception", lambda *a, **k: _Classifier())
    metric = InceptionScore(InceptionScoreParams(splits=2), context=EvalContext(weights_dir=tmp_path, batch_size=4))
    metric.update(torch.rand(12, 3, 8, 8) * 2 - 1, {})
    value = metric.compute().value
    items = metric.per_item()
    assert items["probs"].shape == (12, 3)
    assert stats.statistic(items)(None) == pytest.approx(value, rel=1e-12)


def test_tables_say_how_each_number_was_made():
    a, b = correlated(np.random.default_rng(7), shift=0.5)
    rows = stats.pairwise(["A", "B"], {"r_precision.v1": {"A": [a, a], "B": [b, b]}}, level=0.9, bootstrap=123,
                          protocols={"r_precision.v1": "abc123"})  # fmt: skip
    text = stats.markdown(rows)
    assert "90%" in text and "123 resamples" in text and "paired percentile bootstrap" in text
    assert "| abc123 |" in text and "60 × 2" in text and "B better than A" in text
    csv_text = stats.csv_text(rows)
    header, line = csv_text.splitlines()
    assert header.startswith("metric,a,b,a_value,b_value,difference,low,high,level,bootstrap")
    assert ",0.9,123,0," in line and "60;60" in line


def test_fid_keeps_its_features_only_when_asked_and_they_recompute_the_value(tmp_path):
    from test_metrics_fid import _stub

    from t2i.metrics.fid import FID, FIDDMGAN2018, FIDParams

    reference = tmp_path / "real.npz"
    rng = np.random.default_rng(8)
    np.savez(reference, mu=rng.normal(0, 0.1, 6), sigma=np.eye(6) * 0.2)
    images = torch.rand(53, 3, 8, 8) * 2 - 1
    for cls, kept in ((FID, 53), (FIDDMGAN2018, 50)):  # the legacy protocol drops the last partial batch of 50
        values = {}
        for keep in (False, True):
            ctx = EvalContext(weights_dir=tmp_path, cache_dir=tmp_path, batch_size=7, keep_items=keep)
            metric = _stub(cls)(FIDParams(reference_stats=str(reference)), context=ctx)
            for chunk in images.split(7):
                metric.update(chunk, {})
            values[keep] = metric.compute().value
            items = metric.per_item()
        assert values[False] == values[True]  # keeping the features does not change the value
        assert items["features"].shape == (kept, 6)
        assert stats.statistic(items)(None) == pytest.approx(values[True], rel=1e-5)  # float32 features
    ctx = EvalContext(weights_dir=tmp_path, cache_dir=tmp_path)
    assert _stub(FID)(FIDParams(reference_stats=str(reference)), context=ctx).per_item() is None
