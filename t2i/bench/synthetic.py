"""Synthetic stand-ins at a recipe's real sizes, so a benchmark needs no data set and no pretrained weights.

A vocabulary of the originals' size, captions of 5..words_num random word ids (at least one full-length caption per
batch, sorted by length as the collate does), images uniform in [-1, 1] per stage size, class ids 1..200, and the
recipe with its frozen encoders randomly initialised (same shapes, so the same cost as pretrained ones).
"""

from __future__ import annotations

import torch

# len(ixtoword) of the originals' preprocessed CUB-200 / COCO-2014 captions: the sizes of the word embedding.
DATASET_VOCAB = {"cub": 5450, "coco": 27297}


def bench_recipe(recipe: str, batch: int | None, overrides: list[str] | None = None):
    """The recipe with random frozen encoders (no weights needed) and the batch size set."""
    from t2i import recipe as recipe_mod

    sets = ['train.pretrained.text_encoder="random"']
    raw = recipe_mod.load(recipe)
    for role in ("image_encoder", "captioner"):
        component = getattr(raw.model, role)
        if component is None:
            continue
        sets.append(f'train.pretrained.{role}="random"')
        if "weights" in type(component.params).model_fields:  # a frozen ImageNet trunk: random too, on purpose
            sets.append(f'model.{role}.weights="random"')
    if batch is not None:
        sets.append(f"data.batch_size={batch}")
    return recipe_mod.load(recipe, sets + list(overrides or []))


def words_num_of(recipe) -> int:
    return int(recipe.data.dataset.raw_params.get("words_num", 18))


def vocab_size_of(recipe) -> int:
    """The originals' vocabulary size for the recipe's data set (COCO's for ``coco``, the birds' otherwise)."""
    return DATASET_VOCAB.get(recipe.data.dataset.name.split(".")[0], DATASET_VOCAB["cub"])


def synthetic_vocab(size: int, convention: str = "A"):
    from t2i.data.vocab import CONVENTIONS, Vocabulary

    specials = list(CONVENTIONS[convention])
    return Vocabulary(specials + [f"w{i}" for i in range(size - len(specials))], convention)  # type: ignore[arg-type]


class SyntheticCaptions(torch.utils.data.Dataset):
    """Just enough of a data set for ``GANTrainer``: a vocabulary and a few captions (for its sample writer)."""

    num_classes = 200

    def __init__(self, vocab, words_num: int) -> None:
        self.vocab = vocab
        self.words_num = words_num

    def __len__(self) -> int:
        return 8

    def captions_of(self, index: int) -> list[list[int]]:
        first = self.vocab.num_specials
        return [[first + (index * 7 + k) % (len(self.vocab) - first) for k in range(5 + index % 10)]]


def synthetic_batch(sizes: list[int], batch: int, vocab, words_num: int, seed: int):
    """A sorted Batch: images uniform in [-1, 1] per stage size, captions of 5..words_num words (one full)."""
    from t2i.batch import Batch

    gen = torch.Generator().manual_seed(seed)
    images = [torch.rand(batch, 3, s, s, generator=gen) * 2 - 1 for s in sizes]
    low = min(5, words_num)
    lengths = torch.randint(low, words_num + 1, (batch,), generator=gen)
    lengths[int(torch.randint(batch, (1,), generator=gen))] = words_num
    first = vocab.num_specials
    captions = torch.full((batch, words_num), vocab.pad_id, dtype=torch.long)
    for row in range(batch):
        n = int(lengths[row])
        captions[row, :n] = torch.randint(first, len(vocab), (n,), generator=gen)
    class_ids = torch.randint(1, 201, (batch,), generator=gen)
    lengths, order = torch.sort(lengths, descending=True)
    return Batch(
        images=[im[order] for im in images],
        captions=captions[order],
        lengths=lengths,
        class_ids=class_ids[order],
        keys=[f"synthetic_{seed}_{int(i)}" for i in order],
    )
