"""What a user reads when a CUB-style data set on disk is broken (t2i/data/layout.py), and the reading rules behind it.

Every ``DataError`` names the file, the 1-based row where there is one, and what was expected; the messages are
asserted whole so that a changed word, file or row number is caught. Each data set is the smallest broken copy of
``test_data_cub.make_cub`` (4 JPEGs) or ``make_coco`` built in tmp_path.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_data_cub import CAPTIONS, KEYS, cub, make_coco, make_cub

from t2i.data.layout import COCO_LAYOUT, CUB_LAYOUT, DataError, read_caption_file, read_layout, write_metadata
from t2i.registry import get_registry

get_registry("dataset").discover()

ALL_KEYS = KEYS["train"] + KEYS["test"]


def raised(call, *args, **kwargs) -> str:
    """The message of the DataError that ``call(*args, **kwargs)`` raises."""
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)
    return str(info.value)


def read(root: Path, spec=CUB_LAYOUT, cpi: int = 2, **kwargs):
    return read_layout(root, spec, captions_per_image=cpi, prefer_metadata=False, **kwargs)


def bbox_files(root: Path) -> tuple[Path, Path]:
    return root / "CUB_200_2011" / "images.txt", root / "CUB_200_2011" / "bounding_boxes.txt"


def small_boxes(root: Path) -> None:
    """A 10x10 box at (10, 10) for every image: the crop is a 14x14 square, unlike the 50x40 picture."""
    bbox_files(root)[1].write_text("".join(f"{i + 1} 10 10 10 10\n" for i in range(len(ALL_KEYS))))


def captions_pickle(root: Path, words: list[str], train, test, name: str = "captions.pickle") -> Path:
    ixtoword = dict(enumerate(words))
    path = root / name
    path.write_bytes(pickle.dumps([train, test, ixtoword, {w: i for i, w in ixtoword.items()}], protocol=2))
    return path


# -- metadata.json ---------------------------------------------------------------------------------------------------
def test_unknown_metadata_format_names_the_file_and_the_format(tmp_path):
    """A metadata.json of another format is refused with its path, the format found and the fix."""
    root = make_cub(tmp_path / "birds")
    (root / "metadata.json").write_text(json.dumps({"format": "t2i.data.metadata/0", "layout": "cub"}))
    message = raised(read_layout, root, CUB_LAYOUT, captions_per_image=2)
    assert message == f"{root}/metadata.json: unknown format 't2i.data.metadata/0'; re-run t2i data convert"


def test_hand_edited_metadata_names_the_file(tmp_path):
    """A metadata.json with a key missing, or lists of different lengths in a split, is refused naming the file."""
    root = make_cub(tmp_path / "birds")
    write_metadata(read(root))
    path = root / "metadata.json"
    good = json.loads(path.read_text(encoding="utf-8"))
    broken = json.loads(json.dumps(good))
    del broken["vocab"]
    path.write_text(json.dumps(broken))
    message = raised(read_layout, root, CUB_LAYOUT, captions_per_image=2)
    assert message.startswith(f"{path}: not a t2i metadata file (KeyError('vocab'))"), message
    split, info = next(iter(good["splits"].items()))
    info["files"] = info["files"][:-1]
    path.write_text(json.dumps(good))
    n = len(info["keys"])
    assert raised(read_layout, root, CUB_LAYOUT, captions_per_image=2) == (
        f"{path}: split {split!r} lists {n} keys, {n} class_ids, {n - 1} files, {n} captions; re-run t2i data convert"
    )


def test_metadata_is_written_atomically_and_read_back_for_this_root(tmp_path):
    """write_metadata leaves only metadata.json (with the record's source) and the read-back record is rooted here."""
    root = make_cub(tmp_path / "birds")
    meta = read(root)
    assert meta.source == "text"
    assert write_metadata(meta) == root / "metadata.json"
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == ["metadata.json"]
    stored = json.loads((root / "metadata.json").read_text(encoding="utf-8"))
    assert stored["format"] == "t2i.data.metadata/1" and stored["source"] == "text" and stored["layout"] == "cub"
    again = read_layout(root, CUB_LAYOUT, captions_per_image=2)  # need_bbox defaults to False: the stored read fits
    assert again.source == "metadata.json" and again.root == root and again.bboxes is None
    ds = cub(root, crop_bbox=False, cache=False)
    assert ds.files[0] == str(root / "CUB_200_2011" / "images" / f"{ALL_KEYS[0]}.jpg")


def test_stored_metadata_answers_only_the_same_question(tmp_path):
    """metadata.json is reused only when layout, convention, captions per image and bboxes all match."""
    root = make_cub(tmp_path / "birds")
    write_metadata(read(root))  # cub, convention A, 2 captions per image, no bboxes
    assert read_layout(root, CUB_LAYOUT, captions_per_image=2).source == "metadata.json"
    assert read_layout(root, CUB_LAYOUT, captions_per_image=1).source == "text"
    assert read_layout(root, CUB_LAYOUT, captions_per_image=2, convention="B").source == "text"
    assert read_layout(root, CUB_LAYOUT, captions_per_image=2, need_bbox=True).source == "text"
    assert read_layout(root, replace(CUB_LAYOUT, name="other"), captions_per_image=2).source == "text"


# -- caption files ---------------------------------------------------------------------------------------------------
def test_caption_file_in_utf8_or_cp1252(tmp_path):
    """UTF-8 reads without a note; a cp1252 byte 0xE9 reads as 'é' with a note naming the file."""
    utf8, legacy = tmp_path / "utf8.txt", tmp_path / "legacy.txt"
    utf8.write_bytes("a café bird\n\nred\n".encode())
    legacy.write_bytes(b"a caf\xe9 bird\nred\n")
    assert read_caption_file(utf8) == (["a café bird", "red"], None)
    lines, note = read_caption_file(legacy)
    assert lines == ["a café bird", "red"]
    assert note == f"{legacy}: not UTF-8, decoded as cp1252 (re-save as UTF-8 to silence this)"


def test_caption_file_neither_utf8_nor_cp1252_names_the_file(tmp_path):
    """Byte 0x81 is neither UTF-8 nor cp1252: read_caption_file raises, read_layout lists the same message."""
    root = make_cub(tmp_path / "birds")
    bad = root / "text" / f"{KEYS['train'][1]}.txt"
    bad.write_bytes(b"a red bird \x81 here\n")
    expected = f"{bad}: caption file is neither UTF-8 nor cp1252; re-save it as UTF-8"
    assert raised(read_caption_file, bad) == expected
    assert read(root).problems == [expected]


def test_fewer_captions_than_asked_is_a_warning(tmp_path):
    """Exactly captions_per_image captions is fine; fewer gives a warning naming the file and both counts."""
    root = make_cub(tmp_path / "birds")
    assert read(root).warnings == []
    short = root / "text" / f"{KEYS['test'][0]}.txt"
    short.write_text(CAPTIONS[0] + "\n", encoding="utf-8")
    assert read(root).warnings == [f"{short}: 1 captions, fewer than captions_per_image=2"]


# -- split files -----------------------------------------------------------------------------------------------------
def test_no_split_files_names_the_expected_file(tmp_path):
    """A root without train/ or test/ split files says which file it looked for."""
    root = tmp_path / "empty"
    root.mkdir()
    assert raised(read, root) == (
        f"{root}: no split files; expected {root}/train/filenames.pickle (or filenames.txt, one key per line)"
    )


@pytest.mark.parametrize(
    "content",
    [[KEYS["train"][0], 3, None], KEYS["train"][0], {KEYS["train"][0]: 1}],
    ids=["list-with-non-strings", "a-string", "a-dict"],
)
def test_split_pickle_that_is_not_a_list_of_strings(tmp_path, content):
    """filenames.pickle holding anything but a list of str/bytes keys is refused, naming the file."""
    root = make_cub(tmp_path / "birds")
    path = root / "train" / "filenames.pickle"
    path.write_bytes(pickle.dumps(content, protocol=2))
    assert raised(read, root) == f"{path}: expected a list of image keys (strings); regenerate it"


@pytest.mark.parametrize("protocol", [2, 3])
def test_bytes_keys_are_decoded_as_latin1(tmp_path, protocol):
    """bytes keys (as Python 2 pickles may hold) become str, byte 0xE9 as 'é'."""
    root = make_cub(tmp_path / "birds")
    (root / "train" / "class_info.pickle").unlink()
    keys = [KEYS["train"][0].encode(), b"004.Caf\xe9_bird/Caf\xe9_0005"]
    (root / "train" / "filenames.pickle").write_bytes(pickle.dumps(keys, protocol=protocol))
    meta = read(root)
    assert meta.splits["train"].keys == [KEYS["train"][0], "004.Café_bird/Café_0005"]
    assert meta.splits["train"].class_ids == [0, 1]


def test_filenames_txt_when_there_is_no_pickle(tmp_path):
    """Without filenames.pickle the keys come from filenames.txt, one per line, blank lines and spaces ignored."""
    root = make_cub(tmp_path / "birds")
    (root / "train" / "filenames.pickle").unlink()
    (root / "train" / "filenames.txt").write_text(
        "\n".join(f"  {k} " for k in KEYS["train"]) + "\n\n", encoding="utf-8"
    )
    meta = read(root)
    assert meta.splits["train"].keys == KEYS["train"] and meta.problems == []


def test_only_a_test_split(tmp_path):
    """A root with only test/ reads, from text files and from captions.pickle (whose train list is then unused)."""
    root = make_cub(tmp_path / "birds")
    for name in ("filenames.pickle", "class_info.pickle"):
        (root / "train" / name).unlink()
    meta = read(root)
    assert list(meta.splits) == ["test"] and meta.vocab.words[1:3] == ["this", "bird"]
    captions_pickle(root, ["<end>", "bird", "red"], [], [[1, 2], [2]])
    meta = read(root)
    assert meta.source == "captions.pickle" and meta.splits["test"].captions == [[[1, 2], [2]]]


# -- class labels ----------------------------------------------------------------------------------------------------
def test_class_labels_that_are_not_integers(tmp_path):
    """class_info.pickle with non-integer labels is refused, naming the file and the two fixes."""
    root = make_cub(tmp_path / "birds")
    path = root / "train" / "class_info.pickle"
    path.write_bytes(pickle.dumps(["red", "red", "blue"], protocol=2))
    assert raised(read, root) == (f"{path}: expected a list of integer class labels; regenerate it or delete it")


def test_class_label_count_differs_from_the_keys(tmp_path):
    """Two labels for three keys: the message names the file and both counts."""
    root = make_cub(tmp_path / "birds")
    path = root / "train" / "class_info.pickle"
    path.write_bytes(pickle.dumps([1, 1], protocol=2))
    assert raised(read, root) == f"{path}: 2 class labels for 3 keys in filenames; regenerate one of them"


def test_class_labels_as_a_2d_array_are_flattened(tmp_path):
    """A (1, N) numpy array of labels reads as N labels."""
    root = make_cub(tmp_path / "birds")
    (root / "train" / "class_info.pickle").write_bytes(pickle.dumps(np.array([[1, 1, 2]]), protocol=2))
    assert read(root).splits["train"].class_ids == [1, 1, 2]


# -- images.txt and bounding_boxes.txt -------------------------------------------------------------------------------
def test_image_keys_from_images_txt_names(tmp_path):
    """The key of an images.txt name drops only a real extension: not a dot in a directory, not a bare name."""
    root = make_cub(tmp_path / "birds")
    images_txt, _ = bbox_files(root)
    images_txt.write_text(
        f"1 {ALL_KEYS[0]}.jpg\n2 {ALL_KEYS[1]}\n3 {ALL_KEYS[2]}.jpeg\n4 plain_name\n", encoding="utf-8"
    )
    meta = read(root, need_bbox=True)
    assert list(meta.bboxes) == [ALL_KEYS[0], ALL_KEYS[1], ALL_KEYS[2], "plain_name"]
    assert meta.bboxes[ALL_KEYS[1]] == [5.0, 4.0, 38.0, 30.0]


def test_images_txt_finds_names_with_spaces_and_other_extensions(tmp_path):
    """images.txt maps a key to its file ('<id> <name>', the name may hold spaces), even for an unusual extension."""
    root = make_cub(tmp_path / "birds")
    images = root / "CUB_200_2011" / "images"
    key = "001.Red_bird/Red 0001"
    (images / f"{ALL_KEYS[0]}.jpg").rename(images / f"{key}.tif")
    (root / "text" / f"{ALL_KEYS[0]}.txt").rename(root / "text" / f"{key}.txt")
    (root / "train" / "filenames.pickle").write_bytes(pickle.dumps([key, *KEYS["train"][1:]], protocol=2))
    images_txt, _ = bbox_files(root)
    images_txt.write_text(images_txt.read_text().replace(f"{ALL_KEYS[0]}.jpg", f"{key}.tif"))
    for need_bbox in (False, True):
        meta = read(root, need_bbox=need_bbox)
        assert meta.problems == [], meta.problems
        assert meta.splits["train"].files[0] == f"CUB_200_2011/images/{key}.tif"
    assert list(meta.bboxes)[0] == key


def test_bbox_files_with_different_row_counts(tmp_path):
    """bounding_boxes.txt with 3 (non-blank) rows for 4 in images.txt: both files and both counts are named."""
    root = make_cub(tmp_path / "birds")
    images_txt, boxes_txt = bbox_files(root)
    boxes_txt.write_text("\n".join(boxes_txt.read_text().splitlines()[:3]) + "\n\n\n")
    assert raised(read, root, need_bbox=True) == (
        f"{boxes_txt}: 3 rows but {images_txt} has 4; rows are matched by order"
    )


def test_malformed_images_txt_row(tmp_path):
    """Row 2 of images.txt without a name: images.txt, row 2 and the expected '<id> <class_dir>/<name>.jpg'."""
    root = make_cub(tmp_path / "birds")
    images_txt, _ = bbox_files(root)
    rows = images_txt.read_text().splitlines()
    images_txt.write_text("\n".join([rows[0], "2", *rows[2:]]) + "\n")
    assert raised(read, root, need_bbox=True) == (
        f"{images_txt}:2: malformed row; expected '<id> <class_dir>/<name>.jpg'"
    )


def test_malformed_bounding_boxes_row(tmp_path):
    """Row 3 of bounding_boxes.txt with 3 numbers: bounding_boxes.txt, row 3 and '<id> x y width height'."""
    root = make_cub(tmp_path / "birds")
    _, boxes_txt = bbox_files(root)
    rows = boxes_txt.read_text().splitlines()
    boxes_txt.write_text("\n".join([*rows[:2], "3 5.0 4.0 38.0", rows[3]]) + "\n")
    assert raised(read, root, need_bbox=True) == f"{boxes_txt}:3: malformed row; expected '<id> x y width height'"


def test_malformed_row_is_named_by_its_line_in_its_own_file(tmp_path):
    """Blank lines are skipped when rows are matched, but the message gives the bad row's line in its file."""
    root = make_cub(tmp_path / "birds")
    images_txt, boxes_txt = bbox_files(root)
    rows = images_txt.read_text().splitlines()
    images_txt.write_text("\n".join([rows[0], "", "", rows[1], "3", *rows[3:]]) + "\n")
    assert raised(read, root, need_bbox=True) == (
        f"{images_txt}:5: malformed row; expected '<id> <class_dir>/<name>.jpg'"
    )
    images_txt.write_text("\n".join(rows) + "\n")
    boxes = boxes_txt.read_text().splitlines()
    boxes_txt.write_text("\n".join(["", boxes[0], "2 1.0", *boxes[2:]]) + "\n")
    assert raised(read, root, need_bbox=True) == f"{boxes_txt}:3: malformed row; expected '<id> x y width height'"


@pytest.mark.parametrize("layout", ["cub", "coco"])
def test_missing_bbox_file_names_the_file_and_folder(tmp_path, layout):
    """The crop needs images.txt: CUB looks in CUB_200_2011/, a layout without a bbox folder in the root."""
    if layout == "cub":
        root, spec = make_cub(tmp_path / "birds"), CUB_LAYOUT
        base = root / "CUB_200_2011"
        (base / "images.txt").unlink()
    else:
        root, spec = make_coco(tmp_path / "coco"), COCO_LAYOUT
        base = root
    assert raised(read, root, spec, need_bbox=True) == (
        f"missing bounding-box file {base}/images.txt: the CUB crop needs images.txt and bounding_boxes.txt in "
        f"{base} (or set crop_bbox=false)"
    )


def test_no_bbox_file_needed_by_default(tmp_path):
    """read_layout reads no bounding boxes unless asked (need_bbox defaults to False)."""
    root = make_cub(tmp_path / "birds")
    bbox_files(root)[1].unlink()
    assert read_layout(root, CUB_LAYOUT, captions_per_image=2).bboxes is None


@pytest.mark.parametrize("layout", ["cub", "coco"])
def test_image_without_a_bbox_row_is_a_problem(tmp_path, layout):
    """An image with no images.txt row is a problem naming the image, its key and the two bbox files."""
    if layout == "cub":
        root, spec, cpi = make_cub(tmp_path / "birds"), CUB_LAYOUT, 2
        base, key, others = root / "CUB_200_2011", KEYS["train"][1], [k for k in ALL_KEYS if k != KEYS["train"][1]]
    else:
        root, spec, cpi = make_coco(tmp_path / "coco"), COCO_LAYOUT, 5
        base, key, others = root, "COCO_train2014_000000000025", ["COCO_train2014_000000000009", "COCO_val2014_1"]
    (base / "images.txt").write_text("".join(f"{i + 1} {k}.jpg\n" for i, k in enumerate(others)))
    (base / "bounding_boxes.txt").write_text("".join(f"{i + 1} 1 2 3 4\n" for i in range(len(others))))
    meta = read(root, spec, cpi, need_bbox=True)
    image = root / spec.images_dir / f"{key}.jpg"
    assert meta.problems == [
        f"{image}: no row for {key} in {base}/images.txt + bounding_boxes.txt; add one (or set crop_bbox=false)"
    ]
    assert meta.splits["train"].files[1] == ""


# -- captions.pickle -------------------------------------------------------------------------------------------------
def test_captions_pickle_of_the_wrong_shape(tmp_path):
    """A captions.pickle that is not the 4-item list is refused, naming the file and the expected items."""
    root = make_cub(tmp_path / "birds")
    path = root / "captions.pickle"
    path.write_bytes(pickle.dumps([[[1]] * 6, [[1]] * 2, {0: "<end>", 1: "bird"}], protocol=2))
    assert raised(read, root) == (
        f"{path}: expected [train_captions, test_captions, ixtoword, wordtoix]; delete it to rebuild from text/"
    )


def test_captions_pickle_with_a_gap_in_ixtoword(tmp_path):
    """ixtoword with ids 0 and 2 but not 1: the file and the missing id are named."""
    root = make_cub(tmp_path / "birds")
    path = root / "captions.pickle"
    path.write_bytes(pickle.dumps([[], [], {0: "<end>", 2: "bird", 3: "red"}, {}], protocol=2))
    assert raised(read, root) == f"{path}: ixtoword is not indexed 0..2 (missing 1)"


def test_captions_pickle_with_the_wrong_caption_count(tmp_path):
    """5 train captions for 3 images at 2 per image: file, split, both counts and the two fixes are named."""
    root = make_cub(tmp_path / "birds")
    path = captions_pickle(root, ["<end>", "bird", "red"], [[1]] * 5, [[2]] * 2)
    assert raised(read, root) == (
        f"{path}: 5 train captions for 3 images, expected 2 per image "
        "(set captions_per_image, or delete the pickle to rebuild it from text/)"
    )


def test_captions_pickle_of_another_convention_is_a_warning(tmp_path):
    """A convention-A pickle read as B is set aside with a warning naming it; the captions come from text/."""
    root = make_cub(tmp_path / "birds")
    path = captions_pickle(root, ["<end>", "bird", "red"], [[1]] * 6, [[2]] * 2, name="bird_captions.pickle")
    meta = read(root, convention="B")
    assert meta.warnings == [f"{path}: vocabulary is convention A, not B; built from text"]
    assert meta.source == "text" and meta.vocab.words[:4] == ["<start>", "<end>", "<pad>", "this"]
    meta = read(root)
    assert meta.source == "bird_captions.pickle" and meta.warnings == []


def test_convention_b_pickle_strips_only_wrapped_captions(tmp_path):
    """B: a caption '<start> .. <end>' (even empty) loses its wrapping; bare ones, and every A caption, are kept."""
    root = make_cub(tmp_path / "birds")
    words = ["<start>", "<end>", "<pad>", "bird", "red", "wing"]
    train = [[0, 3, 4, 5, 1], [0, 1], [3, 4, 1], [0, 4], [1, 0, 3, 1], [0, 3, 5, 4, 1]]
    captions_pickle(root, words, train, [[3, 4], [0, 5, 1]])
    meta = read(root, convention="B")
    assert meta.source == "captions.pickle"
    assert meta.splits["train"].captions == [[[3, 4, 5], []], [[3, 4, 1], [0, 4]], [[1, 0, 3, 1], [3, 5, 4]]]
    assert meta.splits["test"].captions == [[[3, 4], [5]]]
    captions_pickle(root, ["<end>", "bird", "red"], [[0, 2, 1], [0, 1], [1], [2], [1, 2], [0, 1, 2, 1]], [[1]] * 2)
    meta = read(root)
    assert meta.splits["train"].captions == [[[0, 2, 1], [0, 1]], [[1], [2]], [[1, 2], [0, 1, 2, 1]]]


# -- the torch data set ----------------------------------------------------------------------------------------------
def test_dataset_needs_an_image_size(tmp_path):
    """An empty image_sizes is a ValueError saying what is needed."""
    with pytest.raises(ValueError) as info:
        cub(make_cub(tmp_path / "birds"), sizes=())
    assert str(info.value) == "image_sizes must name at least one size"


def test_words_num_and_convention_reach_the_items(tmp_path):
    """A runtime words_num overrides the params; convention A items hold word ids only, from the first place."""
    root = make_cub(tmp_path / "birds")
    ds = get_registry("dataset").build(
        "cub", {"root": str(root), "captions_per_image": 2, "cache": False}, split="train", image_sizes=[32],
        words_num=7,
    )  # fmt: skip
    assert ds.words_num == 7
    _, caption, length, _, _ = ds[0]
    assert caption.shape == (7,) and length == 7 and bool((caption > 0).all())


def test_skipped_items_are_reported_on_stderr(tmp_path, capsys):
    """skip_bad drops an item with a missing image and says so on stderr, naming the root and split."""
    root = make_cub(tmp_path / "birds")
    (root / "CUB_200_2011" / "images" / f"{KEYS['train'][1]}.jpg").unlink()
    ds = cub(root, skip_bad=True, cache=False)
    assert ds.keys == [KEYS["train"][0], KEYS["train"][2]]
    captured = capsys.readouterr()
    assert captured.err == f"t2i data: skipping 1 item(s) of {root} split train (missing image or captions)\n"
    assert captured.out == ""


def test_unreadable_image_is_replaced_by_the_next_one(tmp_path, capsys):
    """Without the cache, skip_bad answers a bad item with the next item and names the bad file on stderr."""
    root = make_cub(tmp_path / "birds")
    bad = root / "CUB_200_2011" / "images" / f"{KEYS['train'][0]}.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    ds = cub(root, skip_bad=True, cache=False)
    assert ds[0][4] == KEYS["train"][1]
    err = capsys.readouterr().err
    assert err.startswith(f"t2i data: skipping {bad}: cannot decode image (") and err.count("\n") == 1


def test_bbox_crop_is_applied_exactly_when_asked(tmp_path):
    """crop_bbox crops to the box (square pre-crop); without it the picture keeps its 5:4 shape, also from metadata."""
    root = make_cub(tmp_path / "birds")
    small_boxes(root)
    assert cub(root, cache=False).precrop(0).shape == (76, 76, 3)
    assert cub(root, cache=False, crop_bbox=False).precrop(0).shape == (76, 95, 3)
    write_metadata(read(root, need_bbox=True))
    assert cub(root, cache=False, crop_bbox=False).precrop(0).shape == (76, 95, 3)


@pytest.mark.parametrize("crop_bbox", [True, False])
def test_cache_with_an_unreadable_image(tmp_path, capsys, crop_bbox):
    """The cache (in cache_dir, per split) skips an unreadable image, says where bad.json is, and serves the rest
    without reading the image files again."""
    root = make_cub(tmp_path / "birds")
    small_boxes(root)
    images = root / "CUB_200_2011" / "images"
    bad = images / f"{KEYS['train'][1]}.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    cache_dir = tmp_path / "cache"
    ds = cub(root, cache=True, cache_dir=str(cache_dir), skip_bad=True, crop_bbox=crop_bbox)
    (directory,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    assert re.fullmatch(r"train-76-[0-9a-f]{16}", directory.name) and not (root / ".t2i_cache").exists()
    assert f"t2i data: skipping 1 unreadable image(s); see {directory}/bad.json\n" in capsys.readouterr().err
    kept = [KEYS["train"][0], KEYS["train"][2]]
    assert ds.keys == kept and ds.files == [str(images / f"{k}.jpg") for k in kept] and ds.class_ids == [1, 2]
    for key in kept:
        (images / f"{key}.jpg").write_bytes(b"not an image any more")
    shape = (76, 76, 3) if crop_bbox else (76, 95, 3)
    assert [ds.precrop(i).shape for i in range(2)] == [shape, shape]
    assert ds[1][4] == kept[1]
