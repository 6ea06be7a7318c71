"""`t2i sample --captions FILE -o DIR`: one PNG per caption and sample, stages and maps on request."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from test_train import make
from typer.testing import CliRunner

from t2i.cli import app
from t2i.cli.sample import read_captions_file, slug
from t2i.train import run_dir as run_dirs
from t2i.train.loop import GANTrainer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    recipe, dataset = make(root / "shapes")
    trainer = GANTrainer(recipe, run_dirs.create(recipe, root / "runs"), dataset, quiet=True)
    return trainer.fit(steps=1)


def _invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_captions_file_writes_one_png_per_caption_and_sample(checkpoint, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("a big red circle\n\na small blue square above a green triangle\n", encoding="utf-8")
    out = tmp_path / "generated"
    code, text = _invoke("sample", checkpoint, "--captions", captions, "-o", out, "--n", "2")
    assert code == 0, text
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [
        "0001_a_big_red_circle_s0.png",
        "0001_a_big_red_circle_s1.png",
        "0003_a_small_blue_square_above_a_green_s0.png",
        "0003_a_small_blue_square_above_a_green_s1.png",
    ]
    size = Image.open(out / names[0]).size
    assert size == (64, 64)  # the last stage's resolution, one image per file
    index = (out / "index.tsv").read_text(encoding="utf-8").splitlines()
    assert index[0].split("\t") == ["file", "line", "sample", "stage", "caption"]
    assert index[3].split("\t")[1:] == ["3", "0", "1", "a small blue square above a green triangle"]


def test_all_stages_and_maps_per_caption(checkpoint, tmp_path):
    out = tmp_path / "staged"
    code, text = _invoke("sample", checkpoint, "a big red circle", "-o", f"{out}/", "--all-stages", "--attention", "y")
    assert code == 0, text
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [
        "0001_a_big_red_circle_s0_attention.png",
        "0001_a_big_red_circle_s0_g0.png",
        "0001_a_big_red_circle_s0_g1.png",
    ]
    assert Image.open(out / names[1]).size == (32, 32) and Image.open(out / names[2]).size == (64, 64)


def test_same_seed_same_files_and_order_independent_noise(checkpoint, tmp_path):
    """A caption's image depends on its place and the seed only, not on the other captions' lengths."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert _invoke("sample", checkpoint, "red", "a big blue square above a circle", "-o", f"{a}/")[0] == 0
    assert _invoke("sample", checkpoint, "red", "a green circle", "-o", f"{b}/")[0] == 0
    assert (a / "0001_red_s0.png").read_bytes() == (b / "0001_red_s0.png").read_bytes()
    c = tmp_path / "c"
    assert _invoke("sample", checkpoint, "red", "-o", f"{c}/", "--seed", "1")[0] == 0
    assert (a / "0001_red_s0.png").read_bytes() != (c / "0001_red_s0.png").read_bytes()


def test_bad_captions_files_are_user_errors(checkpoint, tmp_path):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00red circle\x80")
    code, text = _invoke("sample", checkpoint, "--captions", binary, "-o", tmp_path / "x")
    assert code == 1 and "not UTF-8" in text and "Traceback" not in text
    code, text = _invoke("sample", checkpoint, "--captions", tmp_path / "absent.txt", "-o", tmp_path / "x")
    assert code == 1 and "absent.txt" in text
    code, text = _invoke("sample", checkpoint, "--captions", binary, "-o", tmp_path / "grid.png")
    assert code == 1 and "folder" in text


def test_helpers():
    assert slug("A Big, RED circle!") == "a_big_red_circle"
    assert slug("???") == "caption"


def test_read_captions_file_keeps_line_numbers(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\ufeffone\n\n  two  \n", encoding="utf-8")
    assert read_captions_file(path) == [(1, "one"), (3, "two")]
