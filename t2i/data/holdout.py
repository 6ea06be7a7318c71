"""The selection split: a validation set carved from the training data, so that checkpoints are chosen without
looking at the test set.

The originals evaluated every epoch on the test split and reported the best, which picks the model on the data it
is scored on. Here ``[eval] selection_split = "val"`` sets ``val_size`` training items aside: they are never trained
on, in-training evaluation and the best checkpoint use them, and the test split stays for the final number. Which
items is decided by their keys and ``val_seed`` alone (a seeded hash of each key, smallest first), so every process,
every resume and every image size carve the same items, in any item order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

__all__ = ["DEFAULT_VAL_CAP", "DEFAULT_VAL_FRACTION", "ItemSubset", "build_split", "carve", "val_count"]

DEFAULT_VAL_FRACTION = 0.05  # of the training items, when val_size is not set
DEFAULT_VAL_CAP = 1000  # ... but no more than this: enough for a stable selection metric


class HoldoutError(ValueError):
    t2i_user_error = True


class ItemSubset:
    """Some items of a data set, in its order; everything else (vocab, collate, root, ...) is the data set's."""

    def __init__(self, base: Any, indices: Sequence[int], split: str):
        self.base, self.indices, self.split = base, list(indices), split
        self.keys = [base.keys[i] for i in self.indices]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("base", "indices"):  # unpickling (loader workers) looks these up early
            raise AttributeError(name)
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.base[self.indices[index]]

    def precrop(self, index: int) -> Any:
        return self.base.precrop(self.indices[index])

    def captions_of(self, index: int) -> Any:
        return self.base.captions_of(self.indices[index])

    def class_id(self, index: int) -> int:
        return self.base.class_id(self.indices[index])

    @property
    def class_ids(self) -> list[int]:
        return [self.base.class_id(i) for i in self.indices]

    @property
    def num_classes(self) -> int:
        return len(set(self.class_ids))

    @property
    def files(self) -> list[str]:
        return [self.base.files[i] for i in self.indices]


def val_count(n: int, val_size: int | None) -> int:
    """How many of ``n`` training items the selection split takes."""
    if val_size is None:
        return max(1, min(DEFAULT_VAL_CAP, round(DEFAULT_VAL_FRACTION * n)))
    if val_size >= n:
        raise HoldoutError(
            f"eval.val_size={val_size} leaves nothing to train on: the training split has {n} items; "
            f"lower it (e.g. --set eval.val_size={max(1, n // 20)})"
        )
    return val_size


def _rank(key: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}\0{key}".encode()).digest()


def carve(dataset: Any, val_size: int | None, seed: int) -> tuple[ItemSubset, ItemSubset]:
    """-> (training items less the selection items, the selection items), each in the data set's order."""
    keys = list(dataset.keys)
    if len(set(keys)) != len(keys):
        raise HoldoutError("the training split has repeated item keys; a validation split cannot be carved by key")
    size = val_count(len(keys), val_size)
    chosen = set(sorted(range(len(keys)), key=lambda i: _rank(keys[i], seed))[:size])
    train = [i for i in range(len(keys)) if i not in chosen]
    return ItemSubset(dataset, train, dataset_split(dataset)), ItemSubset(dataset, sorted(chosen), "val")


def dataset_split(dataset: Any) -> str:
    return getattr(dataset, "split", "train")


def build_split(recipe: Any, split: str, image_sizes: Sequence[int]) -> Any:
    """A recipe's data split: ``train`` less the selection items and ``val`` (those items) when the recipe selects
    on a validation split; any other split (or ``train`` without one) is the data set's own."""
    dataset = recipe.data.dataset
    if recipe.eval.selection_split != "val" or split not in ("train", "val"):
        return dataset.build(split=split, image_sizes=list(image_sizes))
    extra = {}
    eval_words = getattr(dataset.params, "eval_words_num", None)
    if split == "val" and eval_words is not None:
        extra["words_num"] = eval_words  # evaluated as the test split is: captions up to the evaluation length
    train, val = carve(
        dataset.build(split="train", image_sizes=list(image_sizes), **extra), recipe.eval.val_size, recipe.eval.val_seed
    )
    return train if split == "train" else val
