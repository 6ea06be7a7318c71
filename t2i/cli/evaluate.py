"""``t2i eval`` (metrics of one checkpoint, appended to its eval.jsonl) and ``t2i compare`` (models side by side)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from t2i.cli._common import (
    CodeOption,
    SetOption,
    UserError,
    captions_option,
    check_output,
    console,
    err_console,
    import_code,
    seeds_option,
    user_errors,
)
from t2i.cli._runtime import ChannelsLastOption, CompileOption, DeviceOption, PrecisionOption, RuntimeFlags


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate_command)
    app.command("compare")(compare_command)


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


LevelOption = typer.Option(
    0.95, "--level", min=0.5, max=0.999, help="Confidence level of the paired intervals (default 0.95)."
)
BootstrapOption = typer.Option(1000, "--bootstrap", min=1, help="Bootstrap resamples per paired interval.")


def paired_table(rows, title: str):
    """The paired differences (t2i.stats.pairwise rows) as a rich table."""
    from rich.table import Table

    from t2i import stats

    table = Table(title=escape(title), caption=escape(stats.describe(rows)))
    header = ["metric", "A", "B", "value A", "value B", "B − A", "interval", "verdict", "images × seeds", "protocol"]
    for column in header:
        table.add_column(escape(column), justify="right" if column.startswith(("value", "B −")) else "left")
    for row in rows:
        cells = stats.table_cells(row)
        style = "bold" if row["verdict"] != stats.NO_DIFFERENCE else None
        table.add_row(*map(escape, cells), style=style)
    return table


def _apply_sets(model, sets: list[str] | None) -> None:
    """``--set`` on the checkpoint's recipe ([eval] metric params, data root); the networks are unchanged."""
    if not sets:
        return
    from t2i import recipe as recipe_mod

    data = recipe_mod.apply_overrides(model.recipe.to_dict(), list(sets))
    model.recipe = recipe_mod.validate(data, f"{model.path}[recipe] + --set", list(sets), import_plugins=False)


