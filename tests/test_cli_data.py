"""``t2i data make-shapes|check|convert``: exit codes and messages."""

from __future__ import annotations

from test_data_cub import make_cub
from typer.testing import CliRunner

from t2i.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["data", *map(str, args)])


def test_make_shapes_then_check_then_convert(tmp_path):
    out = tmp_path / "shapes"
    result = run("make-shapes", out, "--n", 30, "--seed", 1, "--size", 64)
    assert result.exit_code == 0, result.output
    assert "wrote 30 images" in result.output
    result = run("check", out)
    assert result.exit_code == 0, result.output
    assert "shapes" in result.output and "sha256" in result.output and "ok" in result.output
    assert run("make-shapes", out, "--n", 5).exit_code == 1  # refuses to overwrite
    assert run("make-shapes", tmp_path / "x", "--size", 100).exit_code == 1
    result = run("convert", out)
    assert result.exit_code == 0 and (out / "metadata.json").is_file()


def test_check_lists_problem_files(tmp_path):
    root = make_cub(tmp_path / "birds")
    result = run("check", root, "--dataset", "cub", "--captions-per-image", 2)
    assert result.exit_code == 0, result.output
    image = root / "CUB_200_2011" / "images" / "001.Red_bird" / "Red_0002.jpg"
    image.write_bytes(image.read_bytes()[:150])
    (root / "text" / "002.Blue_bird" / "Blue_0003.txt").write_text("")
    (root / "CUB_200_2011" / "images" / "003.Odd_bird" / "Odd_0004.jpg").unlink()
    result = run("check", root, "--captions-per-image", 2)
    assert result.exit_code == 1
    assert "3 problem(s)" in result.output
    assert "Red_0002.jpg: cannot decode image" in result.output
    assert "Blue_0003.txt: caption file has no caption" in result.output
    assert "Odd_0004.jpg: split test names this image but it does not exist" in result.output
    result = run("convert", root, "--captions-per-image", 2)
    assert result.exit_code == 1 and "--skip-bad" in result.output


def test_user_errors(tmp_path):
    result = run("check", tmp_path / "missing")
    assert result.exit_code == 1 and "is not a directory" in result.output
    (tmp_path / "empty").mkdir()
    result = run("check", tmp_path / "empty")
    assert result.exit_code == 1 and "no images found" in result.output
    assert "Example" in run("check", "--help").output


def test_make_shapes_imports_no_torch(tmp_path):
    from test_cli_foundation import loaded_libraries

    probe, loaded = loaded_libraries("data", "make-shapes", str(tmp_path / "s"), "--n", "3")
    assert probe.returncode == 0, probe.stderr
    assert "wrote 3 images" in probe.stdout
    assert "torch" not in loaded and "torchvision" not in loaded, loaded  # docs/data.md: no torch
