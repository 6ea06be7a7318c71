"""Files that come from elsewhere (checkpoints, run folders, images, recipes) never run code and are read honestly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m t2i`` with ``cwd`` as the working folder (t2i itself still importable from this checkout)."""
    # No empty entry: an empty PYTHONPATH component means "the working folder", which is what is under test.
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run([sys.executable, "-m", "t2i", *args], capture_output=True, text=True, cwd=cwd, env=env)


# -- a stored recipe never imports its plugins ------------------------------------------------------------------------
EVIL = textwrap.dedent('''
    """Pretends to be a plugin; importing it is the attack."""
    from pathlib import Path

    Path({marker!r}).write_text("imported")

    import t2i


    @t2i.register("refiner", "evil_refiner.v1")
    def build(params, **runtime):
        raise NotImplementedError
''')


@pytest.fixture
def evil_run(tmp_path):
    """A run folder whose stored recipe lists ``plugins.imports = ["evil"]``, with evil.py inside it."""
    import tomli_w
    import torch

    from t2i import recipe as recipe_mod

    run = tmp_path / "downloaded_run"
    (run / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "MARKER"
    (run / "evil.py").write_text(EVIL.format(marker=str(marker)))
    stored = recipe_mod.load("dmgan_shapes").to_dict()
    stored["plugins"] = {"imports": ["evil"]}
    stored["model"]["refiner"] = {"name": "evil_refiner"}
    (run / "config.resolved.toml").write_text(tomli_w.dumps(stored))
    state = {
        "format_version": 1,
        "kind": "gan",
        "step": 1,
        "recipe": stored,
        "vocab": {"convention": "A", "words": ["<end>", "a", "caption"]},
        "models": {"generator": {}, "generator_ema": {}, "text_encoder": {}},
    }
    torch.save(state, run / "checkpoints" / "last.pt")
    return run, marker


@pytest.mark.parametrize(
    "command",
    [
        ["sample", "checkpoints/last.pt", "a caption", "-o", "x.png"],
        ["sample", ".", "a caption", "-o", "x.png"],
        ["eval", ".", "--n", "1"],
        ["train", "--resume", "."],
    ],
    ids=["sample-checkpoint", "sample-run", "eval", "resume"],
)
def test_python_m_t2i_never_imports_a_stored_recipes_plugins(evil_run, command):
    run, marker = evil_run
    result = run_module(*command, cwd=run)
    assert not marker.exists(), "a stored recipe imported evil.py from the run folder"
    assert result.returncode == 1, result.stdout + result.stderr
    assert "'evil'" in result.stderr and "--code FILE.py" in result.stderr, result.stderr
    assert "t2i.plugins" in result.stderr and "Traceback" not in result.stderr


def test_t2i_script_never_imports_a_stored_recipes_plugins(evil_run):
    script = shutil.which("t2i", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("no t2i console script next to this python")
    run, marker = evil_run
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), ".", os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [script, "sample", "checkpoints/last.pt", "a caption", "-o", "x.png"],
        capture_output=True,
        text=True,
        cwd=run,
        env=env,
    )
    assert not marker.exists()
    assert result.returncode == 1 and "'evil'" in result.stderr, result.stderr


def test_code_option_loads_the_plugin_a_stored_recipe_needs(evil_run, tmp_path):
    """The way out the message names: --code with the file (the user decides to run it)."""
    from t2i import recipe as recipe_mod
    from t2i.registry import import_user_file

    run, marker = evil_run
    stored = recipe_mod.read_toml(run / "config.resolved.toml")
    with pytest.raises(recipe_mod.RecipeError) as info:
        recipe_mod.validate(stored, "stored")
    assert not marker.exists()
    assert any("plugins.imports lists 'evil'" in p for p in info.value.problems)
    import_user_file(run / "evil.py")
    assert marker.exists()
    assert recipe_mod.validate(stored, "stored").model.refiner.entry.name == "evil_refiner.v1"


def test_python_m_t2i_does_not_search_the_working_folder(tmp_path):
    """A module in the working folder is not importable by name (only the recipe file's user can add a path)."""
    marker = tmp_path / "MARKER"
    (tmp_path / "evil.py").write_text(EVIL.format(marker=str(marker)))
    (tmp_path / "user.toml").write_text('[plugins]\nimports = ["evil"]\n')
    result = run_module("config", "validate", "user.toml", cwd=tmp_path)
    assert not marker.exists()
    assert result.returncode == 1 and "plugin module 'evil' failed to import" in result.stderr, result.stderr


# -- checkpoint messages -----------------------------------------------------------------------------------------------
class NotAllowed:
    """A class a checkpoint may not refer to."""


def _state(step: int) -> dict:
    import torch

    return {"format_version": 1, "kind": "gan", "step": step, "models": {"w": torch.full((2,), float(step))}}


