"""Memory policy of the training step, in one place: C heap release and activation recomputation.

Both are installed once, when the trainer is set up (hooks on the generator, wrapped discriminators), so the
training step itself reads as the algorithm and never calls them.

**Heap release (CPU only).** glibc's malloc serves tensors under its mmap threshold (which grows to 32 MB after
large frees) from its heap, and keeps the pages of freed chunks. In a G update the discriminators' and the DAMSM
encoder's activations are freed just before the generator's backward, which then allocates tensors too large for
those chunks: the freed pages stay resident on top of the generator's peak (about 1 GB at DM-GAN bird size, batch
10). ``malloc_trim(0)`` returns them; it costs about 0.1 s at that size. Elsewhere (macOS, musl, Windows) this is a
no-op; on a GPU the tensors live in the caching allocator, not the C heap.

**Recomputation (``train.recompute``)** for modules whose forward changes their own state.

``torch.utils.checkpoint`` keeps only a region's inputs and runs the region again during backward. The generator's
BatchNorm layers update running statistics and the DM-GAN discriminators' spectral norm runs a power iteration on
every call (Miyato et al. 2018), so a plain re-run would move that state a second time and compute with other
values. Here the state at the start of the forward is kept (a few small tensors) and written back before the re-run;
the re-run, the same deterministic computation from the same state, ends where the forward ended, and then the state
as it was just before the re-run is written back (it may include changes made after the region, e.g. by a
discriminator's logit heads). Values, gradients and state equal the plain forward's (``tests/test_recompute.py``).

What it saves depends on where backward peaks: in the training loop the peak is in the generator's last-stage
backward, when the discriminators' and encoders' activations are already freed, so only generator parts that are
still alive then (earlier stages) lower it; see docs/training.md for measured numbers.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch.utils.hooks import RemovableHandle

from t2i.networks import SetupError

__all__ = [
    "Recomputed",
    "install_heap_release",
    "install_recompute",
    "mutable_state",
    "recompute_forward",
    "release_free_heap",
]


# -- the C heap --------------------------------------------------------------------------------------------------------
@functools.cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the C heap's free pages to the OS; False where the C library has no ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def install_heap_release(generator: nn.Module) -> list[RemovableHandle]:
    """Release the free C heap twice per training step of ``generator`` (the module the step calls); CPU runs only.

    Before its forward: what the previous step freed (its activations and gradients), before this step's peak.
    When backward reaches its last image: by then the discriminators' and encoders' activations are freed, and the
    generator's backward is about to allocate tensors too large for their chunks. Calls without gradients (sample
    grids, evaluation) are left alone.
    """

    def before_forward(_module: nn.Module, _args: Any) -> None:
        if torch.is_grad_enabled():
            release_free_heap()

    def after_forward(_module: nn.Module, _args: Any, out: Any) -> None:
        images = getattr(out, "images", None)  # the generator contract: one image per stage, the last one largest
        if torch.is_grad_enabled() and images and images[-1].requires_grad:
            images[-1].register_hook(_release_hook)

    return [generator.register_forward_pre_hook(before_forward), generator.register_forward_hook(after_forward)]


def _release_hook(grad: Tensor) -> None:
    release_free_heap()


# -- recomputation -----------------------------------------------------------------------------------------------------
def install_recompute(generator: nn.Module, discriminators: Sequence[nn.Module], targets: Sequence[str]) -> list[Any]:
    """Install ``train.recompute``; -> the discriminators as the G update calls them.

    A generator submodule path (``generator.init_stage``) gets a recomputing ``forward``; ``"discriminators"`` wraps
    each D for the G update only (its own D update keeps the activations it needs right away). The G update calls
    each D's own module, never its DDP wrapper: nothing there needs D's gradients synchronised.
    """
    for target in targets:
        if target == "discriminators":
            continue
        path = target.removeprefix("generator.")
        try:
            module = generator.get_submodule(path)
        except AttributeError:
            children = ", ".join(name for name, _ in generator.named_children())
            raise SetupError(
                f"train.recompute: the generator has no submodule {path!r} (its children: {children})"
            ) from None
        state, plain = mutable_state(module), module.forward
        module.forward = functools.partial(recompute_forward, plain, state)  # instance attribute; keys unchanged
    if "discriminators" in targets:
        return [Recomputed(d) for d in discriminators]
    return list(discriminators)


def mutable_state(module: nn.Module) -> list[Tensor]:
    """The tensors a forward may change in place: buffers and parameters that do not train (spectral norm's u, v).

    Call it while the trainable parameters still have ``requires_grad=True`` (the training loop switches the
    discriminators' off during the generator update).
    """
    frozen = [p for p in module.parameters() if not p.requires_grad]
    return [*module.buffers(), *frozen]


def recompute_forward(fn: Callable[..., Any], state: list[Tensor], *args: Any) -> Any:
    """``fn(*args)`` whose activations are recomputed in backward, ``state`` restored to its start value first."""
    if not torch.is_grad_enabled():
        return fn(*args)

    def contexts():
        start = [t.detach().clone() for t in state]

        @contextlib.contextmanager
        def from_start() -> Iterator[None]:
            now = [t.detach().clone() for t in state]  # may include changes made after the forward (e.g. D's heads)
            _write(state, start)
            try:
                yield
            finally:
                _write(state, now)  # equal to what the re-run left in the tensors the region itself changes

        return contextlib.nullcontext(), from_start()

    return checkpoint(fn, *args, use_reentrant=False, context_fn=contexts)


def _write(state: list[Tensor], values: list[Tensor]) -> None:
    with torch.no_grad():
        for tensor, value in zip(state, values, strict=True):
            tensor.data.copy_(value)  # through .data, as the spectral norm writes u and v: no version bump


class Recomputed:
    """A module's call with recomputation (``recompute_forward``); other attributes are the module's own."""

    def __init__(self, module: nn.Module, state: list[Tensor] | None = None):
        self.module = module
        self.state = mutable_state(module) if state is None else state

    def __call__(self, *args: Any) -> Any:
        return recompute_forward(self.module, self.state, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)
