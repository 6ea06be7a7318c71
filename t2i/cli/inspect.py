"""``t2i inspect RUN "caption"``: what the dynamic memory did for one caption, per refinement stage.

Per stage: the words the memory wrote most (DM-GAN's memory writing gate g^w, Zhu et al. CVPR 2019 eq. 3), the words
it read most (the mean key-addressing weight α of each word over pixels, eq. 5), the response gate's mean (eq. 7)
and, for DMM-GAN's global-local memory, the three shares of its gate and the global slot's writing gate. Numbers are
averaged over ``--n`` seeded samples of the caption. A generator whose refiner has no gates (``attention``, ``glam``)
is an error (exit 1) that says so: its attention maps are what ``t2i sample --attention`` draws.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from t2i.cli._common import CodeOption, UserError, check_output, console, err_console, import_code, user_errors
from t2i.cli._runtime import DeviceOption, RuntimeFlags


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)


@user_errors
def inspect(
    checkpoint: Path = typer.Argument(..., help="A t2i GAN checkpoint (.pt) or a run folder (uses its last.pt)."),
    caption: str = typer.Argument(..., help="The caption to generate for."),
    n: int = typer.Option(8, "--n", min=1, help="Samples of the caption; the numbers are their means."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (same seed, same numbers)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the numbers to this JSON file."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Write the first sample's sheet (maps, write gate per word, gate maps) to this PNG."
    ),
    live: bool = typer.Option(False, "--live", help="Use the live generator instead of the EMA one."),
    code: list[Path] = CodeOption,
    device: str = DeviceOption,
) -> None:
    """Which words the dynamic memory wrote and read most, and how much of it each stage let through.

    Example: [bold]t2i inspect runs/demo/dmgan_shapes/<run> "a big red circle above a small blue square"[/]
    """
    from t2i.cli.sample import Caption, _generate, _sheet
    from t2i.evaluate import load_model
    from t2i.refiners.gates import gate_refiners

    import_code(code)
    rt = RuntimeFlags(device).runtime()
    for path, option in ((json_out, "--json"), (out, "--out")):
        if path is not None:
            check_output(path, option)
    model = load_model(checkpoint, ema=not live, runtime=rt)
    refiner = model.recipe.model.refiner.entry.name
    if not gate_refiners(model.generator):
        raise UserError(
            f"{model.path}: its refiner {refiner} has no memory gates (only the dynamic-memory refiners dm and gldm "
            f'have); its attention maps: t2i sample {checkpoint} "{caption}" --attention maps.png'
        )
    vocab = model.vocab
    ids, unknown = vocab.encode(caption)
    if unknown:
        err_console.print(
            f"warning: not in the vocabulary, left out of {caption!r}: {', '.join(unknown)}", markup=False
        )
    if not ids:
        raise UserError(f"caption {caption!r} has no word the model knows")
    chosen = [Caption(caption, 1, vocab.wrap(ids))]
    images, maps, gates = _generate(model.recipe, model.generator, model.text_encoder, vocab, chosen, n, seed, rt, n)
    words = [vocab.words[t] for t in chosen[0].tokens]
    report = summarise(images, maps, gates, words)
    report = {"checkpoint": str(model.path), "step": int(model.state.get("step", 0)), "refiner": refiner,
              "caption": caption, "unknown": unknown, "n": n, "seed": seed, **report}  # fmt: skip
    print_report(report)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {json_out}", markup=False)
    if out is not None:
        from t2i import viz

        viz.save_png(_sheet(caption, images, maps, 0, words, gates), out)
        console.print(f"wrote {out}", markup=False)


def summarise(images, maps, gates: dict, words: list[str]) -> dict[str, Any]:
    """The numbers of the report: per stage, write gate and read weight per real word, and the gate means."""
    from t2i.refiners.gates import gate_means

    first = gates[min(gates)]
    real = ~first["padding"][0] if "padding" in first else None
    keep = [i for i in range(len(words)) if real is None or bool(real[i])]
    stages = []
    for index, stage_maps in enumerate(maps):
        stage = index + 2
        record = gates.get(stage, {})
        read = stage_maps.mean(dim=(0, 2, 3))  # mean addressing weight of each word over samples and pixels
        entry: dict[str, Any] = {"stage": stage, "size": int(images[stage - 1].shape[-1])}
        entry["read"] = [round(float(read[i]), 6) for i in keep]
        if "write" in record:
            write = record["write"].mean(dim=0)
            entry["write"] = [round(float(write[i]), 6) for i in keep]
        entry.update({k: round(v, 6) for k, v in gate_means(record).items()})
        stages.append(entry)
    return {"words": [words[i] for i in keep], "stages": stages}


def _top(words: list[str], values: list[float] | None, k: int = 3) -> str:
    if values is None:
        return "—"
    order = sorted(range(len(words)), key=lambda i: -values[i])[:k]
    return ", ".join(f"{words[i]} {values[i]:.2f}" for i in order)


def print_report(report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    words, stages = report["words"], report["stages"]
    has_shares = any("share_image" in s for s in stages)
    has_response = any("response_mean" in s for s in stages)
    title = f"{report['refiner']}, step {report['step']}: {report['caption']} (mean of {report['n']} samples)"
    caption = "wrote: memory writing gate per word; read: mean addressing weight per word (sums to 1)"
    if has_shares:
        caption += "; shares: image / local memory / global memory (sum to 1); g^c: the global slot's writing gate"
    table = Table(title=escape(title), caption=caption)
    table.add_column("stage", no_wrap=True)
    table.add_column("wrote most")
    table.add_column("read most")
    keys = []
    if has_response:
        table.add_column("response", justify="right")
        keys.append("response_mean")
    if has_shares:
        table.add_column("shares", justify="right")
        table.add_column("g^c", justify="right")
        keys.append("write_global_mean")
    for s in stages:
        row = [f"{s['stage']} ({s['size']} px)", escape(_top(words, s.get("write"))), escape(_top(words, s["read"]))]
        if has_response:
            row.append(f"{s['response_mean']:.3f}" if "response_mean" in s else "—")
        if has_shares:
            shares = [s.get(f"share_{k}") for k in ("image", "local", "global")]
            row.append(" / ".join("—" if v is None else f"{v:.2f}" for v in shares))
            row.append(f"{s['write_global_mean']:.3f}" if "write_global_mean" in s else "—")
        table.add_row(*row)
    console.print(table)

    per_word = Table(title="per word")
    per_word.add_column("word")
    for s in stages:
        per_word.add_column(f"stage {s['stage']} write", justify="right")
        per_word.add_column(f"stage {s['stage']} read", justify="right")
    for i, word in enumerate(words):
        cells = []
        for s in stages:
            cells += [f"{s['write'][i]:.3f}" if "write" in s else "—", f"{s['read'][i]:.3f}"]
        per_word.add_row(escape(word), *cells)
    console.print(per_word)