def _broken_files(folder: Path) -> dict[str, Path]:
    """One file per kind of damage, and a real pickle that needs code."""
    import pickle

    import torch

    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.pt"
    torch.save(_state(1), good)
    files = {
        "random": folder / "random.pt",
        "truncated": folder / "truncated.pt",
        "empty": folder / "empty.pt",
        "torch_global": folder / "torch_global.pt",
        "pickle_global": folder / "pickle_global.pt",
    }
    files["random"].write_bytes(bytes(range(256)) * 8)
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["empty"].write_bytes(b"")
    torch.save({"format_version": 1, "obj": NotAllowed()}, files["torch_global"])
    files["pickle_global"].write_bytes(pickle.dumps({"obj": NotAllowed()}))
    return files


@pytest.mark.parametrize("kind", ["random", "truncated"])
def test_damaged_checkpoint_is_called_corrupt_not_unsafe(tmp_path, kind):
    from t2i.train import checkpoint as ckpt

    path = _broken_files(tmp_path)[kind]
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load(path)
    message = str(info.value)
    assert "not a readable checkpoint (corrupt or truncated)" in message and str(path) in message
    assert "unpickling" not in message and "t2i import" not in message


def test_empty_checkpoint_says_so(tmp_path):
    from t2i.train import checkpoint as ckpt

    path = _broken_files(tmp_path)["empty"]
    with pytest.raises(ckpt.CheckpointError, match=r"empty file \(0 bytes\)"):
        ckpt.load(path)


@pytest.mark.parametrize("kind", ["torch_global", "pickle_global"])
def test_pickle_that_needs_code_is_called_unsafe(tmp_path, kind):
    from t2i.train import checkpoint as ckpt

    path = _broken_files(tmp_path)[kind]
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load(path)
    message = str(info.value)
    assert "needs arbitrary unpickling" in message and "NotAllowed" in message and "t2i import" in message
    assert "corrupt" not in message


def test_fallback_names_every_file_tried_and_why(tmp_path):
    from t2i.train import checkpoint as ckpt

    keeper = ckpt.CheckpointKeeper(tmp_path / "checkpoints", keep=3)
    for step in (1, 2, 3):
        keeper.save(_state(step), step, periodic=True)
    keeper.last.write_bytes(bytes(range(256)) * 4)
    (keeper.folder / "step_00000003.pt").write_bytes(b"")
    warnings: list[str] = []
    state = keeper.latest_good(warn=warnings.append)
    assert state["step"] == 2
    assert len(warnings) == 1
    assert "using step_00000002.pt" in warnings[0]
    assert "last.pt (is not a readable checkpoint (corrupt or truncated)" in warnings[0]
    assert "step_00000003.pt (is not a readable checkpoint: empty file (0 bytes))" in warnings[0]

    (keeper.folder / "step_00000002.pt").write_bytes(b"")
    (keeper.folder / "step_00000001.pt").write_bytes(b"junk")
    with pytest.raises(ckpt.CheckpointError) as info:
        keeper.latest_good(warn=warnings.append)
    message = str(info.value)
    for name in ("last.pt", "step_00000003.pt", "step_00000002.pt", "step_00000001.pt"):
        assert name in message
    assert "empty file (0 bytes)" in message and "corrupt or truncated" in message


def test_resume_prints_the_files_it_skipped(tmp_path):
    """The default report goes to stderr, so `t2i train --resume` shows it without any help from the caller."""
    code = textwrap.dedent(f"""
        from t2i.train import checkpoint as ckpt
        import torch
        keeper = ckpt.CheckpointKeeper({str(tmp_path)!r})
        for step in (1, 2):
            keeper.save({{"format_version": 1, "step": step}}, step, periodic=True)
        keeper.last.write_bytes(b"")
        (keeper.folder / "step_00000002.pt").write_bytes(b"PK")
        print(keeper.latest_good()["step"])
    """)
    # No empty entry: an empty PYTHONPATH component means "the working folder", which is what is under test.
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
    assert "warning: using step_00000001.pt" in result.stderr
    assert "last.pt (is not a readable checkpoint: empty file (0 bytes))" in result.stderr
    assert "step_00000002.pt (is not a readable checkpoint (corrupt or truncated)" in result.stderr


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_orphaned_temp_files_are_removed_on_save_and_resume(tmp_path):
    import socket

    from t2i.train import checkpoint as ckpt

    folder = tmp_path / "checkpoints"
    keeper = ckpt.CheckpointKeeper(folder, keep=2)
    keeper.save(_state(1), 1, periodic=True)
    host = "".join(c for c in socket.gethostname() if c.isalnum())[:32]
    old = folder / ".last.pt.k1l2m3n4.tmp"  # the old naming, without a writer: only its age tells
    dead = folder / f".step_00000002.pt.{host}-{_dead_pid()}.abcd1234.tmp"
    live = folder / f".last.pt.{host}-{os.getpid()}.efgh5678.tmp"  # a writer at work right now
    for temp in (old, dead, live):
        temp.write_bytes(b"partial")
    os.utime(old, (1_000_000, 1_000_000))
    keeper.save(_state(2), 2, periodic=True)
    assert not old.exists() and not dead.exists()
    assert live.exists()
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "last.pt",
        "step_00000001.pt",
        "step_00000002.pt",
    ]

    os.utime(live, (1_000_000, 1_000_000))  # now older than every finished checkpoint: its writer is gone
    assert keeper.latest_good()["step"] == 2
    assert not live.exists()


