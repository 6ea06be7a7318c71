"""``t2i demo``, the README's main job, end to end at a tiny budget.

The demo loads the recipe ``dmgan_shapes`` by name, and a recipe name is looked up as a path first: a file called
``dmgan_shapes`` in the working folder that extends the built-in recipe shadows it. That is how this test shrinks the
data set, the networks and the pretraining without an option the user would never need.
"""

from __future__ import annotations

import signal
import textwrap

import pytest
from typer.testing import CliRunner

from t2i.cli import app
from t2i.train import checkpoint as ckpt

TINY_DEMO = textwrap.dedent("""
    extends = "dmgan_shapes.toml"

    [data]
    batch_size = 4
    dataset = { name = "shapes", root = "data/shapes", n = 24, size = 64 }

    [model]
    z_dim = 4
    cond_dim = 4
    text_dim = 8
    gf_dim = 4
    df_dim = 2
    text_encoder = { name = "rnn", word_dim = 8 }
    image_encoder = { name = "cnn_small", width = 4 }

    [train]
    log_every = 1
    checkpoint_every = 1000

    [pretrain.damsm]
    epochs = 1
    batch_size = 10
""")


@pytest.fixture
def restore_signal_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_demo_pretrains_trains_and_writes_samples(tmp_path, monkeypatch, restore_signal_handlers):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dmgan_shapes").write_text(TINY_DEMO)
    result = CliRunner().invoke(app, ["demo", "--out", "out", "--steps", "2"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "1/2 pretraining the DAMSM" in result.output and "2/2 training DM-GAN" in result.output

    # Step 1: the DAMSM encoders land where the recipe's train.pretrained points.
    damsm = tmp_path / "weights" / "shapes" / "damsm.pt"
    state = ckpt.load(damsm)
    assert state["kind"] == "damsm" and state["step"] == 2  # 20 training images, batch 10, one epoch
    # Step 2: one GAN run folder with its checkpoint and sample grid, each location printed.
    runs = [p for p in (tmp_path / "out" / "dmgan_shapes").iterdir() if p.is_dir()]
    assert len(runs) == 1
    run = runs[0]
    last = run / "checkpoints" / "last.pt"
    gan = ckpt.load(last)
    assert gan["kind"] == "gan" and gan["step"] == 2
    assert gan["recipe"]["model"]["gf_dim"] == 4  # the tiny recipe, not the built-in one
    grid = run / "samples" / "step_00000002.png"
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "samples" / "attention_step_00000002.png").is_file()
    output = result.output.replace("\n", "")
    for path in (run, last, grid):
        assert str(path.relative_to(tmp_path)) in output

    # A second demo reuses the encoders instead of pretraining again.
    again = CliRunner().invoke(app, ["demo", "--out", "out", "--steps", "1"], env={"COLUMNS": "300"})
    assert again.exit_code == 0, again.output
    assert "using the pretrained DAMSM encoders" in again.output and "1/2 pretraining" not in again.output
    assert len([p for p in (tmp_path / "out" / "dmgan_shapes").iterdir() if p.is_dir()]) == 2
