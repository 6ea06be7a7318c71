"""``t2i ablate``: swap components, train each variant with one budget and seeds, report mean ± std.

The grid has one axis per swapped kind (``refiner``: ``model.refiner``; ``alignment``: ``train.alignment``) and is
their cartesian product. Each axis always holds the base recipe's own value, so the base is the reference variant.
A swapped refiner keeps the base refiner's params that it also accepts (e.g. ``mask = "legacy"``); an alignment
value ``damsm+stream`` adds both terms, each with the base recipe's settings for that term when it has one, else
weight 1 (``damsm:5+stream:20`` sets the weights, ``none`` trains without an alignment term, as the thesis'
GLDM-only run). Frozen networks the variants need are pretrained once per ablation when the recipe's checkpoint
files do not exist, and every variant uses the same ones; the R-precision judge is that shared pair for every
variant.

Layout of the ablation folder (default ``runs/ablate/<base>-<hash>/``; the hash covers the base recipe after
``--set``, the step budget, the metrics and the sample count, so a re-run with more variants reuses the done ones)::

    pretrained/damsm.pt, pretrained/stream.pt       # when they had to be pretrained
    <variant-slug>/seed-<k>/                        # a run folder; done.json when trained and evaluated
    references.json                                 # the test split's real images under the same metrics
    results.csv  results.md  results.png
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2i import recipe as recipe_mod
from t2i.data.holdout import build_split
from t2i.registry import get_registry

__all__ = [
    "AXES",
    "AblationError",
    "AblationSpec",
    "PRESETS",
    "REFERENCE_LABELS",
    "Variant",
    "VariantResult",
    "expand_grid",
    "parse_alignment",
    "paired_summary",
    "preset_grid",
    "reference_cells",
    "reference_rows",
    "run_ablation",
    "saved_references",
    "summarise",
    "variant_recipe",
]

# axis name -> (component kind, recipe path); the only place that knows where an axis lives in a recipe.
AXES: dict[str, tuple[str, str]] = {
    "refiner": ("refiner", "model.refiner"),
    "alignment": ("alignment_loss", "train.alignment"),
}


# The real-image references (``reference_rows``): where an ablation keeps them, and their names in the tables.
REFERENCES_FILE = "references.json"
REFERENCE_LABELS = {"real": "real images (ceiling)", "shuffled": "real images, shuffled captions (floor)"}


def reference_cells(references: list[dict[str, Any]], metrics: list[str]) -> list[tuple[str, list[str]]]:
    """(label, one formatted value per metric) of each real-image reference kind present: the tables' last rows."""
    rows = []
    for kind, label in REFERENCE_LABELS.items():
        values = {r["metric"]: r["value"] for r in references if r["reference"] == kind}
        if values:
            rows.append((label, ["-" if values.get(m) is None else f"{values[m]:.4f}" for m in metrics]))
    return rows


class AblationError(ValueError):
    t2i_user_error = True


