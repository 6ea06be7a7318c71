"""The cases of a bench run: t2i's training iteration, sampling and data loading, planned, run and compared.

One *case* is one implementation (``t2i``, or ``reference``: the original networks) × one task (``train``,
``sample``, ``data``). :func:`run_isolated` runs a case in a fresh Python process, so its peak RSS (VmHWM) is its
own; :func:`interleaved` times the implementations of one task in this process, round by round. A case reports the
median and spread of its timed repeats after warm-up, FLOPs of one call, achieved GFLOP/s, phase medians of a
training iteration, and how much of the CPU other processes used while it ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from t2i.bench import reference as ref
from t2i.bench.cpu_meter import CpuShare, peak_rss_bytes
from t2i.bench.synthetic import (
    SyntheticCaptions,
    bench_recipe,
    synthetic_batch,
    synthetic_vocab,
    vocab_size_of,
    words_num_of,
)
from t2i.bench.timing import interleave, spread, time_calls

IMPLEMENTATIONS = ("t2i", "reference")
TASKS = ("train", "sample", "data")


def spec_runtime(spec: dict[str, Any]):
    """The case's t2i.runtime.Runtime (default: CPU, fp32)."""
    from t2i.runtime import Runtime

    return Runtime.create(
        spec.get("device") or "cpu",
        spec.get("precision") or "fp32",
        channels_last=bool(spec.get("channels_last")),
        compile=bool(spec.get("compile")),
    )


def build_trainer(recipe, vocab, runtime=None):
    """A GANTrainer on synthetic captions in a throw-away run folder (nothing is written during steps)."""
    from t2i.runtime import Runtime
    from t2i.train.loop import GANTrainer
    from t2i.train.run_dir import RunDir

    folder = Path(tempfile.mkdtemp(prefix="t2i_bench_"))
    return GANTrainer(
        recipe,
        RunDir(folder),
        SyntheticCaptions(vocab, words_num_of(recipe)),
        quiet=True,
        runtime=runtime or Runtime(),
    )


def train_call(trainer, batches: Callable[[int], Any]) -> Callable[[int], dict[str, float]]:
    """One ``train_step`` per call, split into phases by hooks (no change to the loop itself)."""
    clock = time.perf_counter
    state: dict[str, Any] = {}

    def mark(name: str) -> None:
        trainer.runtime.synchronize()  # phase times of GPU work need the kernels finished
        now = clock()
        state["phases"][name] = state["phases"].get(name, 0.0) + now - state["t"]
        state["t"] = now

    generator = trainer.nets.generator
    if not trainer.runtime.compile:  # hooks with clocks would break the compiled graph: whole steps only
        generator.register_forward_pre_hook(lambda *_: mark("text_encoding"))
        generator.register_forward_hook(lambda *_: mark("G_forward"))
        for i, opt in enumerate(trainer.opt_d):
            opt.register_step_post_hook(lambda *_, i=i: mark(f"D{i}_update"))

    def call(i: int) -> dict[str, float]:
        batch = trainer.runtime.batch(batches(i))  # the host-to-device copy is not part of the step
        trainer.runtime.synchronize()
        state["phases"], state["t"] = {}, clock()
        logs = trainer.train_step(batch)
        if logs is None:
            raise RuntimeError("the training step produced a non-finite loss on synthetic inputs")
        mark("G_update")
        return state["phases"]

    return call


def t2i_callable(spec: dict[str, Any]) -> tuple[Callable[[int], Any], int, dict[str, Any]]:
    """(call(i), batch size, info) for a t2i train or sample case; call(i) returns train phases or None."""
    from t2i.batch import text_features

    recipe = bench_recipe(spec["recipe"], spec.get("batch"), spec.get("overrides"))
    batch_size = recipe.data.batch_size
    vocab = synthetic_vocab(vocab_size_of(recipe), recipe.data.dataset.raw_params.get("convention", "A"))
    words_num = words_num_of(recipe)
    sizes = recipe.stage_sizes()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    runtime = spec_runtime(spec)
    trainer = build_trainer(recipe, vocab, runtime)
    info: dict[str, Any] = {"build_s": time.perf_counter() - t0, "runtime": runtime.info()}

    def batches(i: int):
        return synthetic_batch(sizes, batch_size, vocab, words_num, seed=1000 + i)

    if spec["task"] == "train":
        return train_call(trainer, batches), batch_size, info
    if spec["task"] != "sample":
        raise ValueError(f"unknown task {spec['task']!r}")
    generator = runtime.compiled(runtime.module(trainer.ema.model.eval()))
    text = text_features(trainer.nets.text_encoder, runtime.batch(batches(0)), trainer.mask_ids)
    noise = torch.Generator().manual_seed(1)
    z = torch.randn(batch_size, recipe.model.z_dim, generator=noise).to(runtime.device)
    eps = torch.randn(batch_size, recipe.model.cond_dim, generator=noise).to(runtime.device)

    def call(i: int) -> None:
        with torch.no_grad(), runtime.precision.autocast():
            generator(z, text.sentence, text.words, text.mask, eps=eps)

    return call, batch_size, info


def _callable(spec: dict[str, Any]) -> tuple[Callable[[int], Any], int, dict[str, Any]]:
    return (ref.reference_callable if spec["impl"] == "reference" else t2i_callable)(spec)


