"""``t2i compare``: the same captions and noise through several trained models, side by side.

Writes ``grid.png`` (rows = captions, columns = models × seeds, headed by recipe names), ``attention.png`` (each
model's per-stage attention / memory maps for the first caption) and a metrics table over the protocols every model
was measured with (rows of their ``eval.jsonl`` with the same protocol id; docs/metrics.md, "Why numbers from
different protocols must not share a table").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from t2i.evaluate import LoadedModel, read_rows

__all__ = [
    "Comparison",
    "PairedEvaluation",
    "caption_tokens",
    "compare",
    "default_captions",
    "generate_captions",
    "paired_evaluation",
    "shared_metrics",
]


@dataclass
class Comparison:
    grid: Path
    attention: Path | None
    names: list[str]
    unknown_words: dict[str, dict[str, list[str]]]  # model -> caption -> words it does not know
    table: list[dict[str, Any]]  # one row per shared protocol: metric, protocol_id, values per model
    left_out: list[str] = field(default_factory=list)  # protocols not shared by every model


def default_captions(model: LoadedModel, count: int = 4) -> list[str]:
    """First captions of evenly spaced test items of the first model's data set (as its sample grids)."""
    from t2i.train.samples import fixed_captions

    dataset = model.recipe.data.dataset.build(split="test", image_sizes=[model.recipe.stage_sizes()[-1]])
    return [model.vocab.decode(tokens) for tokens in fixed_captions(dataset, count)]


def unique_names(models: Sequence[LoadedModel]) -> list[str]:
    names = [m.name for m in models]
    out = []
    for i, name in enumerate(names):
        out.append(name if names.count(name) == 1 else f"{name} #{names[: i + 1].count(name)}")
    return out


def caption_tokens(vocab: Any, captions: Sequence[str]) -> list[list[int]]:
    """Each caption's token ids with its start and end tokens (unknown words left out; an empty caption is </s>)."""
    return [vocab.wrap(vocab.encode(text)[0] or [vocab.end_id]) for text in captions]


def generate_captions(
    model: LoadedModel, captions: Sequence[str], seed: int, runtime: Any = None
) -> tuple[Tensor, list[Tensor], list[str], dict[int | str, dict[str, Tensor]]]:
    """Images (N, 3, S, S), per-stage maps and memory gates (t2i.refiners.gates records, empty for a refiner
    without gates; on the CPU, fp32) for the captions in their given order, and the first caption's words."""
    from t2i.refiners.gates import record_gates, select
    from t2i.runtime import Runtime
    from t2i.train.samples import caption_batch, generate

    vocab = model.vocab
    tokens = caption_tokens(vocab, captions)
    order = sorted(range(len(tokens)), key=lambda i: -len(tokens[i]))
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(tokens), model.recipe.model.z_dim, generator=gen)
    eps = torch.randn(len(tokens), model.recipe.model.cond_dim, generator=gen)
    rt = runtime or Runtime()
    mask_ids = torch.tensor(sorted(vocab.mask_ids), device=rt.device)
    batch = rt.batch(caption_batch([tokens[i] for i in order], vocab.pad_id))
    with torch.inference_mode(), rt.precision.autocast(), record_gates(model.generator) as gates:
        out, _ = generate(
            model.generator, model.text_encoder, batch, mask_ids, rt.images(z[order]), rt.images(eps[order])
        )
    inverse = torch.tensor(order).argsort()
    first_words = [vocab.words[t] for t in tokens[0]]
    images = out.images[-1].float().cpu()
    return images[inverse], [m.float().cpu()[inverse] for m in out.attention], first_words, select(gates, inverse)


