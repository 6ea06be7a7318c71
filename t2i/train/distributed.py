"""Multi-process training with torchrun (DistributedDataParallel: gloo on CPUs, nccl with one GPU per process).

One DDP wrapper per network. Rank ``r`` takes every ``world``-th item of each global batch
(t2i.data.loader.ResumableBatches), seeds with ``seed + r``, and only rank 0 logs and writes checkpoints.

Discriminators. The adversarial losses call ``D(images)`` for the (B, 8d, 4, 4) code, then ``D.cond_logits`` and
``D.uncond_logits`` on it, several times before one backward. A DDP wrapper only sees calls of its ``forward``, so
:class:`DDPDiscriminator` routes all three entry points through ``forward(entry, *args)`` of one DDP module
(:class:`_Entries`): DDP prepares its reducer at each call and every parameter's gradient hook fires once in the
single backward that follows (the autograd engine sums the uses of a parameter before its hook runs), so the
gradients are all-reduced as one bucketed average. Calls happen in the originals' order, so spectral-norm u/v and
BatchNorm statistics evolve as in one process. Buffers are synced once, when the wrappers are built, and never at a
forward (``broadcast_buffers=False``, now ``forward_sync_buffers=False``): each rank keeps the BatchNorm running
statistics of its own B/world items (in the generator and in ``bn.v1`` discriminators); parameters,
including the spectral-norm u/v vectors (no-gradient Parameters updated identically from identical weights), stay
equal on every rank.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def local_rank_from_env() -> int | None:
    """torchrun's LOCAL_RANK (this process's GPU on its node), None for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device: torch.device | str = "cpu") -> DistInfo:
    """Join the process group torchrun describes in the environment (a no-op for one process).

    On CUDA each rank drives ``cuda:<LOCAL_RANK>`` (set before the group exists, as nccl needs) with the nccl
    backend; on the CPU the backend is gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    device = torch.device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def broadcast_text(value: str | None, info: DistInfo) -> str:
    if info.world == 1:
        assert value is not None
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _Entries(nn.Module):
    """A discriminator whose ``forward`` dispatches to its trunk or one of its heads (what DDP wraps)."""

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, entry: str, *args: Tensor) -> Tensor:
        d = self.discriminator
        if entry == "features":
            return d(*args)  # (B, 3, S, S) -> (B, 8d, 4, 4)
        if entry == "cond":
            return d.cond_logits(*args)  # (B, 8d, 4, 4), (B, e) -> (B,)
        if entry == "uncond":
            return d.uncond_logits(*args)  # (B, 8d, 4, 4) -> (B,)
        raise ValueError(f"unknown discriminator entry {entry!r}")


class DDPDiscriminator:
    """The discriminator interface the adversarial losses use, with every call going through one DDP module.

    ``module`` is the plain discriminator (the loop's G step calls it directly: D's weights get no gradient there,
    so nothing needs reducing).
    """

    def __init__(self, discriminator: nn.Module, **ddp_options):
        self.module = discriminator
        self.ddp = DistributedDataParallel(_Entries(discriminator), **ddp_options)

    def __call__(self, images: Tensor) -> Tensor:
        return self.ddp("features", images)

    def cond_logits(self, features: Tensor, sentence: Tensor) -> Tensor:
        return self.ddp("cond", features, sentence)

    def uncond_logits(self, features: Tensor) -> Tensor:
        return self.ddp("uncond", features)

    @property
    def has_unconditional(self) -> bool:
        return self.module.has_unconditional

    def train(self, mode: bool = True) -> DDPDiscriminator:
        self.module.train(mode)
        return self


def _rank_local_buffers() -> dict[str, bool]:
    """DDP options that keep buffers rank-local after the initial sync (the option's name changed in torch 2.x)."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}  # still syncs once at construction: every rank starts equal
    return {"broadcast_buffers": False}


def wrap_ddp(generator: nn.Module, discriminators: nn.ModuleList) -> tuple[nn.Module, list[DDPDiscriminator]]:
    """One DDP wrapper per network; the wrappers share parameters (and so state dicts) with the plain modules."""
    options = _rank_local_buffers()
    g = DistributedDataParallel(generator, **options)
    ds = [DDPDiscriminator(d, **options) for d in discriminators]
    return g, ds


def all_finite(value: Tensor, world: int) -> bool:
    """True when ``value`` is finite on EVERY rank, so all ranks skip or stop together (a lone rank skipping a
    backward would leave the others waiting in the gradient all-reduce forever)."""
    ok = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if world > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
