"""``t2i ablate``: grid expansion, variant recipes, a tiny run with a user-file refiner, skipping done variants."""

from __future__ import annotations

import csv
import json
import textwrap

import pytest
from test_train import tiny_overrides
from typer.testing import CliRunner

from t2i import recipe as recipe_mod
from t2i.ablate import AblationError, expand_grid, parse_alignment, variant_recipe
from t2i.cli import app
from t2i.registry import ComponentError


def raw(name: str) -> dict:
    data = recipe_mod.load_raw(recipe_mod.find_recipe(name))
    data.setdefault("name", name)
    return data


def test_grid_is_the_cartesian_product_led_by_the_base():
    grid = expand_grid(
        raw("dmgan_shapes"), {"refiner": ["gldm", "attention,dm.v1"], "alignment": ["stream,damsm+stream"]}
    )
    # refiner axis: base dm, gldm, attention (dm.v1 is the base again); alignment axis: base damsm, stream, damsm+stream
    assert len(grid) == 9
    assert grid[0].is_base and grid[0].label == "dm · damsm (base)"
    assert [v.is_base for v in grid].count(True) == 1
    assert {v.get("refiner") for v in grid} == {"dm", "gldm", "attention"}
    assert {v.get("alignment") for v in grid} == {"damsm", "stream", "damsm+stream"}
    assert len({v.slug for v in grid}) == 9
    assert expand_grid(raw("dmgan_shapes"), {"refiner": []}) == expand_grid(raw("dmgan_shapes"), {})
    assert [v.label for v in expand_grid(raw("dmgan_shapes"), {"refiner": ["gldm"]})] == ["dm (base)", "gldm"]


def test_unknown_component_in_the_grid_names_what_exists():
    with pytest.raises(ComponentError, match="unknown refiner 'gldn'.*gldm"):
        expand_grid(raw("dmgan_shapes"), {"refiner": ["gldn"]})


def test_alignment_values():
    assert parse_alignment("damsm:5+stream") == [("damsm", 5.0), ("stream", None)]
    assert parse_alignment("none") == []
    with pytest.raises(AblationError):
        parse_alignment("damsm:x")


def test_variant_recipes_swap_components_and_keep_the_budget():
    base = raw("dmmgan_shapes")  # gldm + stream (weight 1), has an image encoder and a captioner
    grid = expand_grid(base, {"refiner": ["dm"], "alignment": ["damsm+stream", "damsm:5", "none"]})
    by_label = {v.label: v for v in grid}
    both = variant_recipe(base, by_label["dm · damsm+stream"], seed=3, steps=7)
    assert both.model.refiner.entry.name == "dm.v1"
    assert [(t.entry.name, t.params.weight) for t in both.train.alignment] == [("damsm.v1", 1.0), ("stream.v1", 1.0)]
    assert both.seed == 3 and both.train.steps == 7
    assert variant_recipe(base, by_label["gldm · damsm:5"], seed=0, steps=7).train.alignment[0].params.weight == 5.0
    assert variant_recipe(base, by_label["gldm · none"], seed=0, steps=7).train.alignment == []
    # A swapped refiner keeps the base refiner's params it also accepts.
    bird = raw("dmmgan_bird")
    dm = variant_recipe(bird, expand_grid(bird, {"refiner": ["dm"]})[1], seed=0, steps=1)
    assert dm.model.refiner.entry.name == "dm.v1" and dm.model.refiner.params.mask == "legacy"


def test_stream_without_a_captioner_is_a_clear_error():
    base = raw("dmgan_shapes")
    variant = expand_grid(base, {"alignment": ["stream"]})[1]
    with pytest.raises(AblationError, match="model.captioner"):
        variant_recipe(base, variant, seed=0, steps=1)


