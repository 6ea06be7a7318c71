"""FID: closed forms, agreement with scipy / pytorch-fid, preprocessing of both protocols, weights, stats cache."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from t2i.metrics.backbones import FID_INCEPTION, WeightsMismatchError, WeightsNotFoundError, fid_inception
from t2i.metrics.base import EvalContext
from t2i.metrics.fid import FID, FIDDMGAN2018, FeatureStats, FIDParams, frechet_distance
from t2i.registry import get_registry


def _stats(n: int, d: int, seed: int, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + shift
    return x.mean(0), np.cov(x, rowvar=False)


def _scipy_fid(mu1, s1, mu2, s2):
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_registered():
    assert {"fid.v1", "fid_dmgan2018.v1"} <= set(get_registry("metric").names())


def test_fid_of_a_set_against_itself_is_zero():
    mu, sigma = _stats(300, 32, 0)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fid_matches_scipy_sqrtm_formula(seed):
    mu1, s1 = _stats(400, 24, seed)
    mu2, s2 = _stats(300, 24, seed + 10, shift=0.3)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), _scipy_fid(mu1, s1, mu2, s2)
    assert abs(ours - ref) <= 1e-6 * max(1.0, abs(ref))


def test_fid_matches_pytorch_fid():
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    mu1, s1 = _stats(400, 24, 5)
    mu2, s2 = _stats(300, 24, 6, shift=-0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SciPy deprecates sqrtm(disp=...), which pytorch-fid passes
        ref = float(fid_score.calculate_frechet_distance(mu1, s1, mu2, s2))
    assert abs(frechet_distance(mu1, s1, mu2, s2) - ref) <= 1e-6 * max(1.0, abs(ref))


def test_singular_covariances_are_fine():
    x = np.random.default_rng(0).normal(size=(5, 16))  # n < d: rank-deficient covariance
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6  # sqrt of ~1e-16 eigenvalues
    # |1|^2 per dimension + tr(S + 2S - 2 sqrt(2) S): the known value, also for a singular S
    expected = 16 + (3 - 2 * np.sqrt(2)) * np.trace(sigma)
    assert frechet_distance(mu, sigma, mu + 1, sigma * 2) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("d", [0.5, 3.0])
def test_shifted_mean_gives_squared_distance(d):
    mu, sigma = _stats(300, 8, 4)
    shift = np.zeros(8)
    shift[[1, 5]] = d
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(2 * d**2, rel=1e-6)


def test_streaming_stats_equal_numpy_cov():
    x = np.random.default_rng(1).normal(size=(37, 6)) * 3 + 5
    stats = FeatureStats()
    for part in np.array_split(x, 4):
        stats.add(part)
    mu, sigma = stats.mean_cov()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_missing_weights_error_names_file_hash_place_and_url(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        fid_inception(tmp_path)
    message = str(info.value)
    assert FID_INCEPTION.filename in message and FID_INCEPTION.sha256 in message
    assert str(tmp_path / FID_INCEPTION.filename) in message
    assert FID_INCEPTION.url in message and "T2I_WEIGHTS" in message
    assert getattr(type(info.value), "t2i_user_error", False)
    with pytest.raises(WeightsNotFoundError):  # the metric raises it too, before doing any work
        FID(FIDParams(), context=EvalContext(weights_dir=tmp_path, cache_dir=tmp_path))


def test_wrong_weights_file_is_refused(tmp_path):
    (tmp_path / FID_INCEPTION.filename).write_bytes(b"not the inception weights")
    with pytest.raises(WeightsMismatchError, match="SHA-256"):
        fid_inception(tmp_path)


class _StubBackbone(nn.Module):
    """Stands in for Inception in the protocol tests: per-channel means and squares (cheap, deterministic)."""

    info = {"name": "stub", "weights_file": None, "sha256": "stub"}

    def forward(self, x):
        return torch.cat([x.mean((2, 3)), (x**2).mean((2, 3))], 1)


def _stub(cls):
    class Stubbed(cls):
        def build_backbone(self):
            return _StubBackbone()

    return Stubbed


def test_dmgan2018_preprocessing_truncates_resizes_and_misnormalises(tmp_path):
    metric = _stub(FIDDMGAN2018)(FIDParams(), context=EvalContext(weights_dir=tmp_path, cache_dir=tmp_path))
    x = torch.full((1, 3, 8, 8), 0.999)  # (x+1)*127.5 = 254.87: DM-GAN's uint8() truncates to 254
    out = metric.prepare(x, real=False)
    assert out.shape == (1, 3, 299, 299)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for c in range(3):
        expected = 254 / 255 * std[c] / 0.5 + (mean[c] - 0.5) / 0.5
        torch.testing.assert_close(out[0, c], torch.full((299, 299), expected), atol=1e-6, rtol=0)
    real = metric.prepare(x, real=True)  # real images are uint8 files: rounded, not truncated
    assert abs(float(real[0, 0, 0, 0]) - (255 / 255 * std[0] / 0.5 + (mean[0] - 0.5) / 0.5)) < 1e-6
    standard = _stub(FID)(FIDParams(), context=EvalContext(weights_dir=tmp_path, cache_dir=tmp_path))
    assert abs(float(standard.prepare(x, real=False)[0, 0, 0, 0]) - 1.0) < 1e-6  # rounds to 255 -> +1 in [-1, 1]


def test_dmgan2018_drops_the_last_partial_batch_of_50(tmp_path):
    ctx = EvalContext(weights_dir=tmp_path, cache_dir=tmp_path, batch_size=7)
    metric = _stub(FIDDMGAN2018)(FIDParams(), context=ctx)
    standard = _stub(FID)(FIDParams(), context=ctx)
    images = torch.rand(53, 3, 8, 8) * 2 - 1
    for chunk in images.split(7):
        metric.update(chunk, {})
        standard.update(chunk, {})
    assert metric.fake.n == 50 and standard.fake.n == 53


class _Data:
    """Minimal data set identity for the cache key."""

    root = "/data"
    split = "test"
    imsize = 32
    files = ["/data/a.png", "/data/b.png"]
    keys = ["a", "b"]

    def __len__(self):
        return 2


def test_real_statistics_are_cached_and_reused(tmp_path):
    calls = []

    def real_images():
        calls.append(1)
        generator = torch.Generator().manual_seed(0)
        for _ in range(2):
            yield torch.rand(3, 3, 32, 32, generator=generator) * 2 - 1

    ctx = EvalContext(weights_dir=tmp_path / "w", cache_dir=tmp_path / "c", batch_size=6, dataset=_Data(),
                      real_images=real_images, run_info={"checkpoint_sha256": "abc"})  # fmt: skip
    params = FIDParams()
    fake = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    first = _stub(FID)(params, context=ctx)
    first.update(fake, {})
    r1 = first.compute()
    second = _stub(FID)(params, context=ctx)
    second.update(fake, {})
    r2 = second.compute()
    assert len(calls) == 1  # the second evaluation read the cache instead of the real images
    assert r1.value == pytest.approx(r2.value, rel=1e-12) and r1.value > 0
    p = r2.protocol
    assert p["metric"] == "fid.v1" and p["backbone"]["sha256"] == "stub" and p["n_samples"] == 4
    assert p["reference"]["cached"] and p["reference"]["cache_key"] == r1.protocol["reference"]["cache_key"]
    assert p["reference"]["n"] == 6 and p["checkpoint_sha256"] == "abc" and p["seed"] == 100
    assert list((tmp_path / "c").glob("stats-*.npz"))
    # and both equal the formula on the same features, computed here from scratch
    real = torch.cat(list(real_images()))
    expected = _scipy_fid(*_mean_cov(first.features(fake, real=False)), *_mean_cov(first.features(real, real=True)))
    assert r1.value == pytest.approx(expected, rel=1e-6) and r2.value == pytest.approx(expected, rel=1e-6)


def _mean_cov(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = features.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def test_reference_stats_file(tmp_path):
    mu, sigma = _stats(50, 6, 0)
    np.savez(tmp_path / "bird_val.npz", mu=mu, sigma=sigma)
    metric = _stub(FIDDMGAN2018)(FIDParams(reference_stats=str(tmp_path / "bird_val.npz")),
                                 context=EvalContext(weights_dir=tmp_path, cache_dir=tmp_path))  # fmt: skip
    images = torch.rand(50, 3, 8, 8) * 2 - 1
    metric.update(images, {})
    result = metric.compute()
    assert result.protocol["reference"]["source"] == "file bird_val.npz"
    # the value is the formula between the generated features and the file's mu / sigma (not zeros, not a cache)
    fake_mu, fake_sigma = _mean_cov(torch.cat([metric.features(images, real=False)]))
    assert result.value == pytest.approx(_scipy_fid(fake_mu, fake_sigma, mu, sigma), rel=1e-6)
    assert len(result.protocol["reference"]["sha256"]) == 64


@pytest.mark.slow
def test_random_inception_end_to_end(tmp_path):
    """The real Inception-v3 graph, random-initialised (no weights on this machine): runs and says so."""
    ctx = EvalContext(weights_dir=tmp_path, cache_dir=tmp_path, batch_size=2,
                      real_images=lambda: iter([torch.rand(2, 3, 64, 64) * 2 - 1]))  # fmt: skip
    metric = FID(FIDParams(allow_random_backbone=True), context=ctx)
    metric.update(torch.rand(2, 3, 64, 64) * 2 - 1, {})
    result = metric.compute()
    assert np.isfinite(result.value) and result.protocol["backbone"]["sha256"] == "random-init"
    assert result.protocol["reference"]["cache_key"] is None  # no data set identity: not cached
