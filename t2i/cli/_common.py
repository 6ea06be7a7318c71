"""Pieces every command shares: the console, user-error handling, --code and --set options."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import typer
from rich.markup import escape

from t2i.cli import _errors
from t2i.cli._errors import UserError, console, err_console

__all__ = ["UserError", "console", "err_console"]  # defined beside the error handling, which needs them

# Command groups that arrive with later features; each registers itself if present.
_OPTIONAL_COMMANDS = (
    "t2i.cli.data",
    "t2i.cli.model_io",
    "t2i.cli.train",
    "t2i.cli.sample",
    "t2i.cli.inspect",
    "t2i.cli.evaluate",
    "t2i.cli.ablate",
    "t2i.cli.bench",
    "t2i.cli.weights",
    "t2i.cli.plot",
    "t2i.cli.report",
)


def optional_command_modules() -> list[ModuleType]:
    return [importlib.import_module(m) for m in _OPTIONAL_COMMANDS if importlib.util.find_spec(m) is not None]


# Every command goes through the same handling (t2i/cli/_errors.py); the decorator on a command is kept for
# readers, and t2i/cli/__init__.py wraps any command registered without it.
print_error = _errors.print_error
user_errors = _errors.guarded


def check_output(path: Path, option: str, *, folder: bool = False) -> Path:
    """Fail before the work, not after it, when ``path`` cannot be written: make its parent (or itself, for a
    folder) and name the part of the path that is in the way."""
    path = Path(path)
    target = path if folder else path.parent
    for part in [target, *target.parents]:
        if part.exists() and not part.is_dir():
            raise UserError(f"{option} {path}: {part} is a file, not a folder; choose another path")
    if path.exists() and not folder and not path.is_file():
        # an atomic write would replace it (as root, even a device such as /dev/null)
        raise UserError(f"{option} {path}: exists and is not a regular file; choose another path")
    if path.is_file() and folder:
        raise UserError(f"{option} {path}: is a file; give a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot create folder {target}: {exc.strerror or exc}") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: the folder {target} is not writable; choose another path")
    return path


CodeOption = typer.Option(
    None,
    "--code",
    "-c",
    help="Python file(s) with extra registered components to import first (repeatable).",
)
SetOption = typer.Option(
    None,
    "--set",
    "-s",
    help="Override a recipe value: KEY=VALUE, VALUE in TOML syntax (repeatable), e.g. --set model.gf_dim=32.",
)


def read_captions_file(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each non-empty line of a UTF-8 text file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read captions file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"captions file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def captions_option(path: Path | None) -> list[str] | None:
    """The captions of a ``--captions FILE`` option (one per non-empty line), or None when it was not given."""
    if path is None:
        return None
    if not path.is_file():
        raise UserError(f"--captions file not found: {path}")
    texts = [text for _, text in read_captions_file(path)]
    if not texts:
        raise UserError(f"{path} holds no caption")
    return texts


def seeds_option(text: str) -> list[int]:
    """``--seeds 0,1,2`` -> [0, 1, 2]; at least one."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers, got {text!r}") from None
    if not seeds:
        raise UserError("--seeds needs at least one seed")
    return seeds


def import_code(paths: list[Path] | None) -> None:
    from t2i.registry import import_user_file

    for path in paths or []:
        import_user_file(path)


def load_recipe(path: str, sets: list[str] | None, code: list[Path] | None):  # -> Recipe
    from t2i import recipe

    import_code(code)
    return recipe.load(path, sets or [])


def report_plugin_errors() -> None:
    from t2i.registry import plugin_errors

    for name, reason in plugin_errors().items():
        err_console.print(
            f"[yellow]warning:[/] plugin {escape(name)} failed to load: {escape(str(reason))}", highlight=False
        )