def _timed_case(spec: dict[str, Any]) -> dict[str, Any]:
    call, batch_size, out = _callable(spec)
    device = torch.device(spec.get("device") or "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    out.update(time_calls(call, spec["repeat"], spec["warmup"], spec.get("flops", True), sync=sync))
    if cuda:
        out["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
        out["cuda_name"] = torch.cuda.get_device_name(device)
    if spec["task"] == "sample":
        out["images_per_s"] = batch_size / out["seconds"]["median"]
    out["batch"] = batch_size
    return out


def interleaved(specs: list[dict[str, Any]], rounds: int, warmup: int = 1) -> dict[str, Any]:
    """Time several cases of ONE task in this process, one call each per round, in rotating order.

    The per-round ratio to the first case is the comparison to quote; peak RSS is shared here, so memory comes
    from :func:`run_isolated`.
    """
    timed = interleave([_callable(spec)[0] for spec in specs], rounds, warmup)
    return {"impls": [s["impl"] for s in specs], "task": specs[0]["task"], **timed}


def _data_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Batches per second of the recipe's own data set through the training loader (needs the data)."""
    from t2i import recipe as recipe_mod
    from t2i.data.loader import make_loader

    recipe = recipe_mod.load(spec["recipe"], list(spec.get("overrides") or []))
    if spec.get("batch"):
        recipe = recipe_mod.load(spec["recipe"], [f"data.batch_size={spec['batch']}", *(spec.get("overrides") or [])])
    dataset = recipe.data.dataset.build(split="train", image_sizes=recipe.stage_sizes())
    batch_size = recipe.data.batch_size
    loader = make_loader(dataset, batch_size, recipe.seed, workers=recipe.data.workers)
    iterator = iter(loader)
    n_batches = max(1, min(spec.get("data_batches", 20), len(dataset) // batch_size))
    next(iterator)  # worker start-up and the first decode are not throughput
    meter = CpuShare()
    times = []
    for _ in range(spec["repeat"]):
        with meter:
            for _ in range(n_batches):
                next(iterator)
        times.append(meter.records[-1]["wall"])
    seconds = spread(times)
    return {
        "seconds": seconds,
        "images_per_s": n_batches * batch_size / seconds["median"],
        "batches_per_repeat": n_batches,
        "others_frac": meter.others(),
        "batch": batch_size,
    }


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case in THIS process (``run_isolated`` calls it in a fresh one)."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    t0 = time.perf_counter()
    out = _data_case(spec) if spec["task"] == "data" else _timed_case(spec)
    out.update(
        impl=spec["impl"],
        task=spec["task"],
        recipe=spec["recipe"],
        threads=torch.get_num_threads(),
        wall_s=time.perf_counter() - t0,
        peak_rss_bytes=peak_rss_bytes(),
    )
    return out


def run_isolated(spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run one case in a fresh ``python -m t2i.bench`` process; its peak RSS is its own."""
    with tempfile.TemporaryDirectory(prefix="t2i_bench_case_") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec))
        env = dict(os.environ)
        env.setdefault("PYTHONWARNINGS", "ignore")
        proc = subprocess.run(
            [sys.executable, "-m", "t2i.bench", str(spec_file), str(out_file)],
            env=env,
            timeout=timeout,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out_file.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"bench case {spec['impl']}/{spec['task']} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out_file.read_text())


def plan(
    recipe: str,
    tasks: list[str],
    *,
    batch: int | None,
    repeat: int,
    warmup: int,
    overrides: list[str],
    threads: int | None,
    implementations: list[str],
    reference_dir: str | Path | None = None,
    flops: bool = True,
    runtime: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The cases of one bench run, reference first per task (so pairs run close together in time).

    A reference case runs the harness in ``reference_dir`` (default :func:`t2i.bench.reference.default_reference_dir`);
    recipes without original code and the data task have no reference case.
    """
    reference = ref.REFERENCE_MODELS.get(Path(recipe).stem)
    cases = []
    for task in tasks:
        for impl in implementations:
            if impl == "reference" and (task == "data" or reference is None):
                continue
            spec = {
                "impl": impl,
                "task": task,
                "recipe": recipe,
                "batch": batch,
                "repeat": repeat,
                "warmup": warmup,
                "overrides": overrides,
                "threads": threads,
                "flops": flops,
                **(runtime or {}),
            }
            if impl == "reference":  # the originals run fp32, contiguous, eager: only the device applies
                spec.update(precision=None, channels_last=None, compile=None)
                spec["reference_model"] = list(reference)
                spec["reference_dir"] = str(reference_dir or ref.default_reference_dir())
                spec["batch"] = batch or bench_recipe(recipe, None, overrides).data.batch_size
            cases.append(spec)
    return cases


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """t2i / original per task: time, peak RSS, FLOPs (< 1 means t2i is faster / smaller)."""
    rows = []
    by = {(r["impl"], r["task"]): r for r in results}
    for (impl, task), mine in by.items():
        original = by.get(("reference", task))
        if impl == "reference" or original is None:
            continue
        row = {
            "impl": impl,
            "task": task,
            "time": mine["seconds"]["median"] / original["seconds"]["median"],
            "peak_rss": mine["peak_rss_bytes"] / original["peak_rss_bytes"],
        }
        if mine.get("cuda_peak_allocated_bytes") and original.get("cuda_peak_allocated_bytes"):
            row["cuda_peak"] = mine["cuda_peak_allocated_bytes"] / original["cuda_peak_allocated_bytes"]
        if mine.get("flops") and original.get("flops"):
            row["flops"] = mine["flops"] / original["flops"]
        rows.append(row)
    return rows
