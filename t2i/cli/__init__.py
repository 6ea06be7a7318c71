"""The ``t2i`` command line: one typer app, a sub-module per command group.

Commands import torch only inside their bodies, so ``t2i --help`` stays fast.
Exit codes: 0 success, 1 user error (clear message, no traceback), 2 usage error.
"""

from __future__ import annotations

import sys

import typer

from t2i.cli import _common, components, config

app = typer.Typer(
    name="t2i",
    help="Train, evaluate and compare text-to-image GANs built from registered components.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="rich",
)

components.register(app)
config.register(app)

for _module in _common.optional_command_modules():
    _module.register(app)


def _print_version(value: bool) -> None:
    if value:
        from t2i import __version__

        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(
    # Eager: handled while parsing, so `t2i --version` needs no command (a plain callback would never run).
    version: bool = typer.Option(
        False, "--version", help="Print the t2i version and exit.", is_eager=True, callback=_print_version
    ),
) -> None:
    pass


def main() -> None:
    try:
        app()
    except _common.UserError as exc:  # raised outside typer's own handling
        _common.print_error(str(exc))
        sys.exit(1)
