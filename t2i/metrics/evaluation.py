"""Generate images and run metrics on them: the evaluation loop shared by training and ``t2i eval``.

Images come from the EMA generator in eval mode, as the originals' ``sampling``: passes over the shuffled test split
(each item with a freshly drawn random caption, seeded), stopping at ``n`` images; fixed noise stream from ``seed``.
Batches stream into every metric's ``update``, so memory stays constant for 30,000 images. Each metric's result
becomes one row of the run's ``eval.jsonl``: value, std, n, details and the full protocol record, which carries the
checkpoint's SHA-256 through ``EvalContext.run_info``.

Everything comes in as an argument (generator, text encoder, data set, metric specs, judges), so the training loop
calls this module as StyleGAN's loop calls its metrics, and nothing here knows about trainers or run folders.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from t2i.batch import Batch, text_features
from t2i.data.loader import SeededItems, make_loader
from t2i.metrics.base import EvalContext, MetricError, module_fingerprint
from t2i.registry import get_registry
from t2i.stats import item_count

__all__ = [
    "REFERENCES",
    "RUN_SPECIFIC_KEYS",
    "EvalSetupError",
    "Evaluation",
    "MetricSpec",
    "append_rows",
    "default_metrics",
    "evaluate",
    "evaluate_at_step",
    "evaluate_reference",
    "evaluate_references",
    "higher_is_better",
    "items_path",
    "load_items",
    "metric_specs",
    "protocol_id",
    "read_rows",
    "save_items",
    "write_image",
]

# Protocol fields that describe the evaluated model or the moment, not the measurement: ignored when deciding
# whether two rows were measured the same way (t2i compare).
RUN_SPECIFIC_KEYS = ("checkpoint", "judge_is_trainer")


class EvalSetupError(RuntimeError):
    t2i_user_error = True


MetricSpec = tuple[str, Any]  # (registered metric name, validated Params)


# -- which metrics -----------------------------------------------------------------------------------------------------
def default_metrics(recipe: Any, dataset: Any) -> list[str]:
    """The recipe's ``[eval] metrics``; else, for a data set with a shapes ground truth, consistency + R-precision."""
    if recipe.eval.metrics:
        return [m.entry.name for m in recipe.eval.metrics]
    root = getattr(dataset, "root", None)
    if root is not None and (Path(root) / "attributes.json").is_file():
        return ["caption_consistency.v1", "r_precision.v1"]
    return ["fid.v1", "is.v1", "r_precision.v1"]


def metric_specs(recipe: Any, names: Sequence[str] | None, dataset: Any) -> list[MetricSpec]:
    """Resolve metric names (bare or versioned); params come from the recipe's ``[eval] metrics`` entry of that name."""
    registry = get_registry("metric")
    configured = {m.entry.name: m.params for m in recipe.eval.metrics}
    specs: list[MetricSpec] = []
    for name in names or default_metrics(recipe, dataset):
        entry = registry.get(name)  # unknown name: the registry's message lists what exists
        params = configured.get(entry.name) or entry.validate({})
        if entry.name not in [s[0] for s in specs]:
            specs.append((entry.name, params))
    return specs


def higher_is_better(name: str) -> bool:
    """Whether a larger value of the registered metric ``name`` is better (its class's ``higher_is_better``)."""
    return bool(getattr(get_registry("metric").get(name).factory, "higher_is_better", True))


# -- the evaluation loop -----------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    rows: list[dict[str, Any]]
    images: int
    seconds: float
    skipped: dict[str, str]  # metric -> why it could not run (default metrics only)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> per_item() + "keys" (keep_items)

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def write_image(image: Tensor, folder: Path, key: str, pass_index: int) -> Path:
    """The originals' layout and quantisation: ``<key>_s-1_<pass>.png``, ``uint8((x+1)*127.5)`` truncated."""
    from PIL import Image

    path = Path(folder) / f"{key}_s-1_{pass_index}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = ((image.detach().float().cpu() + 1) * 127.5).clamp(0, 255).to(torch.uint8)  # truncation, as DM-GAN
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path)
    return path


