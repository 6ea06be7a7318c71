"""Byte-level fuzzing of recipes, data sets and checkpoints through the commands that read them.

Each case flips, inserts, deletes or duplicates bytes of a valid file, or truncates it, then runs the command in
process. The only outcomes allowed: exit 0, or exit 1 with a message that is not an internal error; never an
exception out of the command, and never a change to an input file. Seeded, so a failure names a case to replay.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from t2i.cli import app

ROOT = Path(__file__).resolve().parent.parent
SEED = 0


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random edits; never returns the input unchanged."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(("flip", "insert", "delete", "duplicate", "truncate", "byte"))
        at = rng.randrange(len(out) + 1)
        if op == "flip" and out:
            at = min(at, len(out) - 1)
            out[at] ^= 1 << rng.randrange(8)
        elif op == "byte" and out:
            out[min(at, len(out) - 1)] = rng.choice((0x00, 0x5B, 0x5D, 0x22, 0x0A, 0xFF, 0xC3, rng.randrange(256)))
        elif op == "insert":
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == "delete":
            del out[at : at + rng.randint(1, 16)]
        elif op == "duplicate":
            out[at:at] = out[at : at + rng.randint(1, 64)]
        elif op == "truncate":
            del out[at:]
    if bytes(out) == data:
        out.append(0xFF)
    return bytes(out)


def digest(root: Path) -> dict[str, str]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"exception out of t2i {args}: {result.exception!r}") from result.exception
    return result.exit_code, result.output


def check(case: str, inputs: Path, *args: str | Path) -> None:
    before = digest(inputs)
    code, output = run(*args)
    assert code in (0, 1), f"{case}: exit {code}\n{output}"
    if code == 1:
        assert "error:" in output or "problem(s)" in output, f"{case}: exit 1 without a message\n{output}"
    assert "internal error" not in output and "Traceback" not in output, f"{case}\n{output}"
    assert digest(inputs) == before, f"{case}: an input file changed"


def test_mutated_recipes(tmp_path):
    rng = random.Random(SEED)
    folder = tmp_path / "recipes"
    shutil.copytree(ROOT / "recipes", folder)  # so `extends` finds the originals
    originals = sorted(folder.glob("*.toml"))
    for i in range(150):
        source = rng.choice(originals)
        path = folder / f"fuzz_{i}.toml"
        path.write_bytes(mutate(source.read_bytes(), rng))
        check(f"recipe case {i} ({source.name})", path, "config", "validate", path)
        path.unlink()


def _folder_dataset(root: Path) -> Path:
    from PIL import Image

    for sub, name in (("cats", "c1"), ("cats", "c2"), ("dogs", "d1"), ("dogs", "d2")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 20), (10, 200, 30)).save(root / sub / f"{name}.png")
        (root / sub / f"{name}.txt").write_text(f"a small photo of {name}\nanother {sub} here\n", encoding="utf-8")
    (root / "train.txt").write_text("cats/c1\ncats/c2.png\ndogs/d1\n")
    (root / "test.txt").write_text("dogs/d2\n")
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    from t2i.data.shapes_maker import make_shapes

    root = tmp_path_factory.mktemp("data") / "shapes"
    make_shapes(root, n=12, seed=0, size=64, workers=1)
    return root


def _mutate_one(root: Path, candidates: list[Path], rng: random.Random) -> tuple[Path, bytes]:
    target = rng.choice(candidates)
    original = target.read_bytes()
    target.write_bytes(mutate(original, rng))
    return target, original


def test_mutated_data_sets(tmp_path, shapes):
    rng = random.Random(SEED + 1)
    folder = _folder_dataset(tmp_path / "folder")
    cub = tmp_path / "cub"
    shutil.copytree(shapes, cub)
    targets = {
        folder: [p for p in folder.rglob("*") if p.suffix in (".txt", ".png")],
        cub: [p for p in cub.rglob("*") if p.is_file() and p.suffix != ".jpg"]
        + sorted(cub.rglob("*.jpg"))[:2],  # metadata, captions, pickles and a couple of images
    }
    for i in range(120):
        root = rng.choice(list(targets))
        target, original = _mutate_one(root, targets[root], rng)
        try:
            case = f"data case {i} ({target.relative_to(root.parent)})"
            check(case, root, "data", "check", root, "--workers", "1", *(["--quick"] if i % 2 else []))
        finally:
            target.write_bytes(original)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real GAN checkpoint of a toy network, trained one step."""
    base = tmp_path_factory.mktemp("ckpt")
    sets = [
        f'data.dataset.root="{base / "shapes"}"',
        "data.dataset.n=12",
        "data.batch_size=4",
        "model.base_size=32",
        "model.stages=2",
        "model.z_dim=4",
        "model.cond_dim=4",
        "model.text_dim=8",
        "model.gf_dim=4",
        "model.df_dim=2",
        "model.text_encoder.word_dim=8",
        "model.image_encoder.width=4",
        'train.pretrained.text_encoder="random"',
        'train.pretrained.image_encoder="random"',
        "train.sample_every=1000",
    ]
    args = ["train", "dmgan_shapes", *[x for s in sets for x in ("--set", s)], "--run-dir", base / "run", "-q"]
    code, output = run(*args, "--steps", "1")
    assert code == 0, output
    return base / "run" / "checkpoints" / "last.pt"


def test_mutated_checkpoints(tmp_path, checkpoint):
    from t2i.train import checkpoint as ckpt

    rng = random.Random(SEED + 2)
    original = checkpoint.read_bytes()
    path = tmp_path / "fuzz.pt"
    for i in range(60):
        path.write_bytes(mutate(original, rng))
        try:
            data = ckpt.load(path)
        except ckpt.CheckpointError:
            pass
        else:
            assert isinstance(data, dict)
        if i % 3 == 0:
            check(
                f"checkpoint case {i} (sample)",
                path,
                "sample",
                path,
                "a red circle",
                "--n",
                "1",
                "-o",
                tmp_path / "s.png",
            )
        else:
            check(f"checkpoint case {i} (export)", path, "export", path, "-o", tmp_path / "exported")
