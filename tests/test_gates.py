"""What the dynamic memory's gates did: recorded on request, equal to the papers' equations, logged, drawn, inspected.

The write gate g^w and response gate g^r of DM-GAN (Zhu et al. CVPR 2019, eqs. 3 and 7) and the global write gate
and three-way shares of DMM-GAN's global-local memory are recomputed here from each refiner's own layers in float64.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from t2i import recipe as recipes
from t2i.networks import build_generator, build_text_encoder
from t2i.refiners.gates import concat, gate_means, log_values, record_gates, select, sheet_row

TINY = ["model.gf_dim=4", "model.text_dim=6", "model.cond_dim=5", "model.z_dim=7", "model.base_size=8"]


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _generator(refiner: str):
    torch.manual_seed(0)
    loaded = recipes.load("dmgan_bird", [*TINY, f"model.refiner={refiner}"])
    generator = build_generator(loaded).eval()
    encoder = build_text_encoder(loaded, 20).eval()
    captions = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0], [11, 12, 0, 0, 0]])
    with torch.no_grad():
        words, sentence = encoder(captions, torch.tensor([5, 3, 2]))
    mask = captions[:, : words.size(2)] == 0
    inputs = (torch.randn(3, loaded.model.z_dim), sentence, words, mask)
    return generator, inputs, dict(eps=torch.randn(3, loaded.model.cond_dim))


def _inputs_of(refiner) -> list[tuple]:
    """Capture the refiner's arguments (h, words, mask, c_code) on each call."""
    seen: list[tuple] = []
    refiner.register_forward_pre_hook(lambda _m, args: seen.append(args))
    return seen


def _conv1d_relu(seq, x):
    return F.relu(F.conv1d(x, seq[0].weight, seq[0].bias))


def _local_memory(ref, r, words, mask):
    """DM-GAN eqs. 3-6 from the refiner's weights: g^w (B, T), o (B, g, H, W), r̄ (B, g)."""
    b, g, h, w = r.shape
    r_bar = r.mean(dim=(2, 3))
    g_w = torch.sigmoid(words.transpose(1, 2) @ ref.A.weight.T + (r_bar @ ref.B.weight.T)[:, None, :])[..., 0]
    memory = _conv1d_relu(ref.M_w, words) * g_w[:, None] + _conv1d_relu(ref.M_r, r_bar[:, :, None]) * (1 - g_w[:, None])
    key, value = _conv1d_relu(ref.key, memory), _conv1d_relu(ref.value, memory)
    scores = torch.einsum("bgn,bgt->bnt", r.reshape(b, g, h * w), key).masked_fill(mask[:, None, :], float("-inf"))
    alpha = scores.softmax(dim=-1)  # (B, N, T)
    o = torch.einsum("bgt,bnt->bgn", value, alpha).reshape(b, g, h, w)
    return g_w, o, r_bar


def test_dm_gates_equal_the_equations(float64) -> None:
    generator, inputs, kw = _generator("dm")
    ref = generator.stages[0].refiner.requires_grad_(False)
    seen = _inputs_of(ref)
    with torch.no_grad(), record_gates(generator) as gates:
        generator(*inputs, **kw)
    assert sorted(gates) == [2, 3]  # stage numbers: the first refinement stage is stage 2
    r, words, mask, _ = seen[0]
    g_w, o, _ = _local_memory(ref, r, words, mask)
    weight, bias = ref.response_gate[0].weight[0, :, 0, 0], ref.response_gate[0].bias
    g_r = torch.sigmoid(torch.einsum("c,bchw->bhw", weight, torch.cat((r, o), 1)) + bias)  # eq. 7, [r ; o] order
    record = gates[2]
    assert record["write"].shape == (3, 5) and record["response"].shape == (3, 8, 8)
    torch.testing.assert_close(record["write"], g_w, rtol=0, atol=1e-12)
    torch.testing.assert_close(record["response"], g_r, rtol=0, atol=1e-12)
    assert torch.equal(record["padding"], mask)
    means = gate_means(record)
    torch.testing.assert_close(means["write_mean"], float(g_w[~mask].mean()), rtol=0, atol=1e-12)  # real words only
    torch.testing.assert_close(means["response_mean"], float(g_r.mean()), rtol=0, atol=1e-12)
    assert ref.last_gates is None  # recording stops with the block


