"""One run setup for every entry point (as detectron2's ``default_setup``): train, pretrain, demo and ablate.

``prepare_run`` creates the run folder or opens the one to resume, takes its lock, takes the latest good checkpoint,
builds the data sets and makes the trainer; the caller then runs ``trainer.fit``. Leaving the ``with`` block
releases the lock, and a start that failed before its first checkpoint removes the folder it made, so a failed
start leaves nothing half-made behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t2i import recipe as recipe_mod
from t2i.data.holdout import build_split
from t2i.recipe import Recipe
from t2i.runtime import Runtime, warn_once
from t2i.train import checkpoint as ckpt
from t2i.train import distributed, tb
from t2i.train import run_dir as run_dirs
from t2i.train.distributed import DistInfo
from t2i.train.lock import RunLock
from t2i.train.loop import GANTrainer
from t2i.train.pretrain import PRETRAINERS
from t2i.train.resume import check_resume_changes
from t2i.train.run_dir import RunDir

__all__ = ["Datasets", "PreparedRun", "data_for", "prepare_run", "resume_recipe"]


@dataclass
class Datasets:
    """What a trainer reads: the training split, and the split its samples (GAN) or validation (pretraining) use."""

    train: Any
    held_out: Any = None  # None: samples come from the training captions; pretraining skips validation


@dataclass
class PreparedRun:
    recipe: Recipe
    run: RunDir
    trainer: Any  # GANTrainer, or a Pretrainer for kind "damsm" / "stream"
    dist: DistInfo
    state: dict[str, Any] | None  # the checkpoint resumed from; None for a fresh start


def resume_recipe(
    path: str | Path, sets: Sequence[str] = (), resumable: Sequence[str] = ()
) -> tuple[Recipe, RunDir, list[str]]:
    """-> (the run's stored recipe with the ``--set`` overrides, its folder, the keys they changed).

    Only keys that cannot change what was trained may change (t2i/train/resume.py), plus ``resumable``; others are
    refused here, before anything is loaded.
    """
    run = run_dirs.open_existing(path)
    source = str(run.path / "config.resolved.toml")
    stored = recipe_mod.read_toml(run.path / "config.resolved.toml")
    # A run stored before the selection split existed trained on every training item and selected on eval.split.
    stored.setdefault("eval", {}).setdefault("selection_split", "test")
    recipe = recipe_mod.validate(
        recipe_mod.apply_overrides(stored, list(sets)), source, list(sets), import_plugins=False
    )
    changed = check_resume_changes(
        recipe_mod.validate(stored, source, import_plugins=False).to_dict(), recipe.to_dict(), tuple(resumable)
    )
    return recipe, run, changed


def data_for(recipe: Recipe, kind: str = "gan", *, held_out: bool = True) -> Datasets:
    """The training split at the sizes ``kind`` trains at; the test split too when there is one and it is asked for."""
    if kind == "damsm":
        sizes = [recipe.pretrain.damsm.image_size]
    elif kind == "stream":
        sizes = [recipe.stage_sizes()[-1]]
    else:
        sizes = recipe.stage_sizes()
    # a GAN never trains on the items its checkpoints are chosen on (pretraining has no selection split)
    train = (
        build_split(recipe, "train", sizes)
        if kind == "gan"
        else recipe.data.dataset.build(split="train", image_sizes=sizes)
    )
    test = None
    if held_out:
        try:
            test = recipe.data.dataset.build(split="test", image_sizes=sizes)
        except Exception:  # a data set without a test split samples from its training captions
            test = None
    return Datasets(train, test)


def _silent(_line: str) -> None:
    pass


@contextlib.contextmanager
def prepare_run(
    recipe: Recipe,
    *,
    kind: str = "gan",
    resume: RunDir | None = None,
    resume_sets: Sequence[str] = (),
    changed: Sequence[str] = (),
    runs: str | Path = "runs",
    run_dir: str | Path | None = None,
    reuse: bool = False,
    datasets: Datasets | None = None,
    steps: int | None = None,
    runtime: Runtime | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = _silent,
    note: Callable[[str], None] = _silent,
) -> Iterator[PreparedRun]:
    """Set up one run of ``kind`` ("gan", "damsm" or "stream") and yield it with its trainer, the lock held.

    ``resume``: continue that run folder from its latest good checkpoint (``resume_recipe`` gives the folder, the
    recipe with its accepted ``resume_sets`` and the ``changed`` keys). Else a new folder under ``runs`` (or exactly
    ``run_dir``); with ``reuse``, a ``run_dir`` that already holds a run is continued from its latest good
    checkpoint, or from scratch when none loads (an ablation's variant folders). ``datasets`` default to the
    recipe's training split and its test split (sample grids, pretraining validation). ``steps`` is ``--steps``.
    A GAN run joins the process group torchrun describes; only rank 0 creates the folder, locks it and writes.
    ``log`` gets progress lines, ``note`` remarks (a stale lock taken over, a failed start removed).
    """
    tb.require(recipe)  # [log] tensorboard without the package: an error before anything is made or loaded
    if kind == "gan":
        runtime = runtime or Runtime.from_section(recipe.runtime, local_rank=distributed.local_rank_from_env())
        warn_once(runtime.warn())
        info = distributed.init_from_env(runtime.device)
    else:
        runtime = runtime or Runtime.from_section(recipe.runtime)
        info = DistInfo()
    run = resume
    if run is None and reuse and run_dir is not None and (Path(run_dir) / "config.resolved.toml").is_file():
        run = run_dirs.open_existing(run_dir)
    strict = resume is not None  # a folder named with --resume must have a checkpoint to continue from
    made = run is None
    if made:
        datasets = datasets or data_for(recipe, kind)  # before the folder: a data error leaves nothing behind
        created = run_dirs.create(recipe, runs, run_dir=run_dir) if info.is_main else None
        path = distributed.broadcast_text(str(created.path) if created else None, info)  # every rank calls it
        run = created or RunDir(Path(path))
    lock = RunLock(run.path, log=note) if info.is_main else contextlib.nullcontext()
    with lock, _removed_if_it_fails(run, enabled=made and info.is_main, note=note):
        state = None if made else _latest_good(run, strict)
        if state is not None:
            log(f"resuming {run.path} from step {state['step']} ({Path(state['_path']).name})")
            if info.is_main:
                run.truncate_logs(int(state["step"]))  # a resumed run writes the later rows again
                if resume_sets:
                    run.record_resume(int(state["step"]), list(resume_sets), recipe.to_toml())
            if kind == "gan" and steps is None and "train.steps" in changed:
                state["steps_option"] = None  # a new train.steps replaces the --steps the run was started with
        datasets = datasets or data_for(recipe, kind)
        if kind == "gan":
            trainer: Any = GANTrainer(
                recipe,
                run,
                datasets.train,
                runtime=runtime,
                rank=info.rank,
                world=info.world,
                resume=state,
                sample_dataset=datasets.held_out,
                quiet=quiet,
            )
            if steps is not None:
                trainer.steps_option = steps  # kept with the run, so that a resume stops there too
        else:
            trainer = PRETRAINERS[kind](
                recipe, run, datasets.train, resume=state, quiet=quiet, runtime=runtime, val_dataset=datasets.held_out
            )
        yield PreparedRun(recipe, run, trainer, info, state)


def _latest_good(run: RunDir, strict: bool) -> dict[str, Any] | None:
    """The newest checkpoint that loads (the keeper says which files it skipped, and why); None when not ``strict``
    and nothing loads."""
    try:
        return ckpt.CheckpointKeeper(run.checkpoints).latest_good()
    except ckpt.CheckpointError:
        if strict:
            raise
        return None


@contextlib.contextmanager
def _removed_if_it_fails(run: RunDir, *, enabled: bool, note: Callable[[str], None]) -> Iterator[None]:
    """A start that fails before its first checkpoint leaves no half-made run folder behind."""
    try:
        yield
    except BaseException:
        if enabled and run.remove_failed_start():
            note(f"removed {run.path}: the run failed before its first checkpoint")
        raise
