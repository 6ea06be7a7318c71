"""Checkpoint file handling that the training tests reach only on their happy path (t2i/train/checkpoint.py).

Each test pins one behaviour a silent change would break without a crash: the names in the refusal of a pickle that
refers to code, where ``best-<metric>.pt`` lands, what a fallback to an older checkpoint reports, and the liveness
check of a temp file's writer (which must never signal the process it asks about).
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from t2i.train import checkpoint as ckpt


def _state(step: int = 1) -> dict:
    return {"format_version": ckpt.FORMAT_VERSION, "step": step, "models": {"w": torch.ones(2)}}


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickled_global_names_the_class_a_plain_pickle_refers_to(tmp_path, protocol):
    # protocol 2 writes GLOBAL ("argparse Namespace"), protocol 4 STACK_GLOBAL (two strings before it)
    path = tmp_path / "foreign.pkl"
    path.write_bytes(pickle.dumps({"args": Namespace(lr=0.1)}, protocol=protocol))
    assert ckpt._pickled_global(path) == "argparse.Namespace"


def test_pickled_global_is_none_for_plain_data_zip_files_and_random_bytes(tmp_path):
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"step": 3, "name": "a b", "values": [1.0, 2.0]}, protocol=4))
    assert ckpt._pickled_global(plain) is None
    zipped = tmp_path / "zip.pt"
    torch.save({"net": Namespace(a=1)}, zipped)  # torch's own message names the global of a zip checkpoint
    assert ckpt._pickled_global(zipped) is None
    noise = tmp_path / "noise.bin"
    noise.write_bytes(b"c not an identifier\n(\n" + bytes(range(256)))  # GLOBAL opcode with a non-identifier name
    assert ckpt._pickled_global(noise) is None


def test_a_plain_pickle_of_code_is_refused_naming_the_class(tmp_path):
    path = tmp_path / "original.pth"
    buffer = io.BytesIO()
    pickle.dump({"args": Namespace(lr=0.1)}, buffer, protocol=2)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load(path)
    assert "argparse.Namespace" in str(info.value) and "weights_only=True" in str(info.value)
    assert "t2i import" in str(info.value)
    assert str(info.value).startswith(str(path)) and not info.value.reason.startswith(str(path))


def test_truncated_checkpoint_says_corrupt_or_truncated_with_the_cause(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_atomic(_state(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load(path)
    assert info.value.reason == (  # the exception type, then the first sentence of torch's message
        "is not a readable checkpoint (corrupt or truncated): RuntimeError: PytorchStreamReader failed reading zip "
        "archive: failed finding central directory"
    )


def test_bytes_that_are_no_pickle_of_code_get_torchs_reason_without_its_weights_only_advice(tmp_path):
    path = tmp_path / "odd.pt"
    path.write_bytes(b"\x80\x02Pabc\n.")  # a persistent-id opcode: refused by the weights-only unpickler
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load(path)
    # torch's text goes on about weights_only=False; that advice is for pickles that name code, which this is not
    assert (
        info.value.reason
        == "is not a readable checkpoint (corrupt or truncated): UnpicklingError: Unsupported operand 80"
    )


def test_checkpoint_error_keeps_the_reason_without_the_path(tmp_path):
    error = ckpt._unusable(tmp_path / "x.pt", "is broken")
    assert str(error) == f"{tmp_path / 'x.pt'} is broken" and error.reason == "is broken"
    assert ckpt.CheckpointError("whole message").reason == "whole message"


def test_best_checkpoint_name_keeps_the_metric_readable(tmp_path):
    keeper = ckpt.CheckpointKeeper(tmp_path)
    path = keeper.save_best(_state(), "R_precision-2.v1 (val)/x")
    assert path == tmp_path / "best-R_precision-2.v1__val__x.pt"
    assert ckpt.load(path)["step"] == 1
    bad = _state()
    bad["models"]["w"] = torch.tensor([float("nan")])
    with pytest.raises(Exception, match=r"best-fid\.pt"):  # the refusal names the file it would have written
        keeper.save_best(bad, "fid")
    assert not (tmp_path / "best-fid.pt").exists()


def test_fallback_to_an_older_checkpoint_names_every_file_tried(tmp_path):
    keeper = ckpt.CheckpointKeeper(tmp_path, keep=3)
    keeper.save(_state(100), 100, periodic=True)
    keeper.save(_state(200), 200, periodic=True)
    keeper.last.write_bytes(b"garbage")
    (tmp_path / "step_00000200.pt").write_bytes(b"")
    warnings: list[str] = []
    state = keeper.latest_good(warn=warnings.append)
    assert state["step"] == 100
    (message,) = warnings
    assert message.startswith(f"using step_00000100.pt in {tmp_path}; tried before it: last.pt (")
    assert "; step_00000200.pt (is not a readable checkpoint: empty file (0 bytes))" in message


def test_no_loadable_checkpoint_lists_what_was_tried(tmp_path):
    keeper = ckpt.CheckpointKeeper(tmp_path, keep=3)
    with pytest.raises(ckpt.CheckpointError, match=r"no loadable checkpoint in .*: no checkpoint files$"):
        keeper.latest_good()
    keeper.last.write_bytes(b"garbage")
    (tmp_path / "step_00000100.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError) as info:
        keeper.latest_good()
    assert str(info.value).startswith(f"no loadable checkpoint in {tmp_path}: tried last.pt (")
    assert str(info.value).endswith("); step_00000100.pt (is not a readable checkpoint: empty file (0 bytes))")


def test_fallback_warning_goes_to_stderr_by_default(tmp_path, capsys):
    keeper = ckpt.CheckpointKeeper(tmp_path, keep=3)
    keeper.save(_state(100), 100, periodic=True)
    keeper.last.write_bytes(b"garbage")
    keeper.latest_good()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("warning: using step_00000100.pt in ") and captured.err.endswith("\n")


def test_pid_alive_asks_without_signalling():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert ckpt._pid_alive(child.pid) is True
        time.sleep(0.2)
        assert child.poll() is None, "the liveness check signalled the process"
    finally:
        child.kill()
        child.wait()
    assert ckpt._pid_alive(child.pid) is False  # reaped: no such process
    assert ckpt._pid_alive(__import__("os").getpid()) is True


def test_pid_of_another_users_process_counts_as_alive(monkeypatch):
    def refuse(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(ckpt.os, "kill", refuse)
    assert ckpt._pid_alive(1) is True  # exists, not ours: its temp file must stay


def test_stale_temp_of_a_dead_writer_on_this_host_is_removed(tmp_path):
    host = ckpt._writer_tag().rsplit("-", 1)[0]
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = tmp_path / f".last.pt.{host}-{child.pid}.abc123.tmp"
    alive = tmp_path / f".last.pt.{host}-{__import__('os').getpid()}.def456.tmp"
    other_host = tmp_path / f".last.pt.otherhost{host}-{child.pid}.ghi789.tmp"
    unrelated = tmp_path / ".a.tmp"  # not a checkpoint writer's name: left alone, and the others still checked
    for temp in (unrelated, dead, alive, other_host):
        temp.write_bytes(b"partial")
    removed = ckpt.remove_stale_temps(tmp_path)
    assert removed == [dead] and alive.exists() and other_host.exists() and unrelated.exists()
    assert ckpt.remove_stale_temps(Path(tmp_path / "missing")) == []


def test_load_takes_a_run_folder_or_a_file_and_names_what_is_missing(tmp_path):
    run = tmp_path / "run"
    ckpt.save_atomic(_state(7), run / "checkpoints" / "last.pt")
    assert ckpt.load(run)["step"] == 7 and ckpt.load(run)["_path"] == str(run / "checkpoints" / "last.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"is a folder without checkpoints/last\.pt"):
        ckpt.load(tmp_path)
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load(tmp_path / "nope.pt")
    assert str(info.value) == f"checkpoint not found: {tmp_path / 'nope.pt'}" and info.value.reason == "not found"
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match=r"^/.*empty\.pt is not a readable checkpoint: empty file"):
        ckpt.load(tmp_path / "empty.pt")


def test_a_torch_file_that_is_not_a_t2i_checkpoint_is_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "foreign.pt")
    with pytest.raises(ckpt.CheckpointError, match="is not a t2i checkpoint \\(no format_version\\)"):
        ckpt.load(tmp_path / "foreign.pt")
    with pytest.raises(ckpt.CheckpointError, match=f"^{tmp_path / 'foreign.pt'} is not a t2i checkpoint"):
        ckpt.load(tmp_path / "foreign.pt")
    torch.save({"format_version": ckpt.FORMAT_VERSION + 1}, tmp_path / "newer.pt")
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load(tmp_path / "newer.pt")
    assert str(info.value) == (
        f"{tmp_path / 'newer.pt'} has format_version {ckpt.FORMAT_VERSION + 1}; "
        f"this t2i reads up to {ckpt.FORMAT_VERSION}"
    )
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ckpt.CheckpointError, match="is not a t2i checkpoint"):
        ckpt.load(tmp_path / "list.pt")


def test_atomic_write_goes_through_a_recognisable_temp_in_the_same_folder(tmp_path, monkeypatch):
    renames = []
    real_replace = ckpt.os.replace

    def spy(source, target):
        renames.append((Path(source), Path(target)))
        real_replace(source, target)

    monkeypatch.setattr(ckpt.os, "replace", spy)
    target = tmp_path / "deep" / "er" / "last.pt"  # parents are created
    ckpt.save_atomic(_state(), target)
    ((temp, final),) = renames
    assert final == target and temp.parent == target.parent and not temp.exists()
    match = ckpt._TEMP_RE.match(temp.name)  # what remove_stale_temps recognises as an orphan of this host and pid
    assert match is not None and temp.name.startswith(".last.pt.") and temp.name.endswith(".tmp")
    assert f"{match['host']}-{match['pid']}" == ckpt._writer_tag()


def test_a_failed_write_leaves_neither_temp_nor_target(tmp_path, monkeypatch):
    class DiskFull(OSError):
        pass

    def fail(obj, handle):
        handle.write(b"partial")
        raise DiskFull(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(DiskFull):
        ckpt.save_atomic(_state(), tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_periodic_checkpoints_with_keep_one_and_nan_refusal_naming_last(tmp_path):
    keeper = ckpt.CheckpointKeeper(tmp_path, keep=1)
    for step in (10, 20, 30):
        keeper.save(_state(step), step, periodic=True)
    assert [p.name for p in keeper.periodic()] == ["step_00000030.pt"]
    bad = _state(40)
    bad["models"]["w"] = torch.tensor([float("inf")])
    with pytest.raises(Exception, match=r"last\.pt"):
        keeper.save(bad, 40, periodic=True)
    assert ckpt.load(keeper.last)["step"] == 30


def test_writer_tag_keeps_the_host_s_letters_and_digits_up_to_32(monkeypatch):
    # the tag must match _TEMP_RE's host group whatever the host is called, and stay short in a file name
    monkeypatch.setattr(ckpt.socket, "gethostname", lambda: "GPU-node_07.Lab" + "x" * 40)
    tag = ckpt._writer_tag()
    assert tag == f"GPUnode07Lab{'x' * 20}-{__import__('os').getpid()}"
    assert ckpt._TEMP_RE.match(f".last.pt.{tag}.abc.tmp")["host"] == tag.rsplit("-", 1)[0]


def test_refusing_a_plain_pickle_shows_no_torch_protocol_warning_before_the_message(tmp_path):
    import warnings

    path = tmp_path / "original.pth"
    path.write_bytes(pickle.dumps({"args": Namespace(lr=0.1)}, protocol=4))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(ckpt.CheckpointError, match="refers to argparse.Namespace"):
            ckpt.load(path)
    assert [str(w.message) for w in shown] == []  # torch's "Detected pickle protocol 4" note says nothing useful


def test_a_load_failure_without_a_message_gives_the_exception_type_alone(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"\x00")
    assert ckpt._load_failure(path, ValueError("")) == "is not a readable checkpoint (corrupt or truncated): ValueError"
    # torch's weights-only text without an "Unsupported" line: nothing of it is worth repeating
    failure = ckpt._load_failure(path, RuntimeError("Weights only load failed. Re-running with weights_only=False"))
    assert failure == "is not a readable checkpoint (corrupt or truncated): RuntimeError"
    long = ckpt._load_failure(path, OSError("y" * 300 + ". second sentence"))
    assert long == "is not a readable checkpoint (corrupt or truncated): OSError: " + "y" * 200


def test_the_refusal_of_a_pickle_of_code_is_whole(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(pickle.dumps(Namespace(), protocol=2))
    assert ckpt._load_failure(path, RuntimeError("boom")) == (
        "needs arbitrary unpickling (it refers to argparse.Namespace), which t2i refuses (weights_only=True). "
        "If it is an original AttnGAN/DM-GAN file, convert it with `t2i import`."
    )


@pytest.mark.parametrize(
    ("module", "name", "named"),
    [
        ("argparse", "Namespace", True),
        ("torch._utils", "_rebuild_tensor_v2", True),
        ("x", "9y", False),
        ("a.b", "9c", False),
        ("a.9b", "c", False),
        ("a..b", "c", False),
    ],
)
def test_pickled_global_needs_every_dotted_part_to_be_an_identifier(tmp_path, module, name, named):
    path = tmp_path / "g.pkl"
    path.write_bytes(b"c" + f"{module}\n{name}\n".encode() + b".")  # protocol 0 GLOBAL
    assert ckpt._pickled_global(path) == (f"{module}.{name}" if named else None)


def test_pickled_global_gives_up_after_max_ops_opcodes(tmp_path):
    path = tmp_path / "late.pkl"
    path.write_bytes(pickle.dumps([0, 1, 2, Namespace()], protocol=2))
    import pickletools

    position = next(i for i, (op, _a, _p) in enumerate(pickletools.genops(path.read_bytes())) if op.name == "GLOBAL")
    assert ckpt._pickled_global(path, max_ops=position + 1) == "argparse.Namespace"
    assert ckpt._pickled_global(path, max_ops=position) is None


def test_a_temp_as_old_as_the_newest_checkpoint_is_kept(tmp_path):
    import os

    ckpt.save_atomic(_state(), tmp_path / "last.pt")
    stamp = (tmp_path / "last.pt").stat().st_mtime
    same = tmp_path / ".step.pt.otherhost-1.abc.tmp"  # another host's writer: only its age can make it stale
    older = tmp_path / ".step.pt.otherhost-2.def.tmp"
    for temp, mtime in ((same, stamp), (older, stamp - 10)):
        temp.write_bytes(b"partial")
        os.utime(temp, (mtime, mtime))
    assert ckpt.remove_stale_temps(tmp_path) == [older] and same.exists()


def test_a_keeper_keeps_three_periodic_checkpoints_by_default(tmp_path):
    keeper = ckpt.CheckpointKeeper(tmp_path)
    for step in (1, 2, 3, 4, 5):
        keeper.save(_state(step), step, periodic=True)
    assert [p.name for p in keeper.periodic()] == [f"step_0000000{s}.pt" for s in (3, 4, 5)]


def test_periodic_files_only_when_asked_and_kept(tmp_path):
    keeper = ckpt.CheckpointKeeper(tmp_path, keep=2)
    assert keeper.save(_state(1), 1, periodic=False) == [keeper.last]
    assert keeper.periodic() == []
    none_kept = ckpt.CheckpointKeeper(tmp_path / "zero", keep=0)  # keep_checkpoints = 0: last.pt only
    assert none_kept.save(_state(2), 2, periodic=True) == [none_kept.last]
    assert sorted(p.name for p in (tmp_path / "zero").iterdir()) == ["last.pt"]


def test_without_last_pt_the_newest_periodic_checkpoint_is_used_quietly(tmp_path):
    keeper = ckpt.CheckpointKeeper(tmp_path, keep=3)
    keeper.save(_state(10), 10, periodic=True)
    keeper.save(_state(20), 20, periodic=True)
    keeper.last.unlink()  # e.g. deleted by hand: nothing failed to load, so nothing to warn about
    warnings: list[str] = []
    assert keeper.latest_good(warn=warnings.append)["step"] == 20 and warnings == []