def test_gldm_gates_equal_the_equations(float64) -> None:
    generator, inputs, kw = _generator("gldm")
    ref = generator.stages[1].refiner
    seen = _inputs_of(ref)
    with torch.no_grad(), record_gates(generator) as gates:
        generator(*inputs, **kw)
    ref.requires_grad_(False)
    r, words, mask, c_code = seen[0]
    g_w, o, r_bar = _local_memory(ref, r, words, mask)
    g_c = torch.sigmoid(c_code @ ref.A_c.weight.T + r_bar @ ref.B_c.weight.T)[:, 0]
    slot = _conv1d_relu(ref.M_c, c_code[:, :, None]) * g_c[:, None, None]
    slot = slot + _conv1d_relu(ref.M_r, r_bar[:, :, None]) * (1 - g_c[:, None, None])
    key_c, value_c = _conv1d_relu(ref.key, slot)[..., None], _conv1d_relu(ref.value, slot)[..., None]
    o_c = torch.softmax(r * key_c, dim=1) * value_c
    weight, bias = ref.response_gate[0].weight[:, :, 0, 0], ref.response_gate[0].bias
    gamma = torch.softmax(torch.einsum("kc,bchw->bkhw", weight, torch.cat((r, o, o_c), 1)) + bias[:, None, None], 1)
    record = gates[3]
    assert "response" not in record
    torch.testing.assert_close(record["write"], g_w, rtol=0, atol=1e-12)
    torch.testing.assert_close(record["write_global"], g_c, rtol=0, atol=1e-12)
    torch.testing.assert_close(record["shares"], gamma, rtol=0, atol=1e-12)
    means = gate_means(record)
    assert abs(means["share_image"] + means["share_local"] + means["share_global"] - 1) < 1e-12
    torch.testing.assert_close(means["share_global"], float(gamma[:, 2].mean()), rtol=0, atol=1e-12)
    keys = set(log_values(gates))
    assert {"gates/stage2/write_mean", "gates/stage3/share_local", "gates/stage3/write_global_mean"} <= keys


