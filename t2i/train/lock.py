"""One training process per run folder: a lock file created atomically (O_CREAT | O_EXCL) with pid, host and time.

A second process is refused, naming the holder. A lock left by a process that died without cleaning up (kill -9, a
crash) on this host is taken over; on another host liveness cannot be checked, so the message says which file to
delete once that process is known to be gone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCK_NAME = "train.lock"
_WRITE_GRACE_S = 10.0  # an unreadable lock younger than this may be one another process is still writing


_GONE: dict[str, Any] = {}  # _read's answer when the lock file has disappeared


class RunLockedError(RuntimeError):
    t2i_user_error = True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``with RunLock(folder, log=print):`` holds ``folder/train.lock`` for the block, also through exceptions."""

    def __init__(self, folder: str | Path, log: Callable[[str], None] | None = None):
        self.path = Path(folder) / LOCK_NAME
        self.log = log or (lambda line: None)
        self.held = False

    def acquire(self) -> RunLock:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now().isoformat(timespec="seconds"),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(record) + "\n")
            self.held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}: other processes keep creating it")

    def _take_over_if_stale(self) -> None:
        holder = self._read()
        if holder is _GONE:
            return  # released meanwhile: try again
        if holder is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return  # released meanwhile: try again
            if age < _WRITE_GRACE_S:
                time.sleep(0.5)  # its owner is still writing it
                holder = self._read()
            if holder is _GONE:
                return
            if holder is None:
                self.log(f"taking over the unreadable lock {self.path}")
                self.path.unlink(missing_ok=True)
                return
        pid, host = holder.get("pid"), holder.get("host")
        where = f"pid {pid} on {host}, since {holder.get('started', '?')}"
        if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            self.log(f"taking over the stale lock {self.path} ({where}: that process is gone)")
            self.path.unlink(missing_ok=True)
            return
        hint = "" if host == socket.gethostname() else "; if that process is gone, delete the lock file"
        raise RunLockedError(f"run folder {self.path.parent} is in use by {where} (lock file {self.path}){hint}")

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return _GONE
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = self._read()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
