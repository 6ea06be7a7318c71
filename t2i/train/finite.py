"""Finite checks on networks, optimiser states and checkpoint states: one fused reduction per group.

The infinity norm of a tensor is NaN if any element is NaN and Inf if any is ±Inf, and it cannot overflow (unlike a
sum or the 2-norm of large finite values), so ``isfinite`` of the per-tensor infinity norms says whether every element
is finite. ``torch._foreach_norm`` computes them in one fused call per group and the groups share one host sync.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor


class NonFiniteError(RuntimeError):
    """A loss, a network or a checkpoint state holds NaN or Inf."""

    t2i_user_error = True


def _floats(tensors: Iterable[Any]) -> list[Tensor]:
    return [t.detach() for t in tensors if isinstance(t, Tensor) and t.is_floating_point() and t.numel()]


def nonfinite_groups(groups: dict[str, Iterable[Any]], world: int = 1) -> list[str]:
    """The names of the groups that hold a NaN or Inf (agreed across ``world`` processes); [] when all are finite."""
    names, flags = [], []
    for name, tensors in groups.items():
        floats = _floats(tensors)
        if not floats:
            continue
        norms = torch._foreach_norm(floats, float("inf"))
        flags.append(torch.isfinite(torch.stack([n.float() for n in norms])).all().cpu())
        names.append(name)
    if not flags:
        return []
    ok = torch.stack(flags).to(torch.float32)
    if world > 1:
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else ok.device
        ok = ok.to(device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # every rank restores or stops together
    return [name for name, flag in zip(names, ok.tolist(), strict=True) if not flag]


def _walk(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk(item)


def state_groups(state: dict[str, Any]) -> dict[str, list[Tensor]]:
    """A checkpoint state's tensors by network / optimiser (``models.generator``, ``optimizers.discriminators[1]``)."""
    groups: dict[str, list[Tensor]] = {}
    for section in ("models", "optimizers"):
        for name, value in (state.get(section) or {}).items():
            if isinstance(value, list):
                for i, item in enumerate(value):
                    groups[f"{section}.{name}[{i}]"] = list(_walk(item))
            else:
                groups[f"{section}.{name}"] = list(_walk(value))
    groups["other"] = [t for key, v in state.items() if key not in ("models", "optimizers") for t in _walk(v)]
    return groups


def require_finite_state(state: dict[str, Any], path: Any) -> None:
    """Refuse to write a checkpoint that holds NaN or Inf anywhere (networks, EMA, optimiser states)."""
    bad = nonfinite_groups(state_groups(state))
    if bad:
        raise NonFiniteError(f"not writing checkpoint {path}: {', '.join(bad)} hold NaN or Inf values")
