"""benchmarks/gpu_check.sh at toy sizes on the CPU: the prepared GPU script runs end to end and writes its tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_tiny_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["device"] == "cpu" and results["tiny"] is True
    rows = {(r["recipe"], r["config"]): r for r in results["train"]}
    assert set(rows) == {(r, c) for r in ("mirrorgan_shapes", "dmgan_shapes") for c in ("fp32", "bf16+cl")}
    for row in rows.values():
        assert row["losses_finite"] and row["step_s_median"] > 0 and row["sample_images_per_s"] > 0
        assert row["train_peak_bytes"] > 0
    table = (tmp_path / "results.md").read_text()
    assert "| dmgan_shapes | bf16+cl |" in table and "sample img/s" in table
