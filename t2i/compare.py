"""``t2i compare``: the same captions and noise through several trained models, side by side (issue 7 item 6).

Writes ``grid.png`` (rows = captions, columns = models × seeds, headed by recipe names), ``attention.png`` (each
model's per-stage attention / memory maps for the first caption) and a metrics table over the protocols every model
was measured with (rows of their ``eval.jsonl`` with the same protocol id; metrics.md "Why numbers from different
protocols must not share a table").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from t2i.evaluate import LoadedModel, read_rows

__all__ = ["Comparison", "compare", "default_captions", "shared_metrics"]


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


def _generate(
    model: LoadedModel, captions: Sequence[str], seed: int, runtime: Any = None
) -> tuple[Tensor, list[Tensor], list[str]]:
    """Images (N, 3, S, S) and per-stage maps (on the CPU, fp32) for the captions in their given order."""
    from t2i.runtime import Runtime
    from t2i.train.samples import caption_batch, generate

    vocab = model.vocab
    tokens = [vocab.wrap(vocab.encode(text)[0] or [vocab.end_id]) for text in captions]
    order = sorted(range(len(tokens)), key=lambda i: -len(tokens[i]))
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(tokens), model.recipe.model.z_dim, generator=gen)
    eps = torch.randn(len(tokens), model.recipe.model.cond_dim, generator=gen)
    rt = runtime or Runtime()
    mask_ids = torch.tensor(sorted(vocab.mask_ids), device=rt.device)
    batch = rt.batch(caption_batch([tokens[i] for i in order], vocab.pad_id))
    with torch.inference_mode(), rt.precision.autocast():
        out, _ = generate(
            model.generator, model.text_encoder, batch, mask_ids, rt.images(z[order]), rt.images(eps[order])
        )
    inverse = torch.tensor(order).argsort()
    first_words = [vocab.words[t] for t in tokens[0]]
    images = out.images[-1].float().cpu()
    return images[inverse], [m.float().cpu()[inverse] for m in out.attention], first_words


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
) -> Comparison:
    from t2i import viz

    if not models:
        raise ValueError("compare needs at least one model")
    out = Path(out)
    names = unique_names(models)
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
            images, maps, words = _generate(model, captions, seed, runtime)
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
