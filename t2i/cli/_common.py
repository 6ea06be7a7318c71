"""Pieces every command shares: the console, user-error handling, --code and --set options."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

# Command groups that arrive with later features; each registers itself if present.
_OPTIONAL_COMMANDS = (
    "t2i.cli.data",
    "t2i.cli.model_io",
    "t2i.cli.train",
    "t2i.cli.sample",
    "t2i.cli.evaluate",
    "t2i.cli.ablate",
    "t2i.cli.bench",
    "t2i.cli.weights",
)


def optional_command_modules() -> list[ModuleType]:
    return [importlib.import_module(m) for m in _OPTIONAL_COMMANDS if importlib.util.find_spec(m) is not None]


class UserError(Exception):
    """An error caused by the user's input: shown as a message, exit code 1."""


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def user_errors(func: F) -> F:
    """Turn the toolkit's user-facing exceptions into a message and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from t2i.recipe import RecipeError
        from t2i.registry import ComponentError

        try:
            return func(*args, **kwargs)
        except RecipeError as exc:
            print_error(f"invalid recipe {exc.source}")
            for problem in exc.problems:
                err_console.print(f"  - {problem}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except (ComponentError, UserError, FileNotFoundError) as exc:
            print_error(str(exc))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            print_error("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            handled = _domain_error(exc)
            if handled is None:
                raise
            print_error(handled)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _domain_error(exc: Exception) -> str | None:
    """Messages for error types defined in modules that may import torch (checked lazily)."""
    for cls in type(exc).__mro__:
        if getattr(cls, "t2i_user_error", False):
            return str(exc)
    return None


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
        err_console.print(f"[yellow]warning:[/] plugin {name} failed to load: {reason}", highlight=False)
