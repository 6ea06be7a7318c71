"""What the dynamic memory's gates did: recorded per call, only while asked.

DM-GAN (Zhu et al., CVPR 2019) gates its memory twice: the memory writing gate g^w_t (eq. 3) decides how much of
word t, against the mean image feature, is written into memory slot t; the response gate g^r_j (eq. 7) decides how
much of what was read at pixel j replaces the image feature there. DMM-GAN's global-local memory adds the global
slot's writing gate g^c (from the sentence code) and replaces the response gate by three shares per pixel (image
feature, local memory, global memory; a softmax, so they sum to 1).

A refiner with gates derives from ``GateRecorder`` and, while its ``last_gates`` is a dict, puts the gates of each
call into it (detached). ``record_gates(generator)`` switches that on for every such refiner and yields the records
by stage number; off (the default) the refiners pay one attribute test per call.

Record keys (B samples, T words, H×W the stage's input):

    write         (B, T)     memory writing gate per word (padded positions included; see ``padding``)
    padding       (B, T)     True where the word is padding or a special token (absent when no mask was given)
    response      (B, H, W)  dm: the response gate (one channel, so its channel mean is itself)
    write_global  (B,)       gldm: the global slot's writing gate
    shares        (B, 3, H, W)  gldm: image / local memory / global memory shares of the three-way gate
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

SHARE_NAMES = ("image", "local", "global")
_STAGE = re.compile(r"(?:^|\.)stages\.(\d+)\.refiner$")

Record = dict[str, Tensor]


class GateRecorder:
    """Mixin for refiners that can record their gates; ``last_gates`` is None (off) or the dict being filled."""

    last_gates: Record | None = None

    def _record(self, **values: Tensor | None) -> None:
        if self.last_gates is not None:
            self.last_gates.update({k: v.detach() for k, v in values.items() if v is not None})


def gate_refiners(module: nn.Module) -> dict[int | str, nn.Module]:
    """The refiners of ``module`` that record gates, by stage number (the first refinement stage is 2) or name."""
    found: dict[int | str, nn.Module] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, GateRecorder):
            match = _STAGE.search(name)
            found[int(match.group(1)) + 2 if match else name] = sub
    return found


@contextmanager
def record_gates(module: nn.Module) -> Iterator[dict[int | str, Record]]:
    """``with record_gates(generator) as gates:`` run it; then ``gates[2]["write"]`` etc. hold the last call's gates.

    ``gates`` is empty when no refiner has gates (e.g. ``attention.v1``). Recording stops on leaving the block.
    """
    refiners = gate_refiners(module)
    records: dict[int | str, Record] = {stage: {} for stage in refiners}
    for stage, refiner in refiners.items():
        refiner.last_gates = records[stage]
    try:
        yield records
    finally:
        for refiner in refiners.values():
            refiner.last_gates = None


def _word_mean(values: Tensor, padding: Tensor | None) -> Tensor:
    """Mean over the real words (the padding and special tokens left out) of (B, T) values."""
    values = values.double()
    if padding is None:
        return values.mean()
    keep = (~padding).double()
    return (values * keep).sum() / keep.sum().clamp_min(1.0)


def gate_means(record: Record) -> dict[str, float]:
    """One number per gate: its mean over samples and real words (write) or samples and pixels (the others).

    Summed in float64 so that the means do not depend on the batch's float type.
    """
    means: dict[str, float] = {}
    if "write" in record:
        means["write_mean"] = float(_word_mean(record["write"], record.get("padding")))
    if "response" in record:
        means["response_mean"] = float(record["response"].double().mean())
    if "write_global" in record:
        means["write_global_mean"] = float(record["write_global"].double().mean())
    if "shares" in record:
        shares = record["shares"].double().mean(dim=(0, 2, 3))
        means.update({f"share_{name}": float(v) for name, v in zip(SHARE_NAMES, shares, strict=True)})
    return means


def log_values(records: dict[int | str, Record]) -> dict[str, float]:
    """``gates/stage<N>/<mean>`` for every recorded stage: the keys training writes into metrics.jsonl."""
    return {f"gates/stage{stage}/{k}": v for stage, record in records.items() for k, v in gate_means(record).items()}


def select(records: dict[int | str, Record], rows: Tensor | list[int]) -> dict[int | str, Record]:
    """The records of some samples only (rows of the batch), on the CPU in float32 (bool stays bool)."""
    index = torch.as_tensor(rows, dtype=torch.long)

    def pick(t: Tensor) -> Tensor:
        t = t.detach().cpu()[index]
        return t if t.dtype == torch.bool else t.float()

    return {stage: {k: pick(v) for k, v in record.items()} for stage, record in records.items()}


def concat(chunks: list[dict[int | str, Record]]) -> dict[int | str, Record]:
    """Records of consecutive batches joined along the sample dimension; the word dimension of ``write`` and
    ``padding`` is padded to the longest batch (write 0, padding True), as batches may differ in caption length."""
    if not chunks:
        return {}
    words = {"write": 0.0, "padding": True}

    def join(key: str, parts: list[Tensor]) -> Tensor:
        if key in words:
            longest = max(p.shape[1] for p in parts)
            parts = [torch.nn.functional.pad(p, (0, longest - p.shape[1]), value=words[key]) for p in parts]
        return torch.cat(parts)

    return {
        stage: {k: join(k, [chunk[stage][k] for chunk in chunks]) for k in record}
        for stage, record in chunks[0].items()
    }


def sheet_row(record: Record | None, row: int, n_words: int) -> Any:
    """The ``viz.GateRow`` of sample ``row``: write gate per word and the gate maps, for an attention sheet."""
    from t2i import viz

    if not record:
        return None
    write = record["write"][row, :n_words] if "write" in record else None
    maps = []
    if "response" in record:
        maps.append(("response", record["response"][row]))
    if "shares" in record:
        labels = ("image part", "local memory", "global memory")
        maps += [(label, record["shares"][row, k]) for k, label in enumerate(labels)]
    return viz.GateRow(write=write, maps=maps)
