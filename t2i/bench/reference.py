"""The original DM-GAN and AttnGAN networks, timed through the bench-reference harness beside t2i's.

The harness (``bench_reference.py`` in the folder given as ``--reference-dir``; by default ``../shared/bench-reference``
next to the repository) is loaded from its file, not from ``sys.path``, so none of its names or folders stay visible
to the rest of the process. It runs the originals' training iteration and sampling on synthetic inputs; see its
README for what is timed.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

# Recipes whose original code the harness can run: recipe stem -> (model, dataset).
REFERENCE_MODELS: dict[str, tuple[str, str]] = {
    "dmgan_bird": ("dmgan", "bird"),
    "dmgan_coco": ("dmgan", "coco"),
    "attngan_bird": ("attngan", "bird"),
    "attngan_coco": ("attngan", "coco"),
}
HARNESS = "bench_reference.py"
# The original code's own imports (its config loader), which are not t2i dependencies.
DEPENDENCIES = {"yaml": "pyyaml", "easydict": "easydict"}

_loaded: dict[Path, ModuleType] = {}


class ReferenceHarnessError(RuntimeError):
    """The original networks cannot be run: no harness where ``--reference-dir`` points, or a missing dependency."""

    t2i_user_error = True


def default_reference_dir() -> Path:
    """``../shared/bench-reference`` relative to the repository this package lives in."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "bench-reference"


def harness_file(folder: Path | str) -> Path:
    """``folder``'s harness file, or an error that names ``--reference-dir`` and what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReferenceHarnessError(
            f"--reference-dir {folder}: no such folder; it must hold the original networks' harness {HARNESS} "
            f"(default: {default_reference_dir()})"
        )
    harness = folder / HARNESS
    if not harness.is_file():
        raise ReferenceHarnessError(f"--reference-dir {folder}: {HARNESS} not found in it; point it at bench-reference")
    return harness


def check(folder: Path | str, recipe_stem: str) -> Path:
    """The harness file, after checking that the recipe has original code and that the original code's imports exist."""
    if recipe_stem not in REFERENCE_MODELS:
        raise ReferenceHarnessError(
            f"--against-reference: no original code for recipe {recipe_stem!r}; it exists for "
            f"{', '.join(sorted(REFERENCE_MODELS))}"
        )
    harness = harness_file(folder)
    missing = [pip for module, pip in DEPENDENCIES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ReferenceHarnessError(
            f"--against-reference: the original code needs {', '.join(missing)}: pip install {' '.join(missing)} "
            "(or put them on PYTHONPATH)"
        )
    return harness


def load_harness(folder: Path | str) -> ModuleType:
    """The harness module of ``folder`` (loaded once per process, never added to ``sys.path`` or ``sys.modules``)."""
    path = harness_file(folder).resolve()
    if path not in _loaded:
        spec = importlib.util.spec_from_file_location("_t2i_bench_reference", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[path] = module
    return _loaded[path]


def reference_callable(spec: dict[str, Any]) -> tuple[Callable[[int], Any], int, dict[str, Any]]:
    """(call(i), batch size, info) for the original networks' train or sample case."""
    harness = load_harness(spec.get("reference_dir") or default_reference_dir())
    model, dataset = spec["reference_model"]
    t0 = time.perf_counter()
    device = spec.get("device") or "cpu"
    kwargs = {"device": device} if device != "cpu" else {}  # the harness's own CPU default otherwise
    ref = harness.build(model, batch=spec["batch"], dataset=dataset, threads=spec.get("threads") or 2, **kwargs)
    info: dict[str, Any] = {"build_s": time.perf_counter() - t0}
    if spec["task"] == "train":

        def call(i: int) -> dict[str, float]:
            phases: dict[str, float] = {}
            ref.train_step(ref.make_batch(seed=1000 + i), phases=phases)
            return phases

        return call, spec["batch"], info
    if spec["task"] != "sample":
        raise ValueError(f"reference cases are train or sample, not {spec['task']!r}")
    inputs = ref.sample_inputs(ref.make_batch(seed=1000))

    def sample(i: int) -> None:
        ref.sample(inputs)

    return sample, spec["batch"], info
