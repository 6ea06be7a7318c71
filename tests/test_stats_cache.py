"""The real-image statistics cache (FID's mu / Sigma): keys, data set fingerprints, atomic npz files, reuse by FID."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_metrics_fid import _stub

from t2i.metrics import stats_cache
from t2i.metrics.base import EvalContext
from t2i.metrics.fid import FID, FIDParams
from t2i.metrics.stats_cache import StatsCache, dataset_fingerprint, stats_key


# -- stats_key ---------------------------------------------------------------------------------------------------------
def test_stats_key_is_the_sha256_of_sorted_json():
    """The key format is pinned: caches written by an earlier version stay valid."""
    assert stats_key(b=2, a="x") == hashlib.sha256(b'{"a": "x", "b": 2}').hexdigest()


def test_stats_key_ignores_keyword_order():
    """Keyword order does not change the key."""
    parts = {"protocol": "fid.v1", "backbone_sha256": "abc", "image_size": 256, "max_real": None}
    assert stats_key(**parts) == stats_key(**dict(reversed(list(parts.items()))))


def test_stats_key_differs_when_any_part_differs():
    """A changed value, an extra part or a renamed part gives another key."""
    base = {"protocol": "fid.v1", "backbone_sha256": "abc", "image_size": 256}
    keys = {stats_key(**base)}
    for changed in ({"protocol": "fid_dmgan2018.v1"}, {"backbone_sha256": "abd"}, {"image_size": 128}):
        keys.add(stats_key(**{**base, **changed}))
    keys.add(stats_key(**base, max_real=10))  # an extra part
    keys.add(stats_key(protocol="fid.v1", backbone_sha256="abc", imsize=256))  # same value under another name
    assert len(keys) == 6


def test_stats_key_hashes_non_json_values_by_their_str():
    """Non-JSON values (paths) are hashed by their str."""
    assert stats_key(root=Path("/data/birds")) == stats_key(root="/data/birds")
    assert stats_key(root=Path("/data/birds")) != stats_key(root=Path("/data/flowers"))


# -- dataset_fingerprint -----------------------------------------------------------------------------------------------
class _Data:
    """A data set's identity as the fingerprint reads it."""

    def __init__(self, root="/data/birds", split="test", files=None, keys=("a", "b"), length=None):
        self.root = root
        self.split = split
        self.files = [f"{root}/images/a.png", f"{root}/images/b.png"] if files is None else files
        self.keys = list(keys)
        self._len = len(self.files) if length is None else length

    def __len__(self):
        return self._len


class _OtherData(_Data):
    pass


def test_fingerprint_record_is_pinned():
    """Class name, split, files relative to the root, keys and length; nothing else."""
    expected = stats_key(type="_Data", split="test", files=["images/a.png", "images/b.png"], keys=["a", "b"], len=2)
    assert dataset_fingerprint(_Data()) == expected


def test_fingerprint_differs_when_the_data_set_differs():
    """Split, file list or order, keys, length and class each change the fingerprint."""
    base = dataset_fingerprint(_Data())
    variants = {
        "split": _Data(split="train"),
        "file list": _Data(files=["/data/birds/images/a.png", "/data/birds/images/c.png"]),
        "file order": _Data(files=["/data/birds/images/b.png", "/data/birds/images/a.png"]),
        "keys": _Data(keys=("a", "c")),
        "length": _Data(length=3),
        "class": _OtherData(),
    }
    prints = {what: dataset_fingerprint(ds) for what, ds in variants.items()}
    assert all(p != base for p in prints.values()), [w for w, p in prints.items() if p == base]
    assert len(set(prints.values())) == len(prints)


def test_fingerprint_survives_moving_the_data_set_folder(tmp_path):
    """Absolute file paths under ``root`` count relative to it: a moved copy keeps its cached statistics."""
    old = _Data(root=str(tmp_path / "old"))
    new = _Data(root=str(tmp_path / "elsewhere" / "new"))
    assert old.files != new.files
    assert dataset_fingerprint(old) == dataset_fingerprint(new)


