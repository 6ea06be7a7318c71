"""Speed and memory of the bird recipes beside the original networks, one case per fresh process.

Every case (implementation × task × config) runs in a fresh process (t2i.bench.cases.run_isolated), the original's
case first, then t2i's, so each pair runs close together in time; the matmul peak is measured before each case, and
each case records how much of the CPU other processes used while it ran. One JSON per case goes to --out;
``--table`` renders the markdown table of benchmarks/RESULTS.md from those files.

    PYTHONPATH=<dir with pyyaml+easydict> .venv/bin/python benchmarks/side_by_side.py --repeat 2 --warmup 1
    .venv/bin/python benchmarks/side_by_side.py --table
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

CONFIGS = [  # (recipe, batch, tasks) in the order they run: the headline cases first
    ("recipes/dmgan_bird.toml", 10, ["sample"]),
    ("recipes/attngan_bird.toml", 10, ["sample"]),
    ("recipes/dmgan_bird.toml", 10, ["train"]),
    ("recipes/attngan_bird.toml", 10, ["train"]),
    ("recipes/dmgan_bird.toml", 4, ["sample", "train"]),
]
IMPLS = ["reference", "t2i"]
OUT = Path(__file__).parent / "results"


def run(repeat: int, warmup: int, out: Path, reference_dir: Path | None) -> None:
    from t2i.bench import cases, cpu_meter, reference

    reference.harness_file(reference_dir or reference.default_reference_dir())  # a wrong folder fails first
    out.mkdir(parents=True, exist_ok=True)
    for recipe, batch, tasks in CONFIGS:
        for task in tasks:
            kw = dict(batch=batch, repeat=repeat, warmup=warmup, overrides=[], threads=2, implementations=IMPLS)
            for spec in cases.plan(recipe, [task], reference_dir=reference_dir, **kw):
                name = out / f"{Path(recipe).stem}_b{batch}_{task}_{spec['impl']}.json"
                if name.exists() and "seconds" in json.loads(name.read_text()):
                    continue  # measured already: resume where an interrupted run stopped
                t0 = time.time()
                peak = cpu_meter.matmul_peak()
                try:
                    result = cases.run_isolated(spec)
                except RuntimeError as exc:
                    result = {"error": str(exc), **spec}
                result.update(matmul_before=peak, date=dt.datetime.now().isoformat(timespec="seconds"))
                name.write_text(json.dumps(result, indent=1))
                median = result.get("seconds", {}).get("median")
                print(f"{name.name}: median {median} s, wall {time.time() - t0:.0f} s", flush=True)


def table(out: Path) -> str:
    """Markdown rows: one per (config, task), original | t2i, with the ratios to the original."""
    results = {}
    for path in sorted(out.glob("*.json")):
        r = json.loads(path.read_text())
        if "seconds" in r and r["impl"] in IMPLS:
            results[(Path(r["recipe"]).stem, r["batch"], r["task"], r["impl"])] = r
    lines = [
        "| config | B | task | original s | t2i s | speed-up | GFLOP orig / t2i | peak RSS GB orig / t2i | RSS ratio "
        "| others' CPU % (o/t) | matmul GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({k[:3] for k in results}, key=lambda k: (k[0], -k[1], k[2]))
    for recipe, batch, task in keys:
        row = {impl: results.get((recipe, batch, task, impl)) for impl in IMPLS}

        def cell(impl, fmt, getter, row=row):
            r = row[impl]
            try:
                return fmt.format(getter(r)) if r else "-"
            except (KeyError, TypeError):
                return "-"

        def secs(impl):
            return cell(impl, "{}", lambda r: "{median:.2f} ({min:.2f}-{max:.2f})".format(**r["seconds"]))

        ref, mine = row["reference"], row["t2i"]
        speed = f"{ref['seconds']['median'] / mine['seconds']['median']:.2f}×" if ref and mine else "-"
        rss_ratio = f"{mine['peak_rss_bytes'] / ref['peak_rss_bytes']:.2f}" if ref and mine else "-"
        gflop = " / ".join(cell(i, "{:,.0f}", lambda r: r["flops"] / 1e9) for i in IMPLS)
        rss = " / ".join(cell(i, "{:.2f}", lambda r: r["peak_rss_bytes"] / 1e9) for i in IMPLS)
        others = " / ".join(cell(i, "{:.0f}", lambda r: 100 * (r.get("others_frac") or 0)) for i in IMPLS)
        peaks = [row[i]["matmul_before"]["gflops_best"] for i in IMPLS if row[i] and "matmul_before" in row[i]]
        peak = f"{min(peaks):.0f}-{max(peaks):.0f}" if peaks else "-"
        lines.append(
            f"| {recipe} | {batch} | {task} | {secs('reference')} | {secs('t2i')} | {speed} | {gflop} | {rss} | "
            f"{rss_ratio} | {others} | {peak} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--reference-dir",
        type=Path,
        default=None,
        help="folder of bench_reference.py (default: ../shared/bench-reference)",
    )
    parser.add_argument("--table", action="store_true", help="only print the table of the JSON files in --out")
    args = parser.parse_args()
    if not args.table:
        run(args.repeat, args.warmup, args.out, args.reference_dir)
    print(table(args.out))


if __name__ == "__main__":
    main()
