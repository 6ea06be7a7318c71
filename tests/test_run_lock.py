"""The run-folder lock's less common cases: another host, an unreadable lock, a lock taken over meanwhile."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from t2i.train import lock as lock_mod
from t2i.train.lock import RunLock, RunLockedError


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    path = tmp_path / "train.lock"
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "2026-01-01T00:00:00"}))
    with pytest.raises(RunLockedError) as info:
        RunLock(tmp_path).acquire()
    assert str(info.value) == (
        f"run folder {tmp_path} is in use by pid 1 on elsewhere, since 2026-01-01T00:00:00 (lock file {path}); "
        "if that process is gone, delete the lock file"
    )
    assert json.loads(path.read_text())["host"] == "elsewhere"


def test_an_old_unreadable_lock_is_taken_over_and_said(tmp_path):
    path = tmp_path / "train.lock"
    path.write_text("{half a reco")
    old = time.time() - 60
    os.utime(path, (old, old))
    notes: list[str] = []
    with RunLock(tmp_path, log=notes.append):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert notes == [f"taking over the unreadable lock {path}"]


def test_a_young_unreadable_lock_gets_time_to_be_written(tmp_path, monkeypatch):
    """A lock being written by its owner right now is read again after a pause, then respected."""
    path = tmp_path / "train.lock"
    path.write_text("")
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}
    monkeypatch.setattr(lock_mod.time, "sleep", lambda s: path.write_text(json.dumps(owner)))
    with pytest.raises(RunLockedError, match=rf"in use by pid {os.getpid()} on "):
        RunLock(tmp_path).acquire()


def test_a_process_owned_by_someone_else_counts_as_alive(monkeypatch):
    def refuse(pid, sig):
        raise PermissionError

    monkeypatch.setattr(lock_mod.os, "kill", refuse)
    assert lock_mod._alive(12345) is True


def test_release_leaves_a_lock_that_another_process_took_over(tmp_path):
    held = RunLock(tmp_path).acquire()
    path = tmp_path / "train.lock"
    path.write_text(json.dumps({"pid": os.getpid() + 1, "host": socket.gethostname(), "started": "x"}))
    held.release()
    assert path.exists() and not held.held
    held.release()  # a second release is a no-op


def test_a_lock_that_keeps_coming_back_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(RunLock, "_take_over_if_stale", lambda self: None)  # "released meanwhile", every time
    (tmp_path / "train.lock").write_text("{}")
    with pytest.raises(RunLockedError) as info:
        RunLock(tmp_path).acquire()
    assert str(info.value) == f"could not take the lock {tmp_path / 'train.lock'}: other processes keep creating it"
