"""``t2i components [KIND] [-v]``: list registered components."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from t2i.cli._common import CodeOption, console, import_code, report_plugin_errors, user_errors


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "")


def register(app: typer.Typer) -> None:
    @app.command("components")
    @user_errors
    def components(
        kind: str = typer.Argument(None, help="Only this kind (e.g. refiner, alignment_loss)."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every param with its type and default."),
        pattern: str = typer.Option("*", "--filter", "-f", help="Glob on component names, e.g. 'gl*'."),
        code: list[Path] = CodeOption,
    ) -> None:
        """List registered components: name, version, description (and params with -v).

        Example: [bold]t2i components refiner -v[/]
        """
        from rich.table import Table

        from t2i.registry import KINDS, get_registry

        import_code(code)
        kinds = [get_registry(kind).kind] if kind else list(KINDS)
        for k in kinds:
            reg = get_registry(k)
            entries = reg.entries(pattern)
            table = Table(title=f"{k}  [dim]{escape(reg.description)}[/]", title_justify="left", show_lines=verbose)
            table.add_column("name", style="bold cyan", no_wrap=True)
            table.add_column("version", justify="right")
            table.add_column("description")
            if verbose:
                table.add_column("params (type = default)")
                table.add_column("defined in", style="dim")
            for entry in entries:
                row = [entry.base, f"v{entry.version}", entry.description]
                if verbose:
                    params = []
                    for name, info in entry.params.model_fields.items():
                        default = (
                            "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
                        )
                        params.append(f"{name}: {_type_name(info.annotation)} = {default}")
                    row += ["\n".join(params) or "-", entry.defined_at]
                table.add_row(*[escape(cell) for cell in row])  # descriptions, reprs, paths: not markup
            if not entries:
                table.add_row("-", "", "(none registered)", *([""] * (2 if verbose else 0)))
            console.print(table)
        report_plugin_errors()