USER_REFINER = '''
import torch
from torch import nn
import t2i
from t2i.registry import Params


class SentenceGateParams(Params):
    pass


@t2i.register("refiner", "sentence_gate.v1", params=SentenceGateParams)
class SentenceGate(nn.Module):
    """A refiner nobody has seen: the image features gated by the mean word feature."""

    def __init__(self, params, *, image_dim, word_dim, cond_dim, size):
        super().__init__()
        self.project = nn.Linear(word_dim, image_dim)

    def forward(self, h, words, mask, c_code):
        gate = torch.sigmoid(self.project(words.mean(2)))[:, :, None, None]  # (B, g, 1, 1)
        attention = torch.ones(h.shape[0], words.shape[2], *h.shape[2:]) / words.shape[2]
        return torch.cat([h, gate * h], 1), attention
'''


def test_tiny_ablation_with_a_user_refiner_writes_reports_and_skips_done_variants(tmp_path):
    code = tmp_path / "sentence_gate.py"
    code.write_text(textwrap.dedent(USER_REFINER))
    sets = [*tiny_overrides(tmp_path / "shapes"), 'eval.metrics=[{name="caption_consistency"}]']
    out = tmp_path / "ablation"
    args = ["ablate", "dmgan_shapes", "--refiner", "sentence_gate", "--code", str(code), "--seeds", "1",
            "--steps", "2", "--n", "4", "--out", str(out)]  # fmt: skip
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    done = sorted(p.relative_to(out).as_posix() for p in out.rglob("done.json"))
    assert done == ["refiner-dm/seed-0/done.json", "refiner-sentence_gate/seed-0/done.json"]
    record = json.loads((out / "refiner-sentence_gate" / "seed-0" / "done.json").read_text())
    assert record["rows"][0]["metric"] == "caption_consistency.v1" and record["rows"][0]["step"] == 2
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["variant"], r["metric"], r["seeds"]) for r in rows] == [
        ("dm (base)", "caption_consistency.v1", "1"),
        ("sentence_gate", "caption_consistency.v1", "1"),
        ("reference:real", "caption_consistency.v1", "0"),
        ("reference:shuffled", "caption_consistency.v1", "0"),
    ]
    rows = rows[:2]
    markdown = (out / "results.md").read_text()
    assert "| sentence_gate |" in markdown
    # The same 4 test captions scored on the real images: their own (ceiling) and shuffled (floor).
    references = {r["reference"]: r for r in json.loads((out / "references.json").read_text())["rows"]}
    assert references["real"]["value"] > 0.9 > references["shuffled"]["value"] + 0.2
    assert references["real"]["n"] == 4 and references["real"]["protocol"]["reference"] == "real"
    assert f"| *real images (ceiling)* | {references['real']['value']:.4f} |" in markdown
    assert "real images, shuffled captions (floor)" in markdown and "real images (ceiling)" in result.output
    # Paired differences over the same 4 evaluated images, from the per-image records every run keeps.
    assert (out / "refiner-dm" / "seed-0" / "eval_items").is_dir()
    with (out / "results_paired.csv").open() as handle:
        (pair,) = list(csv.DictReader(handle))
    assert (pair["metric"], pair["a"], pair["b"], pair["images"], pair["seeds"]) == (
        "caption_consistency.v1", "dm (base)", "sentence_gate", "4", "1",
    )  # fmt: skip
    assert float(pair["low"]) <= float(pair["difference"]) <= float(pair["high"])
    assert pair["protocol"] == rows[0]["protocol_ids"]
    assert "## Paired differences" in (out / "results.md").read_text()
    assert "paired differences" in result.output and pair["verdict"] in result.output
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    stamp = (out / "refiner-dm" / "seed-0" / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    assert again.output.count("done before, skipped") == 2
    assert (out / "refiner-dm" / "seed-0" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp


def test_folder_follows_the_recipe_as_written(monkeypatch):
    from t2i.ablate import AblationSpec, ablation_folder, base_raw

    spec = AblationSpec(base="dmgan_shapes")
    base = base_raw(spec)[1]
    folder = ablation_folder(spec, base)
    # A t2i version whose validated recipe has a new setting (its dump changes) finds the same folder ...
    monkeypatch.setattr(type(base), "to_toml", lambda self, resolved=True: "a dump with a new default")
    monkeypatch.setattr(type(base), "to_dict", lambda self, resolved=True: {"new": "default"})
    assert ablation_folder(spec, base) == folder
    # ... while a change the user makes moves it.
    changed = AblationSpec(base="dmgan_shapes", sets=["data.batch_size=8"])
    assert ablation_folder(changed, base_raw(changed)[1]) != folder


def test_thesis_preset_is_its_four_runs_in_order():
    from t2i.ablate import PRESETS, preset_grid

    base = raw("dmmgan_shapes")  # gldm + STREAM: DMM-Full is the base
    grid = preset_grid(base, PRESETS["dmmgan-thesis"])
    assert [v.name for v in grid] == ["Baseline", "DMM-STREAM", "DMM-GLDM", "DMM-Full"]
    assert [(v.get("refiner"), v.get("alignment")) for v in grid] == [
        ("dm", "damsm"), ("dm", "stream"), ("gldm", "none"), ("gldm", "stream"),
    ]  # fmt: skip
    assert [v.is_base for v in grid] == [False, False, False, True]
    assert grid[0].label == "Baseline: dm · damsm" and grid[3].label == "DMM-Full: gldm · stream (base)"
    recipes = [variant_recipe(base, v, seed=0, steps=3) for v in grid]
    assert [r.model.refiner.entry.name for r in recipes] == ["dm.v1", "dm.v1", "gldm.v1", "gldm.v1"]
    assert [[t.entry.name for t in r.train.alignment] for r in recipes] == [
        ["damsm.v1"], ["stream.v1"], [], ["stream.v1"],
    ]  # fmt: skip
    assert recipes[1].train.alignment[0].params == recipes[3].train.alignment[0].params  # the base recipe's STREAM


def test_preset_cli_errors():
    runner = CliRunner()
    result = runner.invoke(app, ["ablate", "--preset", "dmmgan-thesis", "--refiner", "gldm"])
    assert result.exit_code == 1 and "--preset names its variants" in result.output
    result = runner.invoke(app, ["ablate", "--preset", "thesis"])
    assert result.exit_code == 1 and "dmmgan-thesis" in result.output


def test_paired_summary_pairs_variants_seed_by_seed_and_says_what_it_left_out(tmp_path):
    import numpy as np

    from t2i.ablate import Variant, VariantResult, paired_summary
    from t2i.evaluate import save_items

    base, swap, old = (
        Variant((("refiner", "dm"),), is_base=True),
        Variant((("refiner", "gldm"),)),
        Variant((("refiner", "glam"),)),
    )
    rng = np.random.default_rng(0)
    results = []
    for seed in (0, 1):
        shared = rng.random(40)  # the same captions and noise for every variant of this seed
        for variant, shift in ((base, 0.0), (swap, 0.2)):
            row = {"metric": "caption_consistency.v1", "protocol_id": "p1", "value": float((shared + shift).mean())}
            items = {"caption_consistency.v1": {"scores": shared + shift + rng.normal(0, 0.01, 40),
                                                "keys": np.array([f"k{i}" for i in range(40)])}}  # fmt: skip
            save_items(tmp_path / variant.slug / f"seed-{seed}", [row], items)
            results.append(VariantResult(variant, seed, [row], 1.0, skipped=False))
        # a variant evaluated before the per-image records existed
        results.append(VariantResult(old, seed, [{"metric": "caption_consistency.v1", "protocol_id": "p1",
                                                  "value": 0.5}], 1.0, skipped=True))  # fmt: skip
    rows, notes = paired_summary(tmp_path, [base, swap, old], results, level=0.9, bootstrap=200)
    (row,) = rows
    assert (row["a"], row["b"], row["seeds"], row["images"]) == ("dm (base)", "gldm", 2, [40, 40])
    assert 0.18 < row["low"] < row["difference"] < row["high"] < 0.22  # narrow: pairing removes the shared part
    assert row["verdict"] == "gldm better than dm (base)" and row["level"] == 0.9 and row["protocol"] == "p1"
    assert any("glam seed 0" in note and "left out" in note for note in notes)
