"""``t2i train``, ``t2i pretrain damsm|stream`` and ``t2i demo``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import typer
from rich.markup import escape

from t2i.cli._common import CodeOption, SetOption, UserError, console, import_code, load_recipe, user_errors
from t2i.cli._runtime import ChannelsLastOption, CompileOption, DeviceOption, PrecisionOption, RuntimeFlags

pretrain_app = typer.Typer(
    help="Pretrain the frozen networks: DAMSM encoders and the STREAM captioner.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.add_typer(pretrain_app, name="pretrain")
    app.command("demo")(demo)


def _recipe_for_resume(resume: Path, sets: list[str] | None, code: list[Path] | None, extra: tuple[str, ...] = ()):
    """-> (the stored recipe with the ``--set`` overrides, the run folder, the keys they changed).

    Only keys that cannot change what was trained may change (t2i/train/resume.py); others are refused here.
    """
    from t2i import recipe as recipe_mod
    from t2i.train.resume import check_resume_changes
    from t2i.train.run_dir import open_existing

    import_code(code)
    run = open_existing(resume)
    source = str(run.path / "config.resolved.toml")
    stored = recipe_mod.read_toml(run.path / "config.resolved.toml")
    recipe = recipe_mod.validate(
        recipe_mod.apply_overrides(stored, list(sets or [])), source, list(sets or []), import_plugins=False
    )
    changed = check_resume_changes(
        recipe_mod.validate(stored, source, import_plugins=False).to_dict(), recipe.to_dict(), extra
    )
    return recipe, run, changed


def _lock(run, info):
    """The run folder's lock on the process that writes there (rank 0); other ranks take none."""
    import contextlib

    from t2i.train.lock import RunLock

    if not info.is_main:
        return contextlib.nullcontext()
    return RunLock(run.path, log=lambda line: console.print(f"[yellow]note:[/] {line}", highlight=False))


def _resume_bookkeeping(run, state: dict, sets: list[str] | None, recipe) -> None:
    """Logs back to the checkpoint's step (a resumed run writes the later rows again); record accepted --set."""
    run.truncate_logs(int(state["step"]))
    if sets:
        run.record_resume(int(state["step"]), list(sets), recipe.to_toml())


@contextlib.contextmanager
def _removed_if_it_fails(run, enabled: bool = True):
    """A start that fails before its first checkpoint leaves no half-made run folder behind."""
    try:
        yield
    except BaseException:
        if enabled and run.remove_failed_start():
            console.print(f"[yellow]note:[/] removed {run.path}: the run failed before its first checkpoint")
        raise


def _dataset(recipe, split: str, image_sizes: list[int]):
    return recipe.data.dataset.build(split=split, image_sizes=image_sizes)


def _sample_split(recipe, image_sizes):
    try:
        return _dataset(recipe, "test", image_sizes)
    except Exception:  # a data set without a test split samples from its training captions
        return None


