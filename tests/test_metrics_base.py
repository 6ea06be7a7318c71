"""What every metric shares: the result record, the weight-file hash and the evaluator fingerprint."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from t2i.metrics.base import (
    EvalContext,
    Metric,
    MetricError,
    MetricResult,
    default_cache_dir,
    module_fingerprint,
    sha256_file,
)


def test_result_record_has_every_field_under_its_name():
    result = MetricResult(1.5, 0.25, 7, {"metric": "x.v1"}, details={"a": 2.0})
    assert result.to_dict() == {
        "value": 1.5,
        "std": 0.25,
        "n": 7,
        "details": {"a": 2.0},
        "protocol": {"metric": "x.v1"},
    }


def test_file_hash_is_per_file_even_with_equal_size_and_time(tmp_path):
    """The memo is keyed by path, size and mtime: two files alike in size and time still get their own hash."""
    import hashlib

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"x" * 3_000_000)  # more than one 1 MiB read
    b.write_bytes(b"x" * 2_999_999 + b"y")
    for path in (a, b):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert sha256_file(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    assert sha256_file(b) == hashlib.sha256(b.read_bytes()).hexdigest() != sha256_file(a)


def test_fingerprint_tells_shapes_and_dtypes_apart_when_the_bytes_are_equal():
    def holding(tensor: torch.Tensor) -> nn.Module:
        module = nn.Module()
        module.register_buffer("w", tensor)
        return module

    flat = module_fingerprint(holding(torch.zeros(6)))
    assert module_fingerprint(holding(torch.zeros(6))) == flat
    assert module_fingerprint(holding(torch.zeros(2, 3))) != flat  # same 24 bytes, another shape
    assert module_fingerprint(holding(torch.zeros(6, dtype=torch.int32))) != flat  # same bytes, another dtype
    assert module_fingerprint(holding(torch.ones(6))) != flat


def test_statistics_cache_folder_follows_t2i_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("T2I_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "metric-stats"
    monkeypatch.delenv("T2I_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "t2i" / "metric-stats"


def test_context_refuses_a_batch_size_below_one():
    assert EvalContext(batch_size=1).batch_size == 1
    with pytest.raises(MetricError) as info:
        EvalContext(batch_size=0)
    assert str(info.value) == "batch_size must be positive, got 0"


def test_metric_names_the_networks_it_lacks_and_those_it_has():
    class Needs(Metric):
        name = "needs.v1"
        requires = ("text_encoder", "image_encoder")

    with pytest.raises(MetricError) as info:
        Needs(EvalContext())
    assert str(info.value) == (
        "metric needs.v1 needs the evaluator network(s) text_encoder, image_encoder; "
        "give them in the evaluation context (available: none)"
    )
    with pytest.raises(MetricError, match=r"network\(s\) image_encoder; .*\(available: a, text_encoder\)$"):
        Needs(EvalContext(networks={"a": nn.Identity(), "text_encoder": nn.Identity()}))


def test_protocol_names_and_versions_come_from_the_registered_name():
    class Versioned(Metric):
        name = "my.vision.metric.v12"

    record = Versioned(EvalContext(seed=3, batch_size=7, run_info={"split": "test"})).base_protocol(extra=1)
    assert record == {"metric": "my.vision.metric.v12", "name": "my.vision.metric", "version": 12, "seed": 3,
                      "batch_size": 7, "extra": 1, "split": "test"}  # fmt: skip
    Versioned.name = "odd.vbeta"
    assert Versioned(EvalContext()).base_protocol()["version"] == "beta"
