"""``t2i report``: one markdown page comparing several runs (or folders of seed runs), with its figures and tables.

It assembles what the other tools make: the metric curves of ``t2i plot`` (t2i.curves), the grid, attention sheet
and paired intervals of ``t2i compare`` (t2i.compare, t2i.stats), and the memory-gate means of ``t2i inspect``
(t2i.refiners.gates). Every path written into ``index.md`` is relative to it, so the folder can be moved.

A folder of seed runs of one variant (an ablation's ``<variant>/seed-<k>/``) is one entry: one line with a band in
the curves, its seed runs pooled as seeds in the paired table (seed run i of one entry pairs with seed run i of
another), and its first seed run in the grid, the attention sheet and the gate table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2i import curves, stats

__all__ = ["DEFAULT_N", "Entry", "ReportError", "entries", "gate_summary", "make_report"]

DEFAULT_N = 200  # images per model and evaluation seed in the paired table


class ReportError(ValueError):
    t2i_user_error = True


@dataclass
class Entry:
    """One thing compared: a run folder, or a folder of seed runs of one variant."""

    path: Path
    runs: list[Path]  # the run itself, or the seed runs in name order
    is_seed_folder: bool
    label: str = ""
    models: list[Any] = field(default_factory=list)  # LoadedModel per run

    @property
    def first(self) -> Any:
        return self.models[0]


def entries(paths: Sequence[str | Path]) -> list[Entry]:
    """The entries of the command line; an error for fewer than two, or a path that is no run and holds none."""
    if len(paths) < 2:
        raise ReportError(f"a report compares at least 2 runs or folders of runs; got {len(paths)}")
    found = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise ReportError(f"{path} is not a folder; give run folders, or folders of seed runs of one variant")
        if curves.is_run(path):
            found.append(Entry(path, [path], False))
            continue
        runs = curves.runs_of(path)
        if not runs:
            raise ReportError(
                f"{path} is neither a run folder nor a folder of runs (no config.resolved.toml or eval.jsonl in it "
                "or in its subfolders)"
            )
        found.append(Entry(path, runs, True))
    return found


def _labels(found: Sequence[Entry]) -> list[str]:
    """Recipe names where they tell the entries apart, else with the refiner, else folder names; numbered if still
    equal (an ablation's variants share the base recipe's name; its folders are named after the variants)."""
    recipes = [e.first.name for e in found]
    refiners = [e.first.recipe.model.refiner.entry.name.split(".v")[0] for e in found]
    for names in (recipes, [f"{r} · {f}" for r, f in zip(recipes, refiners, strict=True)]):
        if len(set(names)) == len(names):
            return names
    names = [e.path.name or str(e.path) for e in found]
    return [n if names.count(n) == 1 else f"{n} #{names[: i + 1].count(n)}" for i, n in enumerate(names)]


def _seed_of(run: Path, model: Any) -> str:
    match = re.fullmatch(r"seed-?(\d+)", run.name)
    return match.group(1) if match else str(model.recipe.seed)


# -- gates -------------------------------------------------------------------------------------------------------------
def gate_summary(model: Any, captions: Sequence[str], seed: int, runtime: Any = None, top: int = 3) -> list[dict]:
    """Per refinement stage, over the captions (one sample each, noise seed ``seed``): the gate means
    (t2i.refiners.gates.gate_means) and the words written most (memory writing gate, DM-GAN eq. 3) and read most
    (mean addressing weight over pixels, eq. 5), each word's value averaged over its occurrences. [] without gates."""
    from t2i.compare import caption_tokens, generate_captions
    from t2i.refiners.gates import gate_means

    _, maps, _, gates = generate_captions(model, captions, seed, runtime)
    if not gates:
        return []
    tokens = caption_tokens(model.vocab, captions)
    stages = []
    for stage in sorted(s for s in gates if isinstance(s, int)):
        record = gates[stage]
        read = maps[stage - 2].mean(dim=(2, 3)) if stage - 2 < len(maps) else None  # (N, T)
        written: dict[str, list[float]] = {}
        reads: dict[str, list[float]] = {}
        for i, ids in enumerate(tokens):
            for t, token in enumerate(ids):
                if "padding" in record and bool(record["padding"][i, t]):
                    continue  # padding, start and end tokens
                word = model.vocab.words[token]
                if "write" in record:
                    written.setdefault(word, []).append(float(record["write"][i, t]))
                if read is not None:
                    reads.setdefault(word, []).append(float(read[i, t]))
        stages.append({"stage": stage, **gate_means(record), "wrote": _top(written, top), "read": _top(reads, top)})
    return stages


def _top(values: dict[str, list[float]], k: int) -> list[tuple[str, float]]:
    means = {word: sum(v) / len(v) for word, v in values.items()}
    return sorted(means.items(), key=lambda item: (-item[1], item[0]))[:k]


