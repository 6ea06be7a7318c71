"""Shared helpers for golden-fixture parity tests (golden/README.md, "How to compare").

The fixture directory is ``$T2I_GOLDEN`` or ``<project root>/../shared/golden``. Tests collect
every file matching their component's pattern, so new fixtures in the same format run too.

A missing or empty directory is a failure, not a skip: a suite that checks nothing must not look green.
The first parity test of a session fails with the directory and how to provide it; the others skip,
pointing at that failure. ``T2I_NO_GOLDEN=1`` is the explicit opt-out for a clone used without
../shared: every parity test then skips with that reason.

* ``fixtures(pattern)`` -> sorted paths (``pattern`` is a glob such as ``"*__g_net*.pt"``).
* ``fixture_params(pattern)`` -> ``pytest.param`` list for ``parametrize``; one param carrying a
  ``Missing`` value (see ``require_fixtures``) if the directory is absent, empty or has no match.
* ``listed_fixtures()``: the file names the fixture README lists (its "Files" section).
* ``load(path)``: ``torch.load(..., weights_only=True)``.
* ``assert_close_f64(ours, ref)``: ``|ours - ref| <= 1e-8 * max(1, |ref|)`` elementwise.
* ``assert_close_f32(ours, ref, f32_error)``: same measure with ``max(1e-5, 4 * f32_error)``.
  Both walk dicts/lists, compare integer/bool tensors and plain values exactly, and accept a full
  tensor where the reference is a reduced map ``{shape, stride, sub, sum_bc, abssum_bc}``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = Path(os.environ.get("T2I_GOLDEN", str(ROOT.parent / "shared" / "golden"))).expanduser()
OPT_OUT_VARIABLE = "T2I_NO_GOLDEN"
OPT_OUT = os.environ.get(OPT_OUT_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")
OPT_OUT_REASON = f"{OPT_OUT_VARIABLE}={os.environ.get(OPT_OUT_VARIABLE)}: golden-fixture parity is not checked"
HOW_TO_GET = (
    f"put the golden fixtures (the *.pt files and README.md) in {GOLDEN_DIR}, or point T2I_GOLDEN at their folder; "
    f"set {OPT_OUT_VARIABLE}=1 to run without them (parity is then NOT checked)"
)
MISSING_REASON = f"golden fixture directory {GOLDEN_DIR} not found: {HOW_TO_GET}"
EMPTY_REASON = f"golden fixture directory {GOLDEN_DIR} holds no *.pt fixture: {HOW_TO_GET}"

# The public set (its README's "Files" list) has this many fixtures; a folder with fewer is incomplete.
EXPECTED_FIXTURES = 48

# The patterns the parity tests collect; every fixture must match one (tests/test_golden_fixtures.py).
PATTERNS = (
    "*__text_encoder*.pt",
    "*__ca_net*.pt",
    "*__init_stage_g*.pt",
    "*__get_image_g*.pt",
    "*__next_stage_g*.pt",
    "*__g_net*.pt",
    "*__cnn_encoder_proj*.pt",
    "*__words_loss*.pt",
    "*__sent_loss*.pt",
    "*__kl_loss*.pt",
    "*gan__stream*.pt",
    "*__d_net__*.pt",
    "*__discriminator_loss*.pt",
    "*__generator_loss*.pt",
)

F64_TOL = 1e-8
REDUCED_KEYS = {"shape", "stride", "sub", "sum_bc", "abssum_bc"}


def golden_dir() -> Path:
    return GOLDEN_DIR


def fixtures(pattern: str) -> list[Path]:
    """Every fixture file in the golden directory matching ``pattern`` (sorted; [] if absent)."""
    if not GOLDEN_DIR.is_dir():
        return []
    return sorted(GOLDEN_DIR.glob(pattern))


def listed_fixtures(readme: Path | None = None) -> list[str]:
    """The ``*.pt`` names listed in the fixture README's "## Files" section, in order."""
    text = (readme or GOLDEN_DIR / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Files", 1)[1].split("\n## ", 1)[0] if "\n## Files" in text else ""
    return re.findall(r"^- `([^`]+\.pt)`", section, flags=re.MULTILINE)


def problem() -> str | None:
    """Why the golden fixtures cannot be checked (None when the directory holds fixtures)."""
    if not GOLDEN_DIR.is_dir():
        return MISSING_REASON
    if not any(GOLDEN_DIR.glob("*.pt")):
        return EMPTY_REASON
    return None


@dataclass(frozen=True)
class Missing:
    """Stands in for a fixture path when none can be given; ``require_fixtures`` turns it into the failure."""

    reason: str


_reported: list[str] = []


def require_fixtures(reason: str) -> None:
    """Fail once per session with ``reason`` (the first test to meet it); skip later ones, pointing at it."""
    if OPT_OUT:
        pytest.skip(OPT_OUT_REASON)
    if reason in _reported:
        pytest.skip(f"golden fixtures unavailable (reported as a failure above): {reason}")
    _reported.append(reason)
    pytest.fail(reason, pytrace=False)


def fixture_params(pattern: str) -> list[Any]:
    """``pytest.param`` per fixture file, id = file stem, for ``@pytest.mark.parametrize``."""
    assert pattern in PATTERNS, f"add {pattern!r} to golden.PATTERNS so the fixture coverage check knows it"
    if OPT_OUT:
        return [pytest.param(None, id=f"opted-out:{pattern}", marks=pytest.mark.skip(reason=OPT_OUT_REASON))]
    why = problem()
    if why is not None:
        return [pytest.param(Missing(why), id=f"missing:{pattern}")]
    found = fixtures(pattern)
    if not found:
        reason = f"no fixture matches {pattern!r} in {GOLDEN_DIR} (incomplete set?): {HOW_TO_GET}"
        return [pytest.param(Missing(reason), id=f"none:{pattern}")]
    return [pytest.param(p, id=p.stem) for p in found]


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location=os.environ.get("T2I_TEST_DEVICE", "cpu"), weights_only=True)


