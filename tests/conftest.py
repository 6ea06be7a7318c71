"""Shared pytest setup: quiet, deterministic, two threads."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # so test modules can import helpers such as golden.py

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("T2I_OFFLINE", "1")  # no test downloads weights; tests/test_weights.py serves its own

# T2I_TEST_DEVICE=cuda runs the tests with torch's default device set there (the GPU check uses it for the golden
# parity tests); fixtures load onto it (golden.load) and TF32 is off, so float32 parity keeps its bound.
TEST_DEVICE = os.environ.get("T2I_TEST_DEVICE", "cpu")
if TEST_DEVICE != "cpu":
    import torch

    torch.set_default_device(TEST_DEVICE)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(autouse=True)
def _isolated_registries():
    """Every test sees the built-in registries and loses whatever it registered."""
    from t2i.registry import registries

    for reg in registries.values():
        reg.discover()  # so the restore below never drops built-ins discovered during a test
    saved = {kind: dict(reg._entries) for kind, reg in registries.items()}
    yield
    for kind, reg in registries.items():
        reg._entries.clear()
        reg._entries.update(saved[kind])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    """A parity test parametrized without a fixture file fails (once per session) instead of passing vacuously."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return
    from golden import Missing, require_fixtures

    for value in callspec.params.values():
        if isinstance(value, Missing):
            require_fixtures(value.reason)
