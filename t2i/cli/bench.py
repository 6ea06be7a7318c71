"""``t2i bench [RECIPE]``: seconds per training iteration (by phase), sampling images/s, FLOPs, peak RSS.

Every case runs in a fresh process (its own peak RSS); with ``--against-reference`` the original networks are timed
in the same run, case by case next to t2i's, and the ratios t2i / original are printed. The measuring itself is in
the t2i.bench package; this module parses the options and prints the tables.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import typer
from rich.markup import escape

from t2i.cli._common import SetOption, UserError, check_output, console, err_console, user_errors
from t2i.cli._runtime import ChannelsLastOption, CompileOption, DeviceOption, PrecisionOption, RuntimeFlags


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


WHAT = {"train": ["train"], "sample": ["sample"], "data": ["data"], "all": ["train", "sample", "data"]}


@user_errors
def bench(
    recipe: str = typer.Argument("dmgan_bird", help="Recipe file or built-in recipe name."),
    what: str = typer.Option("all", "--what", help="train | sample | data | all (data needs the recipe's data set)."),
    batch: int = typer.Option(None, "--batch", min=1, help="Batch size (default: the recipe's)."),
    repeat: int = typer.Option(3, "--repeat", min=1, help="Timed repeats per case (median and spread)."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed calls first (FLOPs are counted in the first)."),
    json_out: Path = typer.Option(None, "--json", help="Write every number (per repeat, per phase) here."),
    against_reference: bool = typer.Option(
        False, "--against-reference", help="Also time the original networks (see --reference-dir); print ratios."
    ),
    reference_dir: Path = typer.Option(
        None,
        "--reference-dir",
        help="Folder of the original networks' harness, bench_reference.py "
        "(default: ../shared/bench-reference next to the repository).",
    ),
    impl: list[str] = typer.Option(
        None, "--impl", help="Implementations to time: t2i, reference (the original networks). Repeatable."
    ),
    sets: list[str] = SetOption,
    threads: int = typer.Option(2, "--threads", min=1, help="torch intra-op threads in every case."),
    no_flops: bool = typer.Option(False, "--no-flops", help="Skip FLOP counting."),
    matmul_size: int = typer.Option(2048, "--matmul-size", min=64, help="n of the n×n fp32 matmul peak."),
    interleave: int = typer.Option(
        0,
        "--interleave",
        min=0,
        help="Also time the implementations in ONE process, one call each per round for this many rounds, and "
        "print per-round ratios (robust when other processes share the CPUs; no per-case memory).",
    ),
    isolated: bool = typer.Option(True, "--isolated/--no-isolated", help="Run each case in a fresh process."),
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    channels_last: bool = ChannelsLastOption,
    compile: bool = CompileOption,
) -> None:
    """Measure a recipe's training and sampling speed and memory on synthetic inputs at its real sizes.

    Example: [bold]t2i bench dmgan_bird --what train,sample --batch 10 --against-reference --json out.json[/]
    """
    import torch

    from t2i.bench import cases, cpu_meter, reference, synthetic
    from t2i.recipe import find_recipe

    path = str(find_recipe(recipe))
    if json_out is not None:
        check_output(json_out, "--json")
    tasks = _tasks(what)
    implementations = list(impl or ["t2i"])
    for name in implementations:
        if name == "t2i-fast":  # its rewrites became the models' own (folded upsample conv, inference BatchNorm)
            raise UserError("--impl t2i-fast: removed; its rewrites are built into the models now: use --impl t2i")
        if name not in cases.IMPLEMENTATIONS:
            raise UserError(f"--impl {name!r}: use one of {', '.join(cases.IMPLEMENTATIONS)}")
    if against_reference and "reference" not in implementations:
        implementations.insert(0, "reference")
    ref_dir = Path(reference_dir) if reference_dir else reference.default_reference_dir()
    if "reference" in implementations:
        reference.check(ref_dir, Path(path).stem)
    # validate the recipe and its overrides once, here, with a clear error
    synthetic.bench_recipe(path, batch, list(sets or []))
    flags = RuntimeFlags(device or "cpu", precision, channels_last, compile)
    runtime = flags.runtime()  # a device this machine lacks is exit 1 here, not in every case
    runtime_spec = {"device": str(runtime.device), **{k: v for k, v in flags.given().items() if k != "device"}}

    torch.set_num_threads(threads)
    peak_before = cpu_meter.matmul_peak(matmul_size)
    console.print(
        f"[bold]{escape(Path(path).stem)}[/] · {threads} threads · matmul {matmul_size}² fp32 peak "
        f"{peak_before['gflops_best']:.0f} GFLOP/s (others used {100 * peak_before['others_frac']:.0f}% of the CPUs)"
    )
    planned = cases.plan(
        path,
        tasks,
        batch=batch,
        repeat=repeat,
        warmup=warmup,
        overrides=list(sets or []),
        threads=threads,
        implementations=implementations,
        reference_dir=str(ref_dir),
        flops=not no_flops,
        runtime=runtime_spec,
    )
    results = []
    for spec in planned if isolated else []:
        console.print(f"  {spec['impl']:9s} {spec['task']:6s} …", end="")
        try:
            result = cases.run_isolated(spec)
        except RuntimeError as exc:
            err_console.print(f"\n[red]{escape(str(exc))}[/]")
            continue
        results.append(result)
        others = result.get("others_frac") or 0.0
        flag = " [yellow][CONTENDED][/]" if others > 0.05 else ""
        console.print(f" {result['seconds']['median']:.3f} s{flag}")
    peak_after = cpu_meter.matmul_peak(matmul_size)
    peak = max(peak_before["gflops_best"], peak_after["gflops_best"])
    if results:
        console.print(_results_table(results, peak))
    rows = cases.ratios(results)
    if rows:
        console.print(_ratio_table(rows))
    paired = []
    for task in tasks if interleave else []:
        specs = [c for c in planned if c["task"] == task and task != "data"]
        if len(specs) < 2:
            continue
        console.print(f"  interleaved {task}: {interleave} rounds of {', '.join(c['impl'] for c in specs)} …")
        paired.append(cases.interleaved(specs, interleave, warmup))
    if paired:
        console.print(_paired_table(paired))
    if json_out:
        payload = {
            "interleaved": paired,
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "recipe": path,
            "threads": threads,
            "runtime": runtime.info(),
            "reference_dir": str(ref_dir) if "reference" in implementations else None,
            "matmul_peak_before": peak_before,
            "matmul_peak_after": peak_after,
            "results": results,
            "ratios": rows,
        }
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=1))
        console.print(f"wrote {json_out}", markup=False)


def _tasks(what: str) -> list[str]:
    tasks: list[str] = []
    for part in what.split(","):
        part = part.strip()
        if part not in WHAT:
            raise UserError(f"--what {part!r}: use train, sample, data, all or a comma list")
        tasks += [t for t in WHAT[part] if t not in tasks]
    return tasks


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def _results_table(results: list[dict], peak: float):
    from rich.table import Table

    table = Table(title="per case (fresh process each)", show_lines=False)
    columns = ("impl", "task", "B", "median s", "min-max s", "img/s", "GFLOP", "GFLOP/s", "% mm peak", "peak RSS GB")
    gpu = any(r.get("cuda_peak_allocated_bytes") for r in results)
    columns += ("GPU peak GB",) if gpu else ()
    for column in columns:
        table.add_column(column, justify="right" if column not in ("impl", "task") else "left")
    table.add_column("others' CPU %", justify="right")
    for r in results:
        s = r["seconds"]
        flops = r.get("flops")
        achieved = r.get("achieved_gflops_per_s")
        images = r.get("images_per_s") or (r["batch"] / s["median"])
        table.add_row(
            r["impl"],
            r["task"],
            str(r["batch"]),
            f"{s['median']:.3f}",
            f"{s['min']:.2f}-{s['max']:.2f}",
            f"{images:.2f}",
            f"{flops / 1e9:,.0f}" if flops else "-",
            f"{achieved:.0f}" if achieved else "-",
            f"{100 * achieved / peak:.0f}" if achieved else "-",
            _gb(r["peak_rss_bytes"]),
            *([_gb(r.get("cuda_peak_allocated_bytes") or 0)] if gpu else []),
            f"{100 * (r.get('others_frac') or 0):.0f}",
        )
    for r in results:
        if r.get("phases_median_s") and r["task"] == "train":
            phases = ", ".join(f"{k} {v:.3f}" for k, v in r["phases_median_s"].items())
            table.caption = (table.caption + "\n" if table.caption else "") + f"{r['impl']} train phases (s): {phases}"
    return table


def _ratio_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="t2i / original (same run; < 1 is faster / smaller)")
    for column in ("impl", "task", "time", "speed-up", "peak RSS", "FLOPs"):
        table.add_column(column, justify="left" if column in ("impl", "task") else "right")
    for row in rows:
        table.add_row(
            row["impl"],
            row["task"],
            f"{row['time']:.3f}",
            f"{1 / row['time']:.2f}×",
            f"{row['peak_rss']:.2f}",
            f"{row['flops']:.3f}" if "flops" in row else "-",
        )
    return table


def _paired_table(paired: list[dict]):
    from rich.table import Table

    table = Table(title="interleaved in one process: time / first implementation, median over rounds")
    for column in ("task", "impl", "median s", "min-max s", "ratio", "speed-up", "others' CPU %"):
        table.add_column(column, justify="left" if column in ("task", "impl") else "right")
    for block in paired:
        for impl, seconds, ratio in zip(block["impls"], block["seconds"], block["ratio_to_first"], strict=True):
            table.add_row(
                block["task"],
                impl,
                f"{seconds['median']:.3f}",
                f"{seconds['min']:.2f}-{seconds['max']:.2f}",
                f"{ratio:.3f}",
                f"{1 / ratio:.2f}×",
                f"{100 * (block.get('others_frac') or 0):.0f}",
            )
    return table
