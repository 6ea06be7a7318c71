"""CLI behaviour of the foundation commands: exit codes, messages, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from t2i.recipe import builtin_recipes

ROOT = Path(__file__).resolve().parent.parent


def t2i(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t2i", *args], capture_output=True, text=True, cwd=ROOT)


# Runs the CLI in-process and prints which heavy libraries it loaded: what makes ``t2i --help`` fast (the 0.5 s
# target is measured in benchmarks/cli_startup.py) is that it never imports torch; a timing would not show that.
IMPORTS_PROBE = """
import runpy, sys
sys.argv = ["t2i", *sys.argv[1:]]
try:
    runpy.run_module("t2i", run_name="__main__")
except SystemExit as exit:
    code = exit.code
print("LOADED", sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision", "numpy", "pydantic"}))
"""


def loaded_libraries(*args: str) -> tuple[subprocess.CompletedProcess, str]:
    result = subprocess.run([sys.executable, "-c", IMPORTS_PROBE, *args], capture_output=True, text=True, cwd=ROOT)
    return result, result.stdout.strip().splitlines()[-1]


def test_help_lists_commands_and_imports_no_torch():
    result = t2i("--help")
    assert result.returncode == 0
    assert "components" in result.stdout and "config" in result.stdout
    probe, loaded = loaded_libraries("--help")
    assert probe.returncode == 0, probe.stderr
    assert "components" in probe.stdout
    assert loaded == "LOADED []", f"`t2i --help` imports heavy libraries: {loaded}"


def test_no_command_is_usage_error():
    group = t2i("config")
    shown = group.stdout + group.stderr  # a group without its command: its usage and commands, exit 2
    assert group.returncode == 2 and "Usage:" in shown and "validate" in shown and "Traceback" not in shown
    assert t2i("no-such-command").returncode == 2


def test_version_flag_prints_the_version():
    from t2i import __version__

    result = t2i("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"t2i {__version__}"


@pytest.mark.parametrize("text", ["", "# nothing here yet\n\n"], ids=["zero-bytes", "comments-only"])
def test_empty_recipe_is_an_error(tmp_path, text):
    path = tmp_path / "empty.toml"
    path.write_text(text)
    result = t2i("config", "validate", str(path))
    assert result.returncode == 1, result.stdout
    assert "empty recipe" in result.stderr and "empty.toml" in result.stderr
    assert "Traceback" not in result.stderr


def test_components_verbose_shows_params():
    result = t2i("components", "refiner", "-v")
    assert result.returncode == 0, result.stderr
    assert "mask" in result.stdout


def test_components_unknown_kind():
    result = t2i("components", "refiners")
    assert result.returncode == 1
    assert "unknown component kind 'refiners'" in result.stderr and "Did you mean 'refiner'" in result.stderr


@pytest.mark.parametrize("recipe", [p.name for p in builtin_recipes()])
def test_every_builtin_recipe_shows(recipe):
    result = t2i("config", "show", f"recipes/{recipe}")
    assert result.returncode == 0, result.stderr
    assert "[model" in result.stdout


BROKEN = {
    "unknown_section.toml": ("[modle]\ngf_dim = 3\n", "modle: unknown key 'modle'"),
    "misspelt_key.toml": ("[model]\ngf_dimm = 3\n", "did you mean 'gf_dim'"),
    "wrong_type.toml": ("[train]\nsteps = 'many'\n", "train.steps: Input should be a valid integer"),
    "near_miss.toml": ("[model]\nrefiner = 'gdlm'\n", "unknown refiner 'gdlm'"),
    "bad_param.toml": ("[model]\nrefiner = { name = 'dm', mask = 'sometimes' }\n", "model.refiner(dm.v1).mask"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_recipes_exit_1_with_message(tmp_path, name):
    text, expected = BROKEN[name]
    path = tmp_path / name
    path.write_text(text)
    for command in (["config", "validate"], ["config", "show"]):
        result = t2i(*command, str(path))
        assert result.returncode == 1, result.stdout
        assert expected in result.stderr
        assert "Traceback" not in result.stderr


def test_set_override_on_show(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        textwrap.dedent("""
        [model]
        gf_dim = 3
    """)
    )
    result = t2i("config", "show", str(path), "--set", "model.gf_dim=17", "-s", "model.refiner=attention")
    assert result.returncode == 0, result.stderr
    assert "gf_dim = 17" in result.stdout and 'name = "attention.v1"' in result.stdout
    bad = t2i("config", "show", str(path), "--set", "model.nope=1")
    assert bad.returncode == 1 and "model.nope: unknown key 'nope'" in bad.stderr


def _all_commands():
    import typer.main

    from t2i.cli import app

    group = typer.main.get_command(app)
    paths = []

    def walk(command, prefix):
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, [*prefix, name])
        else:
            paths.append(prefix)

    walk(group, [])
    return paths


def test_every_command_help_shows_an_example():
    from typer.testing import CliRunner

    from t2i.cli import app

    runner = CliRunner()
    missing = []
    for path in _all_commands():
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        if "Example" not in result.output:
            missing.append(" ".join(path))
    assert not missing, f"--help without an example: {missing}"
