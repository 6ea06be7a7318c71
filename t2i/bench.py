"""Performance measurement of a recipe: training iterations, sampling, data (issue 8; metrics.md §3).

Synthetic inputs at the recipe's real sizes (random images in [-1, 1], captions of 5..words_num random word ids
with at least one full-length caption, class ids 1..200, sorted by length as the collate does), so no data set is
needed. One *case* is one implementation × one task (``train`` / ``sample`` / ``data``) and always runs in a fresh
Python process (:func:`run_isolated`), so its peak RSS (VmHWM) is its own. Each case reports the median and spread of
K timed repeats after warm-up, FLOPs of one call (``torch.utils.flop_counter.FlopCounterMode``, counted during the
first warm-up call, so no extra step), achieved GFLOP/s, phase medians and how much of the CPU *other* processes used
while it ran (timings on a shared 2-core machine are only trustworthy when that is near zero).

Implementations:

* ``t2i``: the committed training step (``GANTrainer.train_step``) and generator as built from the recipe;
* ``t2i-fast``: the same modules after :func:`fast_path` (same parameters, same math up to float rounding);
* ``reference``: the original networks through ``../shared/bench-reference/bench_reference.py`` (measurement only).

The math of the fast path is checked in ``tests/test_fast_path.py``; speed is never asserted in tests.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i.models.blocks import UpsampleConv3x3, up2_conv3x3  # noqa: F401  (re-exported)

IMPLEMENTATIONS = ("t2i", "t2i-fast", "reference")
TASKS = ("train", "sample", "data")
# Recipes whose original code the bench-reference harness can run: recipe stem -> (model, dataset).
REFERENCE_MODELS: dict[str, tuple[str, str]] = {
    "dmgan_bird": ("dmgan", "bird"),
    "dmgan_coco": ("dmgan", "coco"),
    "attngan_bird": ("attngan", "bird"),
    "attngan_coco": ("attngan", "coco"),
}
REFERENCE_VOCAB = {"bird": 5450, "coco": 27297}  # len(ixtoword) of the preprocessed CUB / COCO captions


def default_reference_dir() -> Path:
    return Path(__file__).resolve().parents[1].parent / "shared" / "bench-reference"


# -- measurement primitives ------------------------------------------------------------------------------------
class CpuShare:
    """Context manager: wall seconds, and the share of all CPUs' time spent by *other* processes meanwhile."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    @staticmethod
    def _read() -> tuple[list[int], int] | None:
        try:
            with open("/proc/stat") as handle:
                total = [int(v) for v in handle.readline().split()[1:9]]
            with open("/proc/self/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            own = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
            return total, own
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> CpuShare:
        self._start = self._read()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        record = {"wall": time.perf_counter() - self._t0}
        end = self._read()
        if self._start is not None and end is not None:
            delta = [b - a for a, b in zip(self._start[0], end[0], strict=True)]
            busy = delta[0] + delta[1] + delta[2] + delta[5] + delta[6]  # user nice system irq softirq
            own = end[1] - self._start[1]
            record["others_frac"] = max(busy - own, 0) / max(sum(delta), 1)
        self.records.append(record)

    def others(self) -> float | None:
        values = [r["others_frac"] for r in self.records if "others_frac" in r]
        return statistics.fmean(values) if values else None


def spread(times: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "all": list(times)}


def peak_rss_bytes() -> int:
    """VmHWM of this process."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def matmul_peak(n: int = 2048, repeat: int = 8) -> dict[str, float]:
    """fp32 n×n @ n×n GFLOP/s (best and median) with the current thread count."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=out)
    meter = CpuShare()
    for _ in range(repeat):
        with meter:
            torch.mm(a, b, out=out)
    times = [r["wall"] for r in meter.records]
    flop = 2.0 * n**3
    return {
        "gflops_best": flop / min(times) / 1e9,
        "gflops_median": flop / statistics.median(times) / 1e9,
        "others_frac": meter.others() or 0.0,
    }


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """(fn's result, FLOPs of the call): mm/bmm/conv forward and backward, 2 FLOPs per multiply-add."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        result = fn()
    return result, int(counter.get_total_flops())


def time_calls(
    call: Callable[[int], dict[str, float] | None],
    repeat: int,
    warmup: int,
    flops: bool = True,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Warm up, then time ``repeat`` calls of ``call(i)`` (which may return its own phase seconds).

    FLOPs are counted during the first warm-up call (a counted call is slower, so it is never timed). The first
    warm-up call's wall time is kept apart as ``first_call_s`` (it holds torch.compile's compile time when on).
    ``sync`` waits for the device (CUDA kernels run asynchronously) before each clock reading.
    """
    out: dict[str, Any] = {}
    for i in range(max(warmup, 1 if flops else 0)):
        t0 = time.perf_counter()
        if i == 0 and flops:
            _, out["flops"] = count_flops(lambda: call(-1))
        else:
            call(-1 - i)
        sync()
        if i == 0:
            out["first_call_s"] = time.perf_counter() - t0
    meter = CpuShare()
    phases: list[dict[str, float]] = []
    for i in range(repeat):
        with meter:
            phase = call(i)
            sync()
        if isinstance(phase, dict) and phase:
            phases.append(phase)
    times = [r["wall"] for r in meter.records]
    out["seconds"] = spread(times)
    out["others_frac"] = meter.others()
    if phases:
        out["phases_median_s"] = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in phases[0]}
    if "flops" in out:
        out["achieved_gflops_per_s"] = out["flops"] / out["seconds"]["median"] / 1e9
    return out