def _real_images(dataset: Any, batch_size: int, seed: int, workers: int) -> Callable[[], Iterable[Any]]:
    """One deterministic pass over the split's real images (FID statistics)."""

    def batches() -> Iterable[Any]:
        from torch.utils.data import DataLoader

        loader = DataLoader(
            SeededItems(dataset, seed), batch_size=batch_size, collate_fn=dataset.collate, num_workers=workers
        )
        for batch in loader:
            yield batch.images[-1]

    return batches


# What an evaluation measures besides a generator: the split's real images under the same judges and protocol.
# "real": each item's own image (the ceiling a generator can reach); "shuffled": each caption with another item's
# image, the next one in the batch (the floor of an image that ignores its caption).
REFERENCES = {
    "real": "real images with their own captions (ceiling)",
    "shuffled": "real images with other images' captions (floor)",
}


def evaluate(
    generator: nn.Module,
    text_encoder: nn.Module,
    dataset: Any,
    metrics: Sequence[MetricSpec],
    *,
    z_dim: int,
    cond_dim: int,
    n: int,
    batch_size: int = 50,
    seed: int = 100,
    device: torch.device | str = "cpu",
    precision: Any = None,
    evaluators: Mapping[str, nn.Module] | None = None,
    training_network_hashes: Mapping[str, str] | None = None,
    run_info: Mapping[str, Any] | None = None,
    weights_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    write_images: str | Path | None = None,
    workers: int = 0,
    skip_unavailable: bool = False,
    on_batch: Callable[[int], None] | None = None,
    keep_items: bool = False,
) -> Evaluation:
    """Generate ``n`` images for the split's captions and compute ``metrics``; -> rows for eval.jsonl.

    ``dataset`` is the evaluation split (its last image size is the generator's output size). With
    ``skip_unavailable`` a metric that cannot be built (e.g. no image encoder for R-precision) is reported in
    ``Evaluation.skipped`` instead of raising. ``precision`` (t2i.runtime.Precision) autocasts generation; the
    metrics always see fp32 images. Only one batch of images is on the device at a time. With ``keep_items``
    ``Evaluation.items`` holds each metric's per-image record (``Metric.per_item``) and the items' data set keys,
    for paired comparisons (t2i.stats). Metrics that regenerate (``EvalContext.generate``) get this generator.
    """
    device = torch.device(device)

    def images(batch: Batch, text: Any, z: Tensor, eps: Tensor) -> Tensor:
        return generator(z, text.sentence, text.words, text.mask, eps=eps).images[-1]  # (B, 3, S, S)

    was_training = generator.training
    generator.eval()
    try:
        return _run(
            images,
            text_encoder,
            dataset,
            metrics,
            generate=_generate_fn(generator, text_encoder, dataset.vocab, device, precision),
            z_dim=z_dim,
            cond_dim=cond_dim,
            n=n,
            batch_size=batch_size,
            seed=seed,
            device=device,
            precision=precision,
            evaluators=evaluators,
            training_network_hashes=training_network_hashes,
            run_info=run_info,
            weights_dir=weights_dir,
            cache_dir=cache_dir,
            write_images=write_images,
            workers=workers,
            skip_unavailable=skip_unavailable,
            on_batch=on_batch,
            keep_items=keep_items,
        )
    finally:
        generator.train(was_training)


