"""The worked example of docs/extending.md runs: its refiner registers, validates and trains in a recipe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples"


def t2i(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t2i", *args], capture_output=True, text=True, cwd=ROOT)


def test_example_lists_and_validates():
    listed = t2i("components", "refiner", "--code", str(EXAMPLE / "my_refiner.py"))
    assert listed.returncode == 0, listed.stderr
    assert "gated_attention" in listed.stdout
    shown = t2i("config", "show", str(EXAMPLE / "my_refiner.toml"), "--code", str(EXAMPLE / "my_refiner.py"))
    assert shown.returncode == 0, shown.stderr
    assert 'name = "gated_attention.v1"' in shown.stdout and "temperature = 0.5" in shown.stdout


def test_example_trains_two_steps(tmp_path):
    from test_train import tiny_overrides

    sets = [x for o in tiny_overrides(tmp_path / "shapes") for x in ("--set", o)]
    result = t2i(
        "train",
        str(EXAMPLE / "my_refiner.toml"),
        "--code",
        str(EXAMPLE / "my_refiner.py"),
        *sets,
        "--run-dir",
        str(tmp_path / "run"),
        "--steps",
        "2",
        "-q",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
