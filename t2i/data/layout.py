"""The CUB-style on-disk layout shared by ``cub.v1``, ``coco.v1`` and ``shapes.v1``.

``read_layout`` gathers everything a data set needs into one ``Metadata`` record: per split the keys
(``<split>/filenames.pickle``, or ``filenames.txt`` with one key per line), class ids (``class_info.pickle``, else
``0..N-1``), image files, captions as bare word ids, plus the vocabulary and the CUB bounding boxes. Captions come
from ``captions.pickle`` when present (its word order is kept so original encoder weights line up) or are built from
``text/<key>.txt`` the original way (``vocab.py``). ``t2i data convert`` writes the record to ``metadata.json`` in
the data root; later runs read that instead of the pickles and thousands of text files.

``CaptionImageDataset`` is the torch ``Dataset`` every registered data set returns.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2i.data import safe_pickle
from t2i.data.params import COCO_LAYOUT, CUB_LAYOUT, DatasetParams, LayoutSpec
from t2i.data.transforms import DataError, Item, collate_sorted, crop_flip_pyramid, load_precrop, sample_caption
from t2i.data.vocab import Vocabulary, tokenize

__all__ = [
    "COCO_LAYOUT",
    "CUB_LAYOUT",
    "CaptionImageDataset",
    "DataError",
    "DatasetParams",
    "LayoutSpec",
    "Metadata",
    "SplitInfo",
    "read_caption_file",
    "read_layout",
    "write_metadata",
]

METADATA_FILE = "metadata.json"
METADATA_FORMAT = "t2i.data.metadata/1"
IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg", ".JPG", ".JPEG", ".PNG", ".bmp", ".webp")


@dataclass
class SplitInfo:
    keys: list[str]
    class_ids: list[int]
    files: list[str]  # image paths relative to the root ("" = missing)
    captions: list[list[list[int]]]  # per image, per caption: bare word ids


@dataclass
class Metadata:
    root: Path
    layout: str
    vocab: Vocabulary
    captions_per_image: int
    splits: dict[str, SplitInfo]
    bboxes: dict[str, list[float]] | None = None
    source: str = "text"
    problems: list[str] = field(default_factory=list)  # files that are missing or unreadable
    warnings: list[str] = field(default_factory=list)  # readable, but worth knowing (legacy encoding, few captions)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": METADATA_FORMAT,
            "layout": self.layout,
            "captions_per_image": self.captions_per_image,
            "source": self.source,
            "vocab": self.vocab.to_dict(),
            "splits": {
                name: {"keys": s.keys, "class_ids": s.class_ids, "files": s.files, "captions": s.captions}
                for name, s in self.splits.items()
            },
            "bboxes": self.bboxes,
        }

    @classmethod
    def from_json(cls, root: Path, data: dict[str, Any]) -> Metadata:
        if data.get("format") != METADATA_FORMAT:
            raise DataError(f"{root / METADATA_FILE}: unknown format {data.get('format')!r}; re-run t2i data convert")
        try:
            meta = cls(
                root=root,
                layout=data["layout"],
                vocab=Vocabulary.from_dict(data["vocab"]),
                captions_per_image=data["captions_per_image"],
                splits={name: SplitInfo(**s) for name, s in data["splits"].items()},
                bboxes=data.get("bboxes"),
                source=METADATA_FILE,
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise DataError(
                f"{root / METADATA_FILE}: not a t2i metadata file ({error!r}); re-run t2i data convert"
            ) from None
        for name, split in meta.splits.items():
            counts = {field: len(getattr(split, field)) for field in ("keys", "class_ids", "files", "captions")}
            if len(set(counts.values())) != 1:
                listed = ", ".join(f"{n} {field}" for field, n in counts.items())
                raise DataError(f"{root / METADATA_FILE}: split {name!r} lists {listed}; re-run t2i data convert")
        return meta


def write_metadata(meta: Metadata, path: Path | None = None) -> Path:
    """Write ``metadata.json`` (atomically) so later runs need neither pickles nor the caption files."""
    path = path or meta.root / METADATA_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta.to_json(), separators=(",", ":")), encoding="utf-8")
    tmp.replace(path)
    return path


# -- reading pieces ------------------------------------------------------------------
def read_caption_file(path: Path) -> tuple[list[str], str | None]:
    """Caption lines of one file (non-empty lines) and a note when it was not UTF-8.

    The originals read UTF-8; a file in a legacy Windows encoding is decoded as cp1252 and reported.
    """
    raw = path.read_bytes()
    note = None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = raw.decode("cp1252")
        except UnicodeDecodeError:
            raise DataError(f"{path}: caption file is neither UTF-8 nor cp1252; re-save it as UTF-8") from None
        note = f"{path}: not UTF-8, decoded as cp1252 (re-save as UTF-8 to silence this)"
    return [line for line in text.split("\n") if line], note


def _read_keys(split_dir: Path) -> list[str] | None:
    pickle_file, text_file = split_dir / "filenames.pickle", split_dir / "filenames.txt"
    if pickle_file.is_file():
        keys = safe_pickle.load(pickle_file)
        if not isinstance(keys, list) or not all(isinstance(k, str | bytes) for k in keys):
            raise DataError(f"{pickle_file}: expected a list of image keys (strings); regenerate it")
        return [k.decode("latin-1") if isinstance(k, bytes) else k for k in keys]
    if text_file.is_file():
        return [line.strip() for line in text_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return None


def _read_class_ids(split_dir: Path, count: int) -> list[int]:
    path = split_dir / "class_info.pickle"
    if not path.is_file():
        return list(range(count))  # one class per image, the originals' default
    raw = safe_pickle.load(path)
    try:
        ids = [int(v) for v in np.asarray(raw).reshape(-1)]
    except (TypeError, ValueError):
        raise DataError(f"{path}: expected a list of integer class labels; regenerate it or delete it") from None
    if len(ids) != count:
        raise DataError(f"{path}: {len(ids)} class labels for {count} keys in filenames; regenerate one of them")
    return ids


def _strip_extension(name: str) -> str:
    """Key of an images.txt name: the path without its extension (the originals cut 4 characters, wrong for .jpeg)."""
    head, dot, ext = name.rpartition(".")
    return head if dot and "/" not in ext else name


def _rows(path: Path, maxsplit: int = -1) -> list[tuple[int, list[str]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(number, line.split(maxsplit=maxsplit)) for number, line in enumerate(lines, 1) if line.strip()]


def _read_bboxes(root: Path, spec: LayoutSpec) -> dict[str, list[float]]:
    base = root / (spec.bbox_dir or "")
    images_txt, boxes_txt = base / "images.txt", base / "bounding_boxes.txt"
    for path in (images_txt, boxes_txt):
        if not path.is_file():
            raise DataError(
                f"missing bounding-box file {path}: the CUB crop needs images.txt and bounding_boxes.txt in {base} "
                "(or set crop_bbox=false)"
            )
    # (line number, fields) of the non-blank lines: rows are matched by order, messages give each file's own line
    names = _rows(images_txt, maxsplit=1)
    boxes = _rows(boxes_txt)
    if len(names) != len(boxes):
        raise DataError(f"{boxes_txt}: {len(boxes)} rows but {images_txt} has {len(names)}; rows are matched by order")
    result = {}
    for (name_line, name), (box_line, box) in zip(names, boxes, strict=True):
        if len(name) != 2:
            raise DataError(f"{images_txt}:{name_line}: malformed row; expected '<id> <class_dir>/<name>.jpg'")
        if len(box) != 5:
            raise DataError(f"{boxes_txt}:{box_line}: malformed row; expected '<id> x y width height'")
        result[_strip_extension(name[1].strip())] = [float(v) for v in box[1:]]
    return result


def _image_index(root: Path, spec: LayoutSpec) -> dict[str, str]:
    """key -> file name from images.txt when the layout has one (avoids guessing extensions)."""
    if spec.bbox_dir is None:
        return {}
    images_txt = root / spec.bbox_dir / "images.txt"
    if not images_txt.is_file():
        return {}
    index = {}
    for line in images_txt.read_text(encoding="utf-8").splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2:
            index[_strip_extension(parts[1].strip())] = parts[1].strip()
    return index


def _find_image(images_dir: Path, key: str, index: dict[str, str]) -> Path | None:
    if key in index and (images_dir / index[key]).is_file():
        return images_dir / index[key]
    for ext in IMAGE_EXTENSIONS:
        candidate = images_dir / f"{key}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _load_captions_pickle(path: Path, convention: str, splits: dict[str, list[str]], cpi: int, meta_warn: list[str]):
    data = safe_pickle.load(path)
    if not (isinstance(data, list) and len(data) == 4 and isinstance(data[2], dict)):
        raise DataError(
            f"{path}: expected [train_captions, test_captions, ixtoword, wordtoix]; delete it to rebuild from text/"
        )
    train, test, ixtoword = data[0], data[1], data[2]
    try:
        vocab = Vocabulary.from_ixtoword({int(k): v for k, v in ixtoword.items()})
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
    if vocab.convention != convention:
        meta_warn.append(f"{path}: vocabulary is convention {vocab.convention}, not {convention}; built from text")
        return None
    result = {}
    for name, flat in (("train", train), ("test", test)):
        keys = splits.get(name)
        if keys is None:
            continue
        if len(flat) != len(keys) * cpi:
            raise DataError(
                f"{path}: {len(flat)} {name} captions for {len(keys)} images, expected {cpi} per image "
                "(set captions_per_image, or delete the pickle to rebuild it from text/)"
            )
        per_image = []
        for i in range(len(keys)):
            caps = []
            for caption in flat[i * cpi : (i + 1) * cpi]:
                ids = [int(t) for t in caption]
                # Convention B pickles store train captions wrapped and test ones bare (as MirrorGAN's
                # bird_captions.pickle does): strip.
                if convention == "B" and len(ids) >= 2 and ids[0] == 0 and ids[-1] == 1:
                    ids = ids[1:-1]
                caps.append(ids)
            per_image.append(caps)
        result[name] = per_image
    return vocab, result


def read_layout(
    root: str | Path,
    spec: LayoutSpec,
    *,
    captions_per_image: int,
    convention: str = "A",
    need_bbox: bool = False,
    prefer_metadata: bool = True,
) -> Metadata:
    """Read a CUB-style data root. Problems (missing images, bad caption files) are collected, not raised."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist; download the data set there or set root=...")
    meta_file = root / METADATA_FILE
    if prefer_metadata and meta_file.is_file():
        meta = Metadata.from_json(root, json.loads(meta_file.read_text(encoding="utf-8")))
        if (
            meta.layout == spec.name
            and meta.vocab.convention == convention
            and meta.captions_per_image == captions_per_image
            and (meta.bboxes is not None or not need_bbox)
        ):
            return meta

    keys_by_split = {}
    for name in ("train", "test"):
        keys = _read_keys(root / name)
        if keys is not None:
            keys_by_split[name] = keys
    if not keys_by_split:
        raise DataError(
            f"{root}: no split files; expected {root}/train/filenames.pickle (or filenames.txt, one key per line)"
        )
    bboxes = _read_bboxes(root, spec) if need_bbox else None
    problems: list[str] = []
    warnings: list[str] = []
    images_dir = root / spec.images_dir
    index = _image_index(root, spec)

    splits: dict[str, SplitInfo] = {}
    for name, keys in keys_by_split.items():
        class_ids = _read_class_ids(root / name, len(keys))
        files = []
        for key in keys:
            found = _find_image(images_dir, key, index)
            if found is None:
                problems.append(
                    f"{images_dir / key}.jpg: split {name} names this image but it does not exist; add the image "
                    f"or remove {key!r} from the split file in {root / name}"
                )
            elif bboxes is not None and key not in bboxes:
                problems.append(
                    f"{found}: no row for {key} in {root / (spec.bbox_dir or '')}/images.txt + bounding_boxes.txt; "
                    "add one (or set crop_bbox=false)"
                )
                found = None
            files.append(str(found.relative_to(root)) if found else "")
        splits[name] = SplitInfo(keys, class_ids, files, [])

    loaded = None
    for pickle_name in spec.pickle_names:
        if (root / pickle_name).is_file():
            loaded = _load_captions_pickle(root / pickle_name, convention, keys_by_split, captions_per_image, warnings)
            if loaded is not None:
                source = pickle_name
                break
    if loaded is not None:
        vocab, captions = loaded
        for name, per_image in captions.items():
            splits[name].captions = per_image
    else:
        source = "text"
        tokenised: dict[str, list[list[list[str]]]] = {}
        for name, info in splits.items():
            tokenised[name] = [
                _tokenised_captions(root / spec.text_dir / f"{key}.txt", captions_per_image, problems, warnings)
                for key in info.keys
            ]
        vocab = Vocabulary.build(
            (c for img in tokenised.get("train", []) for c in img),
            (c for name, imgs in tokenised.items() if name != "train" for img in imgs for c in img),
            convention,  # type: ignore[arg-type]
        )
        for name, per_image in tokenised.items():
            splits[name].captions = [[[vocab.word_to_id[t] for t in cap] for cap in img] for img in per_image]
    return Metadata(root, spec.name, vocab, captions_per_image, splits, bboxes, source, problems, warnings)