# -- the page ----------------------------------------------------------------------------------------------------------
def _alignment(recipe: Any) -> str:
    terms = [f"{term.entry.name} ×{getattr(term.params, 'weight', 1):g}" for term in recipe.train.alignment]
    return ", ".join(terms) or "none"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _compared(found: Sequence[Entry]) -> list[str]:
    lines = [
        "## What was compared",
        "",
        "| name | recipe | refiner | alignment | steps | folder | seeds |",
        "|---|---|---|---|---:|---|---|",
    ]
    for e in found:
        recipe = e.first.recipe
        steps = sorted({int(m.state.get("step", 0)) for m in e.models})
        seeds = ", ".join(f"{_seed_of(r, m)} (`{r.name}`)" for r, m in zip(e.runs, e.models, strict=True))
        cells = [e.label, recipe.name, recipe.model.refiner.entry.name, _alignment(recipe),
                 "/".join(map(str, steps)), f"`{e.path}`", seeds if e.is_seed_folder else str(recipe.seed)]  # fmt: skip
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines + [""]


def shared_curve_metrics(found: Sequence[Entry]) -> list[str]:
    """The metrics every run's in-training evaluation wrote (registered names), sorted."""
    sets = [{r["metric"] for r in curves.in_training_rows(run)} for e in found for run in e.runs]
    return sorted(set.intersection(*sets)) if sets else []


def _curves(found: Sequence[Entry], out: Path, metrics: Sequence[str] | None, x: str) -> list[str]:
    from t2i.viz import save_png

    lines = [f"## Metric curves (x: {curves.X_UNITS[x][1]})", ""]
    try:
        names = list(metrics) if metrics else shared_curve_metrics(found)
    except curves.CurveError as exc:
        return lines + [f"No curves: {exc}.", ""]
    if not names:
        return lines + ["No metric is shared by every run's in-training evaluation (`[eval] every_steps`).", ""]
    for metric in names:
        image, made = curves.plot_curves([e.path for e in found], metric, x, [e.label for e in found])
        name = made[0].metric
        file = f"curves_{name.split('.v')[0]}.png"
        save_png(image, out / file)
        arrow = "↑" if stats.higher_is_better(name) else "↓"
        lines += [f"### {name} {arrow}", "", f"![{name} against {x}]({file})", ""]
        lines += [f"| name | best {name} | at {x} | evaluations |", "|---|---:|---:|---:|"]
        for e, c in zip(found, made, strict=True):
            band = f" (mean of {c.seeds} seeds)" if c.seeds > 1 else ""
            lines.append(f"| {_cell(e.label)}{band} | {c.ys[c.best]:.4g} | {c.xs[c.best]:.4g} | {len(c.xs)} |")
        lines.append("")
    return lines


def _paired(paired: Any, n: int, seeds: Sequence[int], pooled: int) -> list[str]:
    lines = ["## Paired differences", ""]
    lines.append(
        f"Every model generated the same {n} images per evaluation seed ({', '.join(map(str, seeds))}): the same "
        "captions and noise. " + (f"Folders of seed runs: their first {pooled} seed runs each, pooled as seeds. "
                                   if pooled > 1 else "")
        + (f"R-precision judged by {paired.judge}. " if paired.judge else "")
        + "Also as [results.csv](results.csv)."
    )  # fmt: skip
    lines += ["", stats.markdown(paired.rows).rstrip(), ""]
    for metric, reason in paired.skipped.items():
        lines.append(f"- skipped {metric}: {reason}")
    return lines + ([""] if paired.skipped else [])


def _samples(comparison: Any, captions: Sequence[str], seeds: Sequence[int], found: Sequence[Entry]) -> list[str]:
    lines = ["## Samples on shared captions", ""]
    seeded = [e.label for e in found if e.is_seed_folder]
    note = f" Folders of seed runs show their first seed run ({', '.join(seeded)})." if seeded else ""
    lines += [f"Rows: captions; columns: models × noise seed ({', '.join(map(str, seeds))}).{note}", ""]
    lines += [f"![sample grid]({comparison.grid.name})", ""]
    lines += [f"{i + 1}. {text}" for i, text in enumerate(captions)] + [""]
    for name, missing in comparison.unknown_words.items():
        for text, words in missing.items():
            lines.append(f"- {name} does not know {', '.join(words)} in “{text}”")
    lines += ["### Attention", ""]
    if comparison.attention is not None:
        lines += ["Each model's per-stage attention or memory maps for caption 1.", "",
                  f"![attention sheet]({comparison.attention.name})", ""]  # fmt: skip
    else:
        lines += ["none: no model has a refinement stage with maps", ""]
    return lines


