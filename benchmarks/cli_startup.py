"""Time `t2i --help` (target < 0.5 s) and check that it imports no torch.

Run: .venv/bin/python benchmarks/cli_startup.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "t2i", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    probe = "import sys, t2i.cli; print('torch' in sys.modules)"
    torch_loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
    print(f"t2i --help: median {statistics.median(times):.3f} s, min {min(times):.3f} s over {args.repeat} runs")
    print(f"torch imported by the CLI at start-up: {torch_loaded}")


if __name__ == "__main__":
    main()
