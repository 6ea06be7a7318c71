"""Shapes generation rate: ``make_shapes`` to disk in the CUB layout, images/s for 1 and 2 workers.

Also prints the in-memory rate of one process (drawing + PNG encoding, no files) and the CPU time split into user
and system time, because on this machine kind creating a file costs between 0.05 and 0.6 ms of kernel time
depending on what else the disk is doing. Every number is the median of ``--repeats`` runs, with the range.

    .venv/bin/python benchmarks/shapes_generation.py [--n 4000] [--repeats 5] [--dir DIR]

``--dir`` is where the sets are written (default: a temporary folder under ./runs, on the disk that data/ uses);
each set is deleted after its run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + children.ru_utime, own.ru_stime + children.ru_stime


def in_memory_rate(n: int) -> float:
    from t2i.data.shapes_maker import _png, _render_rows

    start = time.perf_counter()
    for first in range(0, n, 256):
        rows, _ = _render_rows(0, range(first, min(n, first + 256)), 64)
        for scanlines in rows:
            _png(scanlines)
    return n / (time.perf_counter() - start)


def measure(n: int, repeats: int, base: Path) -> tuple[list[float], dict[int, list[float]], dict[int, list]]:
    """Per run: in-memory img/s; make_shapes img/s and (user, system) ms per image, for 1 and 2 workers.

    The sets are written into a temporary folder under ``base`` and deleted after each run.
    """
    from t2i.data.shapes_maker import make_shapes

    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="shapes-bench-", dir=base))
    print(f"writing to {work.resolve()} (load average at start: {os.getloadavg()[0]:.2f})")
    memory: list[float] = []
    rates: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    try:
        for r in range(repeats):
            memory.append(in_memory_rate(n))
            for workers in (1, 2):
                out = work / f"set-{r}-{workers}"
                user0, sys0 = cpu_seconds()
                start = time.perf_counter()
                make_shapes(out, n=n, seed=0, size=64, workers=workers)
                rates[workers].append(n / (time.perf_counter() - start))
                user1, sys1 = cpu_seconds()
                cpu[workers].append(((user1 - user0) / n * 1e3, (sys1 - sys0) / n * 1e3))
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return memory, rates, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="images per set")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the sets (default: under ./runs)")
    args = parser.parse_args()
    memory, rates, cpu = measure(args.n, args.repeats, args.dir or Path("runs"))

    def summary(values: list[float]) -> str:
        return f"{statistics.median(values):,.0f} img/s (range {min(values):,.0f}-{max(values):,.0f})"

    print(f"shapes 64 px, {args.n} images, {args.repeats} runs; load average at end: {os.getloadavg()[0]:.2f}")
    print(f"  in memory, one process (draw + PNG encode): {summary(memory)}")
    for workers in (1, 2):
        user = statistics.median(u for u, _ in cpu[workers])
        system = statistics.median(s for _, s in cpu[workers])
        print(
            f"  make_shapes to disk, {workers} worker(s): {summary(rates[workers])}; "
            f"CPU per image {user:.2f} ms user + {system:.2f} ms system"
        )


if __name__ == "__main__":
    main()
