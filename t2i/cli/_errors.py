"""The one rule every command follows: a cause the user can fix ends in exit 1 and a message, never a traceback.

``classify`` decides what is the user's to fix (bad recipe or data, a file that cannot be read or written, a full
disk, too little memory, weights that do not fit the recipe's network) and words it; anything else is an internal
bug: its traceback goes to the run's ``log.txt`` (or a file in the temp folder) and the console says where, unless
``--debug`` or ``T2I_DEBUG=1`` asks to see it raised.
"""

from __future__ import annotations

import datetime as dt
import errno
import functools
import io
import os
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)


class UserError(Exception):
    """An error caused by the user's input: shown as a message, exit code 1."""


debug = False  # set by the global --debug flag


def debugging() -> bool:
    return debug or os.environ.get("T2I_DEBUG", "") not in ("", "0")


def print_error(message: str) -> None:
    """``error: message`` on stderr; the message is plain text (a caption may hold ``[/x]``)."""
    try:
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    except OSError:  # stderr itself is gone: the exit code still says it
        pass


# -- finding what the failing code was working on ----------------------------------------
def _frames(tb: TracebackType | None) -> list[Any]:
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames[::-1]  # innermost first


def _values(tb: TracebackType | None) -> Iterator[Any]:
    for frame in _frames(tb):
        yield from frame.f_locals.values()


_FILE_NAMES = ("path", "file", "filename", "fp", "handle", "target", "out", "output", "source", "self")


def _file_in(tb: TracebackType | None) -> str | None:
    """The file the innermost frame was reading or writing: an open file's name or a path-like local."""
    for frame in _frames(tb):
        local = frame.f_locals
        for value in local.values():
            name = getattr(value, "name", None) if isinstance(value, io.IOBase) else None
            if isinstance(name, str):
                return name
        for key in _FILE_NAMES:
            value = local.get(key)
            if isinstance(value, PurePath):
                return str(value)
            if isinstance(value, str) and key != "self" and os.sep in value:
                return value
    return None


def _checkpoint_in(tb: TracebackType | None) -> str | None:
    """The checkpoint whose weights were being loaded: a loaded checkpoint dict or a .pt/.pth/.ckpt path."""
    for value in _values(tb):
        if isinstance(value, dict) and isinstance(value.get("_path"), str):
            return value["_path"]
        if isinstance(value, PurePath | str) and str(value).endswith((".pt", ".pth", ".ckpt")):
            return str(value)
    return None


def _recipe_in(tb: TracebackType | None) -> Any:
    from t2i.recipe import Recipe

    for value in _values(tb):
        if isinstance(value, Recipe):
            return value
        if isinstance(getattr(value, "recipe", None), Recipe):
            return value.recipe
    return None


def _run_folder_in(tb: TracebackType | None) -> Path | None:
    import sys

    module = sys.modules.get("t2i.train.run_dir")
    if module is None:
        return None
    for value in _values(tb):
        run = value if isinstance(value, module.RunDir) else getattr(value, "run", None)
        if isinstance(run, module.RunDir) and run.path.is_dir():
            return run.path
    return None


# -- the classification ------------------------------------------------------------------
_OS_ADVICE = {
    errno.ENOENT: "no such file or folder; check the path",
    errno.EACCES: "permission denied; check the file's permissions or choose another location",
    errno.EPERM: "operation not permitted; check the file's permissions or choose another location",
    errno.ENOSPC: "no space left on the device (disk full); free some space or write somewhere else",
    errno.EDQUOT: "disk quota exceeded; free some space or write somewhere else",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.ENOTDIR: "a part of this path is a file, not a folder; choose another path",
    errno.EISDIR: "this is a folder where a file is expected; give a file path",
    errno.EEXIST: "it already exists; remove it or choose another path",
    errno.ENAMETOOLONG: "the file name is too long; choose a shorter path",
    errno.ENOTEMPTY: "the folder is not empty; empty it or choose another path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or use fewer data loader workers",
    errno.EIO: "input/output error from the device; check the disk",
    errno.EPIPE: "the output was closed before everything was written (broken pipe)",
}


def _os_error(exc: OSError, tb: TracebackType | None) -> str:
    where = exc.filename if exc.filename is not None else _file_in(tb)
    advice = _OS_ADVICE.get(exc.errno or -1, exc.strerror or str(exc))
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    return f"{where}: {advice}" if where else f"{advice} ({exc})"


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text.lower() or "can't allocate memory" in text or "CUDA error: out of memory" in text
    )