@pytest.mark.parametrize("refiner", ["dm", "gldm", "{name='dm', mask='legacy'}"])
def test_recording_changes_no_output(refiner: str) -> None:
    generator, inputs, kw = _generator(refiner)
    generator.train()
    torch.manual_seed(1)
    plain = generator(*inputs, **kw)
    plain_grads = torch.autograd.grad(plain.images[-1].sum(), list(generator.parameters()), allow_unused=True)
    torch.manual_seed(1)
    with record_gates(generator) as gates:
        recorded = generator(*inputs, **kw)
    recorded_grads = torch.autograd.grad(recorded.images[-1].sum(), list(generator.parameters()), allow_unused=True)
    assert gates[2] and gates[3]
    for a, b in zip(plain.images + plain.attention, recorded.images + recorded.attention, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(plain_grads, recorded_grads, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert not any(t.requires_grad for t in gates[2].values())  # detached: the records hold no graph


def test_a_refiner_without_gates_records_nothing() -> None:
    generator, inputs, kw = _generator("attention")
    with torch.no_grad(), record_gates(generator) as gates:
        generator(*inputs, **kw)
    assert gates == {}


def test_sheet_draws_write_bars_and_gate_maps(tmp_path: Path) -> None:
    from t2i import viz

    generator, inputs, kw = _generator("gldm")
    with torch.no_grad(), record_gates(generator) as gates:
        out = generator(*inputs, **kw)
    words = ["a", "red", "bird", "on", "branch"]
    rows = [(f"stage {s}", out.images[s - 1][0], out.attention[s - 2][0]) for s in (2, 3)]
    plain = viz.attention_sheet(rows, words, cell=32)
    sheet = viz.attention_sheet(rows, words, cell=32, gates=[sheet_row(gates[s], 0, len(words)) for s in (2, 3)])
    assert sheet.width == plain.width + 3 * (32 + 3)  # three share panels after the words
    assert sheet.height > plain.height  # a bar row under the words
    path = tmp_path / "sheet.png"
    viz.save_png(sheet, path)
    assert Image.open(path).size == sheet.size
    # The bar under the first word is filled in proportion to its write gate.
    record = gates[2]
    assert 0 < float(record["write"][0, 0]) < 1
    with pytest.raises(ValueError, match="2 rows but 1 gate rows"):
        viz.attention_sheet(rows, words, cell=32, gates=[None])


def test_sheet_row_is_one_samples_write_gates_and_labelled_maps() -> None:
    """sheet_row picks sample ``row``: its first n_words write gates and each gate map under its label."""
    record = {"write": torch.arange(12.0).view(2, 6), "response": torch.rand(2, 4, 4), "shares": torch.rand(2, 3, 4, 4)}
    row = sheet_row(record, 1, 3)
    assert torch.equal(row.write, torch.tensor([6.0, 7.0, 8.0]))
    assert [label for label, _ in row.maps] == ["response", "image part", "local memory", "global memory"]
    assert torch.equal(row.maps[0][1], record["response"][1])
    assert all(torch.equal(m, record["shares"][1, k]) for k, (_, m) in enumerate(row.maps[1:]))
    only_shares = sheet_row({"shares": record["shares"]}, 0, 2)
    assert only_shares.write is None and [label for label, _ in only_shares.maps][0] == "image part"
    assert sheet_row({}, 0, 2) is None and sheet_row(None, 0, 2) is None


def test_gate_refiners_are_keyed_by_stage_number_or_by_name() -> None:
    """A refiner at ``stages.<i>.refiner`` is stage i + 2; one elsewhere keeps its module path as its key."""
    from t2i.refiners.gates import GateRecorder, gate_refiners

    class Gated(torch.nn.Module, GateRecorder):
        pass

    holder = torch.nn.Module()
    holder.stages = torch.nn.ModuleList([torch.nn.Module(), torch.nn.Module()])
    holder.stages[1].refiner = Gated()
    holder.extra = Gated()
    assert gate_refiners(holder) == {3: holder.stages[1].refiner, "extra": holder.extra}


def test_mean_write_gate_of_a_single_real_word_is_that_word() -> None:
    """The mean over real words divides by their count (at least one), not by a larger floor."""
    record = {"write": torch.tensor([[0.25, 0.9]]), "padding": torch.tensor([[False, True]])}
    assert gate_means(record)["write_mean"] == 0.25
    assert gate_means({"write": torch.tensor([[0.25]]), "padding": torch.tensor([[True]])})["write_mean"] == 0.0


def test_select_and_concat_keep_rows_and_pad_short_captions_as_padding() -> None:
    """select takes rows to the CPU as float32 (bool stays bool); concat pads write with 0 and padding with True."""
    first = {2: {"write": torch.tensor([[0.5, 0.25], [0.75, 0.125]], dtype=torch.float64),
                 "padding": torch.tensor([[False, False], [False, True]]),
                 "response": torch.rand(2, 3, 3, dtype=torch.float16)}}  # fmt: skip
    picked = select(first, [1])
    assert picked[2]["write"].dtype == torch.float32 and picked[2]["response"].dtype == torch.float32
    assert torch.equal(picked[2]["write"], torch.tensor([[0.75, 0.125]]))
    assert torch.equal(picked[2]["padding"], torch.tensor([[False, True]]))
    assert torch.equal(select(first, torch.tensor([1, 0]))[2]["padding"], first[2]["padding"].flip(0))
    second = {2: {"write": torch.full((1, 4), 0.5), "padding": torch.zeros(1, 4, dtype=torch.bool),
                  "response": torch.rand(1, 3, 3)}}  # fmt: skip
    joined = concat([select(first, [0, 1]), second])[2]
    assert torch.equal(joined["write"], torch.tensor([[0.5, 0.25, 0, 0], [0.75, 0.125, 0, 0], [0.5] * 4]))
    assert joined["padding"].tolist() == [[False, False, True, True], [False, True, True, True], [False] * 4]
    assert joined["response"].shape == (3, 3, 3) and concat([]) == {}
    # the padded words do not count in the mean write gate
    assert gate_means(joined)["write_mean"] == pytest.approx((0.5 + 0.25 + 0.75 + 4 * 0.5) / 7)


def test_gate_keys_are_json_numbers() -> None:
    generator, inputs, kw = _generator("dm")
    with torch.no_grad(), record_gates(generator) as gates:
        generator(*inputs, **kw)
    values = log_values(gates)
    assert sorted(values) == [
        "gates/stage2/response_mean",
        "gates/stage2/write_mean",
        "gates/stage3/response_mean",
        "gates/stage3/write_mean",
    ]
    assert all(0 < v < 1 for v in json.loads(json.dumps(values)).values())


# -- training logs and `t2i inspect` on tiny trained runs ------------------------------------------------------------
def _train(root: Path, refiner: str, steps: int = 2) -> Path:
    from test_train import make

    from t2i.train import run_dir as run_dirs
    from t2i.train.loop import GANTrainer

    recipe, dataset = make(root / "shapes", [f"model.refiner={refiner}"])
    trainer = GANTrainer(recipe, run_dirs.create(recipe, root / "runs"), dataset, quiet=True)
    trainer.fit(steps=steps)
    return trainer.run.path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gates")
    return {name: _train(root / name, name) for name in ("dm", "gldm", "attention")}


def _invoke(*args) -> tuple[int, str]:
    from typer.testing import CliRunner

    from t2i.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_logs_gate_means_every_logged_step(runs) -> None:
    rows = _metrics(runs["dm"])
    assert [r["step"] for r in rows] == [1, 2]  # log_every = 1
    for row in rows:  # the tiny recipe has one refinement stage: stage 2
        assert 0 < row["gates/stage2/write_mean"] < 1 and 0 < row["gates/stage2/response_mean"] < 1
    gldm = _metrics(runs["gldm"])[-1]
    shares = [gldm[f"gates/stage2/share_{k}"] for k in ("image", "local", "global")]
    assert abs(sum(shares) - 1) < 1e-5 and 0 < gldm["gates/stage2/write_global_mean"] < 1
    assert "gates/stage2/response_mean" not in gldm
    assert not any(k.startswith("gates/") for k in _metrics(runs["attention"])[-1])


def test_training_logs_gates_only_on_logged_steps(tmp_path) -> None:
    from test_train import make

    from t2i.train import run_dir as run_dirs
    from t2i.train.loop import GANTrainer

    recipe, dataset = make(tmp_path / "shapes", ["train.log_every=2"])
    trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "runs"), dataset, quiet=True)
    recorded = []
    refiner = trainer.nets.generator.stages[0].refiner
    refiner.register_forward_hook(lambda m, _a, _o: recorded.append(m.last_gates is not None))
    trainer.fit(steps=3)
    assert recorded == [False, True, True]  # step 2 (log_every) and step 3 (the last) are logged
    assert [r["step"] for r in _metrics(trainer.run.path)] == [2, 3]
    assert refiner.last_gates is None


