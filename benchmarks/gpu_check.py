"""The prepared GPU check (run through benchmarks/gpu_check.sh): parity, training, memory and sampling on one device.

Full size (default, about 8 minutes on one H100): golden parity tests on the device (float64 and float32, TF32 off);
``--steps`` training steps of each published bird recipe at batch 10 on synthetic CUB-shaped batches (t2i.bench)
in fp32 and in bf16 + channels_last (and + torch.compile for ``--compile-recipes``), each with its first step (compile)
timed apart, the median step, peak device memory and sampling images/s; then ``t2i bench --against-reference`` on
the device beside the original networks. ``--tiny`` runs the same code paths at toy sizes on the shapes recipes (the
test suite runs ``--device cpu --tiny`` so the script cannot rot). Writes ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIRD = ["attngan_bird", "mirrorgan_bird", "dmgan_bird", "dmmgan_bird"]
SHAPES = ["mirrorgan_shapes", "dmgan_shapes"]  # --tiny: BatchNorm D + STREAM, spectral-norm D + DAMSM
TINY = [
    "model.base_size=16", "model.stages=2", "model.z_dim=4", "model.cond_dim=4", "model.text_dim=8",
    "model.gf_dim=4", "model.df_dim=2", "model.text_encoder.word_dim=8",
]  # fmt: skip


def configs(recipe: str, compile_recipes: list[str], tiny: bool) -> list[dict]:
    out = [
        {"name": "fp32", "precision": "fp32", "channels_last": False, "compile": False},
        {"name": "bf16+cl", "precision": "bf16", "channels_last": True, "compile": False},
    ]
    if not tiny and recipe in compile_recipes:
        out.append({"name": "bf16+cl+compile", "precision": "bf16", "channels_last": True, "compile": True})
    return out


def train_case(recipe_name: str, config: dict, device: str, steps: int, batch: int, tiny: bool) -> dict:
    import torch

    from t2i.bench import synthetic as S
    from t2i.bench.cases import build_trainer
    from t2i.runtime import Runtime

    overrides = list(TINY) if tiny else []
    recipe = S.bench_recipe(recipe_name, batch, overrides)
    if tiny and recipe.model.image_encoder is not None:
        recipe = S.bench_recipe(recipe_name, batch, [*overrides, "model.image_encoder.width=4"])
    vocab = S.synthetic_vocab(
        50 if tiny else S.vocab_size_of(recipe), recipe.data.dataset.raw_params.get("convention", "A")
    )
    runtime = Runtime.create(
        device, config["precision"], channels_last=config["channels_last"], compile=config["compile"]
    )
    torch.manual_seed(0)
    trainer = build_trainer(recipe, vocab, runtime)
    sizes, words = recipe.stage_sizes(), S.words_num_of(recipe)
    runtime.reset_peak_memory()
    times, losses = [], []
    for i in range(steps):
        data = runtime.batch(S.synthetic_batch(sizes, batch, vocab, words, seed=1000 + i))
        runtime.synchronize()
        t0 = time.perf_counter()
        logs = trainer.train_step(data)
        runtime.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(logs["loss/G"] if logs else math.nan)
    first, rest = times[0], times[1:] or times
    out = {
        "recipe": recipe_name,
        "config": config["name"],
        "device": str(runtime.device),
        "device_name": runtime.info()["device_name"],
        "batch": batch,
        "steps": steps,
        "first_step_s": first,  # includes torch.compile's compilation when on
        "step_s_median": statistics.median(rest),
        "train_images_per_s": batch / statistics.median(rest),
        "losses_finite": all(math.isfinite(v) for v in losses),
        "last_loss_G": losses[-1],
        "train_peak_bytes": runtime.peak_memory_bytes(),
    }
    # sampling: the EMA generator in eval mode under the same runtime
    generator = runtime.compiled(runtime.module(trainer.ema.model.eval()))
    from t2i.batch import text_features

    text = text_features(trainer.nets.text_encoder, runtime.batch(S.synthetic_batch(sizes, batch, vocab, words, 1)),
                         trainer.mask_ids)  # fmt: skip
    z = torch.randn(batch, recipe.model.z_dim, device=runtime.device)
    eps = torch.randn(batch, recipe.model.cond_dim, device=runtime.device)
    runtime.reset_peak_memory()
    sample_times = []
    for _ in range(4):
        runtime.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode(), runtime.precision.autocast():
            generator(z, text.sentence, text.words, text.mask, eps=eps)
        runtime.synchronize()
        sample_times.append(time.perf_counter() - t0)
    out["sample_images_per_s"] = batch / statistics.median(sample_times[1:])
    out["sample_peak_bytes"] = runtime.peak_memory_bytes()
    del trainer, generator
    gc.collect()
    if runtime.is_cuda:
        torch.cuda.empty_cache()
    return out


def parity(device: str, out: Path) -> dict:
    env = {**os.environ, "T2I_TEST_DEVICE": device}
    files = sorted(str(p) for p in (ROOT / "tests").glob("test_parity_*.py"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=ROOT,
                          env=env, capture_output=True, text=True)  # fmt: skip
    (out / "parity.txt").write_text(proc.stdout + proc.stderr)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"exit": proc.returncode, "summary": summary, "seconds": time.perf_counter() - t0}


def against_reference(recipe: str, device: str, out: Path, batch: int, reference_dir: str | None) -> dict:
    path = out / f"bench_{recipe}.json"
    command = [sys.executable, "-m", "t2i", "bench", recipe, "--what", "train,sample", "--batch", str(batch)]
    command += ["--against-reference", "--device", device, "--repeat", "3", "--no-flops", "--json", str(path)]
    command += ["--reference-dir", reference_dir] if reference_dir else []
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    (out / f"bench_{recipe}.txt").write_text(proc.stdout + proc.stderr)
    result = {"exit": proc.returncode}
    if path.is_file():
        data = json.loads(path.read_text())
        result["cases"] = [
            {k: r.get(k) for k in ("impl", "task", "cuda_peak_allocated_bytes", "peak_rss_bytes")}
            | {"median_s": r["seconds"]["median"]}
            for r in data["results"]
        ]
        result["ratios"] = data["ratios"]
    return result


def markdown(results: dict) -> str:
    lines = [f"# GPU check: {results['device_name']} ({results['device']}), {results['date']}", ""]
    if "parity" in results:
        lines += [f"parity on the device (float64 + float32, TF32 off): {results['parity']['summary']}", ""]
    lines += [
        "| recipe | config | first step s | step s (median) | train img/s | train peak GB | sample img/s | "
        "sample peak GB | losses finite |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["train"]:
        if "error" in r:
            lines.append(f"| {r['recipe']} | {r['config']} | error: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {r['recipe']} | {r['config']} | {r['first_step_s']:.2f} | {r['step_s_median']:.3f} | "
            f"{r['train_images_per_s']:.1f} | {r['train_peak_bytes'] / 1e9:.2f} | {r['sample_images_per_s']:.1f} | "
            f"{r['sample_peak_bytes'] / 1e9:.2f} | {r['losses_finite']} |"
        )
    for recipe, ref in results.get("against_reference", {}).items():
        lines += ["", f"t2i bench {recipe} --against-reference (exit {ref['exit']}):", ""]
        for case in ref.get("cases", []):
            peak = case.get("cuda_peak_allocated_bytes") or 0
            lines.append(f"- {case['impl']} {case['task']}: {case['median_s']:.3f} s, GPU peak {peak / 1e9:.2f} GB")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="toy sizes on the shapes recipes (CPU test of the script)")
    ap.add_argument("--out", default=None, help="output folder (default: $OUT, else a temp folder)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per case (default 20; tiny 2)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 10; tiny 2)")
    ap.add_argument("--compile-recipes", default="dmgan_bird", help="comma list of recipes also run compiled")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: parity, train, reference")
    ap.add_argument("--reference-dir", default=None, help="t2i bench --reference-dir (default: its own)")
    args = ap.parse_args(argv)
    import tempfile

    import torch

    from t2i.runtime import Runtime

    out = Path(args.out or os.environ.get("OUT") or tempfile.mkdtemp(prefix="t2i_gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    runtime = Runtime.create(args.device)
    steps = args.steps or (2 if args.tiny else 20)
    batch = args.batch or (2 if args.tiny else 10)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.tiny:
        skip |= {"parity", "reference"}  # the normal test suite covers parity on the CPU; no original code needed
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": str(runtime.device),
        "device_name": runtime.info()["device_name"],
        "runtime": runtime.info(),
        "torch": torch.__version__,
        "tiny": args.tiny,
        "train": [],
    }
    if "parity" not in skip:
        results["parity"] = parity(args.device, out)
        print("parity:", results["parity"]["summary"], flush=True)
    if "train" not in skip:
        for recipe in SHAPES if args.tiny else BIRD:
            for config in configs(recipe, args.compile_recipes.split(","), args.tiny):
                try:
                    row = train_case(recipe, config, args.device, steps, batch, args.tiny)
                except Exception as exc:  # one failing case must not hide the others' numbers
                    row = {"recipe": recipe, "config": config["name"], "error": f"{type(exc).__name__}: {exc}"[:300]}
                results["train"].append(row)
                print(json.dumps(row), flush=True)
                (out / "results.json").write_text(json.dumps(results, indent=1))
    if "reference" not in skip:
        results["against_reference"] = {
            r: against_reference(r, args.device, out, batch, args.reference_dir) for r in ("dmgan_bird", "attngan_bird")
        }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    failed = [r for r in results["train"] if "error" in r or not r.get("losses_finite")]
    return 1 if failed or results.get("parity", {}).get("exit", 0) != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
