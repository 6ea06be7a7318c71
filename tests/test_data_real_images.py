"""A CUB-layout set of real images the loader was never tuned on, with hand-written captions: it passes
``t2i data check`` and loads through ``cub.v1``; a corrupt copy (truncated JPEG, missing caption file, cp1252 caption
file) gives one clear message per file.

The images are files that ship with installed packages: graph drawings (networkx, a torch dependency), plots
(sympy, a torch dependency), a binary image (scipy) and, when the Rust docs are installed, two photographs of a
circuit board. They are copied byte for byte (PNG with alpha, JPEG, a ``.jpeg`` name) as a user would.
"""

from __future__ import annotations

import glob
import importlib.util
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from t2i.cli import app
from t2i.data.layout import DataError
from t2i.registry import get_registry

get_registry("dataset").discover()


def _package_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def _photo(name: str) -> Path | None:
    found = sorted(
        glob.glob(str(Path.home() / f".rustup/toolchains/*/share/doc/rust/html/embedded-book/assets/{name}"))
    )
    return Path(found[0]) if found else None


NX = "drawing/tests/baseline/test_"

# (class dir, name, source, captions): captions written by looking at each picture.
SOURCES = [
    ("001.Circuit_board", "board_top.jpg", lambda: _photo("f3.jpg"), [
        "a green circuit board with a black square chip in the middle",
        "a photo of a microcontroller board with two long rows of pins",
        "a green printed circuit board with white labels and a blue button",
    ]),
    ("001.Circuit_board", "board_lit.jpeg", lambda: _photo("verify.jpeg"), [
        "a green development board with two small usb sockets on the right",
        "a circuit board photographed from above with a lit white light",
        "a green board with many pins, chips and a round pattern of leds",
    ]),
    ("002.Graph_drawing", "house.png", lambda: _package_file("networkx", NX + "house_with_colors.png"), [
        "five circles joined by grey lines in the shape of a house",
        "four blue circles and one orange circle at the top",
        "a drawing of a graph – a square with a triangle roof",
    ]),
    ("002.Graph_drawing", "shortest_path.png", lambda: _package_file("networkx", NX + "display_shortest_path.png"), [
        "small blue nodes connected by black and red lines with numbers",
        "a graph drawing where the shortest path is shown in red",
        "a weighted graph with letters on its nodes",
    ]),
    ("002.Graph_drawing", "two_diamonds.png", lambda: _package_file("networkx", NX + "display_labels_and_colors.png"), [
        "two diamonds of nodes, one red and one blue, overlapping",
        "red nodes with latin letters and blue nodes with greek letters",
        "a graph drawing with thick red and blue edges",
    ]),
    ("003.Plot", "region_and.png", lambda: _package_file("sympy", "plotting/tests/test_region_and.png"), [
        "a plot with a small blue lens shape at the origin",
        "x and y axes from minus four to four with a thin blue region",
        "the intersection of two discs shaded in blue",
    ]),
    ("003.Plot", "region_or.png", lambda: _package_file("sympy", "plotting/tests/test_region_or.png"), [
        "a plot of two overlapping blue discs side by side",
        "the union of two circles filled with blue on white axes",
        "a blue shape like a peanut centred on the origin",
    ]),
    ("003.Plot", "region_not.png", lambda: _package_file("sympy", "plotting/tests/test_region_not.png"), [
        "a blue plane with a white oval hole to the right of the origin",
        "everything is blue except an ellipse",
        "a filled blue plot with a white ellipse in it",
    ]),
    ("004.Blobs", "dots.png", lambda: _package_file("scipy", "ndimage/tests/dots.png"), [
        "black blobs of different sizes on a white background",
        "a binary image with a few large black spots and many small ones",
        "dark irregular dots scattered over white",
    ]),
]  # fmt: skip
TEST_NAMES = {"region_not.png", "dots.png", "board_lit.jpeg"}