def _out_of_memory(exc: BaseException, tb: TracebackType | None) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    first = first if len(first) < 200 else first[:200] + "..."
    device = "GPU" if "CUDA" in str(exc) or type(exc).__name__ == "OutOfMemoryError" else "CPU"
    recipe = _recipe_in(tb)
    now, example = "", "a smaller value"
    if recipe is not None:
        batch = recipe.data.batch_size
        now = f" (now data.batch_size={batch}, model.gf_dim={recipe.model.gf_dim}, model.df_dim={recipe.model.df_dim})"
        example = f"--set data.batch_size={max(1, batch // 2)}"
    return (
        f"out of {device} memory: {first}\n"
        f"the model or the batch does not fit: lower data.batch_size or the model's widths (model.gf_dim, "
        f"model.df_dim){now}, e.g. {example}, or use a machine with more memory"
    )


def _is_size_mismatch(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("size mismatch" in text or "Error(s) in loading state_dict" in text)


def _size_mismatch(exc: BaseException, tb: TracebackType | None) -> str:
    where = _checkpoint_in(tb) or "the checkpoint"
    lines = [line.strip().rstrip(".") for line in str(exc).splitlines() if line.strip()]
    detail = "; ".join(lines[1:4]) if len(lines) > 1 else (lines[0] if lines else "")
    more = f" (and {len(lines) - 4} more)" if len(lines) > 4 else ""
    return (
        f"the weights in {where} do not fit the network the recipe builds: {detail}{more}\n"
        "the recipe's network differs from the one that was saved; use the recipe stored with the checkpoint "
        "(drop the --set that changes model widths or components) or start a new run"
    )


def _decode_error(exc: UnicodeDecodeError, tb: TracebackType | None) -> str:
    where = _file_in(tb) or "a text file"
    return (
        f"{where}: not valid {exc.encoding} text ({exc.reason} at byte {exc.start}); "
        "is it the right file? Text files (recipes, captions, split lists) must be saved as UTF-8"
    )


def classify(exc: BaseException) -> str | None:
    """The message for an error whose cause the user can fix, or None for an internal bug."""
    from t2i.recipe import RecipeError
    from t2i.registry import ComponentError

    tb = exc.__traceback__
    if isinstance(exc, RecipeError):
        return f"invalid recipe {exc.source}" + "".join(f"\n  - {problem}" for problem in exc.problems)
    if isinstance(exc, ComponentError | UserError):
        return str(exc)
    if any(getattr(cls, "t2i_user_error", False) for cls in type(exc).__mro__):
        return str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return _decode_error(exc, tb)
    if _is_out_of_memory(exc):
        return _out_of_memory(exc, tb)
    if _is_size_mismatch(exc):
        return _size_mismatch(exc, tb)
    if isinstance(exc, OSError):
        return _os_error(exc, tb)
    return None


# -- internal errors ---------------------------------------------------------------------
def _write_traceback(exc: BaseException) -> Path | None:
    """Append the full traceback to the run's log.txt, else write it to a file in the temp folder."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    header = f"[{stamp}] internal error, full traceback:\n"
    run = _run_folder_in(exc.__traceback__)
    if run is not None:
        try:
            with (run / "log.txt").open("a") as handle:
                handle.write(header + text)
            return run / "log.txt"
        except OSError:
            pass
    name = f"t2i-error-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    path = Path(tempfile.gettempdir()) / name
    try:
        path.write_text(header + text)
    except OSError:
        return None
    return path


def report_internal(exc: BaseException) -> None:
    where = _write_traceback(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    saved = f"the full traceback is in {where}" if where else "the traceback could not be saved"
    print_error(
        f"internal error ({type(exc).__name__}: {first}); this is a bug in t2i, not in your input.\n"
        f"{saved}; please report it with that file (--debug or T2I_DEBUG=1 shows it here)"
    )


def handle(exc: BaseException) -> int:
    """Print what the user needs for ``exc`` and return the exit code; re-raise internal errors when debugging."""
    if isinstance(exc, KeyboardInterrupt):
        print_error("interrupted")
        return 130
    message = classify(exc)
    if message is not None:
        print_error(message)
        return 1
    if debugging():
        raise exc
    report_internal(exc)
    return 1


def _is_cli_exit(exc: BaseException) -> bool:
    """typer.Exit, Abort and usage errors: click's classes, or the copies a typer version vendors."""
    return any(cls.__module__.split(".")[0] in ("click", "typer") for cls in type(exc).__mro__)


def guarded(func: F) -> F:
    """Wrap a command so that every exception leaving it goes through ``handle`` (idempotent)."""
    if getattr(func, "_t2i_guarded", False):
        return func

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (Exception, KeyboardInterrupt) as exc:
            if _is_cli_exit(exc):
                raise  # typer's own exits and usage errors keep their codes (0, 1, 2)
            code = handle(exc)
            raise typer.Exit(code) from None

    wrapper._t2i_guarded = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def guard_all(app: typer.Typer) -> None:
    """Wrap every command and group callback of ``app`` and its sub-apps, so that no command can miss the rule."""
    if app.registered_callback is not None and app.registered_callback.callback is not None:
        app.registered_callback.callback = guarded(app.registered_callback.callback)
    for command in app.registered_commands:
        if command.callback is not None:
            command.callback = guarded(command.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            guard_all(group.typer_instance)
