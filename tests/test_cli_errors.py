"""No command ends in a traceback for a cause the user can fix; user and data text is printed as text, not markup."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from t2i.cli import app

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str):
    """Run a command in-process; an exception other than the exit the command chose is a failure here."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"t2i {' '.join(map(str, args))} raised {result.exception!r}") from result.exception
    return result


def user_error(result, *expected: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert text in result.stderr, result.stderr
    return result.stderr


def tiny_sets(data_root: Path) -> list[str]:
    values = [
        f'data.dataset.root="{data_root}"',
        "data.dataset.n=24",
        "data.dataset.size=64",
        "data.batch_size=4",
        "model.base_size=32",
        "model.stages=2",
        "model.z_dim=4",
        "model.cond_dim=4",
        "model.text_dim=8",
        "model.gf_dim=4",
        "model.df_dim=2",
        "model.text_encoder.word_dim=8",
        "model.image_encoder.width=4",
        'train.pretrained.text_encoder="random"',
        'train.pretrained.image_encoder="random"',
        "train.sample_every=1000",
    ]
    return [x for v in values for x in ("--set", v)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data") / "shapes"


@pytest.fixture(scope="module")
def run(shapes, tmp_path_factory) -> Path:
    """A run folder trained for one step at toy size."""
    folder = tmp_path_factory.mktemp("runs") / "run"
    result = cli("train", "dmgan_shapes", *tiny_sets(shapes), "--run-dir", folder, "--steps", "1", "-q")
    assert result.exit_code == 0, result.output
    return folder


def folder_dataset(root: Path) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    for name in ("a", "b", "c"):
        Image.new("RGB", (40, 40), (200, 10, 10)).save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(f"a red {name} thing\nanother red one\n", encoding="utf-8")
    (root / "train.txt").write_text("a\nb\n")
    (root / "test.txt").write_text("c\n")
    return root


# -- decode errors -------------------------------------------------------------------------
def test_binary_recipe_names_the_file(tmp_path):
    path = tmp_path / "junk.toml"
    path.write_bytes(bytes(range(128, 256)) * 3)
    err = user_error(cli("config", "validate", path), str(path), "not valid utf-8")
    assert "UTF-8" in err


def test_non_utf8_split_file_names_the_file(tmp_path):
    root = folder_dataset(tmp_path / "f")
    (root / "train.txt").write_bytes(b"\xff\xfea\n")
    user_error(cli("data", "check", root), "train.txt", "not valid utf-8")


# -- settings that do not fit ------------------------------------------------------------
def test_data_set_smaller_than_the_batch(shapes, tmp_path):
    result = cli(
        "train", "dmgan_shapes", *tiny_sets(shapes), "--set", "data.batch_size=64", "--run-dir", tmp_path / "r", "-q"
    )
    user_error(result, "fewer than one batch of 64", "data.batch_size", "has 19 items")  # 20 less the val item


OOM = {
    "cpu-allocator": RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 23040000000000 bytes. Error code 12 (Cannot allocate memory)"
    ),
    "memory-error": MemoryError(),
    "cuda": RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total capacity)"),
}


@pytest.mark.parametrize("case", sorted(OOM))
def test_out_of_memory_is_a_message(shapes, monkeypatch, case):
    import t2i.networks

    def too_big(recipe):
        raise OOM[case]

    monkeypatch.setattr(t2i.networks, "build_generator", too_big)
    result = cli("train", "dmgan_shapes", *tiny_sets(shapes), "--dry-run")
    user_error(result, "out of", "memory", "data.batch_size", "model.gf_dim")


def test_resume_with_another_network_names_the_checkpoint(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    # --set of a network key on resume is refused up front, naming the key ...
    result = cli("train", "--resume", copy, "--set", "model.gf_dim=8", "--steps", "2", "-q")
    user_error(result, "model.gf_dim", "when resuming")
    # ... and a run folder whose stored recipe no longer fits its checkpoint (edited by hand) names the checkpoint.
    resolved = copy / "config.resolved.toml"
    text = resolved.read_text()
    assert "gf_dim = 4" in text
    resolved.write_text(text.replace("gf_dim = 4", "gf_dim = 8"))
    result = cli("train", "--resume", copy, "--steps", "2", "-q")
    user_error(result, "last.pt", "size mismatch", "the recipe's network differs")


# -- outputs -----------------------------------------------------------------------------
def test_sample_output_under_a_file_fails_before_generating(run, tmp_path, monkeypatch):
    import t2i.evaluate

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(t2i.evaluate, "load_model", no_model)
    blocker = tmp_path / "existing_file"
    blocker.write_text("keep me")
    user_error(cli("sample", run, "a red circle", "-o", blocker / "x.png"), str(blocker), "is a file, not a folder")
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "{run}", "--write-images", "{blocker}/images"],
        ["compare", "{run}", "{run}", "-o", "{blocker}/cmp"],
        ["ablate", "--refiner", "gldm", "--steps", "1", "--seeds", "1", "-o", "{blocker}/abl"],
        ["import", "dmgan_shapes", "x.pth", "-o", "{blocker}/w.pt"],
        ["export", "{run}", "-o", "{blocker}/orig"],
    ],
    ids=lambda c: c[0],
)
def test_output_options_are_checked_before_the_work(run, tmp_path, monkeypatch, command):
    import t2i.ablate
    import t2i.evaluate

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr(t2i.evaluate, "load_model", no_work)
    monkeypatch.setattr(t2i.ablate, "run_ablation", no_work)
    blocker = tmp_path / "existing_file"
    blocker.write_text("")
    args = [a.format(run=run, blocker=blocker) for a in command]
    user_error(cli(*args), str(blocker), "not a folder")


