"""What the machine gave a measurement: wall time and other processes' CPU share, peak RSS, the matmul peak.

On a shared machine a timing is only trustworthy when other processes used almost none of the CPUs meanwhile, and
absolute seconds drift with the host's load: the fp32 matmul peak taken in the same run says how fast the CPU was.
"""

from __future__ import annotations

import statistics
import time

import torch


class CpuShare:
    """Context manager: wall seconds, and the share of all CPUs' time spent by *other* processes meanwhile."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    @staticmethod
    def _read() -> tuple[list[int], int] | None:
        try:
            with open("/proc/stat") as handle:
                total = [int(v) for v in handle.readline().split()[1:9]]
            with open("/proc/self/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            own = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
            return total, own
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> CpuShare:
        self._start = self._read()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        record = {"wall": time.perf_counter() - self._t0}
        end = self._read()
        if self._start is not None and end is not None:
            delta = [b - a for a, b in zip(self._start[0], end[0], strict=True)]
            busy = delta[0] + delta[1] + delta[2] + delta[5] + delta[6]  # user nice system irq softirq
            own = end[1] - self._start[1]
            record["others_frac"] = max(busy - own, 0) / max(sum(delta), 1)
        self.records.append(record)

    def others(self) -> float | None:
        values = [r["others_frac"] for r in self.records if "others_frac" in r]
        return statistics.fmean(values) if values else None


def peak_rss_bytes() -> int:
    """VmHWM of this process."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def matmul_peak(n: int = 2048, repeat: int = 8) -> dict[str, float]:
    """fp32 n×n @ n×n GFLOP/s (best and median) with the current thread count."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=out)
    meter = CpuShare()
    for _ in range(repeat):
        with meter:
            torch.mm(a, b, out=out)
    times = [r["wall"] for r in meter.records]
    flop = 2.0 * n**3
    return {
        "gflops_best": flop / min(times) / 1e9,
        "gflops_median": flop / statistics.median(times) / 1e9,
        "others_frac": meter.others() or 0.0,
    }
