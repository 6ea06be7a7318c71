"""`t2i eval --images DIR`: metrics of image files made elsewhere, reference statistics as .npz or a folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from t2i.cli import app
from t2i.evaluate_images import image_batches, image_files
from t2i.metrics.base import EvalContext
from t2i.metrics.fid import FIDDMGAN2018, FIDParams, frechet_distance

RANDOM = ["--set", "fid.allow_random_backbone=true", "--set", "is.allow_random_backbone=true"]


class _StubInception(nn.Module):
    """Stands in for the Inception (no weights here, and 299 px Inceptions are slow on 2 cores): per-channel
    statistics as features, a fixed projection as logits."""

    info = {"name": "stub", "weights_file": None, "sha256": "stub"}

    def forward(self, x):
        return torch.cat([x.mean((2, 3)), (x**2).mean((2, 3)), x.amax((2, 3))], 1).double()

    def logits(self, features):
        return features @ torch.linspace(-2, 2, 9 * 4, dtype=features.dtype).reshape(9, 4)


@pytest.fixture(autouse=True)
def stub_inception(monkeypatch):
    monkeypatch.setattr("t2i.metrics.fid.fid_inception", lambda *a, **k: _StubInception())
    monkeypatch.setattr("t2i.metrics.inception_score.fid_inception", lambda *a, **k: _StubInception())
    monkeypatch.setattr("t2i.metrics.fid.torchvision_inception", lambda *a, **k: _StubInception())


def _folder(path: Path, seed: int, n: int = 6, size: int = 24, shift: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (path / "sub").mkdir(parents=True)
    for i in range(n):
        pixels = np.clip(rng.integers(0, 200, (size, size, 3)) + shift, 0, 255).astype(np.uint8)
        target = path / ("sub" if i % 2 else "") / f"img{i}.png"
        Image.fromarray(pixels).save(target)
    return path


def _invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_image_files_are_found_recursively_and_read_exactly(tmp_path):
    folder = _folder(tmp_path / "a", seed=0)
    files = image_files(folder)
    assert [p.name for p in files] == ["img0.png", "img2.png", "img4.png", "img1.png", "img3.png", "img5.png"]
    batch = next(image_batches(files, 4))
    assert batch.shape == (4, 3, 24, 24)
    pixels = np.array(Image.open(files[0]))
    assert torch.equal(((batch[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(pixels))


def test_save_stats_then_reference_npz_equals_reference_folder(tmp_path):
    fake, real = _folder(tmp_path / "fake", seed=1), _folder(tmp_path / "real", seed=2, shift=40)
    stats = tmp_path / "stats" / "real_val.npz"
    code, text = _invoke("eval", "--images", real, "--save-stats", stats, "--weights-dir", tmp_path, *RANDOM[:2])
    assert code == 0, text
    with np.load(stats) as data:
        assert set(data.files) == {"mu", "sigma"} and data["mu"].shape == (9,)
        assert data["sigma"].shape == (9, 9)
    by_npz = _invoke("eval", "--images", fake, "--reference", stats, "-m", "fid", "--weights-dir", tmp_path, *RANDOM)
    by_dir = _invoke("eval", "--images", fake, "--reference", real, "-m", "fid", "--weights-dir", tmp_path, *RANDOM)
    assert by_npz[0] == 0 and by_dir[0] == 0, by_npz[1] + by_dir[1]
    rows = [json.loads(line) for line in (fake / "eval.jsonl").read_text().splitlines()]
    assert [r["metric"] for r in rows] == ["fid.v1", "fid.v1"] and rows[0]["n"] == 6
    assert rows[0]["value"] == pytest.approx(rows[1]["value"], rel=1e-9, abs=1e-9)
    assert rows[0]["value"] > 0.05  # brighter real images: a clear distance


def test_a_folder_against_itself_is_zero_and_is_runs(tmp_path):
    folder = _folder(tmp_path / "a", seed=3)
    code, text = _invoke("eval", "--images", folder, "--reference", folder, "--set", "is.splits=2", *RANDOM)
    assert code == 0, text
    rows = {r["metric"]: r for r in map(json.loads, (folder / "eval.jsonl").read_text().splitlines())}
    assert set(rows) == {"fid.v1", "is.v1"}
    assert abs(rows["fid.v1"]["value"]) < 1e-6
    assert rows["is.v1"]["n"] == 6 and rows["is.v1"]["value"] > 1.0
    assert rows["is.v1"]["protocol"]["splits"] == 2 and rows["fid.v1"]["protocol"]["images"] == str(folder)


def test_file_images_are_not_truncated_a_step_down(tmp_path):
    """Exact uint8 images pass DM-GAN 2018's truncating quantisation unchanged (float32 x/127.5-1 sits a hair low)."""
    ctx = EvalContext(weights_dir=tmp_path, cache_dir=tmp_path)
    metric = FIDDMGAN2018(FIDParams(), context=ctx)
    steps = (torch.arange(256, dtype=torch.float32).repeat(3, 16, 1) / 127.5 - 1)[None]  # (1, 3, 16, 256)
    assert not torch.equal(metric.prepare(steps, real=False), metric.prepare(steps, real=True))  # truncation bites
    metric.drop_last = None  # one image: no full batch of 50 to wait for
    metric.update(steps, {"uint8": True})
    assert np.allclose(metric.fake.total, metric.features(steps, real=True).numpy().sum(0), rtol=0, atol=0)
    assert frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2)) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.mkdir(), "holds no image"),
        (lambda p: None, "not found"),
        (lambda p: (p.mkdir(), (p / "bad.png").write_bytes(b"not a png")), "bad.png"),
    ],
    ids=["empty", "missing", "corrupt"],
)
def test_bad_folders_are_user_errors(tmp_path, make, expected):
    folder = tmp_path / "images"
    make(folder)
    code, text = _invoke("eval", "--images", folder, "--weights-dir", tmp_path, *RANDOM)
    assert code == 1 and expected in text and "Traceback" not in text


def test_option_combinations_are_checked(tmp_path):
    folder = _folder(tmp_path / "a", seed=4)
    code, text = _invoke("eval", "--images", folder, "--reference", tmp_path / "stats.txt")
    assert code == 1 and "not found" in text
    (tmp_path / "stats.txt").write_text("x")
    code, text = _invoke("eval", "--images", folder, "--reference", tmp_path / "stats.txt", *RANDOM)
    assert code == 1 and ".npz" in text
    code, text = _invoke("eval", "--reference", tmp_path / "stats.txt")
    assert code == 1 and "--images" in text
    code, text = _invoke("eval", "--images", folder, "--save-stats", tmp_path / "x.npz", "-m", "is")
    assert code == 1 and "FID statistics" in text
