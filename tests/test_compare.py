"""``t2i compare``: grid + attention figure + shared-protocol metrics table + paired differences with intervals."""

from __future__ import annotations

import csv
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from test_evaluate import METRICS, invoke, trained_run  # noqa: F401  (session fixture shared with test_evaluate)

from t2i import recipe as recipe_mod
from t2i.compare import shared_metrics
from t2i.evaluate import append_rows, load_model


def test_compare_writes_grid_attention_and_shared_table(trained_run, tmp_path):  # noqa: F811
    result = invoke("eval", trained_run, "--n", "4", "--batch-size", "4", "--set", METRICS)
    assert result.exit_code == 0, result.output
    captions = tmp_path / "captions.txt"
    captions.write_text("a big red circle above a small blue square\na zebra next to a green triangle\n")
    out = tmp_path / "compare"
    result = invoke("compare", trained_run, trained_run / "checkpoints" / "last.pt", "--captions", captions,
                    "--seeds", "0,1", "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "zebra" in result.output  # unknown words are reported per model
    grid = Image.open(out / "grid.png")
    size = load_model(trained_run).recipe.stage_sizes()[-1]
    assert grid.width > 4 * size and 2 * size < grid.height < 3 * size + 200  # 2 models x 2 seeds, 2 captions
    assert (out / "attention.png").is_file()
    table = (out / "metrics.md").read_text()
    assert "caption_consistency.v1" in table and "r_precision.v1" in table
    assert "dmgan_shapes #1" in table and "dmgan_shapes #2" in table


def _model(folder: Path, rows: list[dict]) -> SimpleNamespace:
    append_rows(folder / "eval.jsonl", rows)
    return SimpleNamespace(eval_file=folder / "eval.jsonl", checkpoint_record=lambda: {"sha256": "abc"})


def test_only_protocols_every_model_shares_make_the_table(tmp_path):
    def row(metric, pid, value, sha="abc"):
        return {"metric": metric, "protocol_id": pid, "value": value, "std": 0.1, "n": 10,
                "protocol": {"checkpoint": {"sha256": sha}}}  # fmt: skip

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _model(tmp_path / "a", [row("fid.v1", "p1", 30.0), row("fid.v1", "p1", 20.0), row("is.v1", "p2", 3.0)])
    b = _model(tmp_path / "b", [row("fid.v1", "p1", 25.0), row("fid_dmgan2018.v1", "p3", 9.0),
                                row("is.v1", "p2", 1.0, sha="other-checkpoint")])  # fmt: skip
    table, left_out = shared_metrics([a, b], ["A", "B"])
    assert [(r["metric"], r["values"]["A"][0], r["values"]["B"][0]) for r in table] == [("fid.v1", 20.0, 25.0)]
    assert any("fid_dmgan2018.v1" in line and "only B" in line for line in left_out)
    assert any("is.v1" in line and "only A" in line for line in left_out)  # B's row is about another checkpoint


class _Recoloured(torch.nn.Module):
    """A trained generator whose last-stage images are repainted: a model that differs only in its colours."""

    def __init__(self, inner, paint):
        super().__init__()
        self.inner, self.paint = inner, paint

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        out.images[-1] = self.paint(out.images[-1])
        return out


def _paired(models, names, **kwargs):
    from t2i.compare import paired_evaluation

    return paired_evaluation(models, names, n=24, batch_size=8, metrics=["caption_consistency"], bootstrap=300,
                             **kwargs)  # fmt: skip


def _grey(images):
    return torch.zeros_like(images)


def _square(colour):
    """A centred square of one palette colour on grey: it shows that colour to the judge, whatever the caption."""
    value = torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1

    def paint(images):
        out = torch.zeros_like(images)
        side = images.shape[-1]
        out[..., side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = value
        return out

    return paint


def test_paired_comparison_finds_a_recoloured_model_and_not_a_copy(trained_run):  # noqa: F811
    from t2i.data.shapes_maker import COLOURS

    model = load_model(trained_run)
    model.recipe = recipe_mod.validate(recipe_mod.apply_overrides(model.recipe.to_dict(), [METRICS]))
    # Three models that differ only in the colours of their images: grey shows no asked colour; a red square
    # shows red to every caption that asks for red; a copy of the grey model is the same model.
    grey = replace(model, generator=_Recoloured(model.generator, _grey))
    copy = replace(grey)
    red = replace(model, generator=_Recoloured(model.generator, _square(COLOURS["red"])))
    result = _paired([grey, copy, red], ["grey", "copy", "red"], seeds=(100, 101))
    rows = {(r["a"], r["b"]): r for r in result.rows}
    assert set(rows) == {("grey", "copy"), ("grey", "red"), ("copy", "red")}
    same = rows[("grey", "copy")]
    assert same["difference"] == same["low"] == same["high"] == 0.0
    assert same["verdict"] == "no distinguishable difference"
    better = rows[("grey", "red")]
    assert better["a_value"] == 0.0 < better["b_value"]
    assert better["difference"] == pytest.approx(better["b_value"]) and better["low"] > 0
    assert better["verdict"] == "red better than grey"
    assert better["images"] == [24, 24] and better["seeds"] == 2 and better["level"] == 0.95
    assert re.fullmatch(r"[0-9a-f]{12};[0-9a-f]{12}", better["protocol"])  # one protocol id per evaluation seed


def test_compare_with_n_writes_paired_results(trained_run, tmp_path):  # noqa: F811
    out = tmp_path / "paired"
    result = invoke("compare", trained_run, trained_run / "checkpoints" / "last.pt", "--n", "8", "--batch-size", "4",
                    "--metric", "caption_consistency", "--level", "0.9", "--bootstrap", "50", "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no distinguishable difference" in result.output
    text = (out / "results.md").read_text()
    assert "90% paired percentile bootstrap" in text and "50 resamples" in text and "8 × 1" in text
    assert "| caption_consistency.v1 ↑ | dmgan_shapes #1 | dmgan_shapes #2 |" in text
    with (out / "results.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["difference"], row["low"], row["high"], row["level"], row["bootstrap"]) == ("0", "0", "0", "0.9", "50")
    assert row["images"] == "8" and row["seeds"] == "1" and row["verdict"] == "no distinguishable difference"
    again = invoke("compare", trained_run, "--metric", "caption_consistency", "-o", tmp_path / "x")
    assert again.exit_code == 1 and "--n" in again.output


def test_evaluation_keeps_per_image_records_that_make_the_reported_values(trained_run):  # noqa: F811
    from t2i.evaluate import evaluate, load_evaluators, metric_specs

    model = load_model(trained_run)
    recipe = recipe_mod.validate(recipe_mod.apply_overrides(model.recipe.to_dict(), [METRICS]))
    dataset = recipe.data.dataset.build(split="test", image_sizes=[recipe.stage_sizes()[-1]])
    kwargs = dict(evaluators=load_evaluators(model), z_dim=recipe.model.z_dim, cond_dim=recipe.model.cond_dim,
                  n=8, batch_size=4, seed=100)  # fmt: skip
    specs = metric_specs(recipe, None, dataset)
    plain = evaluate(model.generator, model.text_encoder, dataset, specs, **kwargs)
    kept = evaluate(model.generator, model.text_encoder, dataset, specs, keep_items=True, **kwargs)
    assert plain.items == {} and [r["value"] for r in plain.rows] == [r["value"] for r in kept.rows]
    assert set(kept.items) == {"caption_consistency.v1", "r_precision.v1"}
    for row in kept.rows:
        items = kept.items[row["metric"]]
        assert items["scores"].shape == (8,) and len(items["keys"]) == 8
        assert items["scores"].mean() == pytest.approx(row["value"], abs=1e-12)
