"""``folder.v1``: images with same-named caption files, class sub-folders, split files, and their errors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from t2i.data.folder import read_folder
from t2i.data.layout import DataError
from t2i.registry import get_registry

get_registry("dataset").discover()


def make_folder(root, with_classes=True, splits=True):
    names = [("cats", "c1"), ("cats", "c2"), ("dogs", "d1"), ("dogs", "d2")] if with_classes else [
        ("", "a"), ("", "b"), ("", "c")]  # fmt: skip
    for sub, name in names:
        folder = root / sub if sub else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 40), (10, 200, 30)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"a photo of {name}\nanother {sub or 'thing'} here\n", encoding="utf-8")
    if splits and with_classes:
        (root / "train.txt").write_text("cats/c1\ncats/c2.png\ndogs/d1\n")
        (root / "test.txt").write_text("dogs/d2\n")
    return root


def folder(root, split="train", **params):
    return get_registry("dataset").build("folder", {"root": str(root), **params}, split=split, image_sizes=[32])


def test_classes_and_split_files(tmp_path):
    ds = folder(make_folder(tmp_path / "f"))
    assert ds.keys == ["cats/c1", "cats/c2", "dogs/d1"] and ds.class_ids == [1, 1, 2] and ds.num_classes == 2
    batch = ds.collate([ds[i] for i in range(3)])
    assert batch.images[0].shape == (3, 3, 32, 32) and torch.all(batch.lengths[:-1] >= batch.lengths[1:])
    assert ds.vocab.decode(ds.captions_of(0)[0]) == "a photo of c1"
    assert folder(tmp_path / "f", split="test").keys == ["dogs/d2"]


def test_flat_folder_without_split_files(tmp_path):
    root = make_folder(tmp_path / "f", with_classes=False)
    meta = read_folder(root, captions_per_image=10, test_fraction=0.0)
    assert meta.splits["train"].keys == ["a", "b", "c"] and meta.splits["train"].class_ids == [0, 1, 2]
    everything = read_folder(root, captions_per_image=10, test_fraction=1.0)
    assert everything.splits["test"].keys == ["a", "b", "c"] and everything.splits["train"].keys == []


def test_errors_name_the_file(tmp_path):
    root = make_folder(tmp_path / "f")
    (root / "test.txt").write_text("dogs/d2\ndogs/ghost\n")
    with pytest.raises(DataError, match="dogs/ghost: image missing"):
        folder(root, split="test")
    (root / "cats" / "c1.txt").write_text("\n \n")
    meta = read_folder(root, captions_per_image=10)
    assert any("c1.txt: caption file has no caption" in p for p in meta.problems)
    assert any("ghost.jpg: test.txt names this image but it does not exist" in p for p in meta.problems)
    with pytest.raises(DataError, match="no images found"):
        folder(tmp_path / "f2" if (tmp_path / "f2").mkdir() is None else None)
