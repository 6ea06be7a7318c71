"""FID / IS rules pinned exactly: real statistics and their records, protocol inputs, per-item records, IS options.

Stub backbones everywhere except one user-classifier weights file (a random torchvision-layout Inception, built once).
"""

from __future__ import annotations

import hashlib
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_metrics_fid import _stub
from test_metrics_is import _StubBackbone as _ISStub

import t2i.metrics.fid as fid_module
import t2i.metrics.inception_score as is_module
from t2i.metrics.backbones import WeightsNotFoundError, torchvision_inception
from t2i.metrics.base import EvalContext, MetricError
from t2i.metrics.fid import FID, FIDDMGAN2018, FeatureStats, FIDParams, frechet_distance
from t2i.metrics.inception_score import InceptionScore, InceptionScoreParams, inception_score
from t2i.metrics.stats_cache import StatsCache, dataset_fingerprint, stats_key
from t2i.weights import WeightsError

_MEAN, _STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _images(n: int, h: int = 8, w: int = 8, seed: int = 0, spread: float = 1.0) -> torch.Tensor:
    return (torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * spread


def _mean_cov(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = features.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def _ctx(tmp_path, **kw) -> EvalContext:
    return EvalContext(weights_dir=tmp_path / "w", cache_dir=tmp_path / "c", **kw)


class _NoSizeData:
    """A data set identity without an ``imsize`` attribute."""

    root = "/data"
    split = "test"
    files = ["/data/a.png", "/data/b.png"]
    keys = ["a", "b"]

    def __len__(self):
        return 2


# -- frechet_distance / FeatureStats -----------------------------------------------------------------------------------
def test_frechet_distance_diagonal_closed_form_and_clipped_negative_eigenvalue():
    """Diagonal covariances: |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2; a round-off negative eigenvalue counts as 0."""
    value = frechet_distance(np.array([0, 0]), np.diag([1, 4]), np.array([1, 2]), np.diag([9, 16]))
    assert value == pytest.approx(5 + (1 - 3) ** 2 + (2 - 4) ** 2, abs=1e-12)  # 13
    value = frechet_distance(np.zeros(2), np.diag([-1e-13, 4.0]), np.zeros(2), np.diag([0.0, 1.0]))
    assert np.isfinite(value) and value == pytest.approx(1.0, abs=1e-9)


def test_feature_stats_sum_float32_features_in_float64():
    """Float32 features are summed in float64: 4097^2 = 16785409 is not a float32 number."""
    stats = FeatureStats()
    stats.add(torch.tensor([[4097.0], [1.0]], dtype=torch.float32))
    assert stats.outer[0, 0] == 16785410.0 and stats.total[0] == 4098.0


def test_feature_stats_accept_a_tensor_that_requires_grad():
    """Tensors are detached before conversion (np.asarray of a grad-requiring tensor would raise)."""
    stats = FeatureStats()
    stats.add(torch.tensor([[1.0, 2.0], [3.0, 5.0]], requires_grad=True))
    assert stats.n == 2 and stats.total.tolist() == [4.0, 7.0]


# -- backbone construction: weights_dir and allow_random reach the loader ----------------------------------------------
@pytest.mark.parametrize("cls, loader", [(FID, "fid_inception"), (FIDDMGAN2018, "torchvision_inception")])
@pytest.mark.parametrize("allow", [True, False])
def test_fid_backbone_gets_the_weights_dir_and_allow_random(tmp_path, monkeypatch, cls, loader, allow):
    """Each protocol builds its own Inception from context.weights_dir, passing allow_random_backbone through."""
    calls = []

    def fake(weights_dir, *, allow_random=False):
        calls.append((weights_dir, allow_random))
        return _ISStub()

    monkeypatch.setattr(fid_module, loader, fake)
    ctx = _ctx(tmp_path)
    cls(FIDParams(allow_random_backbone=allow), context=ctx)
    assert calls == [(ctx.weights_dir, allow)]


# -- preprocessing -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(300, 299), (299, 300)])
def test_fid_v1_resizes_any_size_that_is_not_299_square(tmp_path, size):
    """An image one pixel off 299x299 in either side is still resized to 299x299."""
    metric = _stub(FID)(FIDParams(), context=_ctx(tmp_path))
    images = _images(1, *size, seed=3)
    out = metric.prepare(images, real=False)
    expected = F.interpolate(torch.round((images + 1) * 127.5) / 127.5 - 1, size=(299, 299), mode="bilinear")
    assert out.shape == (1, 3, 299, 299)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("real", [False, True])
def test_dmgan2018_input_clamps_quantises_pil_bilinear_then_misnormalises(tmp_path, real):
    """Out-of-range values clamp to [0, 255] before uint8 (no wrap-around); PIL bilinear (not bicubic) to 299."""
    metric = _stub(FIDDMGAN2018)(FIDParams(), context=_ctx(tmp_path))
    images = _images(2, 9, 7, seed=4, spread=1.3)
    images[0, 0, 0, :3] = torch.tensor([-1.0, 1.0, 1.01])  # exact ends and just above: 0, 255, 255
    scaled = np.clip((images.numpy() + 1) * np.float32(127.5), 0, 255)
    q = (np.round(scaled) if real else np.floor(scaled)).astype(np.uint8)
    assert q[0, 0, 0, :3].tolist() == [0, 255, 255]
    resized = np.stack(
        [np.asarray(Image.fromarray(im).resize((299, 299), Image.BILINEAR)) for im in q.transpose(0, 2, 3, 1)]
    )
    x = resized.transpose(0, 3, 1, 2) / 255
    expected = x * (_STD / 0.5)[None, :, None, None] + ((_MEAN - 0.5) / 0.5)[None, :, None, None]
    out = metric.prepare(images, real=real)
    assert out.shape == (2, 3, 299, 299)
    np.testing.assert_allclose(out.double().numpy(), expected, atol=1e-6, rtol=0)


class _NoDrop(_stub(FIDDMGAN2018)):
    drop_last = None


@pytest.mark.parametrize("info, real", [(None, False), ({}, False), ({"uint8": False}, False), ({"uint8": True}, True)])
def test_update_quantises_as_real_only_for_uint8_batches(tmp_path, info, real):
    """batch_info {"uint8": True} (images read from files) -> rounding as for real images; else DM-GAN's truncation."""
    metric = _NoDrop(FIDParams(), context=_ctx(tmp_path, batch_size=3))
    images = _images(4, seed=5)
    metric.update(images, info)
    expected = metric.features(images, real=real).numpy().sum(0)
    other = metric.features(images, real=not real).numpy().sum(0)
    assert metric.fake.n == 4 and not np.allclose(expected, other)
    np.testing.assert_allclose(metric.fake.total, expected, rtol=1e-12)


# -- real statistics ---------------------------------------------------------------------------------------------------
def test_no_real_images_and_no_reference_file_is_a_clear_error(tmp_path):
    """Without reference_stats or real images the error names the protocol and both remedies."""
    metric = _stub(FID)(FIDParams(), context=_ctx(tmp_path))
    metric.update(_images(3), {})
    with pytest.raises(MetricError) as info:
        metric.compute()
    assert str(info.value) == (
        "fid.v1 needs real-image statistics: set reference_stats to an npz file or evaluate with a data set that "
        "provides real images"
    )


def test_uncached_reference_record_without_a_data_set(tmp_path):
    """Without a data set identity the real statistics are computed, not cached, and recorded field by field."""
    real = _images(6, seed=1)
    metric = _stub(FID)(FIDParams(), context=_ctx(tmp_path, real_images=lambda: iter([real[:4], real[4:]])))
    metric.update(_images(3, seed=2), {})
    reference = metric.compute().protocol["reference"]
    assert reference == {"source": "dataset real images", "protocol": "fid.v1", "backbone_sha256": "stub",
                         "resize": FID.resize, "max_real": None, "n": 6, "cache_key": None}  # fmt: skip
    assert not (tmp_path / "c").exists()


def test_cached_reference_record_key_and_stored_meta(tmp_path):
    """The cache key hashes exactly the recorded meta (image_size None without imsize), stored with the statistics."""
    real = _images(5, seed=1)
    ctx = _ctx(tmp_path, dataset=_NoSizeData(), real_images=lambda: iter([real]))
    metric = _stub(FIDDMGAN2018)(FIDParams(max_real=7), context=ctx)
    mu, sigma, reference = metric.reference()
    meta = {"source": "dataset real images", "protocol": "fid_dmgan2018.v1", "backbone_sha256": "stub",
            "resize": FIDDMGAN2018.resize, "max_real": 7, "dataset": dataset_fingerprint(_NoSizeData()),
            "image_size": None}  # fmt: skip
    key = stats_key(**meta)
    assert reference == {**meta, "n": 5, "cache_key": key, "cached": False}
    stored = StatsCache(tmp_path / "c").load(key)
    assert stored["meta"] == meta and stored["n"] == 5
    np.testing.assert_array_equal(stored["mu"], mu)


def test_real_batches_in_every_form_use_their_last_images_rounded(tmp_path):
    """Tuples/lists (last item), objects with .images, a list of scales (the last), plain tensors; real=True."""
    t = [_images(2, seed=s) for s in range(5)]
    small, mid = _images(2, 4, 4, seed=9), _images(2, 6, 6, seed=10)
    batches = [("captions", "keys", t[0]), ["captions", t[1]], SimpleNamespace(images=t[2]),
               SimpleNamespace(images=[small, mid, t[3]]), t[4]]  # fmt: skip
    metric = _NoDrop(FIDParams(), context=_ctx(tmp_path, real_images=lambda: iter(batches)))
    mu, sigma, n = metric._real_stats()
    exp_mu, exp_sigma = _mean_cov(metric.features(torch.cat(t), real=True))
    assert n == 10
    np.testing.assert_allclose(mu, exp_mu, rtol=1e-10)
    np.testing.assert_allclose(sigma, exp_sigma, rtol=1e-8, atol=1e-12)


def test_max_real_takes_the_first_images_and_stops_reading(tmp_path):
    """max_real=4 from batches of 3: the first 4 images, and the third batch is never read."""
    real = _images(9, seed=6)
    read = []

    def real_images():
        for i in range(3):
            read.append(i)
            yield real[3 * i : 3 * i + 3]

    metric = _stub(FID)(FIDParams(max_real=4), context=_ctx(tmp_path, real_images=real_images))
    mu, sigma, n = metric._real_stats()
    exp_mu, exp_sigma = _mean_cov(metric.features(real[:4], real=True))
    assert n == 4 and read == [0, 1]
    np.testing.assert_allclose(mu, exp_mu, rtol=1e-10)
    np.testing.assert_allclose(sigma, exp_sigma, rtol=1e-8, atol=1e-12)


# -- reference statistics file -----------------------------------------------------------------------------------------
def _fid_with_file(tmp_path, path, **kw):
    return _stub(FID)(FIDParams(reference_stats=str(path)), context=_ctx(tmp_path, **kw))


def test_reference_file_m1_s1_keys_and_record(tmp_path):
    """thesis-exp files store m1/s1; the record is the file name, its SHA-256 and n None."""
    path = tmp_path / "ref.npz"
    mu, sigma = np.arange(6.0), np.diag(np.arange(1.0, 7.0))
    np.savez(path, m1=mu, s1=sigma)
    got_mu, got_sigma, record = _fid_with_file(tmp_path, path).reference()
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)
    assert record == {"source": "file ref.npz", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "n": None}


@pytest.mark.parametrize("arrays, found", [({"mu": np.zeros(2)}, "mu"), ({"s1": np.eye(2)}, "s1"),
                                           ({"a": np.zeros(1), "b": np.zeros(1)}, "a, b")])  # fmt: skip
def test_reference_file_missing_a_key_is_a_clear_error(tmp_path, arrays, found):
    """Either array missing -> MetricError naming the file, the accepted keys and the keys found."""
    path = tmp_path / "ref.npz"
    np.savez(path, **arrays)
    with pytest.raises(MetricError) as info:
        _fid_with_file(tmp_path, path).reference()
    assert str(info.value) == f"{path}: expected keys mu and sigma (or m1 and s1), found {found}"


def test_reference_file_not_found_and_pickles_refused(tmp_path):
    """A missing file names itself and the expected content; object arrays are never unpickled."""
    with pytest.raises(MetricError) as info:
        _fid_with_file(tmp_path, tmp_path / "none.npz").reference()
    assert (
        str(info.value)
        == f"reference statistics file {tmp_path / 'none.npz'} not found (an npz with keys mu and sigma)"
    )
    path = tmp_path / "pickled.npz"
    np.savez(path, mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(1))
    with pytest.raises(ValueError, match="allow_pickle"):
        _fid_with_file(tmp_path, path).reference()


# -- per-item records --------------------------------------------------------------------------------------------------
def test_per_item_before_compute_reads_the_reference_and_keeps_float32_features(tmp_path):
    """keep_items: per_item works before compute: float32 features per image plus the reference mu/sigma."""
    path = tmp_path / "ref.npz"
    mu, sigma = np.arange(6.0), np.eye(6) * 2
    np.savez(path, mu=mu, sigma=sigma)
    metric = _fid_with_file(tmp_path, path, keep_items=True, batch_size=2)
    images = _images(5, seed=7)
    metric.update(images[:3], {})
    metric.update(images[3:], {})
    items = metric.per_item()
    assert set(items) == {"features", "reference_mu", "reference_sigma"}
    assert items["features"].dtype == np.float32 and items["features"].shape == (5, 6)
    np.testing.assert_allclose(items["features"], metric.features(images, real=False).float().numpy())
    np.testing.assert_array_equal(items["reference_mu"], mu)
    np.testing.assert_array_equal(items["reference_sigma"], sigma)


def test_per_item_without_items_and_without_keep_items(tmp_path):
    """keep_items with nothing kept -> features of shape (0, 0); without keep_items -> None and nothing kept."""
    path = tmp_path / "ref.npz"
    np.savez(path, mu=np.zeros(6), sigma=np.eye(6))
    assert _fid_with_file(tmp_path, path, keep_items=True).per_item()["features"].shape == (0, 0)
    metric = _fid_with_file(tmp_path, path)
    metric.update(_images(3), {})
    assert metric.per_item() is None and metric._items == []


def test_per_item_after_compute_reuses_the_reference(tmp_path):
    """compute keeps the real statistics: per_item does not read the real images a second time."""
    reads = []

    def real_images():
        reads.append(1)
        yield _images(4, seed=8)

    metric = _stub(FID)(FIDParams(), context=_ctx(tmp_path, keep_items=True, real_images=real_images))
    metric.update(_images(3), {})
    metric.compute()
    items = metric.per_item()
    assert len(reads) == 1 and items["features"].shape == (3, 6) and items["reference_mu"].shape == (6,)


def test_dropped_samples_count_images_not_features(tmp_path):
    """drop_last: the partial batch's images are counted as dropped and are not items."""

    class Small(_stub(FIDDMGAN2018)):
        drop_last = 4

    path = tmp_path / "ref.npz"
    np.savez(path, mu=np.zeros(6), sigma=np.eye(6))
    metric = Small(FIDParams(reference_stats=str(path)), context=_ctx(tmp_path, keep_items=True, batch_size=3))
    images = _images(7, seed=2)
    metric.update(images[:3], {})
    metric.update(images[3:], {})
    result = metric.compute()
    assert result.n == 4 and result.protocol["dropped_samples"] == 3 and result.protocol["n_samples"] == 4
    assert metric.per_item()["features"].shape == (4, 6)


# -- Inception Score ---------------------------------------------------------------------------------------------------
def test_inception_score_defaults_to_10_splits():
    """Default splits=10: 10 one-hot images of 10 classes are 10 splits of one image, IS 1 each."""
    mean, std = inception_score(np.eye(10))
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0)


