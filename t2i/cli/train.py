"""``t2i train``, ``t2i pretrain damsm|stream`` and ``t2i demo``."""

from __future__ import annotations

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


def _resume(resume: Path, sets: list[str] | None, code: list[Path] | None, resumable: tuple[str, ...] = ()):
    """-> (the stored recipe with the ``--set`` overrides, the run folder, the keys they changed)."""
    from t2i.train.setup import resume_recipe

    import_code(code)
    return resume_recipe(resume, list(sets or []), resumable)


def _note(line: str) -> None:
    console.print(f"[yellow]note:[/] {escape(line)}", highlight=False)


def _say(line: str) -> None:
    console.print(line, markup=False)


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
    sets = list(sets or []) + RuntimeFlags(device, precision, channels_last, compile).sets()
    changed: list[str] = []
    if resume is not None:
        loaded, run, changed = _resume(resume, sets, code)
    else:
        if recipe is None:
            raise UserError("give a RECIPE (or --resume RUN_DIR)")
        loaded, run = load_recipe(recipe, sets, code), None
    if dry_run:
        try:
            dataset = loaded.data.dataset.build(split="train", image_sizes=loaded.stage_sizes())
        except Exception as exc:  # the networks can be shown without the data
            console.print(
                f"[yellow]note:[/] data set not loaded ({escape(str(exc))}); the text encoder needs its vocabulary"
            )
            dataset = None
        _print_dry_run(loaded, dataset)
        return
    import torch

    from t2i.train import distributed
    from t2i.train.loop import Stop, install_signal_handlers
    from t2i.train.setup import prepare_run

    setup = prepare_run(
        loaded,
        resume=run,
        resume_sets=sets if run is not None else (),
        changed=changed,
        runs=runs,
        run_dir=run_dir,
        steps=steps,
        quiet=quiet,
        log=_say,
        note=_note,
    )
    with setup as prepared:
        stop = Stop()
        install_signal_handlers(stop)
        torch.set_grad_enabled(True)
        last = prepared.trainer.fit(stop=stop)
        distributed.shutdown(prepared.dist)
        if prepared.dist.is_main:
            console.print(
                f"run folder: {prepared.run.path}\nlast checkpoint: {last}\nsamples: {prepared.run.samples}",
                markup=False,
            )
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

    from t2i.networks import build_discriminators, build_generator, build_text_encoder

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
    from t2i.train.loop import Stop, install_signal_handlers
    from t2i.train.setup import prepare_run

    sets = list(sets or []) + (flags.sets() if flags is not None else [])
    if resume is not None:
        resumable = (f"pretrain.{kind}.epochs", f"pretrain.{kind}.snapshot_every")
        loaded, run, changed = _resume(resume, sets, code, resumable)
    else:
        if recipe is None:
            raise UserError("give a RECIPE (or --resume RUN_DIR)")
        loaded, run, changed = load_recipe(recipe, sets, code), None, []
        loaded.name = f"{loaded.name}-{kind}"
    setup = prepare_run(
        loaded,
        kind=kind,
        resume=run,
        resume_sets=sets if run is not None else (),
        changed=changed,
        runs=runs,
        run_dir=run_dir,
        quiet=quiet,
        log=_say,
        note=_note,
    )
    with setup as prepared:
        stop = Stop()
        install_signal_handlers(stop)
        last = prepared.trainer.fit(stop)
    if export is not None and not stop.signal_name:
        import shutil

        Path(export).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(last, export)
        last = Path(export)
    console.print(
        f"run folder: {prepared.run.path}\ncheckpoint: {last}\n"
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