@user_errors
def evaluate_command(
    checkpoint: Path = typer.Argument(
        None, help="A run folder (uses checkpoints/last.pt) or a GAN checkpoint (not with --images)."
    ),
    which: str = typer.Option(
        None,
        "--checkpoint",
        help="Which checkpoint of the run folder: last (default), best (the one in-training evaluation chose), "
        "best-<metric>, or a file name in its checkpoints/.",
    ),
    metric: list[str] = typer.Option(
        None, "--metric", "-m", help="Metric to compute (repeatable); default: the recipe's \\[eval] metrics."
    ),
    n: int = typer.Option(None, "--n", min=1, help="Images to generate (default: the recipe's eval.n_samples)."),
    split: str = typer.Option(None, "--split", help="Data split whose captions drive generation (default: test)."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Generation batch (default: eval.batch_size)."),
    seed: int = typer.Option(100, "--seed", help="Evaluation seed: captions, noise, negatives (DM-GAN: 100)."),
    weights_dir: Path = typer.Option(None, "--weights-dir", help="Backbone weights folder (default: $T2I_WEIGHTS)."),
    evaluator: Path = typer.Option(
        None, "--evaluator", help="Checkpoint with independent judge encoders (text + image) for R-precision."
    ),
    write_images: Path = typer.Option(
        None, "--write-images", help="Also write every image as <key>_s-1_<pass>.png under this folder."
    ),
    live: bool = typer.Option(False, "--live", help="Evaluate the live generator instead of the EMA one."),
    references: bool = typer.Option(
        False,
        "--references",
        help="Also score the split's real images with their own captions (ceiling) and with other images' captions "
        "(floor), same captions, judges and protocol; rows go to references.jsonl.",
    ),
    images: Path = typer.Option(
        None, "--images", help="Evaluate this folder of images made by any program instead of a checkpoint."
    ),
    reference: Path = typer.Option(
        None, "--reference", help="With --images: real statistics as an .npz (mu, sigma) or a folder of real images."
    ),
    save_stats: Path = typer.Option(
        None, "--save-stats", help="With --images: write the folder's FID statistics (mu, sigma) to this .npz."
    ),
    sets: list[str] = SetOption,
    code: list[Path] = CodeOption,
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    channels_last: bool = ChannelsLastOption,
    compile: bool = CompileOption,
) -> None:
    """Generate images with the EMA generator and compute metrics; append one row per metric to eval.jsonl.

    Example: [bold]t2i eval runs/dmgan_shapes/<run> --metric caption_consistency --n 1000[/]
    Images made elsewhere: [bold]t2i eval --images generated/ --reference bird_val.npz --metric fid_dmgan2018[/]
    (with --images, --set METRIC.PARAM=VALUE sets a metric's params, e.g. --set is.classifier_weights="bird_is.pth")
    """
    if images is not None:
        if checkpoint is not None:
            raise UserError("give a CHECKPOINT or --images DIR, not both")
        import_code(code)
        _evaluate_images(images, metric, reference, save_stats, sets, batch_size, seed, weights_dir)
        return
    if checkpoint is None:
        raise UserError("give a CHECKPOINT (run folder or .pt file) or --images DIR")
    if reference is not None or save_stats is not None:
        raise UserError("--reference and --save-stats go with --images DIR")
    from rich.table import Table

    from t2i.evaluate import (
        REFERENCES,
        append_rows,
        evaluate,
        evaluate_references,
        load_evaluators,
        load_model,
        metric_specs,
        pick_checkpoint,
        training_hashes,
    )

    if write_images is not None:
        check_output(write_images, "--write-images", folder=True)
    import_code(code)
    rt = RuntimeFlags(device, precision, channels_last, compile).runtime()
    if which is not None:
        checkpoint = pick_checkpoint(checkpoint, which)
    model = load_model(checkpoint, ema=not live, runtime=rt)
    _apply_sets(model, sets)
    recipe = model.recipe
    split = split or recipe.eval.split
    dataset = recipe.data.dataset.build(split=split, image_sizes=[recipe.stage_sizes()[-1]])
    if dataset.vocab != model.vocab:
        raise UserError(f"the {split} split's vocabulary differs from the checkpoint's; evaluate on its own data set")
    explicit = bool(metric)
    specs = metric_specs(recipe, metric, dataset)
    evaluators = load_evaluators(model, evaluator)
    count = n or recipe.eval.n_samples
    record = {**model.checkpoint_record(), "recipe": recipe.name, "generator": "live" if live else "ema"}
    if evaluator is not None:
        record["evaluator"] = str(evaluator)
    # what the model's evaluation and the real-image references share: captions, batches, judges
    shared = {
        "z_dim": recipe.model.z_dim,
        "cond_dim": recipe.model.cond_dim,
        "n": count,
        "batch_size": batch_size or recipe.eval.batch_size,
        "seed": seed,
        "device": rt.device,
        "evaluators": evaluators,
        "training_network_hashes": training_hashes(model),
        "weights_dir": weights_dir,
        "workers": recipe.data.workers,
    }
    with _counted_progress() as bar:
        task = bar.add_task("generating", total=count)
        result = evaluate(
            model.generator,
            model.text_encoder,
            dataset,
            specs,
            precision=rt.precision,
            run_info={"checkpoint": record, "split": split},
            write_images=write_images,
            skip_unavailable=not explicit,
            on_batch=lambda done: bar.update(task, completed=done),
            **shared,
        )
    for name, reason in result.skipped.items():
        err_console.print(f"[yellow]skipped {escape(name)}:[/] {escape(str(reason))}", highlight=False, soft_wrap=True)
    step = int(model.state.get("step", 0))
    rows = [{**row, "step": step} for row in result.rows]
    path = append_rows(model.eval_file, rows)
    reference_rows = []
    if references:
        with _counted_progress() as bar:
            tasks = {kind: bar.add_task(label, total=count) for kind, label in REFERENCES.items()}
            reference_rows = evaluate_references(
                model.text_encoder,
                dataset,
                specs,
                run_info={"split": split},
                on_batch=lambda kind, done: bar.update(tasks[kind], completed=done),
                **shared,
            )
        append_rows(model.eval_file.with_name("references.jsonl"), reference_rows)

    table = Table(
        title=escape(
            f"{recipe.name} {model.path.name} (step {step}) on {split}: {result.images} images, "
            f"{result.images_per_s:.1f} images/s"
        )
    )
    for column in ("metric", "value", "± std", "n", "protocol", "details"):
        table.add_column(column, justify="right" if column in ("value", "± std", "n") else "left")
    for row in rows:
        details = " ".join(f"{k}={v:.3f}" for k, v in row["details"].items())
        judge = row["protocol"].get("judge_is_trainer")
        note = " (judge = trainer)" if judge else ""
        table.add_row(
            *map(escape, (row["metric"] + note, _format(row["value"]), _format(row["std"]), str(row["n"]))),
            escape(row["protocol_id"]),
            escape(details),
        )
    for row in reference_rows:
        label = f"{row['metric']}: {REFERENCES[row['reference']]}"
        details = " ".join(f"{k}={v:.3f}" for k, v in row["details"].items())
        cells = (label, _format(row["value"]), _format(row["std"]), str(row["n"]), row["protocol_id"], details)
        table.add_row(*map(escape, cells), style="dim")
    console.print(table)
    if write_images is not None:
        console.print(f"images: {write_images}", markup=False)
    console.print(f"appended {len(rows)} row(s) to {path}", markup=False)
    if reference_rows:
        console.print(f"references: {model.eval_file.with_name('references.jsonl')}", markup=False)


def _counted_progress():
    """A bar per task (its description as the label), done/total and the time left; gone when finished."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeRemainingColumn(), console=err_console, transient=True)  # fmt: skip


def _progress(label: str):
    from rich.progress import BarColumn, Progress, TextColumn

    return Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed} images"), console=err_console,
                    transient=True)  # fmt: skip


def _metric_params(entry, params: dict):
    """A metric's params from ``--set NAME.PARAM=VALUE`` (NAME bare, as ``fid``, or versioned)."""
    base, _, version = entry.name.rpartition(".")
    raw = dict(params.get(base) or {})
    versioned = raw.pop(version, None)  # --set fid.v1.PARAM=... arrives as {"fid": {"v1": {...}}}
    if isinstance(versioned, dict):
        raw.update(versioned)
    return entry.validate(raw)


def _evaluate_images(folder, metric, reference, save_stats, sets, batch_size, seed, weights_dir) -> None:
    """``t2i eval --images DIR``: metrics of image files, or their FID statistics with --save-stats."""
    from rich.table import Table

    from t2i import recipe as recipe_mod
    from t2i.evaluate import append_rows
    from t2i.evaluate_images import evaluate_folder, save_reference_stats
    from t2i.registry import get_registry

    registry = get_registry("metric")
    params = recipe_mod.apply_overrides({}, list(sets or []))
    if save_stats is not None:
        if len(metric or []) > 1:
            raise UserError("--save-stats writes one protocol's statistics: give at most one --metric")
        entry = registry.get((metric or ["fid"])[0])
        name = entry.name
        with _progress("statistics") as bar:
            task = bar.add_task("stats", total=None)
            path, count = save_reference_stats(
                folder, save_stats, metric=name, params=_metric_params(entry, params), batch_size=batch_size or 50,
                weights_dir=weights_dir,
                on_batch=lambda done: bar.update(task, completed=done),
            )  # fmt: skip
        console.print(f"wrote {path}: {name} statistics (mu, sigma) of {count} images in {folder}", markup=False)
        return
    names = list(metric or (["fid", "is"] if reference is not None else ["is"]))
    specs = []
    for name in names:
        entry = registry.get(name)
        specs.append((entry.name, _metric_params(entry, params)))
    with _progress("evaluating") as bar:
        task = bar.add_task("eval", total=None)
        rows = evaluate_folder(
            folder, specs, reference=reference, batch_size=batch_size or 50, seed=seed, weights_dir=weights_dir,
            on_batch=lambda done: bar.update(task, completed=done),
        )  # fmt: skip
    path = append_rows(Path(folder) / "eval.jsonl", rows)
    table = Table(title=f"{folder}: {rows[0]['n']} images")
    for column in ("metric", "value", "± std", "n", "protocol"):
        table.add_column(column, justify="right" if column in ("value", "± std", "n") else "left")
    for row in rows:
        table.add_row(row["metric"], _format(row["value"]), _format(row["std"]), str(row["n"]), row["protocol_id"])
    console.print(table)
    console.print(f"appended {len(rows)} row(s) to {path}", markup=False)


@user_errors
def compare_command(
    checkpoints: list[Path] = typer.Argument(..., help="Run folders or GAN checkpoints to put side by side."),
    captions: Path = typer.Option(None, "--captions", help="Text file, one caption per line (default: test captions)."),
    seeds: str = typer.Option("0", "--seeds", help="Noise seeds, comma separated: one column per model and seed."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder for grid.png, attention.png, metrics.md (and results.md/csv with --n)."
    ),
    n: int = typer.Option(
        None, "--n", min=2, help="Evaluate every model on the same N images per seed and compare them pair by pair."
    ),
    metric: list[str] = typer.Option(
        None, "--metric", "-m", help="Metric for the paired comparison (repeatable); default: the first recipe's."
    ),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Evaluation batch (default: eval.batch_size)."),
    evaluator: Path = typer.Option(
        None, "--evaluator", help="Checkpoint with the judge encoders for R-precision (default: the first model's)."
    ),
    weights_dir: Path = typer.Option(None, "--weights-dir", help="Backbone weights folder (default: $T2I_WEIGHTS)."),
    level: float = LevelOption,
    bootstrap: int = BootstrapOption,
    code: list[Path] = CodeOption,
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    channels_last: bool = ChannelsLastOption,
    compile: bool = CompileOption,
) -> None:
    """The same captions and noise through several models: image grid, attention maps, shared-protocol metrics.

    With --n, every model is also evaluated on the same N images per seed (captions and noise of that evaluation
    seed) and every pair gets B − A with a paired bootstrap interval and a verdict (results.md, results.csv).

    Example: [bold]t2i compare runs/dmgan_shapes/<a> runs/dmmgan_shapes/<b> --seeds 0,1 -o compare/ --n 1000[/]
    """
    from rich.table import Table

    from t2i.compare import compare
    from t2i.evaluate import load_model

    import_code(code)
    seed_list = seeds_option(seeds)
    texts = captions_option(captions)
    check_output(out, "--out", folder=True)
    rt = RuntimeFlags(device, precision, channels_last, compile).runtime()
    models = [load_model(c, runtime=rt) for c in checkpoints]
    result = compare(models, out, captions=texts, seeds=seed_list, runtime=rt)
    for name, missing in result.unknown_words.items():
        for text, words in missing.items():
            err_console.print(
                f"[yellow]{escape(name)}:[/] does not know {escape(', '.join(words))} in {escape(repr(text))}",
                highlight=False,
            )
    lines = ["| metric | protocol | n | " + " | ".join(result.names) + " |", "|---" * (3 + len(result.names)) + "|"]
    table = Table(title="metrics over the protocols every model shares")
    for column in ("metric", "protocol", "n", *result.names):
        table.add_column(escape(column))
    for row in result.table:
        cells = [
            f"{v:.4g}" + (f" ± {s:.2g}" if s is not None else "") for v, s in (row["values"][m] for m in result.names)
        ]
        table.add_row(*map(escape, (row["metric"], row["protocol_id"], str(row["n"]), *cells)))
        lines.append(f"| {row['metric']} | {row['protocol_id']} | {row['n']} | " + " | ".join(cells) + " |")
    if result.table:
        console.print(table)
    else:
        console.print("no metric protocol is shared by every model (run `t2i eval` on each with the same settings)")
    if result.left_out:
        console.print(
            "not shared by every model, left out: " + "; ".join(result.left_out), highlight=False, markup=False
        )
    (Path(out) / "metrics.md").write_text("\n".join(lines) + "\n")
    console.print(
        f"wrote {result.grid}" + (f", {result.attention}" if result.attention else "") + f" in {out}", markup=False
    )
    if n is None:
        if metric:
            raise UserError("--metric chooses the metrics of the paired comparison: give --n IMAGES with it")
        console.print("add --n IMAGES to measure every pair's difference with a paired interval", markup=False)
        return
    _paired(models, result.names, out, n, seed_list, metric, batch_size, evaluator, weights_dir, rt, level, bootstrap)


def _paired(models, names, out, n, seeds, metric, batch_size, evaluator, weights_dir, rt, level, bootstrap) -> None:
    from rich.progress import BarColumn, Progress, TextColumn

    from t2i import stats
    from t2i.compare import paired_evaluation

    total = n * len(seeds) * len(models)
    with Progress(TextColumn("paired evaluation"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  console=err_console, transient=True) as bar:  # fmt: skip
        task = bar.add_task("paired", total=total)
        finished = [0, 0]  # images of evaluations already done, images of the current one

        def advance(done: int) -> None:
            if done <= finished[1]:  # a new evaluation started
                finished[0] += finished[1]
            finished[1] = done
            bar.update(task, completed=finished[0] + done)

        paired = paired_evaluation(
            models, names, n=n, seeds=seeds, metrics=metric, batch_size=batch_size, evaluator=evaluator,
            weights_dir=weights_dir, runtime=rt, level=level, bootstrap=bootstrap, on_batch=advance,
        )  # fmt: skip
    for name, reason in paired.skipped.items():
        err_console.print(f"[yellow]skipped {escape(name)}:[/] {escape(str(reason))}", highlight=False, soft_wrap=True)
    seeds_text = ", ".join(map(str, seeds))
    title = f"paired differences: {n} images per model and seed, evaluation seed(s) {seeds_text}"
    console.print(paired_table(paired.rows, title))
    judge = f"; R-precision judged by {paired.judge}" if paired.judge else ""
    heading = [f"# {' vs '.join(names)}", "", f"{title}{judge}.", ""]
    (Path(out) / "results.md").write_text("\n".join(heading) + stats.markdown(paired.rows))
    (Path(out) / "results.csv").write_text(stats.csv_text(paired.rows))
    console.print(f"wrote {Path(out) / 'results.md'}, {Path(out) / 'results.csv'}", markup=False)