# -- the grid ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One point of the grid: ``values[axis]`` as the user spelled it; ``is_base`` for the reference variant;
    ``name`` where a preset names it (e.g. the thesis's "Baseline")."""

    values: tuple[tuple[str, str], ...]
    is_base: bool = False
    name: str = ""

    @property
    def label(self) -> str:
        text = " · ".join(v for _, v in self.values) or "base"
        if self.name:
            text = f"{self.name}: {text}"
        return f"{text} (base)" if self.is_base else text

    @property
    def slug(self) -> str:
        parts = [f"{axis}-{value}" for axis, value in self.values] or ["base"]
        return "__".join(p.replace(":", "x").replace("/", "_") for p in parts)

    def get(self, axis: str) -> str | None:
        return dict(self.values).get(axis)


def parse_alignment(value: str) -> list[tuple[str, float | None]]:
    """``"damsm:5+stream"`` -> [("damsm", 5.0), ("stream", None)]; ``"none"`` -> []."""
    if value.strip() == "none":
        return []
    terms = []
    for part in value.split("+"):
        name, _, weight = part.strip().partition(":")
        if not name:
            raise AblationError(f"--alignment {value!r}: empty term; write e.g. damsm, stream, damsm+stream, none")
        try:
            terms.append((name, float(weight) if weight else None))
        except ValueError:
            raise AblationError(f"--alignment {value!r}: weight {weight!r} is not a number") from None
    return terms


def _canonical(axis: str, value: str) -> tuple[Any, ...]:
    """What makes two spellings the same variant: registered names (and weights) after resolution."""
    kind = AXES[axis][0]
    registry = get_registry(kind)
    if axis == "alignment":
        return tuple(sorted((registry.resolve(n), w) for n, w in parse_alignment(value)))
    return (registry.resolve(value),)


def _base_value(axis: str, raw: dict[str, Any]) -> str:
    if axis == "refiner":
        refiner = raw.get("model", {}).get("refiner", "attention")
        return refiner if isinstance(refiner, str) else refiner["name"]
    terms = raw.get("train", {}).get("alignment", [])
    names = [t if isinstance(t, str) else t["name"] for t in terms]
    return "+".join(names) if names else "none"


def _split_values(values: Sequence[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def expand_grid(raw: dict[str, Any], axes: dict[str, Sequence[str] | None]) -> list[Variant]:
    """The cartesian product of the requested axes, each led by the base recipe's value; the base comes first."""
    lists: list[tuple[str, list[str]]] = []
    for axis, requested in axes.items():
        if axis not in AXES:
            raise AblationError(f"unknown ablation axis {axis!r}; axes: {', '.join(AXES)}")
        values = _split_values(requested)
        if not values:
            continue
        ordered, seen = [], set()
        for value in [_base_value(axis, raw), *values]:
            key = _canonical(axis, value)  # unknown names raise the registry's message here
            if key not in seen:
                seen.add(key)
                ordered.append(value)
        lists.append((axis, ordered))
    if not lists:
        return [Variant((), is_base=True)]
    grid = []
    for combo in itertools.product(*(values for _, values in lists)):
        values = tuple((axis, value) for (axis, _), value in zip(lists, combo, strict=True))
        is_base = all(value == options[0] for (_, options), value in zip(lists, combo, strict=True))
        grid.append(Variant(values, is_base=is_base))
    return grid


@dataclass(frozen=True)
class Preset:
    """A fixed list of variants (not a product of axes), as a paper ran them."""

    base: str
    variants: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (name, ((axis, value), ...))
    description: str


PRESETS: dict[str, Preset] = {
    # The four configurations of the DMM-GAN thesis's ablation (its experiments' Baseline, DMM-STREAM, DMM-GLDM and
    # DMM-Full): DM-GAN; DM-GAN with STREAM instead of DAMSM; GLDM without an alignment loss; GLDM with STREAM.
    "dmmgan-thesis": Preset(
        base="dmmgan_shapes",
        variants=(
            ("Baseline", (("refiner", "dm"), ("alignment", "damsm"))),
            ("DMM-STREAM", (("refiner", "dm"), ("alignment", "stream"))),
            ("DMM-GLDM", (("refiner", "gldm"), ("alignment", "none"))),
            ("DMM-Full", (("refiner", "gldm"), ("alignment", "stream"))),
        ),
        description="the DMM-GAN thesis's four runs: Baseline (dm, DAMSM), DMM-STREAM (dm, STREAM), "
        "DMM-GLDM (gldm, no alignment loss), DMM-Full (gldm, STREAM)",
    ),
}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise AblationError(f"unknown ablation preset {name!r}; presets: {', '.join(sorted(PRESETS))}") from None


def preset_grid(raw: dict[str, Any], chosen: Preset) -> list[Variant]:
    """The preset's variants in its order; the one equal to the base recipe is marked as the base."""
    grid = []
    for name, values in chosen.variants:
        for axis, value in values:
            if axis not in AXES:
                raise AblationError(f"preset variant {name}: unknown axis {axis!r}; axes: {', '.join(AXES)}")
            _canonical(axis, value)  # unknown component names raise the registry's message here
        is_base = all(_canonical(a, v) == _canonical(a, _base_value(a, raw)) for a, v in values)
        grid.append(Variant(values, is_base=is_base, name=name))
    return grid


def _swap_refiner(base: Any, value: str) -> dict[str, Any]:
    registry = get_registry("refiner")
    base_table = {"name": base} if isinstance(base, str) else dict(base)
    entry = registry.get(value)
    if registry.resolve(base_table["name"]) == entry.name:
        return base_table
    shared = {k: v for k, v in base_table.items() if k != "name" and k in entry.params.model_fields}
    return {"name": value, **shared}


def _swap_alignment(base_terms: list[Any], value: str) -> list[dict[str, Any]]:
    registry = get_registry("alignment_loss")
    by_name = {}
    for term in base_terms:
        table = {"name": term} if isinstance(term, str) else dict(term)
        by_name[registry.resolve(table["name"])] = table
    terms = []
    for name, weight in parse_alignment(value):
        table = copy.deepcopy(by_name.get(registry.resolve(name), {"name": name, "weight": 1.0}))
        if weight is not None:
            table["weight"] = weight
        terms.append(table)
    return terms


def variant_recipe(
    raw: dict[str, Any], variant: Variant, *, seed: int, steps: int, extra: Sequence[str] = (), source: str = "ablation"
) -> recipe_mod.Recipe:
    """The resolved recipe of one variant and seed: base (+ --set) with the variant's components swapped in."""
    data = copy.deepcopy(raw)
    model, train = data.setdefault("model", {}), data.setdefault("train", {})
    if variant.get("refiner") is not None:
        model["refiner"] = _swap_refiner(model.get("refiner", "attention"), variant.get("refiner"))
    if variant.get("alignment") is not None:
        train["alignment"] = _swap_alignment(list(train.get("alignment", [])), variant.get("alignment"))
    data["seed"] = seed
    data["name"] = f"{data.get('name', 'recipe')}-{variant.slug}"
    overrides = [
        f"train.steps={steps}",
        f"train.checkpoint_every={steps}",
        "train.keep_checkpoints=0",
        f"train.sample_every={steps}",
        *extra,
    ]
    data = recipe_mod.apply_overrides(data, overrides)
    recipe = recipe_mod.validate(data, f"{source} [{variant.label}, seed {seed}]", overrides, import_plugins=False)
    for term in recipe.train.alignment:
        for role in getattr(term.entry.factory, "requires", ()):
            if getattr(recipe.model, role, None) is None:
                raise AblationError(
                    f"variant {variant.label}: alignment term {term.entry.name} needs model.{role}, which the base "
                    f"recipe does not set; add it with --set model.{role}.name=... or start from a recipe that has "
                    "it (e.g. dmmgan_shapes has both an image encoder and a captioner)"
                )
    return recipe


# -- running it --------------------------------------------------------------------------------------------------------
@dataclass
class AblationSpec:
    base: str = "dmgan_shapes"
    axes: dict[str, list[str]] = field(default_factory=dict)
    sets: list[str] = field(default_factory=list)
    seeds: int = 3
    steps: int = 150
    metrics: list[str] | None = None
    n: int | None = None
    out: Path | None = None
    runs_root: Path = Path("runs")
    preset: str | None = None  # a named list of variants instead of the product of ``axes``
    level: float = 0.95  # confidence level of the paired intervals in the reports
    bootstrap: int = 1000  # bootstrap resamples of the paired intervals


@dataclass
class VariantResult:
    variant: Variant
    seed: int
    rows: list[dict[str, Any]]
    seconds: float
    skipped: bool  # already done before this run


def base_raw(spec: AblationSpec) -> tuple[dict[str, Any], recipe_mod.Recipe]:
    file = recipe_mod.find_recipe(spec.base)
    raw = recipe_mod.load_raw(file)
    raw.setdefault("name", file.stem)
    raw = recipe_mod.apply_overrides(raw, list(spec.sets))
    return raw, recipe_mod.validate(copy.deepcopy(raw), str(file), list(spec.sets), import_plugins=True)


def ablation_folder(spec: AblationSpec, base: recipe_mod.Recipe) -> Path:
    if spec.out is not None:
        return Path(spec.out)
    # The recipe as written (after extends and --set), not its validated dump: a t2i version that adds a setting
    # with a default must not move finished ablations to a new folder.
    key = json.dumps(
        {"recipe": base.raw, "steps": spec.steps, "metrics": spec.metrics, "n": spec.n}, sort_keys=True, default=str
    )
    return spec.runs_root / "ablate" / f"{base.name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _needed_roles(recipes: Sequence[recipe_mod.Recipe]) -> set[str]:
    roles = {"text_encoder"}
    for r in recipes:
        for term in r.train.alignment:
            roles.update(getattr(term.entry.factory, "requires", ()))
    return roles


def _missing(path: str | None) -> bool:
    return path != "random" and (not path or not Path(path).exists())


def pretrain_missing(base: recipe_mod.Recipe, roles: set[str], folder: Path, log: Callable[[str], None]) -> list[str]:
    """Pretrain DAMSM / STREAM once when a needed checkpoint file is missing; -> --set lines pointing at them."""
    from t2i.train.setup import data_for, prepare_run

    pre = base.train.pretrained
    overrides: list[str] = []
    jobs = []
    if _missing(pre.text_encoder) or ("image_encoder" in roles and _missing(pre.image_encoder)):
        jobs.append(("damsm", ("text_encoder", "image_encoder")))
    if "captioner" in roles and _missing(pre.captioner):
        jobs.append(("stream", ("captioner",)))
    for kind, sets in jobs:
        target = folder / "pretrained" / f"{kind}.pt"
        if not target.is_file():
            log(f"pretraining {kind} once for every variant -> {target}")
            pre_recipe = recipe_mod.validate(base.to_dict(), f"{base.source} [pretrain {kind}]", import_plugins=False)
            pre_recipe.name = f"{base.name}-{kind}"
            datasets = data_for(pre_recipe, kind, held_out=False)
            with prepare_run(pre_recipe, kind=kind, run_dir=folder / "pretrained" / f"{kind}-run", reuse=True,
                             datasets=datasets, quiet=True) as prepared:  # fmt: skip
                last = prepared.trainer.fit()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(last).read_bytes())
        overrides += [f'train.pretrained.{role}="{target}"' for role in sets]
    return overrides


def shared_evaluators(recipe: recipe_mod.Recipe, vocab: Any) -> dict[str, Any]:
    """The judges every variant is measured with: the (pre)trained DAMSM text + image encoders (R-precision) and
    the STREAM captioner where the recipe has one (captioner accuracy)."""
    import torch

    from t2i.networks import build_role, build_text_encoder, freeze, load_pretrained

    pre = recipe.train.pretrained
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)  # "random" judges (tests) are the same for every variant
        networks = {"text_encoder": freeze(build_text_encoder(recipe, len(vocab)))}
        load_pretrained(networks["text_encoder"], pre.text_encoder, "text_encoder", vocab, what="text_encoder", hint="")
        for role in ("image_encoder", "captioner"):
            path = getattr(pre, role)
            if getattr(recipe.model, role) is not None and not _missing(path):
                module = freeze(build_role(recipe, role, len(vocab), from_checkpoint=path != "random"))
                load_pretrained(module, path, role, vocab, what=role, hint="")
                networks[role] = module
    return networks


def run_variant(
    recipe: recipe_mod.Recipe,
    folder: Path,
    train_set: Any,
    test_set: Any,
    evaluators: dict[str, Any],
    metric_names: list[str] | None,
    n: int | None,
) -> tuple[list[dict[str, Any]], float]:
    """Train one variant/seed in ``folder`` (resuming an interrupted run), evaluate it, write done.json."""
    from t2i.train.setup import Datasets, prepare_run

    start = time.perf_counter()
    with prepare_run(recipe, run_dir=folder, reuse=True, datasets=Datasets(train_set, test_set), quiet=True) as run:
        run.trainer.fit()
        rows = run.trainer.evaluate(
            test_set,
            metrics=metric_names,
            n=n,
            evaluators=evaluators,
            skip_unavailable=metric_names is None,
            checkpoint={"step": run.trainer.step, "path": str(run.run.checkpoints / "last.pt")},
            keep_items=True,  # per-image records for the paired comparison of the reports
        )
    seconds = time.perf_counter() - start
    (folder / "done.json").write_text(
        json.dumps({"recipe": recipe.name, "seed": recipe.seed, "seconds": seconds, "rows": rows}, default=str) + "\n"
    )
    return rows, seconds


def reference_rows(
    base: recipe_mod.Recipe,
    folder: Path,
    test_set: Any,
    evaluators: dict[str, Any],
    metric_names: list[str] | None,
    n: int | None,
) -> list[dict[str, Any]]:
    """The test split's real images under the variants' metrics, captions and judges: own captions (the ceiling)
    and other images' captions (the floor). Computed once per ablation folder (``references.json``)."""
    from t2i.evaluate import evaluate_references, metric_specs
    from t2i.train.run_dir import write_atomic

    path = folder / REFERENCES_FILE
    if path.is_file():
        return saved_references(folder)
    rows = evaluate_references(
        evaluators["text_encoder"],
        test_set,
        metric_specs(base, metric_names, test_set),
        z_dim=base.model.z_dim,
        cond_dim=base.model.cond_dim,
        n=n or base.eval.n_samples,
        batch_size=base.eval.batch_size,
        evaluators=evaluators,
        workers=base.data.workers,
    )
    write_atomic(path, json.dumps({"rows": rows}, default=str) + "\n")
    return rows


def saved_references(folder: Path) -> list[dict[str, Any]]:
    """The rows ``reference_rows`` kept in the ablation folder; [] when there are none."""
    path = folder / REFERENCES_FILE
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def run_ablation(spec: AblationSpec, log: Callable[[str], None] = print) -> tuple[Path, list[VariantResult]]:
    raw, base = base_raw(spec)
    grid = preset_grid(raw, preset(spec.preset)) if spec.preset else expand_grid(raw, spec.axes)
    folder = ablation_folder(spec, base)
    folder.mkdir(parents=True, exist_ok=True)
    seeds = [base.seed + k for k in range(spec.seeds)]
    recipes = {
        (v, s): variant_recipe(raw, v, seed=s, steps=spec.steps, source=base.source) for v in grid for s in seeds
    }
    log(f"ablation of {base.name}: {len(grid)} variant(s) x {len(seeds)} seed(s), {spec.steps} steps each -> {folder}")
    pending = [key for key in recipes if not (folder / key[0].slug / f"seed-{key[1]}" / "done.json").is_file()]
    pretrained: list[str] = []
    if pending:
        pretrained = pretrain_missing(base, _needed_roles([recipes[k] for k in pending]), folder, log)
    if pretrained:
        recipes = {
            (v, s): variant_recipe(raw, v, seed=s, steps=spec.steps, extra=pretrained, source=base.source)
            for v in grid
            for s in seeds
        }
    sizes = base.stage_sizes()
    train_set = test_set = evaluators = None
    results = []
    for (variant, seed), recipe in recipes.items():
        run_folder = folder / variant.slug / f"seed-{seed}"
        done = run_folder / "done.json"
        if done.is_file():
            record = json.loads(done.read_text())
            results.append(VariantResult(variant, seed, record["rows"], record.get("seconds", 0.0), skipped=True))
            log(f"  {variant.label} seed {seed}: done before, skipped")
            continue
        if train_set is None:
            train_set = build_split(base, "train", sizes)  # less the selection items, as `t2i train` trains
            test_set = base.data.dataset.build(split=base.eval.split, image_sizes=[sizes[-1]])
            evaluators = shared_evaluators(recipe, train_set.vocab)
        rows, seconds = run_variant(recipe, run_folder, train_set, test_set, evaluators, spec.metrics, spec.n)
        results.append(VariantResult(variant, seed, rows, seconds, skipped=False))
        summary = ", ".join(f"{r['metric']}={r['value']:.4f}" for r in rows)
        log(f"  {variant.label} seed {seed}: {summary} ({seconds:.0f} s)")
    references: list[dict[str, Any]] = []
    if test_set is None and not (folder / REFERENCES_FILE).is_file():
        test_set = base.data.dataset.build(split=base.eval.split, image_sizes=[sizes[-1]])
        evaluators = shared_evaluators(next(iter(recipes.values())), test_set.vocab)  # with pretrained/ files
    try:
        references = reference_rows(base, folder, test_set, evaluators or {}, spec.metrics, spec.n)
    except Exception as exc:  # a reference the judges cannot score leaves the variants' table as it is
        if getattr(exc, "t2i_user_error", False) is not True:
            raise
        log(f"  no real-image references: {exc}")
    write_reports(folder, grid, results, base.name, spec, references)
    return folder, results


# -- reports -----------------------------------------------------------------------------------------------------------
def summarise(grid: Sequence[Variant], results: Sequence[VariantResult]) -> tuple[list[str], list[dict[str, Any]]]:
    """-> (metric names in order, one row per variant and metric with mean, std over seeds, values, protocols)."""
    metrics: list[str] = []
    for result in results:
        for row in result.rows:
            if row["metric"] not in metrics:
                metrics.append(row["metric"])
    table = []
    for variant in grid:
        for metric in metrics:
            values, protocols = [], set()
            for result in results:
                if result.variant != variant:
                    continue
                for row in result.rows:
                    if row["metric"] == metric and row["value"] is not None and math.isfinite(row["value"]):
                        values.append(float(row["value"]))
                        protocols.add(row.get("protocol_id", "?"))
            if not values:
                continue
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            table.append(
                {
                    "variant": variant.label,
                    **{axis: value for axis, value in variant.values},
                    "metric": metric,
                    "mean": mean,
                    "std": std,
                    "seeds": len(values),
                    "values": values,
                    "protocols": sorted(protocols),
                }
            )
    return metrics, table


def paired_summary(
    folder: Path,
    grid: Sequence[Variant],
    results: Sequence[VariantResult],
    *,
    level: float = 0.95,
    bootstrap: int = 1000,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every pair of variants, every metric: B - A with a paired bootstrap interval over the evaluated images.

    Every run is evaluated on the same captions and noise (evaluation seed 100), so variant A's seed-s images and
    variant B's seed-s images are paired item by item; seeds are combined as ``t2i.stats`` describes. Reads the
    per-image records each run keeps in ``eval_items/``. -> (rows of ``t2i.stats.pairwise``, notes on what was
    left out and why).
    """
    from t2i import stats
    from t2i.evaluate import load_items

    seeds = sorted({r.seed for r in results})
    labels = [v.label for v in grid]
    records: dict[str, dict[str, list[dict[str, Any]]]] = {}
    protocols: dict[str, set[str]] = {}
    missing: dict[str, list[str]] = {}
    for variant in grid:
        by_seed = {r.seed: r for r in results if r.variant == variant}
        for metric in dict.fromkeys(row["metric"] for r in by_seed.values() for row in r.rows):
            per_seed = []
            for seed in seeds:
                result = by_seed.get(seed)
                row = next((x for x in result.rows if x["metric"] == metric), None) if result else None
                items = None
                if row is not None:
                    protocols.setdefault(metric, set()).add(row.get("protocol_id", "?"))
                    items = load_items(folder / variant.slug / f"seed-{seed}", metric, row.get("protocol_id", "?"))
                if items is None:
                    missing.setdefault(metric, []).append(f"{variant.label} seed {seed}")
                    break
                per_seed.append(items)
            else:
                records.setdefault(metric, {})[variant.label] = per_seed
    notes = []
    for metric in list(records):
        if len(protocols.get(metric, ())) > 1:
            notes.append(f"{metric}: measured under several protocols ({', '.join(sorted(protocols[metric]))}), "
                         "not compared")  # fmt: skip
            del records[metric]
    for metric, where in missing.items():
        notes.append(f"{metric}: no per-image record for {', '.join(where)} (evaluated before t2i kept them), "
                     "left out of the paired comparison")  # fmt: skip
    described = {m: next(iter(protocols[m])) for m in records}
    rows = stats.pairwise(labels, records, protocols=described, level=level, bootstrap=bootstrap)
    return rows, notes


def write_reports(
    folder: Path,
    grid: Sequence[Variant],
    results: Sequence[VariantResult],
    base_name: str,
    spec: AblationSpec,
    references: Sequence[dict[str, Any]] = (),
) -> dict[str, Path]:
    from t2i import stats, viz

    metrics, table = summarise(grid, results)
    axes = [axis for axis in AXES if any(v.get(axis) is not None for v in grid)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", *axes, "metric", "mean", "std", "seeds", "values", "protocol_ids"])
    for row in table:
        writer.writerow(
            [row["variant"], *[row.get(a, "") for a in axes], row["metric"], f"{row['mean']:.6g}", f"{row['std']:.6g}",
             row["seeds"], ";".join(f"{v:.6g}" for v in row["values"]), ";".join(row["protocols"])]
        )  # fmt: skip
    for ref in references:
        if ref["metric"] in metrics:
            writer.writerow(
                [f"reference:{ref['reference']}", *[""] * len(axes), ref["metric"], f"{ref['value']:.6g}", "", 0, "",
                 ref.get("protocol_id", "")]
            )  # fmt: skip
    (folder / "results.csv").write_text(buffer.getvalue())

    cell = {(r["variant"], r["metric"]): r for r in table}
    lines = [
        f"# Ablation of {base_name}",
        "",
        f"{len(grid)} variant(s), {spec.seeds} seed(s) each, {spec.steps} generator steps per run; "
        "mean ± sample std over seeds (one evaluation per trained run).",
        "",
        "| variant | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for variant in grid:
        cells = []
        for metric in metrics:
            r = cell.get((variant.label, metric))
            cells.append("-" if r is None else f"{r['mean']:.4f} ± {r['std']:.4f}")
        lines.append(f"| {variant.label} | " + " | ".join(cells) + " |")
    for label, cells in reference_cells(references, metrics):
        lines.append(f"| *{label}* | " + " | ".join(cells) + " |")
    protocols = sorted({(r["metric"], p) for r in table for p in r["protocols"]})
    lines += ["", "Protocols: " + ", ".join(f"{m} [{p}]" for m, p in protocols)]
    mixed = [m for m in metrics if len({p for r in table if r["metric"] == m for p in r["protocols"]}) > 1]
    if mixed:
        lines.append(
            "Warning: these metrics were measured under more than one protocol across variants and must not be "
            "compared directly: " + ", ".join(mixed)
        )
    paired, notes = paired_summary(folder, grid, results, level=spec.level, bootstrap=spec.bootstrap)
    lines += ["", "## Paired differences", "", stats.markdown(paired).rstrip("\n"), *[f"- {note}" for note in notes]]
    (folder / "results.md").write_text("\n".join(lines) + "\n")
    (folder / "results_paired.csv").write_text(stats.csv_text(paired))

    charts = []
    for metric in metrics:
        rows = [cell[(v.label, metric)] for v in grid if (v.label, metric) in cell]
        if rows:
            charts.append(
                viz.bar_chart(
                    [r["variant"] for r in rows],
                    [r["mean"] for r in rows],
                    [r["std"] for r in rows],
                    title=f"{base_name}: {metric} ({spec.seeds} seeds, {spec.steps} steps)",
                    ylabel=metric,
                )
            )
    paths = {"csv": folder / "results.csv", "md": folder / "results.md", "paired_csv": folder / "results_paired.csv"}
    if charts:
        paths["png"] = viz.save_png(viz.stack_vertical(charts), folder / "results.png")
    return paths
