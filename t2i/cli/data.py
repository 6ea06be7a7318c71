"""``t2i data make-shapes|check|convert``: create, inspect and convert data sets (docs/data.md)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape

from t2i.cli._common import UserError, check_output, console, err_console, user_errors

data_app = typer.Typer(help="Create, check and convert text-image data sets.", no_args_is_help=True)

DATASETS = ("cub", "coco", "folder", "shapes")
CONVENTIONS = ("A", "B")
_DEFAULT_CPI = {"cub": 10, "coco": 5, "folder": 10, "shapes": 10}


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _detect(path: Path) -> str:
    if (path / "CUB_200_2011").is_dir():
        return "shapes" if (path / "attributes.json").is_file() else "cub"
    if (path / "images").is_dir() and ((path / "train").is_dir() or (path / "test").is_dir()):
        return "coco"
    return "folder"


def _read(path: Path, dataset: str | None, captions_per_image: int | None, convention: str, prefer_metadata: bool):
    from t2i.data import layout

    if not path.is_dir():
        raise UserError(f"{path} is not a directory")
    dataset = dataset or _detect(path)
    if dataset not in DATASETS:
        raise UserError(f"unknown --dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if convention not in CONVENTIONS:  # checked here: deeper down it is a dictionary key (a KeyError traceback)
        raise UserError(f"unknown --convention {convention!r}; use A or B")
    cpi = captions_per_image or _DEFAULT_CPI[dataset]
    if dataset == "folder":
        from t2i.data.folder import read_folder

        return dataset, read_folder(path, captions_per_image=cpi, convention=convention)
    spec = layout.COCO_LAYOUT if dataset == "coco" else layout.CUB_LAYOUT
    need_bbox = dataset == "cub"
    meta = layout.read_layout(
        path, spec, captions_per_image=cpi, convention=convention, need_bbox=need_bbox, prefer_metadata=prefer_metadata
    )
    return dataset, meta


def _decode_check(job: str) -> tuple[str, str]:
    """(problem or "", the image's mode and how training reads it) for one file."""
    from PIL import Image

    from t2i.data.image_modes import describe_mode, to_rgb

    try:
        with Image.open(job) as image:
            mode = image.mode
            if image.info.get("transparency") is not None and mode not in ("LA", "PA", "RGBA"):
                mode += " + transparent colour"
            note = describe_mode(image)
            to_rgb(image)  # what training does: decodes fully and converts
            if image.width < 1 or image.height < 1:
                return f"{job}: image has no pixels", mode
    except Exception as exc:
        return (
            f"{job}: cannot decode image ({type(exc).__name__}: {exc}); replace the file or remove it from the "
            "split (training can skip it with skip_bad=true)"
        ), ""
    return "", f"{mode} ({note})"


def _decode_all(files: list[str], workers: int) -> list[tuple[str, str]]:
    """Decode every image, in threads (PIL decodes without the GIL; no fork of a process that may run torch)."""
    from concurrent.futures import ThreadPoolExecutor

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    results = []
    with Progress(*columns, console=err_console, transient=True) as progress, ThreadPoolExecutor(workers) as pool:
        task = progress.add_task("decode", total=len(files))
        for result in pool.map(_decode_check, files):
            results.append(result)
            progress.advance(task)
    return results


DatasetOption = typer.Option(None, "--dataset", "-d", help="cub, coco, folder or shapes (default: detected)")
CpiOption = typer.Option(None, "--captions-per-image", help="captions per image (default: 10, coco 5)")
ConventionOption = typer.Option("A", "--convention", help="caption convention A or B (see docs/data.md)")


@data_app.command("make-shapes")
@user_errors
def make_shapes_cmd(
    out: Path = typer.Argument(..., help="Output directory (must not exist, or be empty)."),
    n: int = typer.Option(2000, "--n", min=1, help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Generator seed: the same seed gives the same files."),
    size: int = typer.Option(64, "--size", help="Image side in pixels: 64, 128 or 256."),
    workers: int = typer.Option(2, "--workers", min=1, help="Processes drawing images (this one + helpers)."),
) -> None:
    """Generate the synthetic shapes data set in the CUB layout (with attributes.json ground truth).

    Example: [bold]t2i data make-shapes data/shapes --n 2000 --seed 0 --size 64[/]
    """
    from t2i.data.shapes_maker import make_shapes

    check_output(out, "OUT", folder=True)

    if size not in (64, 128, 256):
        raise UserError(f"--size must be 64, 128 or 256, got {size}")
    try:
        start = time.perf_counter()
        make_shapes(out, n=n, seed=seed, size=size, workers=workers)
    except FileExistsError as exc:
        raise UserError(str(exc)) from None
    seconds = time.perf_counter() - start
    console.print(
        f"[green]wrote[/] {n} images ({size} px, seed {seed}) with 10 captions each to {escape(str(out))} "
        f"in {seconds:.1f} s ({n / seconds:,.0f} images/s)",
        highlight=False,
    )
    console.print(f"check it with: t2i data check {out}", highlight=False, markup=False)


@data_app.command("check")
@user_errors
def check(
    path: Path = typer.Argument(..., help="Data root."),
    dataset: str = DatasetOption,
    captions_per_image: int = CpiOption,
    convention: str = ConventionOption,
    quick: bool = typer.Option(False, "--quick", help="Do not decode every image (only check that it exists)."),
    workers: int = typer.Option(4, "--workers", min=1, help="Threads decoding images."),
) -> None:
    """Count images, captions, splits and classes; list missing or unreadable files. Exit 1 on any problem.

    Example: [bold]t2i data check data/birds --dataset cub[/]
    """
    from rich.table import Table

    kind, meta = _read(path, dataset, captions_per_image, convention, prefer_metadata=True)
    problems = list(meta.problems)
    files = sorted({str(meta.root / f) for s in meta.splits.values() for f in s.files if f})
    modes: dict[str, int] = {}
    if not quick and files:
        for problem, mode in _decode_all(files, workers):
            if problem:
                problems.append(problem)
            elif not mode.startswith("RGB ("):
                modes[mode] = modes.get(mode, 0) + 1

    table = Table(title=escape(f"{meta.root} ({kind}, metadata from {meta.source})"), title_justify="left")
    for column in ("split", "images", "classes", "captions", "per image (min/mean/max)"):
        table.add_column(column, justify="right" if column != "split" else "left")
    total = 0
    for name, info in meta.splits.items():
        counts = [len(c) for c in info.captions] or [0]
        total += len(info.keys)
        table.add_row(
            escape(name),
            f"{len(info.keys):,}",
            f"{len(set(info.class_ids)):,}",
            f"{sum(counts):,}",
            f"{min(counts)}/{sum(counts) / max(1, len(counts)):.1f}/{max(counts)}",
        )
    console.print(table)
    console.print(
        f"vocabulary: {len(meta.vocab):,} words, convention {meta.vocab.convention}, sha256 {meta.vocab.sha256()}",
        highlight=False,
        markup=False,
    )
    if total == 0:
        problems.append(f"{meta.root}: the data set is empty (no image keys in any split)")
    for mode, count in sorted(modes.items(), key=lambda item: -item[1]):
        # Not a problem: training converts each to RGB the same way (docs/data.md, image modes).
        console.print(f"note: {count:,} image(s) in mode {mode}", highlight=False, markup=False)
    for line in meta.warnings[:20]:
        err_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if len(meta.warnings) > 20:
        err_console.print(f"[yellow]warning:[/] ... and {len(meta.warnings) - 20} more", highlight=False)
    if problems:
        err_console.print(f"[bold red]{len(problems)} problem(s):[/]", highlight=False)
        for line in problems:
            err_console.print(f"  {line}", highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(1)
    console.print("[green]ok[/]: every listed image and caption file is readable", highlight=False)


@data_app.command("convert")
@user_errors
def convert(
    path: Path = typer.Argument(..., help="Data root in the CUB or COCO layout."),
    dataset: str = DatasetOption,
    captions_per_image: int = CpiOption,
    convention: str = ConventionOption,
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Write it even if some files are missing."),
) -> None:
    """Read the legacy pickles and caption files once and write metadata.json; later runs read only that.

    Example: [bold]t2i data convert data/birds[/]
    """
    from t2i.data.layout import write_metadata

    kind, meta = _read(path, dataset, captions_per_image, convention, prefer_metadata=False)
    if kind == "folder":
        raise UserError(f"{path}: folder data sets need no conversion (they read plain text files)")
    if meta.problems and not skip_bad:
        for line in meta.problems[:20]:
            err_console.print(f"  {line}", highlight=False, soft_wrap=True, markup=False)
        raise UserError(f"{len(meta.problems)} problem(s) in {path}; fix them or pass --skip-bad")
    out = write_metadata(meta)
    console.print(
        f"[green]wrote[/] {escape(str(out))} ({out.stat().st_size / 1e6:.1f} MB; {len(meta.vocab):,} words, "
        f"vocab sha256 {meta.vocab.sha256()[:16]}, from {meta.source})",
        highlight=False,
    )
