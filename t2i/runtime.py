"""Where and in what number format the networks run: device resolution, precision policy, memory format, compile.

Every command that runs a network asks this module, so ``--device``, ``--precision``, ``--channels-last`` and
``--compile`` mean the same thing everywhere. ``fp32`` is the originals' math: no autocast, no scaler, nothing
changes. ``bf16`` and ``fp16`` run convolutions, matmuls and the LSTM under ``torch.autocast`` (weights and optimiser
states stay fp32); ``fp16`` adds one ``torch.amp.GradScaler`` per optimiser, so each discriminator and the generator
scale their own losses. See docs/performance.md.
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|meta)$")


class DeviceError(RuntimeError):
    """A device or precision this machine cannot provide (exit 1 with the message)."""

    t2i_user_error = True


# -- device --------------------------------------------------------------------------------------------------------
def resolve_device(spec: str | torch.device = "auto", *, local_rank: int | None = None) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (| ``meta``, for tests) -> a device that exists here.

    ``auto`` is CUDA when a GPU is visible, else the CPU. Under torchrun (``local_rank`` given) a bare ``cuda`` or
    ``auto`` is ``cuda:<local_rank>``: one GPU per process.
    """
    text = str(spec).strip().lower()
    if not _DEVICE_RE.match(text):
        raise DeviceError(f"device {spec!r}: use auto, cpu, cuda or cuda:N")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text in ("cpu", "meta"):
        return torch.device(text)
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        raise DeviceError(
            f"device {spec!r} asked for, but CUDA is not available on this machine (torch {torch.__version__}, "
            f"{build}, no GPU visible); use --device cpu, or --device auto to take a GPU only when there is one"
        )
    index = int(text.split(":")[1]) if ":" in text else (local_rank if local_rank is not None else 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device {spec!r}: this machine has {count} GPU(s) (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX-512-BF16 or AMX); elsewhere oneDNN emulates it."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.backends.mkldnn.is_available() and any(check is not None and check() for check in checks)


# -- precision -----------------------------------------------------------------------------------------------------
@dataclass
class Precision:
    """The number format of forward passes and losses; ``autocast()`` wraps them, ``scaler()`` guards each step."""

    name: str = "fp32"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        if self.name not in PRECISIONS:
            raise DeviceError(f"precision {self.name!r}: use one of {', '.join(PRECISIONS)}")

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    @property
    def enabled(self) -> bool:
        """Autocast is on: a low precision on a device autocast knows (``meta`` runs fp32 shapes)."""
        return self.name != "fp32" and self.device.type in ("cpu", "cuda")

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scaler(self) -> StepScaler:
        """A fresh gradient scaler for ONE optimiser (a pass-through unless fp16)."""
        return StepScaler(self.device if self.name == "fp16" and self.enabled else None)

    def check(self) -> str | None:
        """A warning for a precision that runs here but slowly; DeviceError for one that cannot run."""
        if self.name == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise DeviceError(f"precision bf16: {device_name(self.device)} has no bf16 support; use fp16 or fp32")
        if self.name == "bf16" and self.device.type == "cpu" and not cpu_has_fast_bf16():
            return "bf16 on this CPU is emulated (no AVX-512-BF16/AMX): it runs, but slower than fp32"
        if self.name == "fp16" and self.device.type == "cpu":
            return "fp16 on a CPU is slow (no fp16 arithmetic units); it is meant for GPUs"
        return None


@contextlib.contextmanager
def full_precision(reference: Tensor) -> Iterator[None]:
    """Autocast off for a region that must run in fp32 (e.g. BCE on probabilities, which CUDA autocast refuses)."""
    if reference.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(reference.device.type):
        with torch.autocast(reference.device.type, enabled=False):
            yield
    else:
        yield


def autocast_inputs(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Cast floating tensors to the active autocast type, as autocast does for a conv, before a custom
    ``autograd.Function`` (autocast is off in backward, so its saved tensors must already agree in type)."""
    device = next(t for t in tensors if t is not None).device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


class StepScaler:
    """One optimiser's loss scaling: ``backward(loss)`` then ``step(opt)``; plain backward/step when disabled.

    With fp16 a step whose gradients hold inf/NaN is skipped by the scaler (and the scale lowered); ``skipped``
    counts those steps so the loop can log them.
    """

    def __init__(self, device: torch.device | None):
        self.scaler = torch.amp.GradScaler(device.type) if device is not None else None
        self.skipped = 0

    @property
    def enabled(self) -> bool:
        return self.scaler is not None

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Step the optimiser (unless the scaler found inf/NaN gradients); -> whether it stepped."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        stepped = self.scaler.get_scale() >= before  # the scale only drops after a skipped step
        self.skipped += not stepped
        return stepped

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


# -- the whole runtime ---------------------------------------------------------------------------------------------
@dataclass
class Runtime:
    """Device + precision + memory format + compile, as one command resolved them."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: Precision = field(default_factory=Precision)
    channels_last: bool = False
    compile: bool = False
    compile_seconds: float = 0.0  # wall time of the first compiled calls, logged apart from step times

    @classmethod
    def create(
        cls,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        *,
        channels_last: bool = False,
        compile: bool = False,
        local_rank: int | None = None,
    ) -> Runtime:
        resolved = resolve_device(device, local_rank=local_rank)
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        return cls(resolved, Precision(precision, resolved), channels_last, compile)

    @classmethod
    def from_section(cls, section: Any, *, device: str | torch.device | None = None, **kwargs: Any) -> Runtime:
        """From a recipe's ``[runtime]`` section (``device`` overrides its device)."""
        if section is None:
            return cls.create(device or "auto", **kwargs)
        return cls.create(
            device if device is not None else section.device,
            section.precision,
            channels_last=section.channels_last,
            compile=section.compile,
            **kwargs,
        )

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"

    def describe(self) -> str:
        extras = [f"precision {self.precision.name}"]
        if self.channels_last:
            extras.append("channels_last")
        if self.compile:
            extras.append("torch.compile")
        name = device_name(self.device)
        where = f"{self.device} ({name})" if name != self.device.type else str(self.device)
        return f"device {where}, " + ", ".join(extras)

    def info(self) -> dict[str, Any]:
        """What env.json records about the runtime (numerics that differ between GPUs included)."""
        out: dict[str, Any] = {
            "device": str(self.device),
            "device_name": device_name(self.device),
            "precision": self.precision.name,
            "channels_last": self.channels_last,
            "compile": self.compile,
        }
        if self.is_cuda:
            props = torch.cuda.get_device_properties(self.device)
            out.update(
                cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(),
                gpu_memory_bytes=int(props.total_memory),
                capability=f"{props.major}.{props.minor}",
                cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                cudnn_benchmark=torch.backends.cudnn.benchmark,
            )
        elif self.is_cpu:
            out["cpu_fast_bf16"] = cpu_has_fast_bf16()
        return out

    def warn(self) -> str | None:
        """A line about a slow precision here (or DeviceError for one that cannot run)."""
        return self.precision.check()

    # -- what the runtime does to modules and tensors --------------------------------------------------------------
    def module(self, module: nn.Module) -> nn.Module:
        """Move ``module`` to the device (and channels-last memory format); in place, returned for chaining."""
        module.to(self.device)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        return module

    def images(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def batch(self, batch: Any) -> Any:
        """A Batch on the device (pinned host memory makes the copies asynchronous), images channels-last."""
        from dataclasses import replace

        return replace(
            batch.to(self.device),
            images=[self.images(im) for im in batch.images],
        )

    def compiled(self, module: nn.Module) -> nn.Module:
        """``torch.compile(module)`` when compile is on (the parameters are shared: state dicts are unchanged)."""
        if not self.compile:
            return module
        return torch.compile(module)

    @contextlib.contextmanager
    def timing_compile(self) -> Iterator[None]:
        """Wrap the first (compiling) step: its wall time is kept in ``compile_seconds``, not in step times."""
        self.synchronize()
        start = time.perf_counter()
        yield
        self.synchronize()
        self.compile_seconds += time.perf_counter() - start

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def loader_options(self) -> dict[str, Any]:
        return {"pin_memory": self.is_cuda}

    def set_threads(self, threads: int | None) -> None:
        """torch intra-op threads: a CPU setting (a GPU run keeps torch's default for its host-side work)."""
        if threads and self.is_cpu:
            torch.set_num_threads(threads)

    def reset_peak_memory(self) -> None:
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_bytes(self) -> int:
        """Peak allocated GPU memory on CUDA; the process's peak resident memory (VmHWM) elsewhere."""
        if self.is_cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def warn_once(message: str | None) -> None:
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
