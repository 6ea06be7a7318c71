"""The synthetic shapes set: deterministic, ground truth consistent with pixels and captions, loads as a data set."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import torch
from PIL import Image

from t2i.data.shapes import COLOURS, make_shapes, render_image
from t2i.data.shapes_maker import png_bytes
from t2i.registry import get_registry

get_registry("dataset").discover()


def digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def content_digest(root):
    """Like ``digest``, with each PNG's decoded pixels instead of its bytes (zlib builds may compress differently)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = np.asarray(Image.open(path)).tobytes() if path.suffix == ".png" else path.read_bytes()
        h.update(str(path.relative_to(root)).encode() + data)
    return h.hexdigest()


def test_the_data_of_a_seed_never_changes(tmp_path):
    # Numbers in the docs were measured on these sets: a faster generator must draw the same images and captions
    # (a deliberate change of the data is a new version, shapes.v2).
    root = make_shapes(tmp_path / "s", n=200, seed=3, size=32, workers=1)
    assert content_digest(root) == "5b276f0cb6be006706310931b70398fdf79f05456ed7d87606aec5d7ffc90829"


def test_png_writer_round_trips():
    image = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    with Image.open(io.BytesIO(png_bytes(image))) as png:
        assert png.mode == "RGB" and png.size == (5, 7)
        np.testing.assert_array_equal(np.asarray(png), image)


def test_deterministic_for_a_seed(tmp_path, monkeypatch):
    import t2i.data.shapes_maker as shapes

    monkeypatch.setattr(shapes, "_HELPER_MIN_IMAGES", 1)  # use a helper interpreter even for a small set
    a = make_shapes(tmp_path / "a", n=200, seed=3, size=32, workers=2)
    b = make_shapes(tmp_path / "b", n=200, seed=3, size=32, workers=1)
    c = make_shapes(tmp_path / "c", n=200, seed=4, size=32, workers=1)
    assert digest(a) == digest(b) != digest(c)
    assert len(list((a / "CUB_200_2011" / "images").rglob("*.png"))) == 200


def test_ground_truth_matches_pixels_and_captions():
    words = set()
    for i in range(60):
        image, attrs = render_image(0, i, 64)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert 1 <= len(attrs["shapes"]) <= 3 and len(attrs["captions"]) == 10
        for shape in attrs["shapes"]:
            x0, y0, x1, y1 = shape["bbox"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            patch = image[y0:y1, x0:x1].reshape(-1, 3)
            # the shape's own colour is drawn inside its box (outlines and stripes included)
            assert (patch == np.array(COLOURS[shape["colour"]], dtype=np.uint8)).all(axis=1).any()
        for caption in attrs["captions"]:
            mentioned = [attrs["shapes"][j] for j in caption["shapes"]]
            assert all(s["colour"] in caption["text"] for s in mentioned)
            if caption["relation"]:
                a, rel, b = caption["relation"]
                ca, cb = attrs["shapes"][a]["centre"], attrs["shapes"][b]["centre"]
                if rel == "above":
                    assert ca[1] < cb[1]
                if rel == "left of":
                    assert ca[0] < cb[0]
            words.update(caption["text"].replace(",", " ").replace(":", " ").split())
    assert {"above", "two", "three", "small", "large"} <= words and set(COLOURS) <= words


def test_layout_and_dataset(tmp_path, capsys):
    root = tmp_path / "shapes"
    ds = get_registry("dataset").build("shapes", {"root": str(root), "n": 50, "size": 64}, split="train",
                                       image_sizes=[64])  # fmt: skip
    assert "generating the shapes set" in capsys.readouterr().err
    assert len(ds) == 40 and 1 <= ds.num_classes <= 24
    attrs = json.loads((root / "attributes.json").read_text())
    assert attrs["generator"] == {"n": 50, "seed": 0, "size": 64} and len(attrs["images"]) == 50
    key = ds.keys[0]
    assert len(ds.captions_of(0)) == 10 and attrs["images"][key]["class_id"] == ds.class_id(0)
    png = np.asarray(Image.open(root / "CUB_200_2011" / "images" / f"{key}.png"))
    again, _ = render_image(0, int(key[-6:]), 64)
    np.testing.assert_array_equal(png, again)
    batch = ds.collate([ds[i] for i in range(4)])
    assert batch.images[0].shape == (4, 3, 64, 64) and batch.captions.shape == (4, 18)
    test = get_registry("dataset").build("shapes", {"root": str(root)}, split="test", image_sizes=[64])
    assert len(test) == 10 and not set(test.keys) & set(ds.keys)


def _flips_seen(ds, index: int, draws: int = 24) -> tuple[int, int]:
    """How many of ``draws`` items of ``ds[index]`` are plain crops / mirrored crops of its pre-crop image."""
    precrop = ds.precrop(index)
    size = ds.image_sizes[-1]
    windows = np.lib.stride_tricks.sliding_window_view(precrop, (size, size, 3)).reshape(-1, size, size, 3)
    plain = mirrored = 0
    for draw in range(draws):
        torch.manual_seed(draw)
        image = ds[index][0][-1].permute(1, 2, 0).numpy()  # (S, S, 3) uint8
        plain += bool((windows == image).all(axis=(1, 2, 3)).any())
        mirrored += bool((windows == image[:, ::-1]).all(axis=(1, 2, 3)).any())
    return plain, mirrored


def test_shapes_are_not_flipped_by_default(tmp_path):
    # A mirrored image would contradict its "left of" / "on the right" captions.
    make_shapes(tmp_path / "s", n=10, seed=2, size=32, workers=1)
    build = get_registry("dataset").build
    ds = build("shapes", {"root": str(tmp_path / "s")}, split="train", image_sizes=[32])
    assert ds.flip is False
    # image 0 is not left-right symmetric, so a mirrored crop is never also a plain one
    assert _flips_seen(ds, 0) == (24, 0)
    flipping = build("shapes", {"root": str(tmp_path / "s"), "flip": True}, split="train", image_sizes=[32])
    plain, mirrored = _flips_seen(flipping, 0)
    assert plain + mirrored == 24 and plain > 0 and mirrored > 0