def test_fingerprint_keeps_relative_file_names_as_they_are():
    """Relative names are the identity whatever the root (and equal absolute names under the root)."""
    relative = ["images/a.png", "images/b.png"]
    assert dataset_fingerprint(_Data(root="/x", files=relative)) == dataset_fingerprint(
        _Data(root="/y", files=relative)
    )
    assert dataset_fingerprint(_Data(root="/x", files=relative)) == dataset_fingerprint(_Data(root="/z"))
    no_root = _Data(files=relative)
    no_root.root = None  # nothing to make them relative to: names as given
    assert dataset_fingerprint(no_root) == dataset_fingerprint(_Data(root="/x", files=relative))
    absolute = _Data(files=["/data/birds/images/a.png", "/data/birds/images/b.png"])
    absolute.root = None  # absolute names without a root are kept absolute
    assert dataset_fingerprint(absolute) != dataset_fingerprint(_Data())


def test_fingerprint_of_an_object_without_the_attributes():
    """No root / files / keys / split / length: still a fingerprint (of the class name alone)."""

    class Bare:
        pass

    expected = stats_key(type=Bare.__qualname__, split=None, files=[], keys=[], len=None)
    assert dataset_fingerprint(Bare()) == expected

    class Sized:
        def __len__(self):
            return 7

    assert dataset_fingerprint(Sized()) == stats_key(type=Sized.__qualname__, split=None, files=[], keys=[], len=7)


# -- StatsCache --------------------------------------------------------------------------------------------------------
KEY = stats_key(protocol="fid.v1", dataset="d", image_size=256)
META = {"source": "dataset real images", "protocol": "fid.v1", "max_real": None, "nested": {"sizes": [64, 128]}}


def _stats(d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(20, d))
    return x.mean(0), np.cov(x, rowvar=False)


def test_save_then_load_round_trips_exactly(tmp_path):
    """mu, sigma (dtype and values), n (an int) and meta come back exactly from stats-<key[:32]>.npz."""
    mu, sigma = _stats()
    cache = StatsCache(tmp_path / "a" / "b")  # parent folders are created
    path = cache.save(KEY, mu, sigma, 20, META)
    assert path == tmp_path / "a" / "b" / f"stats-{KEY[:32]}.npz" and path.is_file()
    assert cache.path(KEY) == path
    loaded = cache.load(KEY)
    assert set(loaded) == {"mu", "sigma", "n", "meta"}
    np.testing.assert_array_equal(loaded["mu"], mu)
    np.testing.assert_array_equal(loaded["sigma"], sigma)
    assert loaded["mu"].dtype == np.float64 and loaded["sigma"].shape == (5, 5)
    assert loaded["n"] == 20 and type(loaded["n"]) is int
    assert loaded["meta"] == META


def test_save_into_an_existing_folder_and_overwrite(tmp_path):
    """Saving again into an existing folder works and replaces that key's statistics only."""
    cache = StatsCache(tmp_path)
    mu, sigma = _stats(seed=1)
    cache.save(KEY, *_stats(seed=0), 20, META)
    cache.save(KEY, mu, sigma, 30, {"v": 2})
    other = stats_key(protocol="other")
    cache.save(other, mu, sigma, 3, {})
    loaded = cache.load(KEY)
    np.testing.assert_array_equal(loaded["mu"], mu)
    assert loaded["n"] == 30 and loaded["meta"] == {"v": 2}
    assert cache.load(other)["n"] == 3


def test_load_missing_is_none(tmp_path):
    """No file: no statistics."""
    assert StatsCache(tmp_path / "nowhere").load(KEY) is None


def test_load_refuses_a_file_stored_under_another_full_key(tmp_path):
    """Same 32-digit prefix (same file name), different key: not these statistics."""
    cache = StatsCache(tmp_path)
    cache.save(KEY, *_stats(), 20, META)
    other = KEY[:32] + ("0" if KEY[32] != "0" else "1") + KEY[33:]
    assert other != KEY and cache.path(other) == cache.path(KEY)
    assert cache.load(other) is None
    assert cache.load(KEY) is not None


def test_load_never_unpickles(tmp_path):
    """A cache file holding pickled objects is refused, not executed."""
    cache = StatsCache(tmp_path)
    np.savez(cache.path(KEY), mu=np.array([{"x": 1}], dtype=object), sigma=np.eye(2), n=np.int64(2),
             key=np.str_(KEY), meta=np.str_("{}"))  # fmt: skip
    with pytest.raises(ValueError, match="allow_pickle"):
        cache.load(KEY)