def _gates(found: Sequence[Entry], summaries: Sequence[list[dict]], captions: Sequence[str]) -> list[str]:
    lines = ["## Gate diagnostics", ""]
    lines.append(
        f"Dynamic-memory gates (DM-GAN, Zhu et al. CVPR 2019: writing gate eq. 3, response gate eq. 7; DMM-GAN's "
        f"global-local memory: image / local / global shares and the global slot's writing gate g^c), averaged "
        f"over the {len(captions)} shared captions, one sample each. Wrote / read most: the memory writing gate and "
        "the mean addressing weight of each word."
    )
    lines.append("")
    for e, summary in zip(found, summaries, strict=True):
        refiner = e.first.recipe.model.refiner.entry.name
        if not summary:
            lines += [f"### {e.label}", "", f"none ({refiner} has no memory gates)", ""]
            continue
        lines += [f"### {e.label}", "", f"Refiner {refiner}.", ""]
        lines += ["| stage | write | response | shares image / local / global | g^c | wrote most | read most |",
                  "|---|---:|---:|---:|---:|---|---|"]  # fmt: skip
        for s in summary:
            shares = [s.get(f"share_{k}") for k in ("image", "local", "global")]
            cells = [
                str(s["stage"]),
                _num(s.get("write_mean")),
                _num(s.get("response_mean")),
                " / ".join(_num(v, 2) for v in shares) if any(v is not None for v in shares) else "—",
                _num(s.get("write_global_mean")),
                ", ".join(f"{w} {v:.2f}" for w, v in s["wrote"]) or "—",
                ", ".join(f"{w} {v:.2f}" for w, v in s["read"]) or "—",
            ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    return lines


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _footer(paired: Any, found: Sequence[Entry], n: int, seeds: Sequence[int], level: float, bootstrap: int,
            command: str) -> list[str]:  # fmt: skip
    import t2i

    protocols = sorted({p for row in paired.rows for p in row["protocol"].split(";") if p})
    runs = sum(len(e.runs) for e in found)
    return [
        "## How this was made",
        "",
        f"- t2i {t2i.__version__}",
        f"- protocol ids: {', '.join(protocols) or 'none'}",
        f"- paired table: {n} images per model and evaluation seed, evaluation seeds {', '.join(map(str, seeds))}, "
        f"{runs} runs",
        f"- intervals: {level:.0%} {stats.METHOD}, {bootstrap} resamples (numpy seed 0)",
        f"- command: `{command}`",
        "",
    ]


def make_report(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    metrics: Sequence[str] | None = None,
    x: str = "step",
    n: int = DEFAULT_N,
    seeds: Sequence[int] = (0,),
    captions: Sequence[str] | None = None,
    level: float = stats.DEFAULT_LEVEL,
    bootstrap: int = stats.DEFAULT_BOOTSTRAP,
    runtime: Any = None,
    command: str = "t2i report",
    batch_size: int | None = None,
) -> Path:
    """Write ``out/index.md`` with its figures and ``results.csv``; -> the index's path."""
    from t2i.compare import compare, default_captions, paired_evaluation
    from t2i.evaluate import load_model

    if x not in curves.X_UNITS:
        raise ReportError(f"unknown --x {x!r}; choose one of: {', '.join(curves.X_UNITS)}")
    found = entries(paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for e in found:
        e.models = [load_model(run, runtime=runtime) for run in e.runs]
    for e, label in zip(found, _labels(found), strict=True):
        e.label = label
    first = found[0]
    for e in found[1:]:
        for run, model in zip(e.runs, e.models, strict=True):
            if model.vocab != first.first.vocab:
                raise ReportError(
                    f"{run} was trained on another data set than {first.runs[0]} (their vocabularies differ); a "
                    "report compares models that read the same captions"
                )
    captions = list(captions or default_captions(first.first))
    lines = [f"# {' vs '.join(e.label for e in found)}", ""]
    lines += _compared(found)
    lines += _curves(found, out, metrics, x)

    pooled = min(len(e.runs) for e in found)
    models = [m for e in found for m in e.models[:pooled]]
    names = [e.label for e in found for _ in range(pooled)]
    paired = paired_evaluation(models, names, n=n, seeds=seeds, metrics=metrics, batch_size=batch_size,
                               runtime=runtime, level=level, bootstrap=bootstrap)  # fmt: skip
    (out / "results.csv").write_text(stats.csv_text(paired.rows))
    lines += _paired(paired, n, seeds, pooled)

    reps = [e.first for e in found]
    comparison = compare(reps, out, captions=captions, seeds=seeds, runtime=runtime, names=[e.label for e in found])
    lines += _samples(comparison, captions, seeds, found)
    summaries = [gate_summary(m, captions, seeds[0], runtime) for m in reps]
    lines += _gates(found, summaries, captions)
    lines += _footer(paired, found, n, seeds, level, bootstrap, command)
    index = out / "index.md"
    index.write_text("\n".join(lines), encoding="utf-8")
    return index
