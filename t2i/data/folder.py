"""``folder.v1``: your own images and captions, no pickles needed (users of the
original AttnGAN / DM-GAN code often ask how to train on their own data).

Layout (see docs/data.md for a worked example)::

    my_data/
      train.txt, test.txt          # optional: one key per line (image path relative to my_data, no extension)
      <class>/<name>.jpg           # optional class sub-folders (one level); or images directly in my_data/
      <class>/<name>.txt           # same name as the image: one caption per line

Keys are image paths relative to the root without the extension. Class ids number the sub-folders in sorted order
(1, 2, ...); images directly in the root get ids 0..N-1 (one class per image, the originals' rule). Without split
files, a stable hash of the key puts ``test_fraction`` of the images in ``test``. The vocabulary is built from the
captions the original way (``vocab.py``).
"""

from __future__ import annotations

import zlib
from pathlib import Path

from pydantic import Field

from t2i.data.layout import (
    IMAGE_EXTENSIONS,
    CaptionImageDataset,
    DataError,
    DatasetParams,
    Metadata,
    SplitInfo,
    _tokenised_captions,
)
from t2i.data.vocab import Vocabulary
from t2i.registry import register

__all__ = ["FolderParams", "build_folder", "read_folder"]

_SKIP_DIRS = {".t2i_cache"}


class FolderParams(DatasetParams):
    root: str = Field("data/folder", description="folder of images with same-named .txt caption files")
    captions_per_image: int = Field(10, ge=1, description="at most this many captions are kept per image")
    test_fraction: float = Field(0.1, ge=0, le=1, description="share of images in 'test' when there are no split files")


def _scan(root: Path) -> dict[str, Path]:
    images = {}
    suffixes = {e.lower() for e in IMAGE_EXTENSIONS}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in _SKIP_DIRS or rel.parts[0].startswith(".") or path.suffix.lower() not in suffixes:
            continue
        if len(rel.parts) > 2:
            raise DataError(f"{path}: folder.v1 allows one level of class sub-folders; move the image up")
        images[rel.with_suffix("").as_posix()] = path
    return images


def read_folder(root: str | Path, *, captions_per_image: int, convention: str = "A", test_fraction: float = 0.1):
    """Read a caption folder into the same ``Metadata`` record the CUB-layout reader returns."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist; point root= at your folder of images and .txt files")
    images = _scan(root)
    problems: list[str] = []
    warnings: list[str] = []
    split_files = {name: root / f"{name}.txt" for name in ("train", "test")}
    keys_by_split: dict[str, list[str]] = {}
    if any(p.is_file() for p in split_files.values()):
        for name, path in split_files.items():
            if path.is_file():
                keys = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
                keys_by_split[name] = [k.rsplit(".", 1)[0] if Path(k).suffix.lower() in IMAGE_EXTENSIONS else k
                                       for k in keys]  # fmt: skip
    else:
        all_keys = sorted(k for k in images if k not in {"train", "test"})
        threshold = int(test_fraction * 10_000)
        test = [k for k in all_keys if zlib.crc32(k.encode("utf-8")) % 10_000 < threshold]
        test_set = set(test)
        keys_by_split = {"train": [k for k in all_keys if k not in test_set], "test": test}
    if not any(keys_by_split.values()):
        raise DataError(f"{root}: no images found (expected <name>.jpg/.png with <name>.txt beside it)")

    class_names = sorted({k.split("/")[0] for keys in keys_by_split.values() for k in keys if "/" in k})
    class_index = {name: i + 1 for i, name in enumerate(class_names)}
    splits: dict[str, SplitInfo] = {}
    tokenised = {}
    for name, keys in keys_by_split.items():
        files, class_ids = [], []
        for i, key in enumerate(keys):
            path = images.get(key)
            if path is None:
                problems.append(
                    f"{root / key}.jpg: {name}.txt names this image but it does not exist; add the image or "
                    f"remove the line {key!r} from {root / name}.txt"
                )
            files.append(str(path.relative_to(root)) if path else "")
            class_ids.append(class_index[key.split("/")[0]] if "/" in key else i)
        tokenised[name] = [_tokenised_captions(root / f"{k}.txt", captions_per_image, problems, warnings) for k in keys]
        splits[name] = SplitInfo(keys, class_ids, files, [])
    vocab = Vocabulary.build(
        (c for img in tokenised.get("train", []) for c in img),
        (c for name, imgs in tokenised.items() if name != "train" for img in imgs for c in img),
        convention,  # type: ignore[arg-type]
    )
    for name, per_image in tokenised.items():
        splits[name].captions = [[[vocab.word_to_id[t] for t in cap] for cap in img] for img in per_image]
    return Metadata(root, "folder", vocab, captions_per_image, splits, None, "text", problems, warnings)


def build_folder(params: FolderParams, *, split: str, image_sizes: list[int], words_num: int | None = None):
    """Images + same-named caption files."""
    meta = read_folder(
        params.root,
        captions_per_image=params.captions_per_image,
        convention=params.convention,
        test_fraction=params.test_fraction,
    )
    return CaptionImageDataset(meta, params, split=split, image_sizes=image_sizes, words_num=words_num)


register(
    "dataset", "folder.v1", build_folder, params=FolderParams, description="your images + same-named .txt captions"
)