def test_write_goes_through_a_pid_named_temp_file_in_the_same_folder(tmp_path, monkeypatch):
    """The npz is written complete under a pid-named temp name, then renamed in place; no temp file is left."""
    moves = []
    real_replace = os.replace

    def replace(src, dst):
        moves.append((Path(src), Path(dst)))
        assert Path(src).is_file() and not Path(dst).exists()  # complete before it takes the final name
        real_replace(src, dst)

    monkeypatch.setattr(stats_cache.os, "replace", replace)
    cache = StatsCache(tmp_path)
    path = cache.save(KEY, *_stats(), 20, META)
    [(src, dst)] = moves
    assert dst == path and src.parent == path.parent  # a rename within one folder: atomic
    assert src.name == f"stats-{KEY[:32]}.tmp{os.getpid()}.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left


def test_a_failed_write_leaves_the_previous_statistics(tmp_path, monkeypatch):
    """Nothing half-written is ever taken as the cache."""
    cache = StatsCache(tmp_path)
    mu, sigma = _stats(seed=0)
    cache.save(KEY, mu, sigma, 20, META)

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(stats_cache.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        cache.save(KEY, *_stats(seed=1), 99, {"v": 2})
    loaded = cache.load(KEY)
    np.testing.assert_array_equal(loaded["mu"], mu)
    assert loaded["n"] == 20 and loaded["meta"] == META
    fresh = stats_key(protocol="never stored")
    with pytest.raises(OSError):
        cache.save(fresh, mu, sigma, 20, META)
    assert cache.load(fresh) is None and not cache.path(fresh).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.path(KEY).name]  # no temp file left behind


def test_get_or_compute_computes_once_then_reads_the_cache(tmp_path):
    """compute runs once; the second call returns the stored statistics and meta, marked cached."""
    mu, sigma = _stats()
    calls = []

    def compute():
        calls.append(1)
        return mu, sigma, 20

    cache = StatsCache(tmp_path)
    first, cached = cache.get_or_compute(KEY, compute, META)
    assert cached is False and len(calls) == 1
    assert first["n"] == 20 and first["meta"] == META and first["mu"] is mu and first["sigma"] is sigma
    second, cached = StatsCache(tmp_path).get_or_compute(KEY, compute, {"ignored": True})
    assert cached is True and len(calls) == 1
    np.testing.assert_array_equal(second["mu"], mu)
    np.testing.assert_array_equal(second["sigma"], sigma)
    assert second["n"] == 20 and second["meta"] == META  # the meta stored with the statistics


# -- through FID -------------------------------------------------------------------------------------------------------
class _Birds(_Data):
    def __init__(self, split="test", imsize=32):
        super().__init__(split=split)
        self.imsize = imsize


def test_fid_cache_key_follows_the_split_and_the_image_size(tmp_path):
    """A changed split or image size is never compared against the other's cached real statistics."""
    calls = []

    def real_images():
        calls.append(1)
        yield torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(len(calls))) * 2 - 1

    fake = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(99)) * 2 - 1

    def evaluate(dataset):
        ctx = EvalContext(weights_dir=tmp_path, cache_dir=tmp_path / "cache", dataset=dataset, real_images=real_images)
        metric = _stub(FID)(FIDParams(), context=ctx)
        metric.update(fake, {})
        return metric.compute().protocol["reference"]

    test32 = evaluate(_Birds("test", 32))
    train32 = evaluate(_Birds("train", 32))
    test64 = evaluate(_Birds("test", 64))
    assert len(calls) == 3 and not (test32["cached"] or train32["cached"] or test64["cached"])
    assert len({test32["cache_key"], train32["cache_key"], test64["cache_key"]}) == 3
    assert test32["dataset"] == dataset_fingerprint(_Birds("test", 32)) != train32["dataset"]
    assert (test32["image_size"], test64["image_size"]) == (32, 64)
    assert len(list((tmp_path / "cache").glob("stats-*.npz"))) == 3
    again = evaluate(_Birds("test", 32))
    assert len(calls) == 3 and again["cached"] and again["cache_key"] == test32["cache_key"]