@user_errors
def train(
    recipe: str = typer.Argument(None, help="Recipe file or built-in recipe name (optional with --resume)."),
    sets: list[str] = SetOption,
    code: list[Path] = CodeOption,
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this folder from its last checkpoint."),
    runs: Path = typer.Option(Path("runs"), "--runs", help="Root folder for new runs."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Exact folder for a new run (must be empty)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe and the networks, then exit."),
    nproc: int = typer.Option(
        1, "--nproc", min=1, help="Train with N processes via torchrun (DDP; one GPU each on CUDA, nccl; else gloo)."
    ),
    steps: int = typer.Option(None, "--steps", min=1, help="Stop after this many steps (default: train.steps)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or log lines on the console."),
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    channels_last: bool = ChannelsLastOption,
    compile: bool = CompileOption,
) -> None:
    """Train a GAN from a recipe: D update per stage, G update, EMA; writes a run folder.

    Example: [bold]t2i train dmgan_shapes --set train.steps=200[/]
    (resume: [bold]t2i train --resume runs/dmgan_shapes/<run>[/])
    """
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _launch_torchrun(nproc)
        return
    from t2i.runtime import Runtime, warn_once
    from t2i.train import checkpoint as ckpt
    from t2i.train import distributed
    from t2i.train import run_dir as run_dirs

    sets = list(sets or []) + RuntimeFlags(device, precision, channels_last, compile).sets()
    changed: list[str] = []
    if resume is not None:
        loaded, run, changed = _recipe_for_resume(resume, sets, code)
    else:
        if recipe is None:
            raise UserError("give a RECIPE (or --resume RUN_DIR)")
        loaded, run = load_recipe(recipe, sets, code), None
    image_sizes = loaded.stage_sizes()
    if dry_run:
        try:
            dataset = _dataset(loaded, "train", image_sizes)
        except Exception as exc:  # the networks can be shown without the data
            console.print(
                f"[yellow]note:[/] data set not loaded ({escape(str(exc))}); the text encoder needs its vocabulary"
            )
            dataset = None
        _print_dry_run(loaded, dataset)
        return
    runtime = Runtime.from_section(loaded.runtime, local_rank=distributed.local_rank_from_env())
    warn_once(runtime.warn())
    info = distributed.init_from_env(runtime.device)
    if run is not None:
        with _lock(run, info):
            dataset = _dataset(loaded, "train", image_sizes)
            state = ckpt.CheckpointKeeper(run.checkpoints).latest_good()  # says which files it skipped, and why
            console.print(f"resuming {run.path} from step {state['step']} ({Path(state['_path']).name})", markup=False)
            if info.is_main:
                _resume_bookkeeping(run, state, sets, loaded)
            if steps is None and "train.steps" in changed:
                state["steps_option"] = None  # a new train.steps replaces the --steps the run was started with
            _train(loaded, run, dataset, state, info, steps, quiet, runtime)
        return
    dataset = _dataset(loaded, "train", image_sizes)
    created = run_dirs.create(loaded, runs, run_dir=run_dir) if info.is_main else None
    path = distributed.broadcast_text(str(created.path) if created else None, info)
    run = created or run_dirs.RunDir(Path(path))
    with _lock(run, info), _removed_if_it_fails(run, enabled=info.is_main):
        _train(loaded, run, dataset, None, info, steps, quiet, runtime)


def _train(recipe, run, dataset, state, info, steps, quiet, runtime) -> None:
    import torch

    from t2i.train import distributed
    from t2i.train.loop import GANTrainer, Stop, install_signal_handlers

    trainer = GANTrainer(
        recipe,
        run,
        dataset,
        runtime=runtime,
        rank=info.rank,
        world=info.world,
        resume=state,
        sample_dataset=_sample_split(recipe, recipe.stage_sizes()),
        quiet=quiet,
    )
    stop = Stop()
    install_signal_handlers(stop)
    torch.set_grad_enabled(True)
    last = trainer.fit(steps=steps, stop=stop)
    distributed.shutdown(info)
    if info.is_main:
        console.print(f"run folder: {run.path}\nlast checkpoint: {last}\nsamples: {run.samples}", markup=False)
    if stop.signal_name:
        raise typer.Exit(130 if stop.signal_name == "SIGINT" else 143)


def _launch_torchrun(nproc: int) -> None:
    args = [a for a in sys.argv[1:]]
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "t2i",
        *cleaned,
    ]
    console.print("launching: " + " ".join(command), highlight=False, markup=False)
    raise typer.Exit(subprocess.call(command))


def _print_dry_run(recipe, dataset) -> None:
    from rich.table import Table

    from t2i.build import build_discriminators, build_generator, build_text_encoder

    console.print(recipe.to_toml(), highlight=False, markup=False)
    table = Table(title="networks", title_justify="left")
    table.add_column("network")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    g = build_generator(recipe)
    table.add_row(
        "generator",
        f"{recipe.model.generator.entry.name} + {recipe.model.refiner.entry.name}",
        f"{sum(p.numel() for p in g.parameters() if p.requires_grad):,}",
    )
    for size, d in zip(recipe.stage_sizes(), build_discriminators(recipe), strict=True):
        table.add_row(
            f"discriminator {size}px",
            recipe.model.discriminator.entry.name,
            f"{sum(p.numel() for p in d.parameters() if p.requires_grad):,}",
        )
    te_count = "(needs the data set's vocabulary)"
    if dataset is not None:
        te_count = f"{sum(p.numel() for p in build_text_encoder(recipe, len(dataset.vocab)).parameters()):,}"
    table.add_row("text encoder (frozen)", recipe.model.text_encoder.entry.name, te_count)
    for term in recipe.train.alignment:
        table.add_row(f"alignment term ×{term.params.weight:g}", term.entry.name, "-")
    console.print(table)
    if dataset is not None:
        console.print(
            f"data: {recipe.data.dataset.entry.name}, {len(dataset)} training items, vocabulary {len(dataset.vocab)}"
        )


