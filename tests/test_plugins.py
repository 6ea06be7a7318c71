"""A refiner registered from user code reaches the registries by each of the three routes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = textwrap.dedent('''
    """A user refiner: plain module + one registration line."""
    import t2i
    from t2i.registry import Params


    class MyRefinerParams(Params):
        depth: int = 2


    @t2i.register("refiner", "myrefiner.v1", params=MyRefinerParams, description="user refiner for tests")
    def build_my_refiner(params, **runtime):
        raise NotImplementedError
''')


def run_t2i(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "t2i", *args], capture_output=True, text=True, cwd=cwd, env=full_env)


def write_recipe(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "user.toml"
    path.write_text(extra + '\n[model]\nrefiner = { name = "myrefiner", depth = 5 }\n')
    return path


def test_code_file_route(tmp_path):
    plugin = tmp_path / "my_refiner.py"
    plugin.write_text(PLUGIN)
    listed = run_t2i("components", "refiner", "--code", str(plugin))
    assert listed.returncode == 0, listed.stderr
    assert "myrefiner" in listed.stdout and "user refiner for tests" in listed.stdout
    recipe = write_recipe(tmp_path)
    ok = run_t2i("config", "validate", str(recipe), "--code", str(plugin))
    assert ok.returncode == 0, ok.stderr
    assert "myrefiner.v1" in ok.stdout
    shown = run_t2i("config", "show", str(recipe), "--code", str(plugin))
    assert 'name = "myrefiner.v1"' in shown.stdout and "depth = 5" in shown.stdout


def test_recipe_plugins_imports_route(tmp_path):
    (tmp_path / "my_refiner_mod.py").write_text(PLUGIN)
    recipe = write_recipe(tmp_path, '[plugins]\nimports = ["my_refiner_mod"]\n')
    ok = run_t2i("config", "validate", str(recipe), env={"PYTHONPATH": str(tmp_path)})
    assert ok.returncode == 0, ok.stderr
    assert "myrefiner.v1" in ok.stdout


def _install_fake_distribution(site: Path, name: str, module_text: str, entry: str) -> None:
    site.mkdir(exist_ok=True)
    (site / f"{name}.py").write_text(module_text)
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[t2i.plugins]\n{entry}\n")


def test_entry_point_route_and_broken_plugin_isolated(tmp_path):
    site = tmp_path / "site"
    _install_fake_distribution(site, "t2i_good_plugin", PLUGIN, "good = t2i_good_plugin")
    _install_fake_distribution(site, "t2i_bad_plugin", "raise RuntimeError('boom at import')\n", "bad = t2i_bad_plugin")
    env = {"PYTHONPATH": str(site)}
    listed = run_t2i("components", "refiner", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "myrefiner" in listed.stdout
    assert "plugin entry point bad (t2i_bad_plugin) failed to load" in listed.stderr
    assert "boom at import" in listed.stderr
    ok = run_t2i("config", "validate", str(write_recipe(tmp_path)), env=env)
    assert ok.returncode == 0, ok.stderr


def test_code_file_that_raises_is_a_clean_user_error(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text("import t2i\nraise ValueError('my plugin is broken')\n")
    result = run_t2i("components", "--code", str(plugin))
    assert result.returncode == 1
    assert "broken.py failed to import" in result.stderr and "my plugin is broken" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("missing", ["nope.py"])
def test_missing_code_file(tmp_path, missing):
    result = run_t2i("components", "--code", str(tmp_path / missing))
    assert result.returncode == 1 and "--code file not found" in result.stderr
