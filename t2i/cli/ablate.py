"""``t2i ablate``: the grid of component swaps, trained with one budget and the same seeds, as a table and a chart."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from t2i.cli._common import CodeOption, SetOption, UserError, check_output, console, import_code, user_errors
from t2i.cli._runtime import ChannelsLastOption, CompileOption, DeviceOption, PrecisionOption, RuntimeFlags
from t2i.cli.evaluate import BootstrapOption, LevelOption, paired_table


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate)


@user_errors
def ablate(
    recipe: str = typer.Argument(
        None, help="Base recipe (file or built-in name); the reference variant. Default: dmgan_shapes, or the preset's."
    ),
    refiner: list[str] = typer.Option(
        None, "--refiner", help="Refiners to swap in, comma separated or repeated (e.g. gldm or dm,attention,glam)."
    ),
    alignment: list[str] = typer.Option(
        None,
        "--alignment",
        help="Alignment settings, comma separated or repeated: damsm, stream, damsm+stream, damsm:5+stream:20, none.",
    ),
    preset: str = typer.Option(
        None, "--preset", help="A named list of variants instead of a grid: dmmgan-thesis (the thesis's four runs)."
    ),
    sets: list[str] = SetOption,
    seeds: int = typer.Option(3, "--seeds", min=1, help="Training seeds per variant (recipe seed, +1, +2, ...)."),
    steps: int = typer.Option(150, "--steps", min=1, help="Generator steps per run (the same for every variant)."),
    metric: list[str] = typer.Option(
        None, "--metric", "-m", help="Metric (repeatable); default: the recipe's \\[eval] metrics or the data set's."
    ),
    n: int = typer.Option(None, "--n", min=1, help="Images per evaluation (default: the recipe's eval.n_samples)."),
    out: Path = typer.Option(None, "--out", "-o", help="Ablation folder (default: runs/ablate/<base>-<hash>/)."),
    runs: Path = typer.Option(Path("runs"), "--runs", help="Root of the default ablation folder."),
    level: float = LevelOption,
    bootstrap: int = BootstrapOption,
    code: list[Path] = CodeOption,
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    channels_last: bool = ChannelsLastOption,
    compile: bool = CompileOption,
) -> None:
    """Train every variant of a component grid with the same budget and seeds; report mean ± std per variant.

    Completed variants (done.json in their folder) are skipped when the command is re-run. Every pair of variants
    also gets B − A per metric with a paired bootstrap interval over the evaluated images, and a verdict.

    Examples: [bold]t2i ablate --refiner gldm[/]
    [bold]t2i ablate dmmgan_shapes --refiner dm --alignment damsm,stream,damsm+stream[/]
    [bold]t2i ablate --preset dmmgan-thesis[/]
    """
    from rich.table import Table

    from t2i.ablate import AblationSpec, paired_summary, reference_cells, run_ablation, saved_references, summarise
    from t2i.ablate import preset as find_preset

    check_output(out if out is not None else runs, "--out" if out is not None else "--runs", folder=True)
    import_code(code)
    if preset is not None:
        if refiner or alignment:
            raise UserError("--preset names its variants; drop --refiner/--alignment (or drop --preset for a grid)")
        recipe = recipe or find_preset(preset).base
    recipe = recipe or "dmgan_shapes"
    spec = AblationSpec(
        preset=preset,
        base=recipe,
        axes={"refiner": list(refiner or []), "alignment": list(alignment or [])},
        sets=list(sets or []) + RuntimeFlags(device, precision, channels_last, compile).sets(),
        seeds=seeds,
        steps=steps,
        metrics=list(metric) if metric else None,
        n=n,
        out=out,
        runs_root=runs,
        level=level,
        bootstrap=bootstrap,
    )
    folder, results = run_ablation(spec, log=lambda line: console.print(line, highlight=False, markup=False))
    grid = list(dict.fromkeys(r.variant for r in results))
    metrics, rows = summarise(grid, results)
    table = Table(title=escape(f"{recipe}: mean ± std over {seeds} seed(s), {steps} steps"))
    table.add_column("variant")
    for name in metrics:
        table.add_column(escape(name), justify="right")
    cells = {(r["variant"], r["metric"]): r for r in rows}
    for variant in grid:
        values = []
        for name in metrics:
            r = cells.get((variant.label, name))
            values.append("-" if r is None else f"{r['mean']:.4f} ± {r['std']:.4f}")
        table.add_row(escape(variant.label), *values)
    references = saved_references(folder)
    for label, cells in reference_cells(references, metrics):
        table.add_row(label, *cells, style="dim")
    console.print(table)
    paired, notes = paired_summary(folder, grid, results, level=level, bootstrap=bootstrap)
    console.print(paired_table(paired, f"paired differences over the evaluated images, {seeds} seed(s)"))
    for note in notes:
        console.print(note, markup=False, highlight=False)
    console.print(
        f"results: {folder / 'results.md'}, {folder / 'results.csv'}, {folder / 'results_paired.csv'}, "
        f"{folder / 'results.png'}",
        markup=False,
    )
