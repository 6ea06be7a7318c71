"""``t2i config show|validate RECIPE``: resolve and check recipes."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from t2i.cli._common import CodeOption, SetOption, console, load_recipe, report_plugin_errors, user_errors

config_app = typer.Typer(help="Show and validate recipes.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


@config_app.command("show")
@user_errors
def show(
    recipe: str = typer.Argument(..., help="Recipe file, or the name of a built-in recipe."),
    sets: list[str] = SetOption,
    code: list[Path] = CodeOption,
    raw: bool = typer.Option(False, "--raw", help="Show components as written, without filled-in defaults."),
) -> None:
    """Print the resolved recipe as TOML (extends merged, overrides applied, defaults filled).

    Example: [bold]t2i config show recipes/dmgan_bird.toml --set model.refiner=gldm[/]
    """
    loaded = load_recipe(recipe, sets, code)
    report_plugin_errors()
    console.print(loaded.to_toml(resolved=not raw), highlight=False, markup=False, soft_wrap=True)


@config_app.command("validate")
@user_errors
def validate(
    recipes: list[str] = typer.Argument(..., help="Recipe file(s) or built-in recipe names."),
    sets: list[str] = SetOption,
    code: list[Path] = CodeOption,
) -> None:
    """Check recipes: structure, component names and every component's params.

    Example: [bold]t2i config validate recipes/*.toml[/]
    """
    for path in recipes:
        loaded = load_recipe(path, sets, code)
        names = ", ".join(f"{p}={c.entry.name}" for p, _k, c in loaded.components())
        console.print(f"[green]ok[/] {escape(str(loaded.source))}  [dim]{escape(names)}[/]", highlight=False)
    report_plugin_errors()
