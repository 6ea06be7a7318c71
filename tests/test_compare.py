"""``t2i compare``: grid + attention figure + a metrics table restricted to the protocols every model shares."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from PIL import Image
from test_evaluate import METRICS, invoke, trained_run  # noqa: F401  (session fixture shared with test_evaluate)

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