@pytest.mark.parametrize("refiner", ["dm", "gldm"])
def test_inspect_prints_the_table(runs, refiner, tmp_path) -> None:
    report, sheet = tmp_path / "gates.json", tmp_path / "sheet.png"
    caption = "a big red circle zorblax"
    code, text = _invoke("inspect", runs[refiner], caption, "--n", 3, "--seed", 1, "--json", report, "-o", sheet)
    assert code == 0, text
    assert "zorblax" in text and "not in the vocabulary" in text  # reported as t2i sample does
    flat = " ".join(text.split())
    assert "wrote most" in flat and "read most" in flat and "2 (64 px)" in flat
    numbers = json.loads(report.read_text())
    assert numbers["words"] == ["a", "big", "red", "circle"] and numbers["n"] == 3 and numbers["unknown"] == ["zorblax"]
    (stage,) = numbers["stages"]
    assert stage["stage"] == 2 and stage["size"] == 64
    assert len(stage["write"]) == len(stage["read"]) == 4
    assert abs(sum(stage["read"]) - 1) < 1e-4  # addressing weights sum to 1 over the words at every pixel
    if refiner == "dm":
        assert "response" in flat and 0 < stage["response_mean"] < 1
    else:
        assert (
            "global memory" in text
            and abs(stage["share_image"] + stage["share_local"] + stage["share_global"] - 1) < 1e-5
        )
    assert abs(sum(stage["write"]) / 4 - stage["write_mean"]) < 1e-5
    assert Image.open(sheet).size[0] > 0
    again = tmp_path / "again.json"
    assert _invoke("inspect", runs[refiner], caption, "--n", 3, "--seed", 1, "--json", again)[0] == 0
    assert json.loads(again.read_text())["stages"] == numbers["stages"]  # seeded


def test_inspect_a_refiner_without_gates_says_so(runs) -> None:
    code, text = _invoke("inspect", runs["attention"], "a red circle")
    assert code == 1
    assert "attention.v1 has no memory gates" in " ".join(text.split())
    assert "Traceback" not in text


def test_sample_attention_over_batches_of_different_caption_lengths(runs, tmp_path) -> None:
    """One caption per forward (--batch-size 1): maps and gates of batches with different word counts are joined."""
    grid, sheet = tmp_path / "grid.png", tmp_path / "maps.png"
    long, short = "a big red circle above a small blue square", "green triangle"
    args = ("sample", runs["gldm"], long, short, "--n", 1, "--batch-size", 1, "-o", grid, "--attention", sheet)
    code, text = _invoke(*args)
    assert code == 0, text
    assert Image.open(sheet).size[1] > 0
