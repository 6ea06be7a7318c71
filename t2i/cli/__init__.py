"""The ``t2i`` command line: one typer app, a sub-module per command group.

Commands import torch only inside their bodies, so ``t2i --help`` stays fast.
Exit codes: 0 success, 1 an error with a message (never a traceback unless --debug), 2 usage error,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM, training checkpoints first).
"""

from __future__ import annotations

import sys

import typer

from t2i.cli import _common, _errors, components, config

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

        typer.echo(f"t2i {__version__}")
        raise typer.Exit(0)


# invoke_without_command: `t2i --version` names no command; is_eager: it is handled before anything else.
@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the t2i version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show the traceback of an internal error here (also: T2I_DEBUG=1)."
    ),
) -> None:
    _errors.debug = debug
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)


# One rule for every command, including those a module registered without the decorator.
_errors.guard_all(app)


def main() -> None:
    try:
        app()
    except (Exception, KeyboardInterrupt) as exc:  # raised outside a command, e.g. while registering one
        sys.exit(_errors.handle(exc))
