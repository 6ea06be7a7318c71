"""``t2i report RUN_OR_FOLDER... -o report/``: one markdown page with the curves, paired table, samples and gates."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from t2i.cli._common import (
    CodeOption,
    UserError,
    captions_option,
    check_output,
    console,
    import_code,
    seeds_option,
    user_errors,
)
from t2i.cli._runtime import DeviceOption, RuntimeFlags
from t2i.cli.evaluate import BootstrapOption, LevelOption


def register(app: typer.Typer) -> None:
    app.command("report")(report)


@user_errors
def report(
    runs: list[Path] = typer.Argument(
        ..., help="Run folders, or folders of seed runs of one variant (e.g. an ablation's <variant>/); at least 2."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for index.md, its PNGs and results.csv."),
    metric: list[str] = typer.Option(
        None, "--metric", "-m", help="Metric (repeatable); default: the curves every run shares, the recipe's table."
    ),
    x: str = typer.Option("step", "--x", help="Budget on the curves' x axis: step, images, flops or seconds."),
    n: int = typer.Option(200, "--n", min=2, help="Images per model and evaluation seed in the paired table."),
    seeds: str = typer.Option("0", "--seeds", help="Evaluation (noise) seeds, comma separated."),
    captions: Path = typer.Option(None, "--captions", help="Text file, one caption per line, for the sample grid."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Evaluation batch (default: eval.batch_size)."),
    level: float = LevelOption,
    bootstrap: int = BootstrapOption,
    code: list[Path] = CodeOption,
    device: str = DeviceOption,
) -> None:
    """Compare runs on one page: metric curves, paired differences with intervals, sample grid, attention, gates.

    Example: [bold]t2i report runs/dmgan_shapes/<a> runs/dmmgan_shapes/<b> -o report/ --n 200 --seeds 0,1[/]
    """
    from t2i.curves import X_UNITS
    from t2i.report import make_report

    if x not in X_UNITS:
        raise UserError(f"unknown --x {x!r}; choose one of: {', '.join(X_UNITS)}")
    seed_list = seeds_option(seeds)
    texts = captions_option(captions)
    import_code(code)
    check_output(out, "--out", folder=True)
    command = ["t2i", "report", *map(str, runs), "-o", str(out), "--x", x, "--n", str(n), "--seeds", seeds,
               "--level", f"{level:g}", "--bootstrap", str(bootstrap)]  # fmt: skip
    for m in metric or []:
        command += ["--metric", m]
    if captions is not None:
        command += ["--captions", str(captions)]
    if device is not None:
        command += ["--device", device]
    index = make_report(
        runs, out, metrics=metric or None, x=x, n=n, seeds=seed_list, captions=texts, level=level,
        bootstrap=bootstrap, runtime=RuntimeFlags(device).runtime(), command=shlex.join(command),
        batch_size=batch_size,
    )  # fmt: skip
    console.print(f"wrote {index}", markup=False)
