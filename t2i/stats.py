"""Is a difference between two models real? Paired bootstrap intervals over the evaluated images.

``t2i compare`` and ``t2i ablate`` evaluate every model on the same items: the same captions and the same noise,
drawn from one evaluation seed. Image i of model A and image i of model B differ only by the model, so the
difference of a metric, B - A, is estimated *paired*: each bootstrap resample draws item indices with replacement
once and uses them for both models, then recomputes each model's metric value on its resampled items (the mean of
per-image scores; the Inception Score of the resampled class probabilities; FID of the resampled features against
the fixed real statistics). The interval is the percentile interval of the resampled differences (Efron &
Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13). Pairing removes what both models share (an easy or a
hard caption, lucky noise) from the spread, so a paired interval is narrower than an unpaired one whenever the
models' per-image scores are correlated.

Several seeds (trained seeds in an ablation, evaluation seeds in ``t2i compare``): within each seed the images are
resampled as above; the difference is the equal-weight mean of the per-seed differences, and each bootstrap draw
averages the per-seed resampled differences. The trained networks are held fixed: the interval measures how much the
images chosen move the number, not how much another training run would (the seeds' spread is reported apart).

A difference is *distinguishable* at level L when the L interval excludes zero; its sign and the metric's direction
(FID lower is better) give the words "B better than A". Seeded (numpy ``default_rng``), numpy only.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_LEVEL",
    "METHOD",
    "Difference",
    "StatsError",
    "csv_text",
    "higher_is_better",
    "item_count",
    "markdown",
    "paired_difference",
    "pairwise",
    "statistic",
    "table_cells",
    "verdict",
]

DEFAULT_LEVEL = 0.95
DEFAULT_BOOTSTRAP = 1000
METHOD = "paired percentile bootstrap over images"
NO_DIFFERENCE = "no distinguishable difference"

# Metric base names whose smaller values are better, used when a metric class does not say (``higher_is_better``).
_LOWER_IS_BETTER = {"fid", "fid_dmgan2018"}


class StatsError(ValueError):
    """Per-item records that cannot be compared (not paired, unknown kind); the message says why."""

    t2i_user_error = True


def higher_is_better(metric: str) -> bool:
    """The metric's direction: its class's ``higher_is_better`` when it has one, else FID-like names are lower."""
    try:
        from t2i.registry import get_registry

        flag = getattr(get_registry("metric").get(metric).factory, "higher_is_better", None)
    except LookupError:  # not registered in this process: the name decides
        flag = None
    if isinstance(flag, bool):
        return flag
    return metric.rpartition(".v")[0] not in _LOWER_IS_BETTER and metric not in _LOWER_IS_BETTER


# -- a metric's value from a subset of its images ----------------------------------------------------------------------
class _Frechet:
    """FID of (re-weighted) features against fixed real statistics; the real covariance's root is computed once.

    Same formula as ``t2i.metrics.fid.frechet_distance`` (Heusel et al. 2017, eq. 6): tr((S_r S_g)^(1/2)) as
    tr((S_r^(1/2) S_g S_r^(1/2))^(1/2)). A resample is a count per item, so no copy of the features is made.
    """

    def __init__(self, features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> None:
        self.features = np.asarray(features, dtype=np.float64)
        if self.features.ndim != 2 or len(self.features) < 2:
            raise StatsError(f"FID needs at least 2 images' features, got shape {self.features.shape}")
        self.mu = np.asarray(mu, dtype=np.float64)
        sigma = np.asarray(sigma, dtype=np.float64)
        w, v = np.linalg.eigh((sigma + sigma.T) / 2)
        self.root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        self.trace = float(np.trace(sigma))

    def __call__(self, indices: np.ndarray | None) -> float:
        n = len(self.features)
        counts = np.ones(n) if indices is None else np.bincount(indices, minlength=n).astype(np.float64)
        mu = counts @ self.features / n
        centred = self.features - mu
        sigma = (centred * counts[:, None]).T @ centred / (n - 1)  # = np.cov of the resampled rows
        m = self.root @ sigma @ self.root
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
        diff = mu - self.mu
        return float(diff @ diff + np.trace(sigma) + self.trace - 2 * tr_covmean)


def statistic(items: Mapping[str, Any]) -> Callable[[np.ndarray | None], float]:
    """``value(indices)`` for one model's per-item record (``Metric.per_item``); ``None`` means all items."""
    if "scores" in items:
        scores = np.asarray(items["scores"], dtype=np.float64)
        return lambda idx: float(scores.mean() if idx is None else scores[idx].mean())
    if "probs" in items:
        from t2i.metrics.inception_score import inception_score

        probs, splits = np.asarray(items["probs"], dtype=np.float64), int(np.asarray(items.get("splits", 10)))
        shuffle = int(np.asarray(items.get("shuffle_seed", -1)))
        ordered = probs[np.random.default_rng(shuffle).permutation(len(probs))] if shuffle >= 0 else probs
        # All items: the metric's own split order, so the value is the reported one. A resample is in random order.
        return lambda idx: inception_score(ordered if idx is None else probs[idx], splits)[0]
    if "features" in items:
        return _Frechet(items["features"], items["reference_mu"], items["reference_sigma"])
    raise StatsError(f"unknown per-item record (keys: {', '.join(sorted(items))}); expected scores, probs or features")


