"""External weights files by name: the manifest, the cache folder, fetch / import / verify, and resolution.

The manifest (``weights_manifest.toml`` in this package, or ``$T2I_WEIGHTS_MANIFEST``) lists every file t2i can
use. Files live in the cache folder ``$T2I_WEIGHTS`` (default ``$XDG_CACHE_HOME/t2i/weights``, else
``~/.cache/t2i/weights``, as torch.hub does with ``$TORCH_HOME``). A download goes to ``FILE.partial`` (resumed with
an HTTP Range request), is checked against the manifest's SHA-256 and only then renamed into place; a mismatch
leaves nothing behind. ``T2I_OFFLINE=1`` forbids any network access.

A frozen pretrained network names its weights by manifest name (fetched on first use), by path, or as
``"random"`` (an explicit, logged choice); unset is an error. No torch import here: the CLI stays fast.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import hashlib
import logging
import os
import shutil
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "RANDOM",
    "WeightsEntry",
    "WeightsError",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "WeightsUnavailableError",
    "cache_dir",
    "ensure",
    "entry",
    "fetch",
    "import_file",
    "load_manifest",
    "loaded_from_checkpoint",
    "resolve",
    "verify",
]

RANDOM = "random"
MANIFEST_ENV = "T2I_WEIGHTS_MANIFEST"
PACKAGED_MANIFEST = Path(__file__).with_name("weights_manifest.toml")
_CHUNK = 1 << 20
_TIMEOUT_S = 30

log = logging.getLogger("t2i.weights")


class WeightsError(RuntimeError):
    t2i_user_error = True


class WeightsNotFoundError(FileNotFoundError):
    t2i_user_error = True


class WeightsUnavailableError(WeightsNotFoundError):
    """Not in the cache and it cannot be fetched now (offline, manual download, server error)."""


class WeightsMismatchError(ValueError):
    t2i_user_error = True


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    file: str
    used_by: str
    urls: tuple[str, ...]
    sha256: str = ""  # full digest; "" when none is published
    sha256_prefix: str = ""  # what torch hub file names carry, when no full digest is known
    size: int | None = None
    licence: str = ""
    manual: bool = False
    note: str = ""
    also_accepted: tuple[tuple[str, str], ...] = ()  # (file, sha256 or prefix)

    @property
    def expected(self) -> str:
        """The digest (or prefix) a file must match; "" when unknown."""
        return self.sha256 or self.sha256_prefix

    def describe_hash(self) -> str:
        if self.sha256:
            return self.sha256
        if self.sha256_prefix:
            return f"starting with {self.sha256_prefix} (only this prefix is published)"
        return "unknown (no digest published; accept a file with --trust)"

    def files(self) -> list[tuple[str, str]]:
        return [(self.file, self.expected), *self.also_accepted]


# -- manifest and cache folder ---------------------------------------------------------------------------------------
def manifest_path() -> Path:
    return Path(os.environ.get(MANIFEST_ENV) or PACKAGED_MANIFEST).expanduser()


def load_manifest(path: str | Path | None = None) -> dict[str, WeightsEntry]:
    path = Path(path) if path is not None else manifest_path()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise WeightsError(f"cannot read the weights manifest {path}: {exc}") from None
    return {name: _entry(name, fields, path) for name, fields in data.items()}


def _entry(name: str, fields: dict[str, Any], path: Path) -> WeightsEntry:
    try:
        urls = fields["urls"]
        accepted = tuple((a["file"], a.get("sha256") or a["sha256_prefix"]) for a in fields.get("also_accepted", ()))
        return WeightsEntry(
            name=name,
            file=fields["file"],
            used_by=fields.get("used_by", ""),
            urls=(urls,) if isinstance(urls, str) else tuple(urls),
            sha256=fields.get("sha256", ""),
            sha256_prefix=fields.get("sha256_prefix", ""),
            size=fields.get("size"),
            licence=fields.get("licence", ""),
            manual=bool(fields.get("manual", False)),
            note=fields.get("note", ""),
            also_accepted=accepted,
        )
    except (KeyError, TypeError) as exc:
        raise WeightsError(f"weights manifest {path}: entry [{name}] lacks or mistypes {exc}") from None


def entry(name: str, manifest: dict[str, WeightsEntry] | None = None) -> WeightsEntry:
    manifest = load_manifest() if manifest is None else manifest
    if name not in manifest:
        close = difflib.get_close_matches(name, list(manifest), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise WeightsError(f"no weights named {name!r} in {manifest_path()}.{hint} Known: {', '.join(manifest)}")
    return manifest[name]


def cache_dir() -> Path:
    """``$T2I_WEIGHTS``, else ``$XDG_CACHE_HOME/t2i/weights``, else ``~/.cache/t2i/weights``."""
    if os.environ.get("T2I_WEIGHTS"):
        return Path(os.environ["T2I_WEIGHTS"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "t2i" / "weights"


def offline() -> bool:
    return os.environ.get("T2I_OFFLINE", "").lower() not in ("", "0", "false", "no")


def cached(e: WeightsEntry, folder: Path | None = None) -> Path | None:
    """The entry's file (or an accepted older name) in ``folder``, if present."""
    folder = Path(folder) if folder is not None else cache_dir()
    for file, _ in e.files():
        if (folder / file).is_file():
            return folder / file
    return None


