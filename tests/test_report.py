"""``t2i report``: one page with curves, paired table, samples, attention and gate diagnostics, from tiny runs."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_gates import _invoke
from test_train import make

from t2i.train import checkpoint as ckpt
from t2i.train import run_dir as run_dirs
from t2i.train.loop import GANTrainer

EVAL = ['eval.metrics=[{name="caption_consistency"}]', "eval.every_steps=1", "eval.n_samples=4", "eval.batch_size=4"]


def _train(root: Path, refiner: str) -> Path:
    recipe, dataset = make(root.parent / "shapes", [f"model.refiner={refiner}", *EVAL])
    trainer = GANTrainer(recipe, run_dirs.create(recipe, root), dataset, quiet=True)
    trainer.fit(steps=2)
    return trainer.run.path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    return {name: _train(root / name, name) for name in ("dm", "attention")}


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("out") / "report"
    code, text = _invoke("report", runs["dm"], runs["attention"], "-o", out, "--n", "4", "--bootstrap", "50",
                         "--batch-size", "4", "--metric", "caption_consistency")  # fmt: skip
    assert code == 0, text
    return out, (out / "index.md").read_text()


def test_index_has_every_section(report, runs) -> None:
    _, index = report
    for heading in ("## What was compared", "## Metric curves", "## Paired differences", "## Samples on shared "
                    "captions", "### Attention", "## Gate diagnostics", "## How this was made"):  # fmt: skip
        assert heading in index
    # each run: its recipe, refiner, alignment terms and steps
    assert "dm.v1" in index and "attention.v1" in index and "damsm.v1 ×1" in index
    assert "| dmgan_shapes · dm | dmgan_shapes | dm.v1 | damsm.v1 ×1 | 2 |" in index
    assert "| dmgan_shapes · attention | dmgan_shapes | attention.v1 | damsm.v1 ×1 | 2 |" in index
    assert "t2i 0.1.0" in index and "t2i report" in index and "4 images per model" in index
    assert "95% paired percentile bootstrap" in index and "50 resamples" in index


def test_figures_exist_and_are_referenced_relatively(report) -> None:
    out, index = report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", index)
    assert {"curves_caption_consistency.png", "grid.png", "attention.png"} <= set(links)
    for link in links:
        assert not Path(link).is_absolute() and ".." not in link
        assert Image.open(out / link).width > 100
    moved = out.parent / "moved"
    shutil.copytree(out, moved)  # relative links survive a move
    assert all((moved / link).is_file() for link in links)
    assert "(results.csv)" in index


def test_results_csv_has_one_row_per_metric_and_pair(report) -> None:
    out, index = report
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["metric"], r["images"], r["bootstrap"]) for r in rows] == [("caption_consistency.v1", "4", "50")]
    assert rows[0]["a"] != rows[0]["b"]
    assert rows[0]["verdict"] in index  # the same table on the page


def test_best_point_table_per_run(report) -> None:
    _, index = report
    section = index.split("## Metric curves")[1].split("## Paired")[0]
    assert "### caption_consistency.v1 ↑" in section
    # each run: its best value, the step of it, the number of evaluations
    assert len(re.findall(r"^\| dmgan_shapes · (dm|attention) \| [-0-9.e]+ \| [12] \| 2 \|$", section, re.M)) == 2


def test_gates_have_numbers_for_dm_and_none_for_attention(report) -> None:
    _, index = report
    gates = index.split("## Gate diagnostics")[1].split("## How this was made")[0]
    dm, attention = gates.split("### ")[1:]
    assert "dm.v1" in dm
    row = re.search(r"^\| 2 \| (0\.\d+) \| (0\.\d+) \| — \| — \| (\w+ \d\.\d\d.*) \| (\w+ \d\.\d\d.*) \|$", dm, re.M)
    assert row, dm  # stage 2: write and response means, top written and read words
    assert "none (attention.v1 has no memory gates)" in attention


def _other_vocabulary(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    state = ckpt.load(to / "checkpoints" / "last.pt")
    words = state["vocab"]["words"]
    words[-1], words[-2] = words[-2], words[-1]
    state["vocab"] = {"convention": state["vocab"]["convention"], "words": words}
    ckpt.save_atomic(state, to / "checkpoints" / "last.pt")
    return to


@pytest.mark.parametrize("case", ["one run", "not a run", "missing", "vocabulary"])
def test_errors_exit_1_with_a_message(case, runs, tmp_path) -> None:
    paths, message = {
        "one run": ([runs["dm"]], "at least 2 runs or folders of runs; got 1"),
        "not a run": ([runs["dm"], tmp_path], "is neither a run folder nor a folder of runs"),
        "missing": ([runs["dm"], tmp_path / "nope"], "is not a folder"),
        "vocabulary": ([runs["dm"], tmp_path / "other"], "vocabularies differ"),
    }[case]
    if case == "vocabulary":
        _other_vocabulary(runs["attention"], tmp_path / "other")
    code, text = _invoke("report", *paths, "-o", tmp_path / "out", "--n", "4")
    assert code == 1, text
    assert message in " ".join(text.split())
    assert not (tmp_path / "out" / "index.md").exists()


def test_folders_of_seed_runs_pool_their_seeds(runs, tmp_path) -> None:
    # an ablation's layout, <variant>/seed-<k>/, with copies of the tiny runs as the seeds
    for variant, run in (("refiner-dm", runs["dm"]), ("refiner-attention", runs["attention"])):
        for k in (0, 1):
            shutil.copytree(run, tmp_path / variant / f"seed-{k}")
    out = tmp_path / "out"
    code, text = _invoke("report", tmp_path / "refiner-dm", tmp_path / "refiner-attention", "-o", out, "--n", "4",
                         "--bootstrap", "20", "--batch-size", "4", "--metric", "caption_consistency")  # fmt: skip
    assert code == 0, text
    index = (out / "index.md").read_text()
    assert "0 (`seed-0`), 1 (`seed-1`)" in index  # seed folders listed with their seeds
    assert "| dmgan_shapes · dm (mean of 2 seeds) |" in index  # the curves' best-point table
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["a"], r["b"], r["seeds"], r["images"]) for r in rows] == [
        ("dmgan_shapes · dm", "dmgan_shapes · attention", "2", "4;4")  # one row per pair: the seed runs pooled as seeds
    ]
