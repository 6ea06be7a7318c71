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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
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