def evaluate_reference(
    kind: str,
    text_encoder: nn.Module,
    dataset: Any,
    metrics: Sequence[MetricSpec],
    *,
    z_dim: int,
    cond_dim: int,
    n: int,
    batch_size: int = 50,
    seed: int = 100,
    device: torch.device | str = "cpu",
    evaluators: Mapping[str, nn.Module] | None = None,
    training_network_hashes: Mapping[str, str] | None = None,
    run_info: Mapping[str, Any] | None = None,
    weights_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    skip_unavailable: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> Evaluation:
    """The same evaluation with the split's real images in place of generated ones (``kind`` in ``REFERENCES``).

    Same captions, item order, batches and judges as :func:`evaluate` with the same ``seed``, ``n`` and
    ``batch_size``, so a model's score reads against what real images score (``"real"``) and what an image that
    ignores its caption scores (``"shuffled"``). Metrics that regenerate from edited captions (controllability)
    cannot run on real images and are skipped. Every protocol records ``reference: kind``.
    """
    if kind not in REFERENCES:
        raise ValueError(f"reference {kind!r}: use one of {', '.join(REFERENCES)}")
    if kind == "shuffled" and min(batch_size, len(dataset)) < 2:
        raise EvalSetupError("shuffled captions pair each image with another item of its batch: batch_size >= 2")
    device = torch.device(device)

    def images(batch: Batch, text: Any, z: Tensor, eps: Tensor) -> Tensor:
        real = batch.images[-1]
        return real.roll(1, dims=0) if kind == "shuffled" else real

    return _run(
        images,
        text_encoder,
        dataset,
        metrics,
        generate=None,  # nothing to regenerate from edited captions
        z_dim=z_dim,
        cond_dim=cond_dim,
        n=n,
        batch_size=batch_size,
        seed=seed,
        device=device,
        precision=None,
        evaluators=evaluators,
        training_network_hashes=training_network_hashes,
        run_info={**(run_info or {}), "reference": kind},
        weights_dir=weights_dir,
        cache_dir=cache_dir,
        write_images=None,
        workers=workers,
        skip_unavailable=skip_unavailable,
        on_batch=on_batch,
        keep_items=False,
    )


def evaluate_references(
    text_encoder: nn.Module,
    dataset: Any,
    metrics: Sequence[MetricSpec],
    *,
    on_batch: Callable[[str, int], None] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """:func:`evaluate_reference` for every kind in ``REFERENCES``; each row tagged with its ``reference``.

    ``on_batch(kind, images_done)`` after each batch of each kind (for a progress bar).
    """
    rows = []
    for kind in REFERENCES:
        report = None if on_batch is None else functools.partial(on_batch, kind)
        result = evaluate_reference(kind, text_encoder, dataset, metrics, on_batch=report, **options)
        rows += [{**row, "reference": kind} for row in result.rows]
    return rows


def _run(
    images: Callable[[Batch, Any, Tensor, Tensor], Tensor],
    text_encoder: nn.Module,
    dataset: Any,
    metrics: Sequence[MetricSpec],
    *,
    generate: Any,
    z_dim: int,
    cond_dim: int,
    n: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    precision: Any,
    evaluators: Mapping[str, nn.Module] | None,
    training_network_hashes: Mapping[str, str] | None,
    run_info: Mapping[str, Any] | None,
    weights_dir: str | Path | None,
    cache_dir: str | Path | None,
    write_images: str | Path | None,
    workers: int,
    skip_unavailable: bool,
    on_batch: Callable[[int], None] | None,
    keep_items: bool,
) -> Evaluation:
    """The evaluation loop: ``images(batch, text, z, eps)`` gives each batch's images; the metrics see them."""
    batch_size = min(batch_size, len(dataset))  # a small split still evaluates (recorded in every protocol)
    context_kwargs: dict[str, Any] = {}
    if weights_dir is not None:
        context_kwargs["weights_dir"] = Path(weights_dir)
    if cache_dir is not None:
        context_kwargs["cache_dir"] = Path(cache_dir)
    context = EvalContext(
        device=device,
        batch_size=batch_size,
        seed=seed,
        dataset=dataset,
        networks={k: v.to(device).eval() for k, v in (evaluators or {}).items()},
        real_images=_real_images(dataset, batch_size, seed, workers),
        run_info=dict(run_info or {}),
        training_network_hashes=dict(training_network_hashes or {}),
        keep_items=keep_items,
        generate=generate,
        **context_kwargs,
    )
    registry = get_registry("metric")
    built, skipped = [], {}
    for name, params in metrics:
        try:
            built.append((name, registry.get(name).build(params, context=context)))
        except MetricError as exc:
            if not skip_unavailable:
                raise
            skipped[name] = str(exc)
    if not built:
        raise EvalSetupError("no metric can run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))

    vocab = dataset.vocab
    mask_ids = torch.tensor(sorted(vocab.mask_ids), dtype=torch.long, device=device)
    index_of = {key: i for i, key in enumerate(dataset.keys)}
    per_pass = len(dataset) // batch_size  # drop_last per pass, as the originals' loader
    noise = torch.Generator().manual_seed(seed)
    loader = make_loader(
        dataset, batch_size, seed, workers=workers, pin_memory=device.type == "cuda", setting="eval.batch_size"
    )
    autocast = precision.autocast if precision is not None else nullcontext
    done, start = 0, time.perf_counter()
    keys: list[str] = []
    with torch.inference_mode():
        for number, batch in enumerate(loader):
            if done >= n:
                break
            take = min(batch_size, n - done)
            batch = _head(batch, take).to(device)
            z = torch.randn(take, z_dim, generator=noise).to(device)
            eps = torch.randn(take, cond_dim, generator=noise).to(device)
            with autocast():
                text = text_features(text_encoder, batch, mask_ids)
                fake = images(batch, text, z, eps)
            fake = fake.float()
            info = {
                "captions": batch.captions,
                "lengths": batch.lengths,
                "class_ids": batch.class_ids,
                "keys": list(batch.keys),
                "sentence_embeddings": text.sentence.float(),
                "indices": torch.tensor([index_of[k] for k in batch.keys], dtype=torch.long),
                "z": z,
                "eps": eps,
            }
            for _name, metric in built:
                metric.update(fake, info)
            keys += info["keys"]
            if write_images is not None:
                for image, key in zip(fake, batch.keys, strict=True):
                    write_image(image, Path(write_images), key, number // per_pass)
            done += take
            if on_batch is not None:
                on_batch(done)
    seconds = time.perf_counter() - start
    rows, items = [], {}
    stamp = dt.datetime.now().isoformat(timespec="seconds")
    for name, metric in built:
        result = metric.compute()
        record = metric.per_item() if keep_items else None
        if record is not None:
            items[name] = {**record, "keys": np.asarray(keys[: item_count(record)])}
        rows.append(
            {
                "time": stamp,
                "metric": name,
                "value": result.value,
                "std": result.std,
                "n": result.n,
                "details": result.details,
                "protocol": result.protocol,
                "protocol_id": protocol_id(result.protocol),
                "images_per_s": done / max(seconds, 1e-9),
            }
        )
    return Evaluation(rows=rows, images=done, seconds=seconds, skipped=skipped, items=items)


def _generate_fn(
    generator: nn.Module, text_encoder: nn.Module, vocab: Any, device: torch.device, precision: Any
) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """``EvalContext.generate``: captions (any order) + their noise -> the generator's last-stage images, fp32."""
    mask_ids = torch.tensor(sorted(vocab.mask_ids), dtype=torch.long, device=device)
    autocast = precision.autocast if precision is not None else nullcontext

    def generate(captions: Tensor, lengths: Tensor, z: Tensor, eps: Tensor) -> Tensor:
        order = torch.argsort(-lengths.cpu(), stable=True)  # the text encoder packs by length, longest first
        batch = Batch(images=[], captions=captions.cpu()[order], lengths=lengths.cpu()[order],
                      class_ids=torch.zeros(len(order), dtype=torch.long)).to(device)  # fmt: skip
        z, eps, order = z.to(device), eps.to(device), order.to(device)
        with torch.inference_mode(), autocast():
            text = text_features(text_encoder, batch, mask_ids)
            out = generator(z[order], text.sentence, text.words, text.mask, eps=eps[order])
        return out.images[-1].float()[order.argsort()]

    return generate


def _head(batch: Any, count: int) -> Any:
    """The first ``count`` items of a sorted batch (still sorted)."""
    if count >= len(batch):
        return batch
    return Batch(
        images=[im[:count] for im in batch.images],
        captions=batch.captions[:count],
        lengths=batch.lengths[:count],
        class_ids=batch.class_ids[:count],
        keys=list(batch.keys[:count]),
    )


# -- eval.jsonl --------------------------------------------------------------------------------------------------------
def protocol_id(protocol: Mapping[str, Any]) -> str:
    """Short hash of a protocol record without its run-specific fields: equal ids = measured the same way."""
    core = {k: v for k, v in protocol.items() if k not in RUN_SPECIFIC_KEYS}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def append_rows(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        for row in rows:
            handle.write(json.dumps(_jsonable(dict(row)), sort_keys=True, default=str) + "\n")
    return path


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: skip it, keep the rest
    return rows


# -- per-image records (paired comparisons) ----------------------------------------------------------------------------
def items_path(folder: str | Path, metric: str, protocol: str) -> Path:
    """Where a run folder keeps the per-image record of its latest evaluation under one protocol."""
    return Path(folder) / "eval_items" / f"{metric}-{protocol}.npz"


def save_items(folder: str | Path, rows: Sequence[Mapping[str, Any]], items: Mapping[str, Mapping[str, Any]]) -> None:
    """One ``.npz`` per metric (per_item arrays + item keys), replacing the previous one of the same protocol."""
    for row in rows:
        record = items.get(row["metric"])
        if record is None:
            continue
        path = items_path(folder, row["metric"], row["protocol_id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npz")
        np.savez(partial, **{k: np.asarray(v) for k, v in record.items()})
        partial.replace(path)


def load_items(folder: str | Path, metric: str, protocol: str) -> dict[str, np.ndarray] | None:
    path = items_path(folder, metric, protocol)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# -- during training ---------------------------------------------------------------------------------------------------
def evaluate_at_step(
    generator: nn.Module,
    text_encoder: nn.Module,
    dataset: Any,
    metrics: Sequence[MetricSpec],
    *,
    step: int,
    trained_against: Mapping[str, nn.Module],
    z_dim: int,
    cond_dim: int,
    n: int,
    batch_size: int,
    device: torch.device | str,
    precision: Any = None,
    evaluators: Mapping[str, nn.Module] | None = None,
    skip_unavailable: bool = True,
    checkpoint: dict[str, Any] | None = None,
    items_folder: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Evaluate a generator in the middle of training (every ``[eval] every_steps``); -> rows, each with ``step``.

    ``trained_against`` are the networks the generator trained against (text encoder and frozen networks); they are
    the judges unless ``evaluators`` are given, and either way a judge among them is flagged ``judge_is_trainer``.
    With ``skip_unavailable``, metrics that need a network the judges do not include are skipped. ``checkpoint`` is
    the record's checkpoint entry (default: in training, no file). With ``items_folder`` each metric's per-image
    record goes to its ``eval_items/`` (paired comparisons, ``t2i ablate``).
    """
    hashes = {role: module_fingerprint(net) for role, net in trained_against.items()}
    if checkpoint is None:
        checkpoint = {"step": step, "path": None, "sha256": None, "in_training": True}
    result = evaluate(
        generator,
        text_encoder,
        dataset,
        metrics,
        z_dim=z_dim,
        cond_dim=cond_dim,
        n=n,
        batch_size=batch_size,
        seed=100,  # the same evaluation seed as `t2i eval`, so rows of a run share protocol ids
        device=device,
        precision=precision,
        evaluators=trained_against if evaluators is None else evaluators,
        training_network_hashes=hashes,
        # which split chose this row's numbers: "val" (carved from training) or the test split
        run_info={"checkpoint": checkpoint, "split": getattr(dataset, "split", None)},
        skip_unavailable=skip_unavailable,
        keep_items=items_folder is not None,
    )
    rows = [{**row, "step": step} for row in result.rows]
    if items_folder is not None:
        save_items(items_folder, rows, result.items)
    return rows
