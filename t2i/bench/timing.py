"""How a call is timed: warm-up, timed repeats with median and spread, and interleaved rounds of several calls.

FLOPs are counted during the first warm-up call (a counted call is slower, so it is never timed). On a machine shared
with other work, calls interleaved round by round see the same load, so their per-round ratio is the robust
comparison; calls timed one case after another are not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from t2i.bench.cpu_meter import CpuShare
from t2i.bench.flops import count_flops


def spread(times: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "all": list(times)}


def time_calls(
    call: Callable[[int], dict[str, float] | None],
    repeat: int,
    warmup: int,
    flops: bool = True,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Warm up, then time ``repeat`` calls of ``call(i)`` (which may return its own phase seconds).

    The first warm-up call's wall time is kept apart as ``first_call_s`` (it holds torch.compile's compile time when
    on). ``sync`` waits for the device (CUDA kernels run asynchronously) before each clock reading.
    """
    out: dict[str, Any] = {}
    for i in range(max(warmup, 1 if flops else 0)):
        t0 = time.perf_counter()
        if i == 0 and flops:
            _, out["flops"] = count_flops(lambda: call(-1))
        else:
            call(-1 - i)
        sync()
        if i == 0:
            out["first_call_s"] = time.perf_counter() - t0
    meter = CpuShare()
    phases: list[dict[str, float]] = []
    for i in range(repeat):
        with meter:
            phase = call(i)
            sync()
        if isinstance(phase, dict) and phase:
            phases.append(phase)
    times = [r["wall"] for r in meter.records]
    out["seconds"] = spread(times)
    out["others_frac"] = meter.others()
    if phases:
        out["phases_median_s"] = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in phases[0]}
    if "flops" in out:
        out["achieved_gflops_per_s"] = out["flops"] / out["seconds"]["median"] / 1e9
    return out


def interleave(calls: list[Callable[[int], Any]], rounds: int, warmup: int = 1) -> dict[str, Any]:
    """Time ``calls`` one each per round, in rotating order: seconds per call, ratio to the first per round."""
    for w in range(warmup):
        for call in calls:
            call(-1 - w)
    seconds: list[list[float]] = [[] for _ in calls]
    meter = CpuShare()
    for r in range(rounds):
        order = list(range(len(calls)))
        order = order[r % len(order) :] + order[: r % len(order)]
        for k in order:
            with meter:
                calls[k](r)
            seconds[k].append(meter.records[-1]["wall"])
    base = seconds[0]
    return {
        "seconds": [spread(t) for t in seconds],
        "ratio_to_first": [statistics.median(a / b for a, b in zip(t, base, strict=True)) for t in seconds],
        "others_frac": meter.others(),
    }