def build_real_set(root: Path) -> dict[str, Path]:
    """Copy the available images into a CUB layout; returns key -> image path."""
    images: dict[str, Path] = {}
    rows, boxes = [], []
    for class_dir, name, source, captions in SOURCES:
        path = source()
        if path is None:
            continue
        key = f"{class_dir}/{name.rsplit('.', 1)[0]}"
        target = root / "CUB_200_2011" / "images" / class_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        text = root / "text" / f"{key}.txt"
        text.parent.mkdir(parents=True, exist_ok=True)
        text.write_text("\n".join(captions) + "\n", encoding="utf-8")
        images[key] = target
        with Image.open(target) as opened:
            w, h = opened.size
        rows.append(f"{len(rows) + 1} {class_dir}/{name}")
        boxes.append(f"{len(boxes) + 1} {0.1 * w:.1f} {0.1 * h:.1f} {0.8 * w:.1f} {0.8 * h:.1f}")
    if not any(p.suffix.lower() in (".jpg", ".jpeg") for p in images.values()):
        # No photographs installed: a drawing saved as JPEG by its owner, so a JPEG can be truncated below.
        source = images.pop("002.Graph_drawing/house")
        target = source.with_name("house.jpeg")
        Image.open(source).convert("RGB").save(target, quality=90)
        source.unlink()
        images["002.Graph_drawing/house"] = target
        rows = [r.replace("house.png", "house.jpeg") for r in rows]
    (root / "CUB_200_2011" / "images.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n", encoding="utf-8")
    for split in ("train", "test"):
        keys = [k for k, p in images.items() if (p.name in TEST_NAMES or p.name == "house.jpeg") == (split == "test")]
        (root / split).mkdir()
        (root / split / "filenames.pickle").write_bytes(pickle.dumps(keys, protocol=2))
        (root / split / "class_info.pickle").write_bytes(pickle.dumps([int(k[:3]) for k in keys], protocol=2))
    return images


@pytest.fixture(scope="module")
def real_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("real") / "pictures"
    images = build_real_set(root)
    if len(images) < 4:
        pytest.skip("fewer than 4 of the bundled sample images are installed (networkx, sympy, scipy)")
    return root, images


def check(*args):
    return CliRunner().invoke(app, ["data", "check", *map(str, args), "--captions-per-image", "3"])


def cub(root, split="train", **params):
    return get_registry("dataset").build("cub", {"root": str(root), "captions_per_image": 3, **params},
                                         split=split, image_sizes=[64, 128])  # fmt: skip


def test_real_set_passes_check_and_loads(real_set):
    root, images = real_set
    result = check(root)
    assert result.exit_code == 0, result.output
    assert "(cub," in result.output and "ok" in result.output and "problem" not in result.output
    train, test = cub(root), cub(root, split="test")
    assert len(train) + len(test) == len(images) and len(test) >= 2
    assert {"circles", "blue", "graph", "plot"} <= set(train.vocab.words)
    batch = train.collate([train[i] for i in range(len(train))])
    assert [tuple(im.shape[1:]) for im in batch.images] == [(3, 64, 64), (3, 128, 128)]
    assert -1 <= float(batch.images[1].min()) < 0 < float(batch.images[1].max()) <= 1
    for i, key in enumerate(train.keys):
        precrop = train.precrop(i)  # bbox crop (80% of the picture) resized: shorter side 152
        assert min(precrop.shape[:2]) == 152 and precrop.dtype == np.uint8
        assert len(train.captions_of(i)) == 3
        if key.startswith("003.Plot/region_or"):
            r, g, b = precrop.reshape(-1, 3).astype(int).T
            assert ((b > 200) & (r < 80) & (g < 80)).mean() > 0.03  # the blue discs came through
        if key.startswith("002.Graph_drawing/shortest_path"):
            assert precrop.mean() > 200  # a drawing on white


def test_corrupt_copy_names_every_bad_file(real_set, tmp_path):
    source, images = real_set
    root = tmp_path / "pictures"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns(".t2i_cache", "metadata.json"))
    jpeg = next(p for p in sorted(images.values()) if p.suffix.lower() in (".jpg", ".jpeg"))
    jpeg = root / jpeg.relative_to(source)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    missing = root / "text" / "003.Plot" / "region_and.txt"
    missing.unlink()
    legacy = root / "text" / "002.Graph_drawing" / "two_diamonds.txt"
    legacy.write_bytes(
        "a graph drawing – red nodes, café-coloured edges\nnodes named α β γ δ\n".encode("cp1252", "replace")
    )

    result = check(root)
    assert result.exit_code == 1
    out = " ".join(result.output.split())  # undo line wrapping
    assert "2 problem(s)" in out
    assert f"{jpeg}: cannot decode image" in out and "replace the file" in out
    assert f"{missing}: caption file is missing; add it" in out
    assert f"{legacy}: not UTF-8, decoded as cp1252" in out

    with pytest.raises(DataError, match="unusable, first 003.Plot/region_and: no captions.*t2i data check"):
        cub(root)
    split = "test" if jpeg.name in TEST_NAMES or jpeg.name == "house.jpeg" else "train"
    with pytest.raises(DataError, match=re.escape(f"{jpeg}: cannot decode image")):
        cub(root, split=split, skip_bad=False)
    kept = cub(root, split=split, skip_bad=True)
    assert jpeg.stem not in {k.split("/")[1] for k in kept.keys}
    train = cub(root, skip_bad=True)
    assert "003.Plot/region_and" not in train.keys
    diamonds = train.keys.index("002.Graph_drawing/two_diamonds")
    assert train.vocab.decode(train.captions_of(diamonds)[0]).startswith("a graph drawing red nodes")
