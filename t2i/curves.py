"""Metric curves of runs against what they spent (steps, images seen, training FLOPs, training seconds).

Each run's in-training evaluation rows (eval.jsonl) become one line, its best point marked as the DMM-GAN thesis's
plotting script marks the best epoch; a folder of seed runs of one variant becomes one line, the mean over seeds,
with a min-max band. Two models are only comparable at equal budgets; the x axis says which budget.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t2i import recipe as recipe_mod
from t2i.metrics.evaluation import higher_is_better, read_rows
from t2i.viz import LineSeries, line_chart

__all__ = ["X_UNITS", "CurveError", "Curve", "curve", "in_training_rows", "is_run", "plot_curves", "runs_of"]

# --x choice -> (eval.jsonl field, axis label)
X_UNITS = {
    "step": ("step", "training step"),
    "images": ("images_seen", "images seen (steps × global batch)"),
    "flops": ("train_flops", "training FLOPs"),
    "seconds": ("train_seconds", "training seconds (no evaluation or checkpoints)"),
}


class CurveError(ValueError):
    t2i_user_error = True


@dataclass
class Curve:
    label: str
    metric: str  # the registered name the rows carry
    xs: list[float]
    ys: list[float]  # mean over seeds
    low: list[float] | None = None  # min over seeds
    high: list[float] | None = None  # max over seeds
    seeds: int = 1

    @property
    def best(self) -> int:
        """Index of the best point, by the metric's ``higher_is_better`` (the first one on ties)."""
        sign = 1.0 if higher_is_better(self.metric) else -1.0
        return max(range(len(self.ys)), key=lambda i: (sign * self.ys[i], -i))


def is_run(folder: Path) -> bool:
    return (folder / "config.resolved.toml").is_file() or (folder / "eval.jsonl").is_file()


def _label(folder: Path) -> str:
    config = folder / "config.resolved.toml"
    name = recipe_mod.read_toml(config).get("name", "") if config.is_file() else ""
    return f"{name} ({folder.name})" if name and name != folder.name else folder.name


def _seed_note(seeds: int) -> str:
    return f": mean of {seeds} seeds, band min-max"


def _matches(row_metric: str, metric: str) -> bool:
    return row_metric == metric or row_metric.split(".v")[0] == metric


def runs_of(folder: Path) -> list[Path]:
    """The seed runs of a folder of runs of one variant, in name order (none when it holds no run)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and is_run(p))


def in_training_rows(folder: Path) -> list[dict[str, Any]]:
    """A run's eval.jsonl rows written by its in-training evaluation."""
    path = folder / "eval.jsonl"
    if not path.is_file():
        raise CurveError(
            f"{folder} has no eval.jsonl: the run evaluated nothing during training (set [eval] every_steps)"
        )
    return [r for r in read_rows(path) if (r.get("protocol") or {}).get("checkpoint", {}).get("in_training")]


def run_points(folder: Path, metric: str, x: str) -> tuple[str, dict[int, tuple[float, float]]]:
    """-> (the metric's registered name, step -> (x, value)) from one run's in-training evaluation rows."""
    path = folder / "eval.jsonl"
    rows = in_training_rows(folder)
    present = sorted({r["metric"] for r in rows})
    chosen = [r for r in rows if _matches(r["metric"], metric)]
    if not chosen:
        have = ", ".join(present) or "no in-training rows"
        raise CurveError(f"{path}: no rows of metric {metric!r}; it has: {have}")
    field = X_UNITS[x][0]
    points: dict[int, tuple[float, float]] = {}
    for row in chosen:  # a resumed run writes a step's rows again: the later row wins
        value = row.get(field)
        if value is None:
            raise CurveError(
                f"{path}: rows have no {field} (written before budgets were recorded, or counted under "
                f"torch.compile); plot with --x step"
            )
        points[int(row["step"])] = (float(value), float(row["value"]))
    return chosen[-1]["metric"], points


def curve(path: str | Path, metric: str, x: str) -> Curve:
    """One line: a run folder, or a folder of runs (seeds of one variant) as their mean with a min-max band."""
    if x not in X_UNITS:
        raise CurveError(f"unknown --x {x!r}; choose one of: {', '.join(X_UNITS)}")
    folder = Path(path)
    if not folder.is_dir():
        raise CurveError(f"{folder} is not a folder (give run folders, or folders of seed runs)")
    if is_run(folder):
        name, points = run_points(folder, metric, x)
        steps = sorted(points)
        return Curve(_label(folder), name, [points[s][0] for s in steps], [points[s][1] for s in steps])
    runs = runs_of(folder)
    if not runs:
        raise CurveError(f"{folder} is neither a run folder nor a folder of runs (no eval.jsonl in it or below it)")
    per_run = [run_points(run, metric, x) for run in runs]
    common = sorted(set.intersection(*(set(points) for _, points in per_run)))
    if not common:
        raise CurveError(f"{folder}: its runs share no evaluated step; evaluate them at the same every_steps")
    xs = [statistics.fmean(points[s][0] for _, points in per_run) for s in common]
    values = [[points[s][1] for _, points in per_run] for s in common]
    return Curve(
        folder.name + _seed_note(len(runs)),
        per_run[0][0],
        xs,
        [statistics.fmean(v) for v in values],
        [min(v) for v in values],
        [max(v) for v in values],
        seeds=len(runs),
    )


def plot_curves(
    paths: list[str | Path], metric: str, x: str, labels: list[str] | None = None
) -> tuple[Any, list[Curve]]:
    """-> (the PIL figure, its curves); ``labels`` replace the lines' default names (recipe and folder)."""
    curves = [curve(p, metric, x) for p in paths]
    for c, label in zip(curves, labels or [], strict=False):
        c.label = label + (_seed_note(c.seeds) if c.seeds > 1 else "")
    name = curves[0].metric
    direction = "higher" if higher_is_better(name) else "lower"
    series = [LineSeries(c.label, c.xs, c.ys, c.low, c.high, best=c.best) for c in curves]
    image = line_chart(
        series,
        title=f"{name} against {X_UNITS[x][1].split(' (')[0]} (diamond: best point; {direction} is better)",
        xlabel=X_UNITS[x][1],
        ylabel=name,
    )
    return image, curves