def _tokenised_captions(path: Path, cpi: int, problems: list[str], warnings: list[str]) -> list[list[str]]:
    try:
        lines, note = read_caption_file(path)
    except FileNotFoundError:
        problems.append(f"{path}: caption file is missing; add it (UTF-8, one caption per line)")
        return []
    except DataError as exc:
        problems.append(str(exc))
        return []
    if note:
        warnings.append(note)
    captions = [tokens for tokens in map(tokenize, lines) if tokens]
    if not captions:
        problems.append(f"{path}: caption file has no caption (empty, or no words in it); write one caption per line")
    elif len(captions) < cpi:
        warnings.append(f"{path}: {len(captions)} captions, fewer than captions_per_image={cpi}")
    return captions[:cpi]


# -- the torch data set ----------------------------------------------------------------
def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class CaptionImageDataset(torch.utils.data.Dataset):
    """One split of a ``Metadata`` record: items are (images per scale, caption, length, class id, key).

    ``collate`` sorts a batch by caption length and returns a ``t2i.batch.Batch`` in [-1, 1].
    """

    def __init__(
        self,
        meta: Metadata,
        params: DatasetParams,
        *,
        split: str,
        image_sizes: Sequence[int],
        words_num: int | None = None,
    ) -> None:
        if split not in meta.splits:
            raise DataError(f"{meta.root}: no split {split!r}; available: {', '.join(sorted(meta.splits))}")
        if not image_sizes:
            raise ValueError("image_sizes must name at least one size")
        info = meta.splits[split]
        self.root = meta.root
        self.split = split
        self.image_sizes = [int(s) for s in image_sizes]
        self.imsize = max(self.image_sizes)
        self.vocab = meta.vocab
        self.convention = meta.vocab.convention
        self.words_num = words_num or (params.words_num if split == "train" else params.eval_words_num)
        self.skip_bad = params.skip_bad
        self.flip = params.flip
        self.collate = collate_sorted

        keep, first_reason = [], ""
        for i, (key, file, caps) in enumerate(zip(info.keys, info.files, info.captions, strict=True)):
            if file and caps:
                keep.append(i)
            elif not first_reason:
                first_reason = f"{key}: " + ("image missing (or no bounding box)" if not file else "no captions")
        dropped = len(info.keys) - len(keep)
        if dropped:
            if not params.skip_bad:
                raise DataError(
                    f"{meta.root} split {split}: {dropped} item(s) unusable, first {first_reason}; fix them, "
                    f"pass skip_bad=true, or run 't2i data check {meta.root}' for the full list"
                )
            _say(f"t2i data: skipping {dropped} item(s) of {meta.root} split {split} (missing image or captions)")
        self.keys = [info.keys[i] for i in keep]
        self._class_ids = [int(info.class_ids[i]) for i in keep]
        self.files = [str(meta.root / info.files[i]) for i in keep]
        self._captions = [info.captions[i] for i in keep]
        self._bboxes = [meta.bboxes[k] for k in self.keys] if (params.crop_bbox and meta.bboxes) else None
        self._cache = None
        if params.cache:
            self._build_cache(params)
        if not self.keys:
            raise DataError(f"{meta.root}: split {split} is empty; it needs at least one image with captions")
        self.num_classes = len(set(self._class_ids))

    def _build_cache(self, params: DatasetParams) -> None:
        from t2i.data.cache import open_or_build

        cache_root = Path(params.cache_dir) if params.cache_dir else self.root / ".t2i_cache"
        cache = open_or_build(cache_root, self.split, self.files, self._bboxes, self.imsize, skip_bad=self.skip_bad)
        if cache.bad:
            keep = [i for i in range(len(self.keys)) if i not in set(cache.bad)]
            _say(f"t2i data: skipping {len(cache.bad)} unreadable image(s); see {cache.directory}/bad.json")
            cache = cache.subset(keep)
            self.keys = [self.keys[i] for i in keep]
            self._class_ids = [self._class_ids[i] for i in keep]
            self.files = [self.files[i] for i in keep]
            self._captions = [self._captions[i] for i in keep]
            if self._bboxes is not None:
                self._bboxes = [self._bboxes[i] for i in keep]
        self._cache = cache

    def __len__(self) -> int:
        return len(self.keys)

    def precrop(self, index: int) -> np.ndarray:
        """The decoded, bbox-cropped image resized to its pre-crop size. -> (H, W, 3) uint8."""
        if self._cache is not None:
            return self._cache[index]
        bbox = self._bboxes[index] if self._bboxes is not None else None
        return load_precrop(self.files[index], bbox, self.imsize)

    def __getitem__(self, index: int) -> Item:
        try:
            precrop = self.precrop(index)
        except DataError as exc:
            if not self.skip_bad:
                raise
            _say(f"t2i data: skipping {exc}")
            return self[(index + 1) % len(self)]
        images = crop_flip_pyramid(precrop, self.image_sizes, flip=self.flip)
        caption, length = sample_caption(self._captions[index], self.words_num, self.convention)
        return images, caption, length, self._class_ids[index], self.keys[index]

    def captions_of(self, index: int) -> list[list[int]]:
        """Every caption of image ``index`` as stored under the convention (B: wrapped in <start>/<end>)."""
        return [self.vocab.wrap(c) for c in self._captions[index]]

    def class_id(self, index: int) -> int:
        return self._class_ids[index]

    @property
    def class_ids(self) -> list[int]:
        return list(self._class_ids)


def build_dataset(
    spec: LayoutSpec,
    params: DatasetParams,
    *,
    split: str,
    image_sizes: Sequence[int],
    words_num: int | None = None,
) -> CaptionImageDataset:
    """The factory body shared by the CUB-layout data sets."""
    meta = read_layout(
        params.root,
        spec,
        captions_per_image=params.captions_per_image,
        convention=params.convention,
        need_bbox=params.crop_bbox,
    )
    return CaptionImageDataset(meta, params, split=split, image_sizes=image_sizes, words_num=words_num)