# -- the fast path ---------------------------------------------------------------------------------------------
# The folded upsample-conv is the generator's own upBlock now (t2i.models.blocks); the fast path still applies it
# to any plain "nearest x2 upsample -> 3x3 conv" pair it finds (e.g. in user components).
Up2Conv3x3 = UpsampleConv3x3


class FusedGLU(nn.Module):
    """``F.glu`` over channels: one kernel instead of slice + sigmoid + multiply."""

    def forward(self, x: Tensor) -> Tensor:
        return F.glu(x, dim=1)


def _is_plain_conv3x3(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (3, 3)
        and module.stride == (1, 1)
        and module.padding == (1, 1)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


def fast_path(
    model: nn.Module,
    *,
    upsample_conv: bool = True,
    fused_glu: bool = True,
    fuse_bn: bool = False,
    channels_last: bool = False,
) -> nn.Module:
    """Rewrite ``model`` in place to compute the same function faster; parameters and state dict are unchanged.

    * ``upsample_conv``: every ``Sequential(Upsample(x2, nearest), Conv2d 3×3, ...)`` runs its conv as four 2×2
      convolutions at the input resolution (:func:`up2_conv3x3`): 2.25× fewer conv FLOPs in G's upBlocks;
    * ``fused_glu``: GLU modules (any module class named ``GLU``) use ``F.glu``;
    * ``fuse_bn`` (inference only, the model must be in eval mode): fold eval-mode BatchNorm2d into the preceding
      bias-free conv; the BN becomes Identity, so the state dict DOES change; use on a copy for sampling;
    * ``channels_last``: convert parameters to channels-last (measure first: slower on some AVX2 CPUs).
    """
    if fuse_bn:
        if model.training:
            raise ValueError("fuse_bn folds running statistics: call model.eval() first (inference only)")
        _fuse_conv_bn(model)
    for module in list(model.modules()):
        if upsample_conv and isinstance(module, nn.Sequential) and len(module) >= 2:
            first, second = module[0], module[1]
            if (
                isinstance(first, nn.Upsample)
                and first.mode == "nearest"
                and first.size is None
                and _scale_is_2(first.scale_factor)
                and _is_plain_conv3x3(second)
            ):
                module[0] = nn.Identity()
                second.__class__ = Up2Conv3x3
        if fused_glu:
            for name, child in module.named_children():
                if type(child).__name__ == "GLU" and not list(child.parameters()):
                    setattr(module, name, FusedGLU())
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _scale_is_2(scale: Any) -> bool:
    if isinstance(scale, tuple):
        return all(float(s) == 2.0 for s in scale)
    return scale is not None and float(scale) == 2.0


def _fuse_conv_bn(model: nn.Module) -> None:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                fused = fuse_conv_bn_eval(conv, bn)
                fused.__class__ = type(conv)  # keep an Up2Conv3x3 an Up2Conv3x3
                module[i], module[i + 1] = fused, nn.Identity()


# -- synthetic inputs ------------------------------------------------------------------------------------------
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


# -- t2i cases -----------------------------------------------------------------------------------------------------
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


def vocab_size_of(recipe, reference: tuple[str, str] | None) -> int:
    return REFERENCE_VOCAB[reference[1]] if reference else 5450


def spec_runtime(spec: dict[str, Any]):
    """The case's t2i.runtime.Runtime (default: CPU, fp32)."""
    from t2i.runtime import Runtime

    return Runtime.create(
        spec.get("device") or "cpu",
        spec.get("precision") or "fp32",
        channels_last=bool(spec.get("channels_last")),
        compile=bool(spec.get("compile")),
    )


def build_trainer(recipe, vocab, fast: bool, runtime=None):
    """A GANTrainer on synthetic captions in a throw-away run folder (nothing is written during steps)."""
    from t2i.runtime import Runtime
    from t2i.train.loop import GANTrainer
    from t2i.train.run_dir import RunDir

    folder = Path(tempfile.mkdtemp(prefix="t2i_bench_"))
    trainer = GANTrainer(
        recipe,
        RunDir(folder),
        SyntheticCaptions(vocab, words_num_of(recipe)),
        quiet=True,
        runtime=runtime or Runtime(),
    )
    if fast:
        fast_path(trainer.nets.generator)
        fast_path(trainer.ema.model)
    return trainer


def train_call(trainer, batches: Callable[[int], Any]) -> Callable[[int], dict[str, float]]:
    """One ``train_step`` per call, split into phases by hooks (no change to the loop itself)."""
    clock = time.perf_counter
    state: dict[str, Any] = {}

    def mark(name: str) -> None:
        trainer.runtime.synchronize()  # phase times of GPU work need the kernels finished
        now = clock()
        state["phases"][name] = state["phases"].get(name, 0.0) + now - state["t"]
        state["t"] = now

    generator = trainer.nets.generator
    if not trainer.runtime.compile:  # hooks with clocks would break the compiled graph: whole steps only
        generator.register_forward_pre_hook(lambda *_: mark("text_encoding"))
        generator.register_forward_hook(lambda *_: mark("G_forward"))
        for i, opt in enumerate(trainer.opt_d):
            opt.register_step_post_hook(lambda *_, i=i: mark(f"D{i}_update"))

    def call(i: int) -> dict[str, float]:
        batch = trainer.runtime.batch(batches(i))  # the host-to-device copy is not part of the step
        trainer.runtime.synchronize()
        state["phases"], state["t"] = {}, clock()
        logs = trainer.train_step(batch)
        if logs is None:
            raise RuntimeError("the training step produced a non-finite loss on synthetic inputs")
        mark("G_update")
        return state["phases"]

    return call


def _t2i_callable(spec: dict[str, Any]) -> tuple[Callable[[int], Any], int, dict[str, Any]]:
    """(call(i), batch size, info) for a t2i train or sample case; call(i) returns train phases or None."""
    from t2i.batch import text_features

    reference = REFERENCE_MODELS.get(Path(spec["recipe"]).stem)
    recipe = bench_recipe(spec["recipe"], spec.get("batch"), spec.get("overrides"))
    batch_size = recipe.data.batch_size
    vocab = synthetic_vocab(vocab_size_of(recipe, reference), recipe.data.dataset.raw_params.get("convention", "A"))
    words_num = words_num_of(recipe)
    sizes = recipe.stage_sizes()
    fast = spec["impl"] == "t2i-fast"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    runtime = spec_runtime(spec)
    trainer = build_trainer(recipe, vocab, fast, runtime)
    info: dict[str, Any] = {"build_s": time.perf_counter() - t0, "runtime": runtime.info()}

    def batches(i: int):
        return synthetic_batch(sizes, batch_size, vocab, words_num, seed=1000 + i)

    if spec["task"] == "train":
        return train_call(trainer, batches), batch_size, info
    if spec["task"] != "sample":
        raise ValueError(f"unknown task {spec['task']!r}")
    generator = trainer.ema.model.eval()
    if fast:
        fast_path(generator, fuse_bn=True)
    generator = runtime.compiled(runtime.module(generator))
    text = text_features(trainer.nets.text_encoder, runtime.batch(batches(0)), trainer.mask_ids)
    noise = torch.Generator().manual_seed(1)
    z = torch.randn(batch_size, recipe.model.z_dim, generator=noise).to(runtime.device)
    eps = torch.randn(batch_size, recipe.model.cond_dim, generator=noise).to(runtime.device)
    grad_mode = torch.inference_mode if fast else torch.no_grad

    def call(i: int) -> None:
        with grad_mode(), runtime.precision.autocast():
            generator(z, text.sentence, text.words, text.mask, eps=eps)

    return call, batch_size, info


def _reference_callable(spec: dict[str, Any]) -> tuple[Callable[[int], Any], int, dict[str, Any]]:
    """(call(i), batch size, info) for the original networks through the bench-reference harness."""
    folder = spec.get("reference_dir") or str(default_reference_dir())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import bench_reference as br

    model, dataset = spec["reference_model"]
    t0 = time.perf_counter()
    device = spec.get("device") or "cpu"
    kwargs = {"device": device} if device != "cpu" else {}  # the harness's CPU default, as before
    ref = br.build(model, batch=spec["batch"], dataset=dataset, threads=spec.get("threads") or 2, **kwargs)
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


def _timed_case(spec: dict[str, Any]) -> dict[str, Any]:
    make = _reference_callable if spec["impl"] == "reference" else _t2i_callable
    call, batch_size, out = make(spec)
    device = torch.device(spec.get("device") or "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    out.update(time_calls(call, spec["repeat"], spec["warmup"], spec.get("flops", True), sync=sync))
    if cuda:
        out["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
        out["cuda_name"] = torch.cuda.get_device_name(device)
    if spec["task"] == "sample":
        out["images_per_s"] = batch_size / out["seconds"]["median"]
    out["batch"] = batch_size
    return out


def interleaved(specs: list[dict[str, Any]], rounds: int, warmup: int = 1) -> dict[str, Any]:
    """Time several cases of ONE task in this process, one call each per round, in rotating order.

    On a machine shared with other work the load drifts between cases run one after another; calls interleaved
    round by round see the same load, so the per-round ratio to the first case is the robust comparison. (Peak
    RSS is shared here: take memory from :func:`run_isolated`.)
    """
    calls = []
    for spec in specs:
        make = _reference_callable if spec["impl"] == "reference" else _t2i_callable
        calls.append(make(spec)[0])
    for w in range(warmup):
        for call in calls:
            call(-1 - w)
    seconds: list[list[float]] = [[] for _ in calls]
    meter = CpuShare()
    for r in range(rounds):
        order = list(range(len(calls)))
        order = order[r % len(order) :] + order[: r % len(order)]
        for k in order:
            with meter:
                calls[k](r)
            seconds[k].append(meter.records[-1]["wall"])
    base = seconds[0]
    return {
        "impls": [s["impl"] for s in specs],
        "task": specs[0]["task"],
        "seconds": [spread(t) for t in seconds],
        "ratio_to_first": [statistics.median(a / b for a, b in zip(t, base, strict=True)) for t in seconds],
        "others_frac": meter.others(),
    }


def _data_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Batches per second of the recipe's own data set through the training loader (needs the data)."""
    from t2i import recipe as recipe_mod
    from t2i.data.loader import make_loader

    recipe = recipe_mod.load(spec["recipe"], list(spec.get("overrides") or []))
    if spec.get("batch"):
        recipe = recipe_mod.load(spec["recipe"], [f"data.batch_size={spec['batch']}", *(spec.get("overrides") or [])])
    dataset = recipe.data.dataset.build(split="train", image_sizes=recipe.stage_sizes())
    batch_size = recipe.data.batch_size
    loader = make_loader(dataset, batch_size, recipe.seed, workers=recipe.data.workers)
    iterator = iter(loader)
    n_batches = max(1, min(spec.get("data_batches", 20), len(dataset) // batch_size))
    next(iterator)  # worker start-up and the first decode are not throughput
    meter = CpuShare()
    times = []
    for _ in range(spec["repeat"]):
        with meter:
            for _ in range(n_batches):
                next(iterator)
        times.append(meter.records[-1]["wall"])
    seconds = spread(times)
    return {
        "seconds": seconds,
        "images_per_s": n_batches * batch_size / seconds["median"],
        "batches_per_repeat": n_batches,
        "others_frac": meter.others(),
        "batch": batch_size,
    }


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case in THIS process (``run_isolated`` calls it in a fresh one)."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    t0 = time.perf_counter()
    out = _data_case(spec) if spec["task"] == "data" else _timed_case(spec)
    out.update(
        impl=spec["impl"],
        task=spec["task"],
        recipe=spec["recipe"],
        threads=torch.get_num_threads(),
        wall_s=time.perf_counter() - t0,
        peak_rss_bytes=peak_rss_bytes(),
    )
    return out


def run_isolated(spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run one case in a fresh ``python -m t2i.bench`` process; its peak RSS is its own."""
    with tempfile.TemporaryDirectory(prefix="t2i_bench_case_") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec))
        env = dict(os.environ)
        env.setdefault("PYTHONWARNINGS", "ignore")
        proc = subprocess.run(
            [sys.executable, "-m", "t2i.bench", str(spec_file), str(out_file)],
            env=env,
            timeout=timeout,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out_file.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"bench case {spec['impl']}/{spec['task']} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out_file.read_text())


def plan(
    recipe: str,
    tasks: list[str],
    *,
    batch: int | None,
    repeat: int,
    warmup: int,
    overrides: list[str],
    threads: int | None,
    implementations: list[str],
    reference_dir: str | None = None,
    flops: bool = True,
    runtime: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The cases of one bench run, reference first per task (so pairs run close together in time)."""
    reference = REFERENCE_MODELS.get(Path(recipe).stem)
    cases = []
    for task in tasks:
        for impl in implementations:
            if impl == "reference" and (task == "data" or reference is None):
                continue
            if task == "data" and impl == "t2i-fast":
                continue
            spec = {
                "impl": impl,
                "task": task,
                "recipe": recipe,
                "batch": batch,
                "repeat": repeat,
                "warmup": warmup,
                "overrides": overrides,
                "threads": threads,
                "flops": flops,
                **(runtime or {}),
            }
            if impl == "reference":  # the originals run fp32, contiguous, eager: only the device applies
                spec = {**spec, "precision": None, "channels_last": None, "compile": None}
            if impl == "reference":
                spec["reference_model"] = list(reference)
                spec["reference_dir"] = reference_dir
                spec["batch"] = batch or bench_recipe(recipe, None, overrides).data.batch_size
            cases.append(spec)
    return cases


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """t2i / original per task: time, peak RSS, FLOPs (< 1 means t2i is faster / smaller)."""
    rows = []
    by = {(r["impl"], r["task"]): r for r in results}
    for (impl, task), mine in by.items():
        ref = by.get(("reference", task))
        if impl == "reference" or ref is None:
            continue
        row = {
            "impl": impl,
            "task": task,
            "time": mine["seconds"]["median"] / ref["seconds"]["median"],
            "peak_rss": mine["peak_rss_bytes"] / ref["peak_rss_bytes"],
        }
        if mine.get("cuda_peak_allocated_bytes") and ref.get("cuda_peak_allocated_bytes"):
            row["cuda_peak"] = mine["cuda_peak_allocated_bytes"] / ref["cuda_peak_allocated_bytes"]
        if mine.get("flops") and ref.get("flops"):
            row["flops"] = mine["flops"] / ref["flops"]
        rows.append(row)
    return rows


def _main(argv: list[str]) -> None:
    """Child entry: ``python -m t2i.bench SPEC.json OUT.json``."""
    import warnings

    warnings.simplefilter("ignore")
    spec = json.loads(Path(argv[0]).read_text())
    result = run_case(spec)
    Path(argv[1]).write_text(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1:])
