"""Checkpoint files: one dict of tensors and plain data, written atomically, read with ``weights_only=True``.

Layout (``format_version`` 1)::

    {"format_version": 1, "t2i_version": str, "kind": "gan" | "damsm" | "stream",
     "step": int, "recipe": dict (resolved), "vocab": dict | None,
     "models": {"generator": sd, "generator_ema": sd, "discriminators": [sd, ...],
                "text_encoder": sd, "image_encoder": sd, "captioner": sd},   # only those present
     "optimizers": {...}, "rng": {...}, "data": {...}, "metrics": {...}}

Nothing in it needs arbitrary unpickling (tensors, numbers, strings and plain containers only), so every file loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; ``reason`` says why without the path (for lists of tried files)."""

    t2i_user_error = True

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def _writer_tag() -> str:
    """``host-pid`` of this process, in temp-file names, so an orphaned temp can be recognised as one."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]
    return f"{host}-{os.getpid()}"


def save_atomic(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` with torch.save to a temp file in the same folder, fsync, then rename over ``path``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Load a t2i checkpoint safely, with a clear message for missing, corrupt or foreign files."""
    import torch

    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise CheckpointError(f"{path} is a folder without checkpoints/last.pt")
        path = candidate
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}", "not found")
    if path.stat().st_size == 0:
        raise _unusable(path, "is not a readable checkpoint: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():  # torch's note on a plain pickle's protocol would only precede our message
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad bytes; each is a message, never a traceback
        raise _unusable(path, _load_failure(path, exc)) from None
    if not isinstance(data, dict) or "format_version" not in data:
        raise _unusable(path, "is not a t2i checkpoint (no format_version); original files go through `t2i import`")
    if data["format_version"] > FORMAT_VERSION:
        raise _unusable(path, f"has format_version {data['format_version']}; this t2i reads up to {FORMAT_VERSION}")
    data["_path"] = str(path)
    return data


def _unusable(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{path} {reason}", reason)


_ZIP_MAGIC = b"PK\x03\x04"
_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL (\S+)")
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_]\w*$")


def _load_failure(path: Path, exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``: a pickle that names code, or bytes it cannot read."""
    text = str(exc)
    named = _GLOBAL_RE.search(text)
    name = named.group(1) if named else _pickled_global(path)
    if name is not None:
        return (
            f"needs arbitrary unpickling (it refers to {name}), which t2i refuses (weights_only=True). "
            "If it is an original AttnGAN/DM-GAN file, convert it with `t2i import`."
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Weights only load failed" in text:
        # torch's advice (weights_only=False) is about pickles that name code; these bytes are no such pickle
        lines = [line for line in lines if line.startswith("Unsupported")]
    detail = lines[0].split(". ")[0][:200] if lines else ""
    return f"is not a readable checkpoint (corrupt or truncated): {type(exc).__name__}" + (
        f": {detail}" if detail else ""
    )


def _pickled_global(path: Path, max_ops: int = 100_000) -> str | None:
    """The first class or function a plain pickle refers to (``module.name``), or None if it names none.

    A pickle refers to code with GLOBAL (``module\\nname``) or STACK_GLOBAL (the two strings before it). Random bytes
    can contain those opcodes too, so only identifier-like names count.
    """
    import pickletools

    with path.open("rb") as handle:
        if handle.read(4) == _ZIP_MAGIC:
            return None  # torch's zip format: torch's own message names the global
        handle.seek(0)
        strings: list[str] = []
        try:
            for count, (opcode, arg, _pos) in enumerate(pickletools.genops(handle)):
                if count >= max_ops:
                    return None
                if opcode.name == "GLOBAL" and isinstance(arg, str):
                    name = arg.replace(" ", ".")
                elif opcode.name == "STACK_GLOBAL" and len(strings) == 2:
                    name = ".".join(strings)
                else:
                    if isinstance(arg, str):
                        strings = [*strings[-1:], arg]
                    continue
                return name if all(_IDENTIFIER_RE.match(part) for part in name.split(".")) else None
        except Exception:  # not a pickle (or a damaged one) from here on
            return None
    return None


_STEP_RE = re.compile(r"step_(\d+)\.pt$")


class CheckpointKeeper:
    """``last.pt`` always, ``step_N.pt`` every N steps (keeping the newest ``keep``), ``best-<metric>.pt``."""

    def __init__(self, folder: Path, keep: int = 3):
        self.folder = Path(folder)
        self.keep = keep

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    def save(self, state: dict[str, Any], step: int, *, periodic: bool) -> list[Path]:
        from t2i.train.finite import require_finite_state  # never a NaN checkpoint, whoever trains

        require_finite_state(state, self.last)
        remove_stale_temps(self.folder)
        written = [save_atomic(state, self.last)]
        if periodic and self.keep > 0:
            written.append(save_atomic(state, self.folder / f"step_{step:08d}.pt"))
            self._prune()
        return written

    def save_best(self, state: dict[str, Any], metric: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", metric)
        from t2i.train.finite import require_finite_state

        require_finite_state(state, self.folder / f"best-{safe}.pt")
        return save_atomic(state, self.folder / f"best-{safe}.pt")

    def periodic(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("step_*.pt") if _STEP_RE.search(p.name))

    def _prune(self) -> None:
        for old in self.periodic()[: -self.keep]:
            old.unlink(missing_ok=True)

    def latest_good(self, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
        """The newest checkpoint that loads: last.pt, else the newest periodic one.

        Falling back is reported through ``warn`` (default: a line on stderr) with every file tried and why it
        failed; when nothing loads, the error lists them.
        """
        remove_stale_temps(self.folder)
        failures = []
        for candidate in [self.last, *reversed(self.periodic())]:
            if not candidate.exists():
                continue
            try:
                state = load(candidate)
            except CheckpointError as exc:
                failures.append(f"{candidate.name} ({exc.reason})")
                continue
            if failures:
                message = f"using {candidate.name} in {self.folder}; tried before it: {'; '.join(failures)}"
                (warn or _warn_stderr)(message)
            return state
        detail = "tried " + "; ".join(failures) if failures else "no checkpoint files"
        raise CheckpointError(f"no loadable checkpoint in {self.folder}: {detail}")


def _warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


_TEMP_RE = re.compile(r"^\..+?\.(?:(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)\.)?[^.]+\.tmp$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, ValueError, OverflowError):
        return True  # exists (another user's), or cannot tell: keep the file
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete temp files that a killed writer left behind (``save_atomic`` never got to rename them).

    A temp is stale when it is older than the newest finished checkpoint in the folder (a live writer's temp is
    newer than anything it wrote before), or when its name says it was written on this host by a process that no
    longer exists.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    finished = [p.stat().st_mtime for p in folder.glob("*.pt") if p.is_file()]
    newest = max(finished, default=None)
    host = _writer_tag().rsplit("-", 1)[0]
    removed = []
    for temp in folder.glob(".*.tmp"):
        match = _TEMP_RE.match(temp.name)
        if match is None:
            continue
        try:
            older = newest is not None and temp.stat().st_mtime < newest
        except FileNotFoundError:
            continue  # its writer just renamed it
        dead = match["pid"] is not None and match["host"] == host and not _pid_alive(int(match["pid"]))
        if older or dead:
            temp.unlink(missing_ok=True)
            removed.append(temp)
    return removed