# -- hashing and checking --------------------------------------------------------------------------------------------
_digests: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, memoised by (path, size, mtime)."""
    stat = path.stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def _trust_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _check(e: WeightsEntry, path: Path, expected: str, *, trust: bool, source: str) -> str:
    """Raise unless ``path`` matches ``expected`` (or is trusted when no digest is known). -> its digest."""
    digest = sha256_file(path)
    if expected:
        if digest.startswith(expected):
            return digest
        raise WeightsMismatchError(
            f"{source} has SHA-256 {digest}, expected {e.describe_hash()}: it is not the {e.name} file "
            f"{e.file} (corrupt, partial or a different file). Refused."
        )
    trusted = _trust_file(path)
    if trusted.is_file() and trusted.read_text().split()[0] == digest:
        return digest
    if not trust:
        raise WeightsMismatchError(
            f"{source} has SHA-256 {digest}; no digest is published for {e.name} ({e.file}), so t2i cannot check "
            f"it. If you trust where it came from ({', '.join(e.urls)}), accept this digest with --trust "
            f"(`t2i weights fetch {e.name} ... --trust` or `t2i weights verify {e.name} --trust`)."
        )
    return digest


def verify(e: WeightsEntry, folder: Path | None = None, *, trust: bool = False) -> tuple[str, str]:
    """Re-hash the cached file. -> (status, digest): ok | ok-prefix | trusted | missing | mismatch | unknown."""
    path = cached(e, folder)
    if path is None:
        return "missing", ""
    expected = dict(e.files())[path.name]
    digest = sha256_file(path)
    if expected:
        if not digest.startswith(expected):
            return "mismatch", digest
        return ("ok" if len(expected) == 64 else "ok-prefix"), digest
    trusted = _trust_file(path)
    if trusted.is_file() and trusted.read_text().split()[0] == digest:
        return "trusted", digest
    if trust:
        trusted.write_text(f"{digest}  {path.name}\n")
        return "trusted", digest
    return "unknown", digest


# -- fetching --------------------------------------------------------------------------------------------------------
def manual_steps(e: WeightsEntry, folder: Path | None = None) -> str:
    folder = Path(folder) if folder is not None else cache_dir()
    return (
        f"{e.name} ({e.file}) is on a Google Drive link that a plain download cannot fetch. By hand:\n"
        f"  1. open {e.urls[0]} in a browser and save the file as {e.file}\n"
        f"  2. run `t2i weights fetch {e.name} --file PATH/{e.file}` (or put it at {folder / e.file})\n"
        f"  3. run `t2i weights verify {e.name}`"
        + ("" if e.expected else " (no digest is published: check the printed SHA-256, then add --trust)")
    )


def _unavailable(e: WeightsEntry, folder: Path, reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"weights {e.name}: {e.file} is not in {folder} and could not be fetched ({reason}). Expected SHA-256 "
        f"{e.describe_hash()}. Download it from {' or '.join(e.urls)} on a machine that is online, then run "
        f"`t2i weights fetch {e.name} --file PATH` or copy it to {folder / e.file} (the cache folder; set "
        "T2I_WEIGHTS to use another)."
    )


def fetch(
    e: WeightsEntry,
    *,
    url: str | None = None,
    folder: Path | None = None,
    trust: bool = False,
    progress: bool = True,
) -> Path:
    """Download ``e`` into ``folder`` (resuming a ``.partial``), check its hash, rename it into place."""
    folder = Path(folder) if folder is not None else cache_dir()
    if e.manual and url is None:
        raise WeightsUnavailableError(manual_steps(e, folder))
    if offline():
        raise _unavailable(e, folder, "T2I_OFFLINE is set")
    folder.mkdir(parents=True, exist_ok=True)
    final, partial = folder / e.file, folder / (e.file + ".partial")
    errors = []
    for source in [url] if url else list(e.urls):
        try:
            _download(source, partial, e.size, progress=progress, label=e.file)
        except (urllib.error.URLError, OSError, ValueError) as exc:  # HTTPError is a URLError
            errors.append(f"{source}: {getattr(exc, 'reason', None) or exc}")
            continue
        return _install(e, partial, final, trust=trust, source=source)
    raise _unavailable(e, folder, "; ".join(errors))


def import_file(e: WeightsEntry, source: Path, *, folder: Path | None = None, trust: bool = False) -> Path:
    """Copy a local file into the cache after checking its hash."""
    folder = Path(folder) if folder is not None else cache_dir()
    source = Path(source).expanduser()
    if not source.is_file():
        raise WeightsNotFoundError(f"{source} does not exist")
    _check(e, source, e.expected, trust=trust, source=str(source))
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / (e.file + ".partial")
    shutil.copyfile(source, partial)
    return _install(e, partial, folder / e.file, trust=trust, source=str(source))


def _install(e: WeightsEntry, partial: Path, final: Path, *, trust: bool, source: str) -> Path:
    try:
        digest = _check(e, partial, e.expected, trust=trust, source=f"the file from {source}")
    except WeightsMismatchError:
        partial.unlink(missing_ok=True)  # nothing unverified stays in the cache
        raise
    os.replace(partial, final)  # atomic: the final name only ever holds a checked file
    if not e.expected:
        _trust_file(final).write_text(f"{digest}  {final.name}\n")
    return final


def _download(url: str, partial: Path, size: int | None, *, progress: bool, label: str) -> None:
    start = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "t2i"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start and (size is None or start == size):
            return  # the partial file is already complete
        raise
    with response:
        resumed = start > 0 and response.status == 206
        length = response.headers.get("Content-Length")
        total = (start if resumed else 0) + int(length) if length else size
        with open(partial, "ab" if resumed else "wb") as out, _progress(progress, label, total) as advance:
            advance(start if resumed else 0)
            while block := response.read(_CHUNK):
                out.write(block)
                advance(len(block))


@contextlib.contextmanager
def _progress(show: bool, label: str, total: int | None) -> Iterator[Any]:
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def ensure(e: WeightsEntry, folder: Path | None = None) -> Path:
    """The checked cached file of ``e``, fetched first when absent (with a message)."""
    folder = Path(folder) if folder is not None else cache_dir()
    path = cached(e, folder)
    if path is not None:
        _check(e, path, dict(e.files())[path.name], trust=False, source=str(path))
        return path
    if e.manual:
        raise WeightsUnavailableError(manual_steps(e, folder))
    if offline():
        raise _unavailable(e, folder, "T2I_OFFLINE is set")
    size = f", {e.size / 2**20:.1f} MiB" if e.size else ""
    log.warning("fetching weights %s (%s%s) from %s into %s", e.name, e.file, size, e.urls[0], folder)
    return fetch(e, folder=folder)


# -- resolving a component's `weights` param ---------------------------------------------------------------------------
_from_checkpoint: contextvars.ContextVar[bool] = contextvars.ContextVar("t2i_weights_from_checkpoint", default=False)


@contextlib.contextmanager
def loaded_from_checkpoint(active: bool = True) -> Iterator[None]:
    """Build frozen networks whose whole state a checkpoint overwrites next: their trunks are not resolved."""
    token = _from_checkpoint.set(active)
    try:
        yield
    finally:
        _from_checkpoint.reset(token)


def resolve(value: str | None, *, param: str, what: str, suggest: str) -> Path | None:
    """A frozen network's ``weights`` value -> a file path, or None for a random initialisation.

    ``value`` is a manifest name (checked in the cache, fetched on first use), a path (returned as is; the caller
    reports a missing file), ``"random"`` (logged) or None (an error naming ``param``, unless a checkpoint load
    follows, see :func:`loaded_from_checkpoint`).
    """
    if _from_checkpoint.get():
        return None
    if value is None:
        raise WeightsError(
            f"{param} is not set: the {what} is a frozen pretrained network and would stay randomly initialised. "
            f'Set {param} = "{suggest}" (manifest entry, fetched into {cache_dir()} on first use; '
            f'`t2i weights list` shows it), a file path, or "random" to keep a random trunk on purpose (tests).'
        )
    if value == RANDOM:
        log.warning('%s = "random": the frozen %s is randomly initialised (not for results)', param, what)
        return None
    manifest = load_manifest()
    if value in manifest:
        return ensure(manifest[value])
    if "/" not in value and "." not in value and "~" not in value:  # looks like a name, not a file
        close = difflib.get_close_matches(value, list(manifest), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise WeightsError(f"{param} = {value!r} is neither a weights name in the manifest nor a file path.{hint}")
    return Path(value).expanduser()


def random_weights(recipe: Any) -> dict[str, Any]:
    """The recipe's explicitly random frozen networks and pretrained encoders, by recipe path (for env.json)."""
    out: dict[str, Any] = {}
    for path, _kind, comp in recipe.components():
        params = comp.params
        if getattr(params, "weights", None) == RANDOM:
            out[f"{path}.weights"] = RANDOM
        if getattr(params, "allow_random_backbone", False):
            out[f"{path}.allow_random_backbone"] = True
    pretrained = recipe.train.pretrained
    for role in type(pretrained).model_fields:
        if getattr(pretrained, role) == RANDOM:
            out[f"train.pretrained.{role}"] = RANDOM
    return out