def shared_metrics(models: Sequence[LoadedModel], names: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Latest row per protocol id in each model's eval.jsonl; keep the protocols every model has."""
    latest: list[dict[str, dict[str, Any]]] = []
    for model in models:
        by_protocol: dict[str, dict[str, Any]] = {}
        sha = model.checkpoint_record()["sha256"]
        for row in read_rows(model.eval_file):
            checkpoint = row.get("protocol", {}).get("checkpoint", {}) or {}
            if checkpoint.get("sha256") not in (sha, None):
                continue  # a row about another checkpoint of the same run
            by_protocol[row.get("protocol_id", "?")] = row
        latest.append(by_protocol)
    every = set.intersection(*(set(p) for p in latest)) if latest else set()
    some = set.union(*(set(p) for p in latest)) if latest else set()
    table = []
    for pid in sorted(every, key=lambda p: (latest[0][p]["metric"], p)):
        table.append(
            {
                "metric": latest[0][pid]["metric"],
                "protocol_id": pid,
                "n": latest[0][pid].get("n"),
                "values": {
                    name: (rows[pid]["value"], rows[pid].get("std")) for name, rows in zip(names, latest, strict=True)
                },
            }
        )
    left_out = []
    for pid in sorted(some - every):
        holders = [name for name, rows in zip(names, latest, strict=True) if pid in rows]
        metric = next(rows[pid]["metric"] for rows in latest if pid in rows)
        left_out.append(f"{metric} [{pid}] (only {', '.join(holders)})")
    return table, left_out


def compare(
    models: Sequence[LoadedModel],
    out: str | Path,
    *,
    captions: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    runtime: Any = None,
    names: Sequence[str] | None = None,
) -> Comparison:
    """``names``: one column title per model (default: the recipe names, numbered when they repeat)."""
    from t2i import viz

    if not models:
        raise ValueError("compare needs at least one model")
    out = Path(out)
    names = list(names) if names is not None else unique_names(models)
    captions = list(captions or default_captions(models[0]))
    if not captions:
        raise ValueError("compare needs at least one caption")
    unknown = {}
    for name, model in zip(names, models, strict=True):
        missing = {text: model.vocab.encode(text)[1] for text in captions}
        unknown[name] = {text: words for text, words in missing.items() if words}

    columns: list[tuple[str, Tensor]] = []  # (title, images (R, 3, S, S))
    sheets = []
    for name, model in zip(names, models, strict=True):
        for s, seed in enumerate(seeds):
            images, maps, words, _ = generate_captions(model, captions, seed, runtime)
            columns.append((name if len(seeds) == 1 else f"{name} s{seed}", images))
            if s == 0 and maps:
                rows = [(f"{name} · stage {i + 2}", images[0], stage[0, : len(words)]) for i, stage in enumerate(maps)]
                sheets.append(viz.attention_sheet(rows, words, title=f"{name}: {captions[0]}"))
    size = max(images.shape[-1] for _, images in columns)
    resized = [torch.nn.functional.interpolate(im.float(), size=size, mode="bilinear") for _, im in columns]
    cells = torch.stack(resized, dim=1).flatten(0, 1)  # (R * C, 3, S, S), row-major
    grid = viz.caption_grid(cells, captions, columns=len(columns), column_titles=[t for t, _ in columns])
    grid_path = viz.save_png(grid, out / "grid.png")
    attention_path = viz.save_png(viz.stack_vertical(sheets), out / "attention.png") if sheets else None
    table, left_out = shared_metrics(models, names)
    return Comparison(grid_path, attention_path, names, unknown, table, left_out)


@dataclass
class PairedEvaluation:
    rows: list[dict[str, Any]]  # t2i.stats.pairwise rows
    skipped: dict[str, str]  # metric -> why it could not run
    judge: str | None  # whose encoders judged R-precision (None: no R-precision)


def paired_evaluation(
    models: Sequence[LoadedModel],
    names: Sequence[str],
    *,
    n: int,
    seeds: Sequence[int] = (0,),
    metrics: Sequence[str] | None = None,
    batch_size: int | None = None,
    evaluator: str | Path | None = None,
    weights_dir: str | Path | None = None,
    runtime: Any = None,
    level: float = 0.95,
    bootstrap: int = 1000,
    on_batch: Any = None,
) -> PairedEvaluation:
    """Evaluate every model on the same ``n`` items per seed (captions and noise of that evaluation seed) and
    compare every pair with a paired bootstrap interval over the images (t2i.stats).

    Models may share a name (the training seeds of one variant): their records are then pooled as that name's
    seeds, in the order given, and pair with another name's records in the same order.

    The data set, the metrics and their params come from the first model's recipe; the R-precision judge is
    ``evaluator`` or else the first model's encoders, the same for every model, so the judge is not part of the
    difference.
    """
    from t2i import stats
    from t2i.evaluate import EvalSetupError, evaluate, load_evaluators, metric_specs, training_hashes

    first = models[0].recipe
    dataset = first.data.dataset.build(split=first.eval.split, image_sizes=[first.stage_sizes()[-1]])
    for name, model in zip(names, models, strict=True):
        if model.vocab != dataset.vocab:
            raise EvalSetupError(
                f"{name} was trained with another vocabulary than {names[0]}'s data set; paired metrics need "
                "every model to read the same captions"
            )
    specs = metric_specs(first, metrics, dataset)
    evaluators = load_evaluators(models[0], evaluator)
    device = runtime.device if runtime is not None else "cpu"
    records: dict[str, dict[str, list[dict[str, Any]]]] = {}
    protocols: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for name, model in zip(names, models, strict=True):
        for seed in seeds:
            result = evaluate(
                model.generator,
                model.text_encoder,
                dataset,
                specs,
                z_dim=model.recipe.model.z_dim,
                cond_dim=model.recipe.model.cond_dim,
                n=n,
                batch_size=batch_size or first.eval.batch_size,
                seed=seed,
                device=device,
                precision=getattr(runtime, "precision", None),
                evaluators=evaluators,
                training_network_hashes=training_hashes(model),
                run_info={"checkpoint": model.checkpoint_record(), "split": first.eval.split},
                weights_dir=weights_dir,
                skip_unavailable=not metrics,
                keep_items=True,
                on_batch=on_batch,
            )
            skipped.update(result.skipped)
            for row in result.rows:
                if name == names[0]:
                    protocols.setdefault(row["metric"], []).append(row["protocol_id"])
                if row["metric"] in result.items:
                    records.setdefault(row["metric"], {}).setdefault(name, []).append(result.items[row["metric"]])
    described = {m: ";".join(dict.fromkeys(p)) for m, p in protocols.items()}  # one protocol id per seed
    rows = stats.pairwise(list(dict.fromkeys(names)), records, protocols=described, level=level, bootstrap=bootstrap)
    judge = None
    if any(m.startswith("r_precision") for m in records):
        judge = f"evaluator {evaluator}" if evaluator is not None else f"{names[0]}'s encoders"
    return PairedEvaluation(rows, skipped, judge)