def test_inception_score_of_zero_probabilities_warns_nothing():
    """Zero probabilities contribute 0 to the KL without divide/invalid RuntimeWarnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, _ = inception_score(np.tile(np.eye(3), (4, 1)), splits=2)
    assert mean == pytest.approx(3.0)


@pytest.mark.parametrize("allow", [True, False])
def test_is_default_backbone_and_class_record(tmp_path, monkeypatch, allow):
    """Without a classifier: the FID Inception from weights_dir with allow_random passed; classes recorded."""
    calls = []

    def fake(weights_dir, *, allow_random=False):
        calls.append((weights_dir, allow_random))
        return _ISStub()

    monkeypatch.setattr(is_module, "fid_inception", fake)
    ctx = EvalContext(weights_dir=tmp_path, seed=7)
    metric = InceptionScore(InceptionScoreParams(splits=2, allow_random_backbone=allow), context=ctx)
    assert calls == [(ctx.weights_dir, allow)]
    metric.update(_images(4, seed=1), {})
    p = metric.compute().protocol
    assert p["classes"] == "1008 ImageNet (TF-2015) classes, unbiased logits"
    assert p["shuffle"] == "numpy default_rng(seed=7)"


@pytest.mark.parametrize("drop, classes", [(True, "classifier outputs without class 0"), (False, "classifier outputs")])
def test_is_user_classifier_option_records_classes_and_drops_class_0(tmp_path, monkeypatch, drop, classes):
    """classifier_weights: loaded with classifier_classes outputs; class 0 dropped before softmax only if asked."""
    calls = []

    def fake(path, num_classes):
        calls.append((path, num_classes))
        return _ISStub()

    monkeypatch.setattr(is_module, "classifier_inception", fake)
    params = InceptionScoreParams(
        classifier_weights=str(tmp_path / "b.pth"), classifier_classes=3, drop_first_class=drop
    )
    metric = InceptionScore(params, context=EvalContext(weights_dir=tmp_path))
    assert calls == [(tmp_path / "b.pth", 3)] and metric.classes == classes
    metric.update(_images(2, seed=3), {})
    assert metric.probs[0].shape == ((2, 2) if drop else (2, 3))


def test_is_without_images_and_per_item_without_shuffle(tmp_path, monkeypatch):
    """No images: the splits error says 'got 0' and per_item holds (0, 1) probs; shuffle off -> shuffle_seed -1."""
    monkeypatch.setattr(is_module, "fid_inception", lambda *a, **k: _ISStub())
    metric = InceptionScore(InceptionScoreParams(shuffle=False), context=EvalContext(weights_dir=tmp_path))
    with pytest.raises(MetricError) as info:
        metric.compute()
    assert str(info.value) == "Inception Score with 10 splits needs at least 10 images, got 0"
    items = metric.per_item()
    assert items["probs"].shape == (0, 1) and items["splits"] == 10 and items["shuffle_seed"] == -1


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    """A 5-output torchvision-layout Inception-v3 state dict (random, seed 3) saved as bird.pth."""
    folder = tmp_path_factory.mktemp("classifier")
    state = torchvision_inception(folder, allow_random=True, seed=3).net.state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {
        **state,
        "fc.weight": torch.randn(5, 2048, generator=generator),
        "fc.bias": torch.randn(5, generator=generator),
    }
    torch.save(state, folder / "bird.pth")
    return folder / "bird.pth"


def test_is_user_classifier_file_is_loaded_and_recorded(classifier_file, tmp_path):
    """The protocol names the classifier, its file and SHA-256; probs are the softmax of outputs 1..4."""
    params = InceptionScoreParams(classifier_weights=str(classifier_file), classifier_classes=5, splits=2)
    metric = InceptionScore(params, context=EvalContext(weights_dir=tmp_path, batch_size=4))
    images = _images(4, 16, 16, seed=11)
    metric.update(images, {})
    p = metric.compute().protocol
    assert p["backbone"] == {"name": "classifier_inception_v3_5", "weights_file": "bird.pth",
                             "sha256": hashlib.sha256(classifier_file.read_bytes()).hexdigest()}  # fmt: skip
    assert p["classes"] == "classifier outputs without class 0"
    x = F.interpolate(torch.round((images + 1) * 127.5) / 127.5 - 1, size=(299, 299), mode="bilinear")
    with torch.no_grad():
        logits = metric.backbone.logits(metric.backbone(x)).double()
    torch.testing.assert_close(torch.cat(metric.probs).double(), logits[:, 1:].softmax(1), atol=1e-6, rtol=0)


def test_is_user_classifier_errors(classifier_file, tmp_path):
    """A missing file names itself and the expected outputs; a file of another class count is refused."""
    missing = tmp_path / "none.pth"
    with pytest.raises(WeightsNotFoundError) as info:
        InceptionScore(
            InceptionScoreParams(classifier_weights=str(missing), classifier_classes=4), context=EvalContext()
        )
    assert str(info.value).startswith(f"classifier weights {missing} not found. Give a torchvision-layout Inception-v3 "
                                      "state dict with 4 outputs")  # fmt: skip
    with pytest.raises(WeightsError, match=r"size mismatch for fc.weight.*\[5, 2048\].*\[7, 2048\]"):
        InceptionScore(InceptionScoreParams(classifier_weights=str(classifier_file), classifier_classes=7),
                       context=EvalContext())  # fmt: skip