def _pretrain(kind: str, recipe: str | None, sets, code, resume, runs, run_dir, quiet, export=None, flags=None) -> None:
    from t2i.train import checkpoint as ckpt
    from t2i.train import run_dir as run_dirs
    from t2i.train.distributed import DistInfo
    from t2i.train.loop import Stop, install_signal_handlers
    from t2i.train.pretrain import PRETRAINERS

    sets = list(sets or []) + (flags.sets() if flags is not None else [])
    if resume is not None:
        resumable = (f"pretrain.{kind}.epochs", f"pretrain.{kind}.snapshot_every")
        loaded, run, _ = _recipe_for_resume(resume, sets, code, resumable)
    else:
        if recipe is None:
            raise UserError("give a RECIPE (or --resume RUN_DIR)")
        loaded = load_recipe(recipe, sets, code)
        loaded.name = f"{loaded.name}-{kind}"
        run = run_dirs.create(loaded, runs, run_dir=run_dir)
    with _lock(run, DistInfo()), _removed_if_it_fails(run, enabled=resume is None):
        state = None
        if resume is not None:
            state = ckpt.CheckpointKeeper(run.checkpoints).latest_good()
            _resume_bookkeeping(run, state, sets, loaded)
        size = loaded.pretrain.damsm.image_size if kind == "damsm" else loaded.stage_sizes()[-1]
        dataset = _dataset(loaded, "train", [size])
        held_out = _sample_split(loaded, [size])  # measured after every epoch; the best epoch is kept
        trainer = PRETRAINERS[kind](loaded, run, dataset, resume=state, quiet=quiet, val_dataset=held_out)
        stop = Stop()
        install_signal_handlers(stop)
        last = trainer.fit(stop)
    if export is not None and not stop.signal_name:
        import shutil

        Path(export).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(last, export)
        last = Path(export)
    console.print(
        f"run folder: {run.path}\ncheckpoint: {last}\n"
        f"use it in a training recipe: --set train.pretrained.{_PRETRAINED_KEY[kind]}={last}"
    )


_PRETRAINED_KEY = {"damsm": "text_encoder", "stream": "captioner"}


def _pretrain_command(kind: str, summary: str, example: str):
    """One `t2i pretrain KIND` command; both kinds take the same options."""

    @user_errors
    def command(
        recipe: str = typer.Argument(None, help=f"Recipe (its \\[pretrain.{kind}] section and what it trains)."),
        sets: list[str] = SetOption,
        code: list[Path] = CodeOption,
        resume: Path = typer.Option(None, "--resume", help="Continue this pretraining run folder."),
        runs: Path = typer.Option(Path("runs"), "--runs", help="Root folder for new runs."),
        run_dir: Path = typer.Option(None, "--run-dir", help="Exact folder for the new run."),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
        export: Path = typer.Option(None, "--export", help="Also copy the final checkpoint here (what recipes use)."),
        device: str = DeviceOption,
        precision: str = PrecisionOption,
        channels_last: bool = ChannelsLastOption,
        compile: bool = CompileOption,
    ) -> None:
        flags = RuntimeFlags(device, precision, channels_last, compile)
        _pretrain(kind, recipe, sets, code, resume, runs, run_dir, quiet, export, flags)

    command.__doc__ = f"{summary}\n\n    Example: [bold]{example}[/]\n    "
    command.__name__ = f"pretrain_{kind}"
    return command


pretrain_app.command("damsm")(
    _pretrain_command(
        "damsm",
        "Train the DAMSM text and image encoders (word + sentence matching), as the originals.",
        "t2i pretrain damsm dmgan_shapes --set pretrain.damsm.epochs=5",
    )
)
pretrain_app.command("stream")(
    _pretrain_command(
        "stream",
        "Train the STREAM captioner (teacher forcing) with the data set's vocabulary.",
        "t2i pretrain stream mirrorgan_shapes --set pretrain.stream.epochs=3",
    )
)


@user_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the demo writes its runs."),
    steps: int = typer.Option(None, "--steps", help="GAN steps (default: the dmgan_shapes recipe's)."),
    code: list[Path] = CodeOption,
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    channels_last: bool = ChannelsLastOption,
    compile: bool = CompileOption,
) -> None:
    """The main job on the built-in synthetic data: pretrain DAMSM, train a small DM-GAN, write samples.

    Example: [bold]t2i demo[/]
    """
    from t2i.cli.demo import run_demo

    import_code(code)
    run_demo(out, steps, sets=RuntimeFlags(device, precision, channels_last, compile).sets())
