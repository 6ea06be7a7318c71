"""Inception Score: closed forms, splits, and the metric's protocol and error paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2i.metrics.backbones import WeightsNotFoundError
from t2i.metrics.base import EvalContext, MetricError
from t2i.metrics.inception_score import InceptionScore, InceptionScoreParams, inception_score


def test_uniform_predictions_score_one():
    mean, std = inception_score(np.full((100, 7), 1 / 7), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_k_equally_used_one_hot_classes_score_k(k):
    probs = np.tile(np.eye(k), (20, 1))  # cyclic order: every split of 2k rows uses each class twice
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_splits_are_contiguous_and_std_is_population():
    # first half all class 0 (IS 1 per split), second half two classes alternating (IS 2 per split)
    probs = np.concatenate([np.tile([1.0, 0.0], (10, 1)), np.tile(np.eye(2), (5, 1))])
    mean, std = inception_score(probs, splits=2)
    assert mean == pytest.approx(1.5) and std == pytest.approx(0.5)


def test_too_few_images_is_a_clear_error():
    with pytest.raises(MetricError, match="at least 10 images"):
        inception_score(np.full((5, 3), 1 / 3), splits=10)


def test_missing_weights_and_missing_classifier(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        InceptionScore(InceptionScoreParams(), context=EvalContext(weights_dir=tmp_path))
    with pytest.raises(WeightsNotFoundError, match="bird.pth"):
        InceptionScore(InceptionScoreParams(classifier_weights=str(tmp_path / "bird.pth")), context=EvalContext())


@pytest.mark.slow
def test_random_backbone_end_to_end(tmp_path):
    metric = InceptionScore(InceptionScoreParams(splits=1, allow_random_backbone=True),
                            context=EvalContext(weights_dir=tmp_path, batch_size=2))  # fmt: skip
    metric.update(torch.rand(4, 3, 32, 32) * 2 - 1, {})
    result = metric.compute()
    # IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016) on the backbone's own class probabilities
    p = torch.cat(metric.probs).double().numpy()
    expected = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(p.mean(0, keepdims=True))), axis=1)))
    assert result.value == pytest.approx(expected, rel=1e-5) and result.n == 4 and p.shape[0] == 4
    assert result.protocol["backbone"]["sha256"] == "random-init" and result.protocol["splits"] == 1


class _StubBackbone(torch.nn.Module):
    """Three 'classes' = the image's mean colour, sharpened: confident, distinct predictions per colour."""

    info = {"name": "stub", "weights_file": None, "sha256": "stub"}

    def forward(self, x):
        return x.mean((2, 3))

    def logits(self, features):
        return 8 * features


def test_metric_reports_the_score_of_its_predictions(tmp_path, monkeypatch):
    import t2i.metrics.inception_score as module

    monkeypatch.setattr(module, "fid_inception", lambda *a, **k: _StubBackbone())
    metric = InceptionScore(InceptionScoreParams(splits=2), context=EvalContext(weights_dir=tmp_path, batch_size=3))
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1], [1, -1, -1], [-1, 1, -1]])
    metric.update(colours[:, :, None, None].expand(6, 3, 8, 8), {})
    result = metric.compute()
    # Salimans et al. 2016: exp(E_x KL(p(y|x) || p(y))) per split, in the seeded shuffled order, mean over splits
    p = torch.softmax(8 * colours.double(), dim=1).numpy()[np.random.default_rng(100).permutation(6)]
    scores = [np.exp(np.mean(np.sum(s * (np.log(s) - np.log(s.mean(0))), axis=1))) for s in (p[:3], p[3:])]
    assert result.value == pytest.approx(np.mean(scores), rel=1e-6) and result.std == pytest.approx(np.std(scores))
    assert result.value > 1.5 and result.n == 6
