"""What ``--set`` may change when a run resumes: budgets, logging, evaluation, learning rates, checks, workers.

Anything else (a network's shape or components, the data, the loss terms, the seed) would make the checkpoint
describe a different experiment than the one that continues, or not fit it at all, so it is refused up front.
"""

from __future__ import annotations

from typing import Any

# Exact keys, or a section prefix ending in "." (everything under it).
RESUMABLE = (
    "train.steps",
    "train.log_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.lr_g",
    "train.lr_d",
    "train.nan_policy",
    "train.finite_check_every",
    "train.threads",
    "data.workers",
    "eval.",
    "log.",  # extra copies of the logs (TensorBoard)
    "runtime.",  # device, precision, memory format, compile: the same weights continue elsewhere
)

# ... except these: which training items are held out as the selection split decides what is trained on.
NOT_RESUMABLE = ("eval.selection_split", "eval.val_size", "eval.val_seed")


class ResumeOverrideError(ValueError):
    t2i_user_error = True


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves that differ between two resolved recipe dicts (a list counts as one leaf)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old]
        return [p for k in keys for p in changed_keys(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else k)]
    return [] if old == new else [prefix]


def resumable(key: str, extra: tuple[str, ...] = ()) -> bool:
    if key in NOT_RESUMABLE:
        return False
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in RESUMABLE + extra)


def check_resume_changes(old: dict[str, Any], new: dict[str, Any], extra: tuple[str, ...] = ()) -> list[str]:
    """-> the changed keys, all of which may change on resume; else ResumeOverrideError naming the others."""
    changed = changed_keys(old, new)
    refused = [key for key in changed if not resumable(key, extra)]
    if refused:
        allowed = ", ".join(k + "*" if k.endswith(".") else k for k in RESUMABLE + extra)
        allowed += f" (not {', '.join(NOT_RESUMABLE)})"
        raise ResumeOverrideError(
            f"--set cannot change {', '.join(refused)} when resuming: the checkpoint was trained with the stored "
            f"value, and changing it would change the networks, the data or the losses. Start a new run instead "
            f"(t2i train RECIPE --set ...). On resume --set may change: {allowed}"
        )
    return changed
