"""Multi-process training with torchrun (DistributedDataParallel on the gloo backend for CPUs).

One DDP wrapper per network; discriminators keep ``broadcast_buffers=False`` so each rank's BatchNorm statistics stay
its own (as DDP training of BatchNorm GANs usually does). Rank ``r`` takes every ``world``-th item of each global
batch (t2i.train.data.ResumableBatches), seeds with ``seed + r``, and only rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env() -> DistInfo:
    """Join the process group torchrun describes in the environment (a no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo" if not torch.cuda.is_available() else "nccl")
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def broadcast_text(value: str | None, info: DistInfo) -> str:
    if info.world == 1:
        assert value is not None
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_ddp(generator: nn.Module, discriminators: nn.ModuleList) -> tuple[nn.Module, list[nn.Module]]:
    g = DistributedDataParallel(generator, broadcast_buffers=False)
    ds = [DistributedDataParallel(d, broadcast_buffers=False) for d in discriminators]
    return g, ds


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
