"""CUB- and COCO-layout loading (the originals' on-disk layouts) on tiny layouts built in tmp_path, and their errors."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.data.layout import CUB_LAYOUT, DataError, read_layout, write_metadata
from t2i.data.transforms import bbox_crop_box, collate_sorted, precrop_size, sample_caption
from t2i.data.vocab import Vocabulary, tokenize
from t2i.registry import get_registry

# Register the built-in data sets before conftest's per-test registry snapshot is taken.
get_registry("dataset").discover()

CAPTIONS = [
    "this bird is red with a short beak",
    "a small bird with red wings and a black crown",
]
KEYS = {
    "train": ["001.Red_bird/Red_0001", "001.Red_bird/Red_0002", "002.Blue_bird/Blue_0003"],
    "test": ["003.Odd_bird/Odd_0004"],
}


def make_cub(root: Path, *, size=(50, 40), cpi=2, class_info=True) -> Path:
    """A tiny CUB layout: 4 JPEGs, bboxes, text files, protocol-2 pickles (class ids as numpy int64)."""
    images = root / "CUB_200_2011" / "images"
    rng = np.random.default_rng(0)
    rows = []
    all_keys = KEYS["train"] + KEYS["test"]
    for i, key in enumerate(all_keys):
        (images / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(images / f"{key}.jpg")
        rows.append(key)
        text = root / "text" / f"{key}.txt"
        text.parent.mkdir(parents=True, exist_ok=True)
        text.write_text("\n".join(f"{c} number{i}" for c in CAPTIONS[:cpi]) + "\n\n", encoding="utf-8")
    (root / "CUB_200_2011" / "images.txt").write_text("".join(f"{i + 1} {k}.jpg\n" for i, k in enumerate(rows)))
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text(
        "".join(f"{i + 1} 5.0 4.0 {size[0] - 12}.0 {size[1] - 10}.0\n" for i in range(len(rows)))
    )
    for split, keys in KEYS.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / "filenames.pickle").write_bytes(pickle.dumps(keys, protocol=2))
        if class_info:
            ids = [np.int64(int(k[:3])) for k in keys]
            (root / split / "class_info.pickle").write_bytes(pickle.dumps(ids, protocol=2))
    return root


def cub(root, split="train", sizes=(32, 64), **params):
    return get_registry("dataset").build("cub", {"root": str(root), "captions_per_image": 2, **params},
                                         split=split, image_sizes=list(sizes))  # fmt: skip


def test_loads_items_and_batches(tmp_path):
    ds = cub(make_cub(tmp_path / "birds"))
    assert len(ds) == 3 and ds.num_classes == 2 and ds.class_id(2) == 2
    assert ds.vocab.words[0] == "<end>" and ds.vocab.pad_id == 0 and ds.vocab.mask_ids == {0}
    # Built the original way: every word, numbered in order of first occurrence.
    assert ds.vocab.words[1:5] == ["this", "bird", "is", "red"]
    batch = collate_sorted([ds[i] for i in range(3)])
    assert [tuple(im.shape) for im in batch.images] == [(3, 3, 32, 32), (3, 3, 64, 64)]
    assert batch.images[0].dtype == torch.float32 and -1 <= batch.images[1].min() and batch.images[1].max() <= 1
    assert batch.captions.shape == (3, 18) and batch.captions.dtype == torch.int64
    assert torch.all(batch.lengths[:-1] >= batch.lengths[1:])
    assert ds.vocab.decode(ds.captions_of(0)[0]) == "this bird is red with a short beak number0"
    one = collate_sorted([ds[0]])
    assert one.captions.shape == (1, 18) and one.images[0].shape == (1, 3, 32, 32)
    test = cub(tmp_path / "birds", split="test")
    assert len(test) == 1 and test.words_num == 25 and test.class_id(0) == 3


def test_cache_gives_the_same_pixels(tmp_path):
    root = make_cub(tmp_path / "birds")
    cached, plain = cub(root, cache=True), cub(root, cache=False)
    assert any((root / ".t2i_cache").iterdir())
    for i in range(3):
        np.testing.assert_array_equal(cached.precrop(i), plain.precrop(i))
        torch.manual_seed(i)
        a = cached[i]
        torch.manual_seed(i)
        b = plain[i]
        assert all(torch.equal(x, y) for x, y in zip(a[0], b[0], strict=True)) and torch.equal(a[1], b[1])
    assert min(cached.precrop(0).shape[:2]) == precrop_size(64) == 76


def test_bbox_crop_rule():
    # r = int(0.75*max(20, 10)) = 15, centre (20, 15) -> [5, 0, 35, 30], clipped at the top border.
    assert bbox_crop_box((10.9, 10.2, 20.0, 10.0), 100, 100) == (5, 0, 35, 30)
    assert bbox_crop_box((0, 0, 100, 80), 100, 80) == (0, 0, 100, 80)


def test_caption_length_rule_conventions():
    caps = [list(range(10, 40))]
    cap, n = sample_caption(caps, 18, "A")
    assert n == 18 and cap.shape == (18,) and torch.all(cap[1:] > cap[:-1])  # subset keeps word order
    cap, n = sample_caption([[5, 6, 7]], 18, "A")
    assert n == 3 and cap.tolist() == [5, 6, 7] + [0] * 15
    cap, n = sample_caption([[5, 6, 7]], 8, "B")
    assert n == 5 and cap.tolist() == [0, 5, 6, 7, 1, 2, 2, 2]
    cap, n = sample_caption(caps, 8, "B")
    assert n == 8 and cap[0] == 0 and cap[-1] == 1 and torch.all(cap[2:7] > cap[1:6])


def test_convention_b_dataset(tmp_path):
    ds = cub(make_cub(tmp_path / "birds"), convention="B", words_num=20)
    assert ds.vocab.words[:3] == ["<start>", "<end>", "<pad>"] and ds.vocab.mask_ids == {0, 1, 2}
    _, cap, n, _, _ = ds[0]
    assert cap[0] == 0 and cap[n - 1] == 1 and torch.all(cap[n:] == 2)
    assert ds.captions_of(0)[0][0] == 0 and ds.captions_of(0)[0][-1] == 1


def test_captions_pickle_order_is_kept(tmp_path):
    root = make_cub(tmp_path / "birds")
    words = ["<end>", "zebra", "bird", "red"]
    ixtoword = dict(enumerate(words))
    train = [[2, 3], [1]] * 3
    test = [[3], [2, 1]]
    (root / "captions.pickle").write_bytes(
        pickle.dumps([train, test, ixtoword, {w: i for i, w in ixtoword.items()}], protocol=2)
    )
    ds = cub(root)
    assert ds.vocab.words == words
    assert ds.captions_of(1) == [[2, 3], [1]]
    assert cub(root, split="test").captions_of(0) == [[3], [2, 1]]


def test_convert_writes_metadata_that_later_runs_read(tmp_path):
    root = make_cub(tmp_path / "birds")
    meta = read_layout(root, CUB_LAYOUT, captions_per_image=2, need_bbox=True, prefer_metadata=False)
    write_metadata(meta)
    (root / "train" / "filenames.pickle").unlink()  # no pickle needed any more
    again = read_layout(root, CUB_LAYOUT, captions_per_image=2, need_bbox=True)
    assert again.source == "metadata.json" and again.vocab.sha256() == meta.vocab.sha256()
    assert again.splits["train"].captions == meta.splits["train"].captions
    assert json.loads((root / "metadata.json").read_text())["bboxes"]["001.Red_bird/Red_0001"] == [5, 4, 38, 30]


def test_stored_metadata_is_used_only_when_it_matches_what_is_asked(tmp_path):
    """metadata.json answers a read only for the same layout, caption convention, captions per image and bboxes."""
    root = make_cub(tmp_path / "birds")
    write_metadata(read_layout(root, CUB_LAYOUT, captions_per_image=2, need_bbox=False, prefer_metadata=False))
    assert read_layout(root, CUB_LAYOUT, captions_per_image=2).source == "metadata.json"
    for asked in (
        {"captions_per_image": 1},  # another caption count
        {"captions_per_image": 2, "convention": "B"},  # another caption convention
        {"captions_per_image": 2, "need_bbox": True},  # the stored read had no bounding boxes
    ):
        meta = read_layout(root, CUB_LAYOUT, **asked)
        assert meta.source != "metadata.json", asked
        assert meta.captions_per_image == asked["captions_per_image"]
        assert meta.vocab.convention == asked.get("convention", "A")
        assert (meta.bboxes is not None) == asked.get("need_bbox", False)
    coco = replace(CUB_LAYOUT, name="other")
    assert read_layout(root, coco, captions_per_image=2).source != "metadata.json"  # another layout


def test_malicious_split_pickle_is_refused(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    root = make_cub(tmp_path / "birds")
    (root / "train" / "filenames.pickle").write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(Exception, match=r"filenames\.pickle: refusing to load the global"):
        cub(root)


def test_missing_bbox_file(tmp_path):
    root = make_cub(tmp_path / "birds")
    (root / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    with pytest.raises(DataError, match=r"missing bounding-box file .*bounding_boxes\.txt.*crop_bbox=false"):
        cub(root)
    assert len(cub(root, crop_bbox=False)) == 3


def test_split_naming_a_missing_image(tmp_path):
    root = make_cub(tmp_path / "birds")
    (root / "CUB_200_2011" / "images" / "002.Blue_bird" / "Blue_0003.jpg").unlink()
    with pytest.raises(DataError, match=r"002\.Blue_bird/Blue_0003: image missing.*skip_bad"):
        cub(root)
    assert len(cub(root, skip_bad=True)) == 2


@pytest.mark.parametrize("cache", [True, False])
def test_corrupt_and_truncated_images(tmp_path, cache):
    root = make_cub(tmp_path / "birds")
    bad = root / "CUB_200_2011" / "images" / "001.Red_bird" / "Red_0002.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DataError, match=r"Red_0002\.jpg: cannot decode image"):
        ds = cub(root, cache=cache)
        [ds[i] for i in range(len(ds))]
    ds = cub(root, cache=cache, skip_bad=True)
    keys = {ds[i][4] for i in range(len(ds))}
    assert "001.Red_bird/Red_0002" not in keys and len(keys) == 2


def test_empty_dataset_and_missing_root(tmp_path):
    root = make_cub(tmp_path / "birds")
    (root / "test" / "filenames.pickle").write_bytes(pickle.dumps([], protocol=2))
    (root / "test" / "class_info.pickle").write_bytes(pickle.dumps([], protocol=2))
    with pytest.raises(DataError, match="split test is empty"):
        cub(root, split="test")
    with pytest.raises(DataError, match="does not exist"):
        cub(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no split 'val'; available: test, train"):
        cub(root, split="val")


def test_legacy_encoded_caption_file(tmp_path):
    root = make_cub(tmp_path / "birds")
    (root / "text" / "001.Red_bird" / "Red_0001.txt").write_bytes(
        "a caf\xe9 bird \u201cquoted\u201d\n".encode("cp1252")
    )
    meta = read_layout(root, CUB_LAYOUT, captions_per_image=2, need_bbox=True)
    assert any("decoded as cp1252" in w and "Red_0001.txt" in w for w in meta.warnings)
    vocab = meta.vocab
    assert [vocab.words[i] for i in meta.splits["train"].captions[0][0]] == ["a", "caf", "bird", "quoted"]


def test_tokenize_matches_nltk():
    from nltk.tokenize import RegexpTokenizer

    text = "A Bird, with\ufffd\ufffdred wings; naïve-ish_2 \u00e9t\u00e9!"
    expected = [t.encode("ascii", "ignore").decode() for t in RegexpTokenizer(r"\w+").tokenize(
        text.replace("\ufffd\ufffd", " ").lower())]  # fmt: skip
    assert tokenize(text) == [t for t in expected if t] == ["a", "bird", "with", "red", "wings", "nave", "ish_2", "t"]
    vocab = Vocabulary.build([["b", "a"]], [["c", "a"]])
    assert vocab.encode("A b, D") == ([2, 1], ["d"]) and vocab.decode([2, 1, 0, 0]) == "a b"
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab and vocab.sha256() != Vocabulary.build([["a", "b"]]).sha256()


def make_coco(root: Path) -> Path:
    keys = {"train": ["COCO_train2014_000000000009", "COCO_train2014_000000000025"], "test": ["COCO_val2014_1"]}
    (root / "images").mkdir(parents=True)
    (root / "text").mkdir()
    for split, ks in keys.items():
        (root / split).mkdir()
        (root / split / "filenames.pickle").write_bytes(pickle.dumps(ks, protocol=2))
        for k in ks:
            Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "images" / f"{k}.jpg")
            (root / "text" / f"{k}.txt").write_text("\n".join(f"a plate of food {j}" for j in range(7)))
    return root


def test_coco_layout(tmp_path):
    root = make_coco(tmp_path / "coco")
    ds = get_registry("dataset").build("coco", {"root": str(root)}, split="train", image_sizes=[64])
    assert len(ds) == 2 and [ds.class_id(i) for i in range(2)] == [0, 1]  # no class_info: 0..N-1
    assert len(ds.captions_of(0)) == 5 and ds.words_num == 12  # extra captions ignored
    assert ds[0][0][0].shape == (3, 64, 64)


def test_flip_param(tmp_path):
    from test_data_shapes import _flips_seen

    root = make_cub(tmp_path / "birds")
    plain, mirrored = _flips_seen(cub(root, sizes=(32,)), 0)  # on by default, as the originals
    assert plain + mirrored == 24 and plain > 0 and mirrored > 0
    assert _flips_seen(cub(root, sizes=(32,), flip=False), 0) == (24, 0)
