"""``t2i bench``: synthetic inputs, case planning, phase split, ratios, the original networks' harness and the
command (no timings asserted)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from test_train import tiny_overrides
from typer.testing import CliRunner

from t2i.bench import cases, reference, synthetic
from t2i.cli import app


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    return tiny_overrides(tmp_path_factory.mktemp("bench") / "unused") + ["data.batch_size=2"]


def test_synthetic_batch_matches_the_collate_contract():
    vocab = synthetic.synthetic_vocab(50)
    batch = synthetic.synthetic_batch([64, 128], 6, vocab, words_num=18, seed=3)
    assert [tuple(im.shape) for im in batch.images] == [(6, 3, 64, 64), (6, 3, 128, 128)]
    assert all(im.min() >= -1 and im.max() <= 1 for im in batch.images)
    lengths = batch.lengths.tolist()
    assert lengths == sorted(lengths, reverse=True) and lengths[0] == 18 and min(lengths) >= 5
    for row, n in enumerate(lengths):
        assert (batch.captions[row, :n] >= vocab.num_specials).all()
        assert (batch.captions[row, n:] == vocab.pad_id).all()
    assert ((batch.class_ids >= 1) & (batch.class_ids <= 200)).all()
    again = synthetic.synthetic_batch([64, 128], 6, vocab, words_num=18, seed=3)
    assert torch.equal(again.captions, batch.captions) and torch.equal(again.images[1], batch.images[1])


def test_plan_pairs_cases_and_skips_what_has_no_reference(overrides):
    kw = dict(batch=2, repeat=1, warmup=0, overrides=overrides, threads=1)
    planned = cases.plan("dmgan_shapes", ["train", "data"], implementations=["reference", "t2i"], **kw)
    assert [(c["impl"], c["task"]) for c in planned] == [("t2i", "train"), ("t2i", "data")]
    planned = cases.plan("recipes/dmgan_bird.toml", ["sample"], implementations=["reference", "t2i"], **kw)
    assert [c["impl"] for c in planned] == ["reference", "t2i"]
    assert planned[0]["reference_model"] == ["dmgan", "bird"] and planned[0]["batch"] == 2
    assert planned[0]["reference_dir"] == str(reference.default_reference_dir())


def test_ratios_are_t2i_over_original():
    def result(impl, seconds, rss, flops):
        return {"impl": impl, "task": "train", "seconds": {"median": seconds}, "peak_rss_bytes": rss, "flops": flops}

    rows = cases.ratios([result("reference", 4.0, 10, 100), result("t2i", 2.0, 6, 50)])
    assert rows == [{"impl": "t2i", "task": "train", "time": 0.5, "peak_rss": 0.6, "flops": 0.5}]


def test_train_case_splits_the_iteration_into_phases(overrides):
    spec = {"impl": "t2i", "task": "train", "recipe": "dmgan_shapes", "batch": 2, "repeat": 2, "warmup": 0}
    result = cases.run_case({**spec, "overrides": overrides, "threads": 1})
    phases = result["phases_median_s"]
    assert list(phases) == ["text_encoding", "G_forward", "D0_update", "D1_update", "G_update"]
    assert all(v >= 0 for v in phases.values())
    assert sum(phases.values()) <= result["seconds"]["max"] * 1.01  # the phases tile the step
    assert result["flops"] > 0 and result["peak_rss_bytes"] > 0 and len(result["seconds"]["all"]) == 2


def test_bench_command_writes_json(tmp_path, overrides):
    out = tmp_path / "bench.json"
    args = ["bench", "dmgan_shapes", "--what", "sample", "--repeat", "1", "--warmup", "0", "--threads", "1"]
    args += ["--matmul-size", "128"]
    args += ["--json", str(out), "--no-flops"] + [x for o in overrides for x in ("--set", o)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert [r["impl"] for r in payload["results"]] == ["t2i"]
    assert payload["reference_dir"] is None  # no original networks were run
    assert payload["matmul_peak_before"]["gflops_best"] > 0
    assert all(r["peak_rss_bytes"] > 0 and r["images_per_s"] > 0 for r in payload["results"])


def test_against_reference_needs_a_recipe_with_original_code(overrides):
    result = CliRunner().invoke(app, ["bench", "dmgan_shapes", "--against-reference", "--what", "train"])
    assert result.exit_code == 1
    assert "no original code" in result.output


def test_t2i_fast_is_gone():
    result = CliRunner().invoke(app, ["bench", "dmgan_shapes", "--impl", "t2i-fast", "--what", "sample"])
    assert result.exit_code == 1
    assert "--impl t2i-fast: removed" in result.output


# -- the original networks' harness, replaced by a stub with the same calls (no original code, no yaml/easydict) --
STUB_HARNESS = """
import torch

