"""Resumable, seeded data order (shuffled, drop_last, as the originals' loader) that also works per rank.

Every item is drawn with its own seed derived from ``(seed, epoch, index)``, so the random crop, flip and caption
choice of an item do not depend on worker count or on how many steps ran before: resuming at global batch ``k``
reproduces exactly the batches an uninterrupted run would have seen, with any number of workers or processes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class BatchSizeError(ValueError):
    """The data set or the batch does not fit the settings: a user error (exit 1 with this message)."""

    t2i_user_error = True


def _item_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint32)[0])


class SeededItems(Dataset):
    """Wraps a dataset so that item ``epoch * len + index`` is drawn with a seed of its own."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.length = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, token: int):
        epoch, index = divmod(int(token), self.length)
        seed = _item_seed(self.seed, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class ResumableBatches:
    """Infinite batch sampler: global batch ``k`` is a fixed slice of epoch permutation ``k // per_epoch``.

    Rank ``r`` of ``world`` takes every ``world``-th item of each global batch, so a run can resume with a
    different number of processes and still see the same global batches.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        *,
        start_batch: int = 0,
        rank: int = 0,
        world: int = 1,
        setting: str = "data.batch_size",
    ):
        # drop_last: a data set smaller than one batch would give no batch at all
        if n < batch_size:
            raise BatchSizeError(
                f"the data set has {n} items, fewer than one batch of {batch_size} ({setting}); "
                f"lower it, e.g. --set {setting}={max(1, n)}, or use a larger data set"
            )
        if batch_size % world:
            raise BatchSizeError(
                f"{setting}={batch_size} is not divisible by the number of processes {world}; "
                f"choose a multiple of {world}"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_batch, self.rank, self.world = start_batch, rank, world
        self.per_epoch = n // batch_size  # drop_last

    def _permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(_item_seed(self.seed, epoch, -1 % 2**31))
        return torch.randperm(self.n, generator=gen)

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start_batch
        epoch, perm = -1, None
        while True:
            e, j = divmod(k, self.per_epoch)
            if e != epoch:
                epoch, perm = e, self._permutation(e)
            indices = perm[j * self.batch_size : (j + 1) * self.batch_size][self.rank :: self.world]
            yield [epoch * self.n + int(i) for i in indices]
            k += 1


def make_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    *,
    workers: int = 0,
    start_batch: int = 0,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
    setting: str = "data.batch_size",
) -> DataLoader:
    """The resumable loader; ``pin_memory`` (for a CUDA run) makes the host-to-GPU copies asynchronous; ``setting``
    names the recipe key (or option) that ``batch_size`` came from, for the error message."""
    batches = ResumableBatches(
        len(dataset),  # type: ignore[arg-type]
        batch_size,
        seed,
        start_batch=start_batch,
        rank=rank,
        world=world,
        setting=setting,
    )
    return DataLoader(
        SeededItems(dataset, seed),
        batch_sampler=batches,
        collate_fn=dataset.collate,  # type: ignore[attr-defined]
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        # Its own generator: creating the iterator draws a worker base seed, which would otherwise come from the
        # global torch RNG, so a resumed run's global RNG state would drift from the uninterrupted run's.
        generator=torch.Generator().manual_seed(_item_seed(seed, start_batch, rank)),
    )