def is_reduced(ref: Any) -> bool:
    return isinstance(ref, dict) and REDUCED_KEYS <= set(ref)


def reduce_map(full: torch.Tensor, stride: int) -> dict[str, Any]:
    """The fixtures' reduced form of a large map (README: sub, sum_bc, abssum_bc)."""
    return {
        "shape": list(full.shape),
        "stride": stride,
        "sub": full[..., ::stride, ::stride],
        "sum_bc": full.double().sum(dim=(-2, -1)),
        "abssum_bc": full.double().abs().sum(dim=(-2, -1)),
    }


def _compare(ours: Any, ref: Any, tol: float, name: str) -> None:
    if is_reduced(ref) and isinstance(ours, torch.Tensor):
        assert list(ours.shape) == list(ref["shape"]), f"{name}: shape {list(ours.shape)} != {ref['shape']}"
        ours = reduce_map(ours, int(ref["stride"]))
    if isinstance(ref, dict):
        assert isinstance(ours, dict), f"{name}: expected a dict, got {type(ours).__name__}"
        missing = set(ref) - set(ours)
        assert not missing, f"{name}: missing entries {sorted(missing)}"
        for key in ref:
            _compare(ours[key], ref[key], tol, f"{name}.{key}")
        return
    if isinstance(ref, (list, tuple)):
        assert isinstance(ours, (list, tuple)), f"{name}: expected a list, got {type(ours).__name__}"
        assert len(ours) == len(ref), f"{name}: length {len(ours)} != {len(ref)}"
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            _compare(a, b, tol, f"{name}[{i}]")
        return
    if isinstance(ref, torch.Tensor):
        assert isinstance(ours, torch.Tensor), f"{name}: expected a tensor, got {type(ours).__name__}"
        assert tuple(ours.shape) == tuple(ref.shape), f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
        if not ref.is_floating_point():
            assert torch.equal(ours.to(ref.dtype), ref), f"{name}: integer/bool tensors differ"
            return
        ours_d, ref_d = ours.detach().double(), ref.double()
        err = (ours_d - ref_d).abs() / ref_d.abs().clamp(min=1.0)
        worst = float(err.max()) if err.numel() else 0.0
        assert worst <= tol, f"{name}: max error {worst:.3e} > {tol:.1e} (at {tuple(int(i) for i in _argmax(err))})"
        return
    assert ours == ref, f"{name}: {ours!r} != {ref!r}"


def _argmax(err: torch.Tensor) -> tuple[int, ...]:
    flat = int(err.argmax())
    return tuple(torch.unravel_index(torch.tensor(flat), err.shape)) if err.dim() else ()


def max_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """The README's elementwise measure, maximised: max |ours - ref| / max(1, |ref|)."""
    ours_d, ref_d = ours.detach().double(), ref.double()
    return float(((ours_d - ref_d).abs() / ref_d.abs().clamp(min=1.0)).max())


def assert_close_f64(ours: Any, ref: Any, name: str = "output") -> None:
    """Parity proof: float64 against ``outputs_f64`` within 1e-8 * max(1, |ref|)."""
    _compare(ours, ref, F64_TOL, name)


def f32_tolerance(f32_error: float) -> float:
    return max(1e-5, 4.0 * float(f32_error))


def assert_close_f32(ours: Any, ref: Any, f32_error: float, name: str = "output") -> None:
    """Float32 smoke test against ``outputs`` within max(1e-5, 4 * f32_error)."""
    _compare(ours, ref, f32_tolerance(f32_error), name)


def to_double(obj: Any) -> Any:
    """Cast floating tensors (nested in dicts/lists) to float64; leave integers and bools."""
    if isinstance(obj, torch.Tensor):
        return obj.double() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: to_double(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_double(v) for v in obj)
    return obj


def precision(fx: dict[str, Any], double: bool) -> tuple[torch.dtype, dict[str, Any], dict[str, Any]]:
    """(dtype, inputs, reference outputs) of a fixture for the float64 proof or the float32 smoke test."""
    if double:
        return torch.float64, to_double(fx["inputs"]), fx["outputs_f64"]
    return torch.float32, fx["inputs"], fx["outputs"]


def check(ours: Any, ref: Any, fx: dict[str, Any], double: bool, name: str) -> None:
    """Compare with the README's measure for the chosen precision."""
    if double:
        assert_close_f64(ours, ref, name)
    else:
        assert_close_f32(ours, ref, fx["f32_error"], name)
