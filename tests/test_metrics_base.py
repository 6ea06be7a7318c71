"""What every metric shares: the result record, the weight-file hash and the evaluator fingerprint."""

from __future__ import annotations

import os

import torch
from torch import nn

from t2i.metrics.base import MetricResult, module_fingerprint, sha256_file


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
