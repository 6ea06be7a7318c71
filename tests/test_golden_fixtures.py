"""The golden fixture set itself: present, complete (its README's list), and every file run by a parity test.

Without this a missing, empty or partial fixture folder would leave the parity tests skipped, xfailed or silently
fewer, and the suite green while checking nothing.
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
from pathlib import Path

import golden
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _present() -> list[str]:
    if golden.OPT_OUT:
        pytest.skip(golden.OPT_OUT_REASON)
    why = golden.problem()
    if why is not None:
        golden.require_fixtures(why)
    return sorted(p.name for p in golden.golden_dir().glob("*.pt"))


def test_fixture_set_is_complete():
    present = _present()
    readme = golden.golden_dir() / "README.md"
    assert readme.is_file(), f"{readme} is missing: cannot check the fixture set is complete"
    listed = golden.listed_fixtures(readme)
    assert len(listed) >= golden.EXPECTED_FIXTURES, (
        f"{readme} lists {len(listed)} fixtures, the public set has {golden.EXPECTED_FIXTURES}"
    )
    missing = sorted(set(listed) - set(present))
    assert not missing, f"{len(missing)} fixtures listed in {readme} are not in the folder: {missing[:10]}"
    unlisted = sorted(set(present) - set(listed))
    assert not unlisted, f"fixtures not listed in {readme}: {unlisted}"


def test_every_fixture_is_run_by_exactly_one_parity_test_pattern():
    present = _present()
    claims = {name: [p for p in golden.PATTERNS if fnmatch.fnmatch(name, p)] for name in present}
    unclaimed = sorted(name for name, patterns in claims.items() if not patterns)
    assert not unclaimed, f"fixtures no parity test loads: {unclaimed}"
    twice = {name: patterns for name, patterns in claims.items() if len(patterns) > 1}
    assert not twice, f"fixtures claimed by several patterns: {twice}"


def test_readme_list_parser(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Files\n\n- `a__b.pt` (1 KB) - text\n- `c__d.pt` (2 KB)\n\n## Other\n\n- `e.pt`\n")
    assert golden.listed_fixtures(readme) == ["a__b.pt", "c__d.pt"]


PROBE = """
import sys
sys.path.insert(0, {tests!r})
import golden, pytest
print(golden.problem() or "ok")
for pattern in ("*__kl_loss*.pt", "*__ca_net*.pt"):
    params = golden.fixture_params(pattern)
    print(len(params), type(params[0].values[0]).__name__, [m.name for p in params for m in p.marks])
"""


def _probe(folder: Path) -> list[str]:
    env = {"T2I_GOLDEN": str(folder), "PATH": "/usr/bin:/bin"}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE.format(tests=str(ROOT / "tests"))], capture_output=True, text=True, env=env
    )
    assert probe.returncode == 0, probe.stderr
    return probe.stdout.splitlines()


def _pytest(folder: Path, *extra_env: tuple[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_parity_alignment.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"T2I_GOLDEN": str(folder), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **dict(extra_env)},
    )


def test_missing_or_empty_folder_is_a_failure_not_a_skip(tmp_path):
    absent, empty = tmp_path / "absent", tmp_path / "empty"
    empty.mkdir()
    for folder in (absent, empty):
        lines = _probe(folder)
        assert str(folder) in lines[0] and "T2I_GOLDEN" in lines[0] and "T2I_NO_GOLDEN=1" in lines[0], lines
        assert lines[1:] == ["1 Missing []"] * 2, lines  # one param, no skip/xfail mark: the test body fails
    # a partial folder: the pattern with a file runs it, the one without fails (no xfail, no skip)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "attngan__kl_loss.pt").write_bytes(b"")
    assert _probe(partial)[1:] == ["1 PosixPath []", "1 Missing []"]

    # a whole parity file: exactly one failure (naming the folder), the fixture tests skipped pointing at it; exit 1
    result = _pytest(absent)
    assert result.returncode == 1, result.stdout[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("1 failed") and "skipped" in summary and "error" not in summary, summary
    assert f"golden fixture directory {absent} not found" in result.stdout

    # the explicit opt-out: skips with its reason, exit 0
    opted_out = _pytest(absent, ("T2I_NO_GOLDEN", "1"))
    assert opted_out.returncode == 0, opted_out.stdout[-2000:]
    summary = opted_out.stdout.strip().splitlines()[-1]
    assert "failed" not in summary and "skipped" in summary, summary