def item_count(items: Mapping[str, Any]) -> int:
    for key in ("scores", "probs", "features"):
        if key in items:
            return len(items[key])
    raise StatsError(f"unknown per-item record (keys: {', '.join(sorted(items))})")


# -- the paired difference ---------------------------------------------------------------------------------------------
@dataclass
class Difference:
    """B - A with its bootstrap interval; ``per_seed`` and ``images`` hold one entry per seed."""

    estimate: float
    low: float
    high: float
    level: float
    bootstrap: int
    per_seed: list[float] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    paired: bool = True

    @property
    def distinguishable(self) -> bool:
        return self.low > 0 or self.high < 0


def _keys_match(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if "keys" not in a or "keys" not in b:
        return True
    return [str(k) for k in np.asarray(a["keys"]).tolist()] == [str(k) for k in np.asarray(b["keys"]).tolist()]


def _mean_draws(a: np.ndarray, b: np.ndarray, reps: int, rng: np.random.Generator, paired: bool) -> np.ndarray:
    """Resampled mean(b) - mean(a), vectorised in chunks (bounded memory)."""
    n, out = len(a), np.empty(reps)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, reps, chunk):
        k = min(chunk, reps - start)
        ia = rng.integers(0, n, (k, n))
        ib = ia if paired else rng.integers(0, n, (k, n))
        out[start : start + k] = b[ib].mean(1) - a[ia].mean(1)
    return out


