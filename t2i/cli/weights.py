"""``t2i weights list|fetch|verify``: the external files of the manifest and the cache folder (docs/weights.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from t2i.cli._common import UserError, console, user_errors

weights_app = typer.Typer(help="List, fetch and verify external weights files (the manifest).", no_args_is_help=True)

_STATUS = {
    "ok": "[green]yes[/]",
    "ok-prefix": "[green]yes[/] (prefix)",
    "trusted": "[yellow]trusted[/]",
    "mismatch": "[red]MISMATCH[/]",
    "unknown": "[yellow]no digest[/]",
    "missing": "-",
}


def register(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")


def _size(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _hash(e) -> str:
    if e.sha256:
        return e.sha256[:8] + "…"
    if e.sha256_prefix:
        return f"{e.sha256_prefix} (prefix)"
    return "unknown"


@weights_app.command("list")
@user_errors
def list_weights() -> None:
    """Every file of the manifest: what uses it, its size, whether it is in the cache and verified.

    Example: [bold]t2i weights list[/]
    """
    from rich.table import Table

    from t2i import weights

    folder = weights.cache_dir()
    table = Table(title=f"weights (manifest {weights.manifest_path()})", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("used by", ratio=1)
    for column in ("size", "SHA-256", "source", "in cache", "verified"):
        table.add_column(column, no_wrap=True)
    prefix_only = []
    for e in weights.load_manifest().values():
        status, _ = weights.verify(e, folder)
        source = "manual" if e.manual else "fetch"
        in_cache = "yes" if status != "missing" else "no"
        table.add_row(e.name, e.used_by, _size(e.size), _hash(e), source, in_cache, _STATUS[status])
        if e.sha256_prefix and not e.sha256:
            prefix_only.append(e.name)
    console.print(table)
    console.print(f"cache folder: {folder} (set T2I_WEIGHTS to change it)", highlight=False, soft_wrap=True)
    if prefix_only:
        console.print(
            f"{', '.join(prefix_only)}: no full SHA-256 is published; only the 8-digit prefix of the file name is "
            "checked, as torch.hub does.",
            highlight=False,
            soft_wrap=True,
        )


@weights_app.command("fetch")
@user_errors
def fetch(
    name: str = typer.Argument(..., help="Manifest name (see `t2i weights list`)."),
    url: str = typer.Option(None, "--url", help="Download from this mirror instead (same hash check)."),
    file: Path = typer.Option(None, "--file", help="Import this local file instead of downloading (hash check)."),
    trust: bool = typer.Option(False, "--trust", help="Accept a file whose digest the manifest does not know."),
) -> None:
    """Download NAME into the cache folder (resumable), check its SHA-256, and only then keep it.

    Example: [bold]t2i weights fetch inception_v3_imagenet[/]
    """
    from t2i import weights

    if url and file:
        raise UserError("give --url or --file, not both")
    e = weights.entry(name)
    status, digest = weights.verify(e)
    if file is None and url is None and status in ("ok", "ok-prefix", "trusted"):
        console.print(f"{e.name}: already in {weights.cache_dir()} (SHA-256 {digest})", highlight=False, soft_wrap=True)
        return
    if file is not None:
        path = weights.import_file(e, file, trust=trust)
    else:
        if e.manual and url is None:
            console.print(weights.manual_steps(e), highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        path = weights.fetch(e, url=url, trust=trust)
    status, digest = weights.verify(e)
    console.print(f"{e.name}: {path} (SHA-256 {digest}, {status})", highlight=False, soft_wrap=True)


@weights_app.command("verify")
@user_errors
def verify(
    name: str = typer.Argument(None, help="Manifest name; default: every cached file."),
    trust: bool = typer.Option(
        False, "--trust", help="Accept (and record) the digest of a file the manifest cannot check."
    ),
) -> None:
    """Re-hash cached files against the manifest. Exit 1 if any fails (or NAME is not cached).

    Example: [bold]t2i weights verify fid_inception[/]
    """
    from t2i import weights

    manifest = weights.load_manifest()
    entries = [weights.entry(name, manifest)] if name else list(manifest.values())
    failed = False
    for e in entries:
        status, digest = weights.verify(e, trust=trust)
        if status == "missing":
            if name:
                console.print(f"{e.name}: not in {weights.cache_dir()}", highlight=False, soft_wrap=True)
                failed = True
            continue
        line = f"{e.name}: {_STATUS[status]} SHA-256 {digest}"
        if status == "mismatch":
            line += f", expected {e.describe_hash()}: delete it and fetch again"
        elif status == "unknown":
            line += f"; no digest is published: if you trust its source, run `t2i weights verify {e.name} --trust`"
        elif status == "ok-prefix":
            line += f" (only the published prefix {e.sha256_prefix} is checked)"
        console.print(line, soft_wrap=True)
        failed |= status in ("mismatch", "unknown")
    if failed:
        raise typer.Exit(1)
