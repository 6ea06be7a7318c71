"""Command-line options of train, pretrain, sample, eval, config, components, data, import, bench and ablate.

Each test runs the command in this process (typer's CliRunner) at tiny size and checks what the option changes:
exit codes, messages, files, values. One tiny trained run is shared by the sample/eval/import tests.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from test_train import STREAM_TINY, tiny_overrides
from typer.testing import CliRunner

from t2i.cli import app
from t2i.train import checkpoint as ckpt


@pytest.fixture(autouse=True, scope="module")
def _restore_signal_handlers():
    """train and pretrain install SIGINT/SIGTERM handlers; pytest's own come back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result


def sets(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-options") / "shapes"


@pytest.fixture(scope="module")
def run(shapes, tmp_path_factory) -> Path:
    """A 2-step tiny DM-GAN trained by `t2i train --runs DIR`; the run folder."""
    root = tmp_path_factory.mktemp("runs-root")
    result = invoke("train", "dmgan_shapes", *sets(tiny_overrides(shapes)), "--runs", root, "--steps", 2, "-q")
    assert result.exit_code == 0, result.output
    folders = [p for p in (root / "dmgan_shapes").iterdir() if p.is_dir()]
    assert len(folders) == 1
    return folders[0]


# -- train / pretrain ----------------------------------------------------------------------------------------
def test_train_runs_puts_the_run_under_that_root(run):
    # <runs>/<recipe name>/<time>-<hash>/ with its last checkpoint at the requested step
    assert run.parent.name == "dmgan_shapes"
    assert ckpt.load(run / "checkpoints" / "last.pt")["step"] == 2
    assert (run / "config.resolved.toml").is_file()


def test_pretrain_damsm_export_then_resume(shapes, tmp_path):
    tiny = tiny_overrides(shapes) + ["pretrain.damsm.batch_size=10", "pretrain.damsm.image_size=64"]
    export = tmp_path / "weights" / "damsm.pt"
    run_dir = tmp_path / "pre"
    result = invoke("pretrain", "damsm", "dmgan_shapes", *sets([*tiny, "pretrain.damsm.epochs=1"]),
                    "--run-dir", run_dir, "--export", export, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    exported = ckpt.load(export)
    assert exported["kind"] == "damsm" and exported["step"] == 2  # 20 training images / batch 10, one epoch
    assert set(exported["models"]) == {"text_encoder", "image_encoder"}
    assert f"train.pretrained.text_encoder={export}" in result.output.replace("\n", "")
    # The exported file is what a GAN recipe loads as its frozen encoders.
    use = [f'train.pretrained.text_encoder="{export}"', f'train.pretrained.image_encoder="{export}"']
    gan = invoke("train", "dmgan_shapes", *sets(tiny_overrides(shapes) + use), "--dry-run")
    assert gan.exit_code == 0, gan.output

    again = invoke("pretrain", "damsm", "--resume", run_dir, "--set", "pretrain.damsm.epochs=2", "-q")
    assert again.exit_code == 0, again.output
    state = ckpt.load(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 4
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # continued from step 2, not restarted


def test_pretrain_stream_export_then_resume(shapes, tmp_path):
    tiny = tiny_overrides(shapes) + STREAM_TINY + ["pretrain.stream.batch_size=10"]
    export = tmp_path / "captioner.pt"
    run_dir = tmp_path / "pre"
    result = invoke("pretrain", "stream", "mirrorgan_shapes", *sets([*tiny, "pretrain.stream.epochs=1"]),
                    "--run-dir", run_dir, "--export", export, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    exported = ckpt.load(export)
    assert exported["kind"] == "stream" and set(exported["models"]) == {"captioner"} and exported["step"] == 2
    assert "train.pretrained.captioner=" in result.output
    again = invoke("pretrain", "stream", "--resume", run_dir, "--set", "pretrain.stream.epochs=2", "-q")
    assert again.exit_code == 0, again.output
    assert ckpt.load(run_dir / "checkpoints" / "last.pt")["step"] == 4
    assert ckpt.load(export)["step"] == 2  # --export is a copy, not a link to the run's last.pt


def test_pretrain_needs_a_recipe_or_resume():
    result = invoke("pretrain", "damsm")
    assert result.exit_code == 1 and "give a RECIPE (or --resume RUN_DIR)" in result.output


# -- sample ------------------------------------------------------------------------------------------------------
def test_sample_seed_gives_the_same_bytes_and_another_seed_other_bytes(run, tmp_path):
    outputs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / f"{name}.png"
        result = invoke("sample", run, "a big red circle", "--n", 2, "--seed", seed, "-o", out)
        assert result.exit_code == 0, result.output
        outputs[name] = out.read_bytes()
    assert outputs["a"] == outputs["b"]
    assert outputs["a"] != outputs["c"]


def test_sample_n_sets_images_per_caption_and_live_uses_the_live_generator(run, tmp_path):
    from PIL import Image

    widths = {}
    for n in (1, 3):
        out = tmp_path / f"n{n}.png"
        assert invoke("sample", run, "a big red circle", "--n", n, "-o", out).exit_code == 0
        widths[n] = Image.open(out).width
    assert widths[3] > 2 * widths[1]  # one column per sample
    ema, live = tmp_path / "ema.png", tmp_path / "live.png"
    assert invoke("sample", run, "a big red circle", "--n", 2, "-o", ema).exit_code == 0
    result = invoke("sample", run, "a big red circle", "--n", 2, "--live", "-o", live)
    assert result.exit_code == 0, result.output
    assert ema.read_bytes() != live.read_bytes()  # after 2 steps the EMA weights differ from the live ones


def test_sample_caption_without_known_words_is_a_user_error(run, tmp_path):
    result = invoke("sample", run, "zorblax quux", "-o", tmp_path / "x.png")
    assert result.exit_code == 1 and "has no word the model knows" in result.output


# -- eval --------------------------------------------------------------------------------------------------------
def _eval_rows(run: Path, before: int) -> list[dict]:
    return [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()[before:]]


def _count(run: Path) -> int:
    path = run / "eval.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_eval_live_split_and_seed_are_recorded_and_change_the_result(run):
    base = ["eval", run, "-m", "caption_consistency", "--n", 4, "--batch-size", 4]
    before = _count(run)
    for extra in ([], ["--live"], ["--split", "train"], ["--seed", 7], ["--seed", 7]):
        result = invoke(*base, *extra)
        assert result.exit_code == 0, result.output
    default, live, train, seed7, seed7_again = _eval_rows(run, before)
    assert default["protocol"]["checkpoint"]["generator"] == "ema"
    assert live["protocol"]["checkpoint"]["generator"] == "live"
    assert default["protocol"]["split"] == "test" and train["protocol"]["split"] == "train"
    assert default["protocol"]["seed"] == 100 and seed7["protocol"]["seed"] == 7
    assert seed7["value"] == seed7_again["value"] and seed7["protocol_id"] == seed7_again["protocol_id"]
    # The protocol id is what compare matches rows by: split and seed are part of it, the generator choice is not.
    assert len({default["protocol_id"], train["protocol_id"], seed7["protocol_id"]}) == 3


def test_eval_split_comes_from_the_recipe_when_not_given(run):
    before = _count(run)
    result = invoke("eval", run, "-m", "caption_consistency", "--n", 4, "--set", 'eval.split="train"')
    assert result.exit_code == 0, result.output
    assert _eval_rows(run, before)[0]["protocol"]["split"] == "train"
    bad = invoke("eval", run, "-m", "caption_consistency", "--n", 4, "--split", "nosuch")
    assert bad.exit_code == 1 and "no split 'nosuch'" in bad.output


def test_eval_weights_dir_is_where_backbone_weights_are_looked_for(run, tmp_path):
    empty = tmp_path / "no-weights-here"
    empty.mkdir()
    result = invoke("eval", run, "-m", "is", "--n", 4, "--weights-dir", empty)
    assert result.exit_code == 1
    text = result.output.replace("\n", "")
    assert "is not in" in text and str(empty) in text and "pt_inception" in text


# -- config / components -----------------------------------------------------------------------------------------
def test_config_show_raw_leaves_defaults_out():
    resolved = invoke("config", "show", "dmgan_shapes")
    raw = invoke("config", "show", "dmgan_shapes", "--raw")
    assert resolved.exit_code == raw.exit_code == 0
    # A component param the recipe does not write (the dm refiner's mask) appears only when resolved.
    assert 'name = "dm.v1"' in resolved.stdout and "mask" in resolved.stdout
    assert 'name = "dm"' in raw.stdout and "mask" not in raw.stdout


def test_components_filter_globs_names():
    result = invoke("components", "refiner", "--filter", "gl*")
    assert result.exit_code == 0, result.output
    names = {line.split("│")[1].strip() for line in result.output.splitlines() if line.startswith("│")}
    assert {"glam", "gldm"} <= names and not names & {"attention", "dm"}
    none = invoke("components", "refiner", "-f", "zz*")
    assert none.exit_code == 0 and "(none registered)" in none.output


# -- data --------------------------------------------------------------------------------------------------------
@pytest.fixture
def broken_cub(tmp_path) -> Path:
    from test_data_cub import make_cub

    root = make_cub(tmp_path / "birds")
    image = root / "CUB_200_2011" / "images" / "001.Red_bird" / "Red_0002.jpg"
    image.write_bytes(image.read_bytes()[:150])  # exists, does not decode
    return root


def test_data_check_quick_skips_decoding_and_workers_decode_the_same(broken_cub):
    full = invoke("data", "check", broken_cub, "--captions-per-image", 2)
    assert full.exit_code == 1 and "Red_0002.jpg: cannot decode image" in full.output
    one = invoke("data", "check", broken_cub, "--captions-per-image", 2, "--workers", 1)
    assert one.exit_code == 1 and "1 problem(s)" in one.output and "Red_0002.jpg: cannot decode" in one.output
    quick = invoke("data", "check", broken_cub, "--captions-per-image", 2, "--quick")
    assert quick.exit_code == 0, quick.output
    assert "ok" in quick.output and "cannot decode" not in quick.output


def test_data_check_convention_changes_the_vocabulary(broken_cub):
    a = invoke("data", "check", broken_cub, "--captions-per-image", 2, "--quick")
    b = invoke("data", "check", broken_cub, "--captions-per-image", 2, "--quick", "--convention", "B")
    assert a.exit_code == b.exit_code == 0
    assert "convention A" in a.output and "convention B" in b.output
    sha_a = a.output.split("sha256 ")[1].split()[0]
    sha_b = b.output.split("sha256 ")[1].split()[0]
    assert sha_a != sha_b
    for command in ("check", "convert"):  # a message, not a KeyError traceback
        bad = invoke("data", command, broken_cub, "--captions-per-image", 2, "--convention", "C")
        assert bad.exit_code == 1 and "unknown --convention 'C'; use A or B" in bad.output


def test_data_convert_skip_bad_writes_metadata_despite_problems(broken_cub):
    (broken_cub / "CUB_200_2011" / "images" / "003.Odd_bird" / "Odd_0004.jpg").unlink()
    refused = invoke("data", "convert", broken_cub, "--captions-per-image", 2)
    assert refused.exit_code == 1 and "--skip-bad" in refused.output
    assert not (broken_cub / "metadata.json").exists()
    result = invoke("data", "convert", broken_cub, "--captions-per-image", 2, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert (broken_cub / "metadata.json").is_file() and "wrote" in result.output
    check = invoke("data", "check", broken_cub, "--captions-per-image", 2, "--quick")
    assert "metadata from metadata" in check.output.replace("\n", "") or "metadata.json" in check.output


# -- import --vocab ----------------------------------------------------------------------------------------------
def test_import_vocab_stores_the_vocabulary_in_the_checkpoint(run, tmp_path):
    from t2i.legacy import to_original

    state = ckpt.load(run / "checkpoints" / "last.pt")
    original = tmp_path / "text_encoder5.pth"
    torch.save(to_original("text_encoder", state["models"]["text_encoder"]), original)
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(state["vocab"]))
    recipe = run / "config.resolved.toml"
    out = tmp_path / "imported.pt"
    result = invoke("import", recipe, original, "--vocab", vocab, "-o", out)
    assert result.exit_code == 0, result.output
    imported = ckpt.load(out)
    assert imported["vocab"]["words"] == state["vocab"]["words"]
    assert imported["vocab"]["convention"] == state["vocab"]["convention"]
    without = invoke("import", recipe, original, "-o", tmp_path / "plain.pt")
    assert without.exit_code == 0 and "vocab" not in ckpt.load(tmp_path / "plain.pt")
    (tmp_path / "bad.json").write_text("{not json")
    bad = invoke("import", recipe, original, "--vocab", tmp_path / "bad.json", "-o", tmp_path / "x.pt")
    assert bad.exit_code == 1 and "cannot read vocabulary" in bad.output


# -- bench -------------------------------------------------------------------------------------------------------
def test_bench_impl_batch_and_interleave(shapes, tmp_path):
    out = tmp_path / "bench.json"
    no_batch = [o for o in tiny_overrides(shapes / "unused") if not o.startswith("data.batch_size")]
    common = ["bench", "dmgan_shapes", "--what", "sample", "--repeat", 1, "--warmup", 0, "--threads", 1,
              "--matmul-size", 64, "--no-flops", *sets(no_batch)]  # fmt: skip
    result = invoke(*common, "--impl", "t2i", "--batch", 3, "--json", out)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert [(r["impl"], r["batch"]) for r in payload["results"]] == [("t2i", 3)] and payload["interleaved"] == []
    paired = invoke(*common, "--impl", "t2i", "--no-isolated", "--interleave", 2, "--json", out)
    assert paired.exit_code == 0, paired.output
    payload = json.loads(out.read_text())
    assert payload["results"] == []  # --no-isolated: no fresh-process cases
    assert payload["interleaved"] == []  # one implementation: nothing to interleave with (test_bench.py has the pair)
    assert invoke(*common, "--impl", "nope").exit_code == 1
    bad = invoke(*common, "--what", "everything")
    assert bad.exit_code == 1 and "--what 'everything'" in bad.output


# -- ablate ------------------------------------------------------------------------------------------------------
def test_ablate_alignment_metric_and_runs_root(shapes, tmp_path):
    runs = tmp_path / "runs"
    result = invoke("ablate", "dmgan_shapes", "--alignment", "none", "--metric", "caption_consistency",
                    "--seeds", 1, "--steps", 1, "--n", 4, "--runs", runs, *sets(tiny_overrides(shapes)))  # fmt: skip
    assert result.exit_code == 0, result.output
    [folder] = list((runs / "ablate").iterdir())  # default folder: <runs>/ablate/<base>-<hash>/
    assert folder.name.startswith("dmgan_shapes-")
    done = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("done.json"))
    assert done == ["alignment-damsm/seed-0/done.json", "alignment-none/seed-0/done.json"]
    none = json.loads((folder / "alignment-none" / "seed-0" / "done.json").read_text())
    assert [r["metric"] for r in none["rows"]] == ["caption_consistency.v1"]
    config = (folder / "alignment-none" / "seed-0" / "config.resolved.toml").read_text()
    assert "alignment = []" in config
    assert "damsm (base)" in (folder / "results.md").read_text()


def test_version_prints_the_package_version():
    import t2i

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"t2i {t2i.__version__}"
