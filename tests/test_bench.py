"""``t2i bench``: synthetic inputs, case planning, phase split, ratios and the command (no timings asserted)."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import tiny_overrides
from typer.testing import CliRunner

from t2i import bench
from t2i.cli import app


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    return tiny_overrides(tmp_path_factory.mktemp("bench") / "unused") + ["data.batch_size=2"]


def test_synthetic_batch_matches_the_collate_contract():
    vocab = bench.synthetic_vocab(50)
    batch = bench.synthetic_batch([64, 128], 6, vocab, words_num=18, seed=3)
    assert [tuple(im.shape) for im in batch.images] == [(6, 3, 64, 64), (6, 3, 128, 128)]
    assert all(im.min() >= -1 and im.max() <= 1 for im in batch.images)
    lengths = batch.lengths.tolist()
    assert lengths == sorted(lengths, reverse=True) and lengths[0] == 18 and min(lengths) >= 5
    for row, n in enumerate(lengths):
        assert (batch.captions[row, :n] >= vocab.num_specials).all()
        assert (batch.captions[row, n:] == vocab.pad_id).all()
    assert ((batch.class_ids >= 1) & (batch.class_ids <= 200)).all()
    again = bench.synthetic_batch([64, 128], 6, vocab, words_num=18, seed=3)
    assert torch.equal(again.captions, batch.captions) and torch.equal(again.images[1], batch.images[1])


def test_plan_pairs_cases_and_skips_what_has_no_reference(overrides):
    kw = dict(batch=2, repeat=1, warmup=0, overrides=overrides, threads=1)
    cases = bench.plan("dmgan_shapes", ["train", "data"], implementations=["reference", "t2i", "t2i-fast"], **kw)
    assert [(c["impl"], c["task"]) for c in cases] == [("t2i", "train"), ("t2i-fast", "train"), ("t2i", "data")]
    cases = bench.plan("recipes/dmgan_bird.toml", ["sample"], implementations=["reference", "t2i"], **kw)
    assert [c["impl"] for c in cases] == ["reference", "t2i"]
    assert cases[0]["reference_model"] == ["dmgan", "bird"] and cases[0]["batch"] == 2


def test_ratios_are_t2i_over_original():
    def result(impl, seconds, rss, flops):
        return {"impl": impl, "task": "train", "seconds": {"median": seconds}, "peak_rss_bytes": rss, "flops": flops}

    rows = bench.ratios([result("reference", 4.0, 10, 100), result("t2i-fast", 2.0, 6, 50)])
    assert rows == [{"impl": "t2i-fast", "task": "train", "time": 0.5, "peak_rss": 0.6, "flops": 0.5}]


def test_train_case_splits_the_iteration_into_phases(overrides):
    spec = {"impl": "t2i-fast", "task": "train", "recipe": "dmgan_shapes", "batch": 2, "repeat": 2, "warmup": 0}
    result = bench.run_case({**spec, "overrides": overrides, "threads": 1})
    phases = result["phases_median_s"]
    assert list(phases) == ["text_encoding", "G_forward", "D0_update", "D1_update", "G_update"]
    assert all(v >= 0 for v in phases.values())
    assert sum(phases.values()) <= result["seconds"]["max"] * 1.01  # the phases tile the step
    assert result["flops"] > 0 and result["peak_rss_bytes"] > 0 and len(result["seconds"]["all"]) == 2


def test_upsample_folding_is_built_in_and_fast_path_adds_no_flops(overrides):
    # The upsample-conv folding that the fast path introduced is now the generator's own upBlock, so the plain
    # path already counts the reduced FLOPs: ~16/36 of a naive upsample-then-3x3-conv in each upBlock.
    from torch import nn

    from t2i import recipe as recipe_mod
    from t2i.networks import build_generator

    generator = build_generator(recipe_mod.load("dmgan_shapes", overrides))
    assert not any(isinstance(m, nn.Upsample) for m in generator.modules())
    counts = {}
    for impl in ("t2i", "t2i-fast"):
        spec = {"impl": impl, "task": "sample", "recipe": "dmgan_shapes", "batch": 2, "repeat": 1, "warmup": 0}
        counts[impl] = bench.run_case({**spec, "overrides": overrides, "threads": 1})["flops"]
    assert 0 < counts["t2i-fast"] <= counts["t2i"]


def test_bench_command_writes_json(tmp_path, overrides):
    out = tmp_path / "bench.json"
    args = ["bench", "dmgan_shapes", "--what", "sample", "--repeat", "1", "--warmup", "0", "--threads", "1"]
    args += ["--matmul-size", "128"]
    args += ["--json", str(out), "--no-flops"] + [x for o in overrides for x in ("--set", o)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert [r["impl"] for r in payload["results"]] == ["t2i", "t2i-fast"]
    assert payload["matmul_peak_before"]["gflops_best"] > 0
    assert all(r["peak_rss_bytes"] > 0 and r["images_per_s"] > 0 for r in payload["results"])


def test_against_reference_needs_a_recipe_with_original_code(overrides):
    result = CliRunner().invoke(app, ["bench", "dmgan_shapes", "--against-reference", "--what", "train"])
    assert result.exit_code == 1
    assert "no original code" in result.output