# -- images of every mode ----------------------------------------------------------------------------------------------
def _saved(image, path: Path):
    """``image`` written to ``path`` and opened again, so the mode is what a data set file really gives."""
    from PIL import Image

    image.save(path)
    return Image.open(path)


def _mode_images(folder: Path) -> dict[str, tuple[object, tuple[int, int, int]]]:
    """mode -> (opened image whose pixel (0, 0) is the interesting one, the RGB it must become)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    transparent = palette.copy()
    transparent.info["transparency"] = 1
    grey16 = np.full((4, 4), 40000, dtype=np.uint16)
    cases = {
        "1": (_saved(Image.new("1", (4, 4), 1), folder / "one.png"), (255, 255, 255)),
        "L": (_saved(Image.new("L", (4, 4), 77), folder / "l.png"), (77, 77, 77)),
        "LA": (_saved(Image.new("LA", (4, 4), (0, 0)), folder / "la.png"), (255, 255, 255)),
        "P": (_saved(palette, folder / "p.png"), (200, 100, 50)),
        "P+transparency": (_saved(transparent, folder / "pt.png"), (255, 255, 255)),
        "RGB": (_saved(Image.new("RGB", (4, 4), (1, 2, 3)), folder / "rgb.png"), (1, 2, 3)),
        "RGBA": (_saved(Image.new("RGBA", (4, 4), (200, 0, 0, 128)), folder / "rgba.png"), (227, 127, 127)),
        "CMYK": (_saved(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), folder / "cmyk.tif"), (255, 0, 0)),
        "I;16": (_saved(Image.fromarray(grey16), folder / "g16.png"), (156, 156, 156)),
        "I;16B": (Image.fromarray(grey16.astype(">u2")), (156, 156, 156)),
        "I;16L": (Image.new("I;16L", (4, 4), 65535), (255, 255, 255)),
        "I 16-bit": (_saved(Image.fromarray(np.full((4, 4), 40000, dtype=np.int32)), folder / "i.tif"), (156,) * 3),
        "I 8-bit": (Image.fromarray(np.full((4, 4), 77, dtype=np.int32)), (77, 77, 77)),
        "F": (_saved(Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)), folder / "f.tif"), (128, 128, 128)),
    }
    return cases


def test_every_image_mode_becomes_the_right_rgb(tmp_path):
    from t2i.data.image_modes import to_rgb

    cases = _mode_images(tmp_path)
    assert cases["I;16"][0].mode == "I;16" and cases["I;16B"][0].mode == "I;16B" and cases["F"][0].mode == "F"
    for name, (image, expected) in cases.items():
        converted = to_rgb(image)
        assert converted.mode == "RGB" and converted.size == (4, 4), name
        assert converted.getpixel((0, 0)) == expected, name


def test_sixteen_bit_png_trains_as_grey_not_white(tmp_path):
    import numpy as np
    from PIL import Image

    from t2i.data.transforms import load_precrop

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    precrop = load_precrop(tmp_path / "ramp.png", None, 64)
    assert precrop.dtype == np.uint8 and precrop.shape[2] == 3
    assert precrop.min() <= 2 and precrop.max() >= 250
    assert 100 < precrop.mean() < 155  # a ramp, not a white image (convert("RGB") gives a mean near 255)


def test_data_check_notes_unusual_modes(tmp_path):
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from t2i.cli import app

    root = tmp_path / "pics"
    root.mkdir()
    files = {
        "a": Image.new("RGB", (32, 32), (10, 20, 30)),
        "b": Image.fromarray(np.full((32, 32), 30000, dtype=np.uint16)),
        "c": Image.fromarray(np.full((32, 32), 50000, dtype=np.uint16)),
        "d": Image.new("RGBA", (32, 32), (0, 0, 0, 0)),
    }
    for name, image in files.items():
        image.save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(f"a picture called {name}\n")
    result = CliRunner().invoke(app, ["data", "check", str(root), "--dataset", "folder"])
    assert result.exit_code == 0, result.output
    assert "note: 2 image(s) in mode I;16 (16-bit, scaled to 8 bits)" in result.output
    assert "note: 1 image(s) in mode RGBA (transparency composited on white)" in result.output
    assert "mode RGB (" not in result.output and "ok" in result.output