def test_special_file_is_not_replaced(run, tmp_path):
    # An atomic write (temp file + rename) would replace it; run as root with -o /dev/null, that replaced the
    # device itself. A named pipe stands in for the device here so the test is harmless even when it fails.
    pipe = tmp_path / "pipe.png"  # a .png name: the grid output, a file (any other name is an output folder)
    os.mkfifo(pipe)
    user_error(cli("sample", run, "a red circle", "-o", pipe), str(pipe), "not a regular file")
    assert pipe.is_fifo()


def test_disk_full_names_the_file(run, tmp_path, monkeypatch):
    import torch

    def full(obj, handle, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "exported"
    user_error(cli("export", run, "-o", out), str(out), "no space left", "disk full")


def test_permission_denied_names_the_file(tmp_path, monkeypatch):
    import t2i.data.shapes_maker

    def denied(out, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(out / "images.txt"))

    monkeypatch.setattr(t2i.data.shapes_maker, "make_shapes", denied)
    user_error(cli("data", "make-shapes", tmp_path / "s", "--n", "2"), "images.txt", "permission denied")


# -- internal errors ---------------------------------------------------------------------
def test_internal_error_writes_the_traceback_to_a_file(tmp_path, monkeypatch):
    import tempfile

    import t2i.recipe

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug in t2i")

    monkeypatch.setattr(t2i.recipe, "load", bug)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("T2I_DEBUG", raising=False)
    err = user_error(cli("config", "show", "dmgan_shapes"), "internal error", "ZeroDivisionError", "--debug")
    (written,) = tmp_path.glob("t2i-error-*.txt")
    assert str(written) in err
    assert "Traceback" in written.read_text() and "a bug in t2i" in written.read_text()


def test_internal_error_in_a_run_goes_to_its_log(run, tmp_path, monkeypatch):
    from t2i.train.loop import GANTrainer

    def bug(self, *args, **kwargs):
        raise KeyError("internal")

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    monkeypatch.setattr(GANTrainer, "fit", bug)
    err = user_error(cli("train", "--resume", copy, "-q"), "internal error", str(copy / "log.txt"))
    assert "KeyError" in err and "Traceback" in (copy / "log.txt").read_text()


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    import t2i.recipe

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug in t2i")

    monkeypatch.setattr(t2i.recipe, "load", bug)
    result = CliRunner().invoke(app, ["--debug", "config", "show", "dmgan_shapes"])
    assert isinstance(result.exception, ZeroDivisionError)
    monkeypatch.setenv("T2I_DEBUG", "1")
    result = CliRunner().invoke(app, ["config", "show", "dmgan_shapes"])
    assert isinstance(result.exception, ZeroDivisionError)


def test_no_traceback_in_a_real_process(tmp_path):
    path = tmp_path / "junk.toml"
    path.write_bytes(b"\x80\x81" * 50)
    result = subprocess.run(
        [sys.executable, "-m", "t2i", "config", "validate", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr and str(path) in result.stderr


def _commands(application: typer.Typer, prefix: str = "") -> list[tuple[str, object]]:
    found = [(f"{prefix}{c.name or c.callback.__name__}", c.callback) for c in application.registered_commands]
    for group in application.registered_groups:
        found += _commands(group.typer_instance, f"{prefix}{group.name} ")
    return found


def test_every_command_follows_the_rule():
    commands = dict(_commands(app))
    for name in ("config validate", "data check", "pretrain damsm", "bench", "import", "components", "sample"):
        assert name in commands
    unguarded = [name for name, callback in commands.items() if not getattr(callback, "_t2i_guarded", False)]
    assert not unguarded


# -- markup --------------------------------------------------------------------------------
def test_recipe_error_keeps_bracketed_text(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[model]\nrefiner = 'gdlm'\n")
    user_error(cli("config", "validate", path), "[plugins] imports = ['my_module']")


def test_path_with_brackets_is_shown(tmp_path):
    root = tmp_path / "p[b44d79cec315]"
    root.mkdir()
    user_error(cli("data", "check", root), "p[b44d79cec315]", "no images found")


def test_caption_with_closing_tag_samples(run, tmp_path):
    out = tmp_path / "grid[/x].png"
    result = cli("sample", run, "a [/x] red circle", "--n", "1", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.is_file() and "[/x]" in result.stderr and str(out) in result.stdout


def test_messages_are_not_markup():
    result = CliRunner().invoke(app, ["data", "check", "x[/y]"], env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "x[/y]" in result.stderr