def paired_difference(
    a: Sequence[Mapping[str, Any]],
    b: Sequence[Mapping[str, Any]],
    *,
    level: float = DEFAULT_LEVEL,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    paired: bool = True,
) -> Difference:
    """B - A from per-item records, one per seed (``a[s]`` and ``b[s]`` measured on the same items).

    ``paired=False`` resamples the two models' items independently: the interval one would get by ignoring that
    the images share captions and noise (for comparison only).
    """
    if not 0 < level < 1:
        raise StatsError(f"the confidence level must lie between 0 and 1, got {level}")
    if bootstrap < 1:
        raise StatsError(f"the bootstrap needs at least one resample, got {bootstrap}")
    if not a or len(a) != len(b):
        raise StatsError(f"paired comparison needs the same seeds for both models, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    draws = np.zeros(bootstrap)
    per_seed, images = [], []
    for items_a, items_b in zip(a, b, strict=True):
        n = item_count(items_a)
        if item_count(items_b) != n or not _keys_match(items_a, items_b):
            raise StatsError(
                f"the models were not evaluated on the same items ({n} vs {item_count(items_b)} images, or other "
                "captions): evaluate both with the same data set, seed, batch size and number of images"
            )
        if n < 1:
            raise StatsError("no evaluated images to compare")
        value_a, value_b = statistic(items_a), statistic(items_b)
        per_seed.append(value_b(None) - value_a(None))
        images.append(n)
        if "scores" in items_a and "scores" in items_b:
            scores_a = np.asarray(items_a["scores"], dtype=np.float64)
            scores_b = np.asarray(items_b["scores"], dtype=np.float64)
            draws += _mean_draws(scores_a, scores_b, bootstrap, rng, paired) / len(a)
            continue
        for r in range(bootstrap):
            ia = rng.integers(0, n, n)
            ib = ia if paired else rng.integers(0, n, n)
            draws[r] += (value_b(ib) - value_a(ia)) / len(a)
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Difference(float(np.mean(per_seed)), float(low), float(high), level, bootstrap, per_seed, images, paired)


def verdict(difference: Difference, higher: bool, a: str, b: str) -> str:
    """The difference in words: "B better than A", "A better than B" or "no distinguishable difference"."""
    if not difference.distinguishable:
        return NO_DIFFERENCE
    b_higher = difference.low > 0
    return f"{b} better than {a}" if b_higher == higher else f"{a} better than {b}"


def pairwise(
    models: Sequence[str],
    records: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    *,
    protocols: Mapping[str, str] | None = None,
    level: float = DEFAULT_LEVEL,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Every metric and every pair (A before B in ``models`` order): one row with the difference and its verdict.

    ``records[metric][model]`` holds the model's per-item records, one per seed, in the same seed order for every
    model; a model without a record for a metric is left out of that metric's pairs.
    """
    rows = []
    for metric, by_model in records.items():
        present = [m for m in models if by_model.get(m)]
        higher = higher_is_better(metric)
        for i, a in enumerate(present):
            for b in present[i + 1 :]:
                diff = paired_difference(by_model[a], by_model[b], level=level, bootstrap=bootstrap, seed=seed)
                rows.append(
                    {
                        "metric": metric,
                        "a": a,
                        "b": b,
                        "a_value": float(np.mean([statistic(x)(None) for x in by_model[a]])),
                        "b_value": float(np.mean([statistic(x)(None) for x in by_model[b]])),
                        "difference": diff.estimate,
                        "low": diff.low,
                        "high": diff.high,
                        "verdict": verdict(diff, higher, a, b),
                        "higher_is_better": higher,
                        "level": level,
                        "bootstrap": bootstrap,
                        "bootstrap_seed": seed,
                        "images": diff.images,
                        "seeds": len(diff.images),
                        "per_seed": diff.per_seed,
                        "protocol": (protocols or {}).get(metric, ""),
                        "method": METHOD,
                    }
                )
    return rows


# -- tables ------------------------------------------------------------------------------------------------------------
def _num(value: float) -> str:
    return f"{value:.4g}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3e}"


def table_cells(row: Mapping[str, Any]) -> list[str]:
    images = "/".join(str(n) for n in sorted(set(row["images"])))
    return [
        row["metric"] + (" ↑" if row["higher_is_better"] else " ↓"),
        row["a"],
        row["b"],
        _num(row["a_value"]),
        _num(row["b_value"]),
        f"{row['difference']:+.4g}",
        f"[{_num(row['low'])}, {_num(row['high'])}]",
        row["verdict"],
        f"{images} × {row['seeds']}",
        row["protocol"],
    ]


def describe(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line saying how every interval was made."""
    if not rows:
        return "no metric could be compared item by item"
    row = rows[0]
    return (
        f"B − A with its {row['level']:.0%} {METHOD} ({row['bootstrap']} resamples, numpy seed "
        f"{row['bootstrap_seed']}): the same image indices for both models, per seed, the per-seed differences "
        "averaged. ↑ higher is better, ↓ lower is better; a difference is distinguishable when its interval "
        "excludes 0."
    )


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    header = ["metric", "A", "B", "value A", "value B", "B − A", "interval", "verdict", "images × seeds", "protocol"]
    lines = [describe(rows), "", "| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * 4 + "---|---:|---|"]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in table_cells(row)) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "a", "b", "a_value", "b_value", "difference", "low", "high", "level", "bootstrap",
                     "bootstrap_seed", "method", "verdict", "images", "seeds", "per_seed", "protocol"])  # fmt: skip
    for r in rows:
        writer.writerow(
            [r["metric"], r["a"], r["b"], f"{r['a_value']:.6g}", f"{r['b_value']:.6g}", f"{r['difference']:.6g}",
             f"{r['low']:.6g}", f"{r['high']:.6g}", r["level"], r["bootstrap"], r["bootstrap_seed"], r["method"],
             r["verdict"], ";".join(map(str, r["images"])), r["seeds"], ";".join(f"{d:.6g}" for d in r["per_seed"]),
             r["protocol"]]
        )  # fmt: skip
    return buffer.getvalue()