CALLS = []


class _Original:
    def __init__(self, batch):
        self.batch = batch

    def make_batch(self, seed=0):
        return torch.full((self.batch, 4), float(seed))

    def train_step(self, batch, phases=None):
        phases["G_forward"] = 0.0
        return batch @ torch.ones(4, 4)

    def sample_inputs(self, batch):
        return batch

    def sample(self, inputs):
        return inputs @ torch.ones(4, 4)


def build(model, batch, dataset="bird", **kwargs):
    CALLS.append({"model": model, "batch": batch, "dataset": dataset, **kwargs})
    return _Original(batch)
"""


@pytest.fixture
def stub_harness(tmp_path):
    folder = tmp_path / "bench-reference"
    folder.mkdir()
    (folder / "bench_reference.py").write_text(textwrap.dedent(STUB_HARNESS))
    return folder


def test_reference_harness_is_loaded_from_its_file_not_from_sys_path(stub_harness):
    path_before = list(sys.path)
    spec = {"impl": "reference", "task": "sample", "recipe": "dmgan_bird", "batch": 3, "repeat": 1, "warmup": 0}
    spec |= {"reference_model": ["dmgan", "bird"], "reference_dir": str(stub_harness), "threads": 1}
    result = cases.run_case(spec)
    assert result["impl"] == "reference" and result["batch"] == 3 and result["images_per_s"] > 0
    assert result["flops"] == 2 * 3 * 4 * 4  # the stub's one matmul: the call really went through the harness
    assert sys.path == path_before  # nothing of the harness's folder leaks into the process
    assert "bench_reference" not in sys.modules
    harness = reference.load_harness(stub_harness)
    assert harness.CALLS == [{"model": "dmgan", "batch": 3, "dataset": "bird", "threads": 1}]
    assert reference.load_harness(stub_harness) is harness  # loaded once per process


def test_a_missing_reference_dir_is_a_user_error_naming_the_option(tmp_path, stub_harness):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(reference.ReferenceHarnessError) as info:
        reference.load_harness(missing)
    assert getattr(type(info.value), "t2i_user_error", False)
    assert f"--reference-dir {missing}: no such folder" in str(info.value)
    (stub_harness / "bench_reference.py").unlink()
    with pytest.raises(reference.ReferenceHarnessError, match="bench_reference.py not found"):
        reference.load_harness(stub_harness)

    args = ["bench", "dmgan_bird", "--against-reference", "--what", "sample", "--reference-dir", str(missing)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "--reference-dir" in result.output and "no such folder" in result.output


def test_bench_command_runs_the_harness_of_reference_dir_and_records_it(tmp_path, stub_harness, monkeypatch):
    deps = tmp_path / "deps"  # the original code's imports, which the command checks for before it starts
    deps.mkdir()
    (deps / "easydict.py").write_text("")
    (deps / "yaml.py").write_text("")
    monkeypatch.syspath_prepend(str(deps))
    out = tmp_path / "bench.json"
    args = ["bench", "dmgan_bird", "--impl", "reference", "--what", "sample", "--batch", "2", "--repeat", "1"]
    args += ["--warmup", "0", "--threads", "1", "--matmul-size", "64", "--reference-dir", str(stub_harness)]
    result = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["reference_dir"] == str(stub_harness)
    assert [(r["impl"], r["task"], r["batch"]) for r in payload["results"]] == [("reference", "sample", 2)]
    assert payload["results"][0]["flops"] == 2 * 2 * 4 * 4
