"""``t2i plot RUN... --metric M --x step|images|flops|seconds -o curves.png``: metric curves at matched budgets."""

from __future__ import annotations

from pathlib import Path

import typer

from t2i.cli._common import CodeOption, UserError, check_output, console, import_code, user_errors


def register(app: typer.Typer) -> None:
    app.command("plot")(plot)


@user_errors
def plot(
    runs: list[Path] = typer.Argument(
        ..., help="Run folders, or folders of seed runs of one variant (one line each: the mean and a min-max band)."
    ),
    metric: str = typer.Option(..., "--metric", "-m", help="Metric of the in-training evaluation rows to plot."),
    x: str = typer.Option("step", "--x", help="Budget on the x axis: step, images, flops or seconds."),
    out: Path = typer.Option(Path("curves.png"), "--out", "-o", help="PNG to write."),
    code: list[Path] = CodeOption,
) -> None:
    """One line per run of a metric against a training budget; each line's best point is marked with a diamond.

    Example: [bold]t2i plot runs/dmgan_shapes/<run> runs/attngan_shapes/<run> --metric caption_consistency --x flops[/]
    """
    from t2i.curves import X_UNITS, plot_curves
    from t2i.viz import save_png

    if x not in X_UNITS:
        raise UserError(f"unknown --x {x!r}; choose one of: {', '.join(X_UNITS)}")
    import_code(code)
    check_output(out, "--out")
    image, curves = plot_curves(list(runs), metric, x)
    save_png(image, out)
    for c in curves:
        best = c.best
        console.print(f"{c.label}: best {c.metric} = {c.ys[best]:.4g} at {x} {c.xs[best]:.4g}", markup=False)
    console.print(f"wrote {out}", markup=False)
