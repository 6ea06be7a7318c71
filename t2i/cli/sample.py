"""``t2i sample CHECKPOINT "caption" ...``: images from your own captions, with the checkpoint's vocabulary.

Two outputs: ``-o NAME.png``, one grid (each caption under its row of ``--n`` samples); ``-o FOLDER`` (any path
not ending in .png; ``--captions FILE`` needs one), one PNG per caption and sample as AttnGAN's ``gen_example``
writes them (``--all-stages`` adds each stage's image, ``--attention`` the attention/memory maps).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import typer

from t2i.cli._common import (
    CodeOption,
    UserError,
    check_output,
    console,
    err_console,
    import_code,
    read_captions_file,
    user_errors,
)
from t2i.cli._runtime import ChannelsLastOption, CompileOption, DeviceOption, PrecisionOption, RuntimeFlags


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)


def load_generator(checkpoint: Path, *, ema: bool = True, runtime=None):
    """(recipe, generator, text_encoder, vocab) from a t2i GAN checkpoint or run folder."""
    from t2i.evaluate import load_model

    model = load_model(checkpoint, ema=ema, runtime=runtime)
    return model.recipe, model.generator, model.text_encoder, model.vocab


@dataclass
class Caption:
    text: str
    line: int  # 1-based line in the captions file, or position on the command line
    tokens: list[int]


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a caption: lower-case words joined by '_'."""
    out = ""
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        joined = f"{out}_{word}" if out else word[:limit]
        if len(joined) > limit:
            break
        out = joined
    return out or "caption"


@user_errors
def sample(
    checkpoint: Path = typer.Argument(..., help="A t2i GAN checkpoint (.pt) or a run folder (uses its last.pt)."),
    captions: list[str] = typer.Argument(None, help="One or more captions (or give --captions FILE)."),
    captions_file: Path = typer.Option(
        None, "--captions", help="A text file with one caption per line: writes one PNG per caption into -o DIR."
    ),
    n: int = typer.Option(None, "--n", min=1, help="Samples per caption (default: 8 in a grid, 1 per file)."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (same seed, same images)."),
    out: Path = typer.Option(
        Path("samples.png"),
        "--out",
        "-o",
        help="A .png path: one grid. Anything else: a folder with one PNG per caption and sample.",
    ),
    all_stages: bool = typer.Option(False, "--all-stages", help="Per-caption files: every stage's image too."),
    attention: Path = typer.Option(
        None,
        "--attention",
        help="Grid mode: write the attention/memory maps of every caption to this PNG. "
        "Folder mode: any value writes one map sheet per caption and sample beside its images.",
    ),
    live: bool = typer.Option(False, "--live", help="Use the live generator instead of the EMA one."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images generated per forward (device memory)."),
    code: list[Path] = CodeOption,
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    channels_last: bool = ChannelsLastOption,
    compile: bool = CompileOption,
) -> None:
    """Generate images for your own captions; unknown words are reported, not silently dropped.

    Examples: [bold]t2i sample runs/demo/dmgan_shapes/<run> "a big red circle above a small blue square" -o grid.png[/]
    and [bold]t2i sample RUN --captions my_captions.txt -o generated/ --all-stages[/]
    """
    import_code(code)
    rt = RuntimeFlags(device, precision, channels_last, compile).runtime()
    folder_mode = out.suffix.lower() != ".png" or out.is_dir()
    if captions_file is not None and not folder_mode:
        raise UserError(f"--captions writes one PNG per caption into a folder; -o {out} names a .png file")
    lines = [(i, text) for i, text in enumerate(captions or [], start=1)]
    if captions_file is not None:
        lines += read_captions_file(captions_file)
    if not lines:
        raise UserError("give one or more captions, or --captions FILE")
    n = n or (1 if folder_mode else 8)
    check_output(out, "--out", folder=folder_mode)  # before the work, not after it
    if attention is not None and not folder_mode:
        check_output(attention, "--attention")

    recipe, generator, text_encoder, vocab = load_generator(checkpoint, ema=not live, runtime=rt)
    chosen = []
    for line, text in lines:
        ids, unknown = vocab.encode(text)
        if unknown:
            err_console.print(
                f"warning: not in the vocabulary, left out of {text!r}: {', '.join(unknown)}", markup=False
            )
        if not ids:
            raise UserError(f"caption {text!r} has no word the model knows")
        chosen.append(Caption(text, line, vocab.wrap(ids)))
    images, maps, gates = _generate(recipe, generator, text_encoder, vocab, chosen, n, seed, rt, batch_size)
    if folder_mode:
        written = _write_files(out, chosen, images, maps, vocab, n, all_stages, attention is not None, gates)
        console.print(f"wrote {len(written)} images to {out} (index: {out / 'index.tsv'})", markup=False)
    else:
        _write_grid(out, attention, chosen, images, maps, vocab, n, gates)


def _generate(recipe, generator, text_encoder, vocab, chosen: list[Caption], n: int, seed: int, rt, batch_size: int):
    """Images per stage, maps per refinement stage and the memory gates by stage number (t2i/refiners/gates.py; on
    the CPU, fp32), for caption i's sample k at row i * n + k.

    One batch of ``batch_size`` is on the device at a time, so device memory does not grow with the sample count.
    """
    import torch

    from t2i.refiners.gates import concat, record_gates, select
    from t2i.train.samples import caption_batch, generate

    repeated = [c.tokens for c in chosen for _ in range(n)]
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(repeated), recipe.model.z_dim, generator=gen)
    eps = torch.randn(len(repeated), recipe.model.cond_dim, generator=gen)
    mask_ids = torch.tensor(sorted(vocab.mask_ids), device=rt.device)
    stage_images: list[list] = []
    stage_maps: list[list] = []
    gate_chunks: list[dict] = []
    for start in range(0, len(repeated), batch_size):
        rows = repeated[start : start + batch_size]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # the text encoder wants longest first
        back = torch.tensor(order).argsort()
        batch = rt.batch(caption_batch([rows[i] for i in order], vocab.pad_id))
        index = torch.tensor(order) + start
        with torch.inference_mode(), rt.precision.autocast(), record_gates(generator) as gates:
            output, _ = generate(generator, text_encoder, batch, mask_ids, rt.images(z[index]), rt.images(eps[index]))
        stage_images.append([im.float().cpu()[back] for im in output.images])
        stage_maps.append([m.float().cpu()[back] for m in output.attention])
        gate_chunks.append(select(gates, back))
    images = [torch.cat([chunk[s] for chunk in stage_images]) for s in range(len(stage_images[0]))]
    longest = max((m.shape[1] for chunk in stage_maps for m in chunk), default=0)  # batches differ in caption length
    pad = torch.nn.functional.pad
    maps = [
        torch.cat([pad(chunk[s], (0, 0, 0, 0, 0, longest - chunk[s].shape[1])) for chunk in stage_maps])
        for s in range(len(stage_maps[0]))
    ]
    return images, maps, concat(gate_chunks)


def _sheet(title: str, images, maps, row: int, words: list[str], gates: dict | None = None):
    from t2i import viz
    from t2i.refiners.gates import sheet_row

    rows = [
        (f"stage {s + 2}: {images[s + 1].shape[-1]} px", images[s + 1][row], stage[row, : len(words)])
        for s, stage in enumerate(maps)
    ]
    marks = [sheet_row((gates or {}).get(s + 2), row, len(words)) for s in range(len(maps))]
    return viz.attention_sheet(rows, words, title=title, gates=marks) if rows else None


def _write_grid(out: Path, attention: Path | None, chosen, images, maps, vocab, n: int, gates=None) -> None:
    from t2i import viz

    viz.save_png(viz.caption_grid(images[-1], [c.text for c in chosen], columns=n), out)
    console.print(f"wrote {out}", markup=False)
    if attention is None:
        return
    sheets = [
        _sheet(c.text, images, maps, i * n, [vocab.words[t] for t in c.tokens], gates) for i, c in enumerate(chosen)
    ]
    sheets = [s for s in sheets if s is not None]
    if sheets:
        viz.save_png(viz.stack_vertical(sheets), attention)
        console.print(f"wrote {attention}", markup=False)
    else:
        err_console.print("note: this generator has no attention or memory maps; nothing written", markup=False)


def _write_files(
    folder: Path, chosen, images, maps, vocab, n: int, all_stages: bool, with_maps: bool, gates=None
) -> list[Path]:
    """``NNNN_<slug>_s<k>.png`` per caption line NNNN and sample k (``_g<stage>`` per stage with --all-stages)."""
    from t2i import viz

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index = ["file\tline\tsample\tstage\tcaption\n"]
    last = len(images) - 1
    for i, c in enumerate(chosen):
        stem = f"{c.line:04d}_{slug(c.text)}"
        for k in range(n):
            row = i * n + k
            for s in range(len(images)) if all_stages else [last]:
                name = f"{stem}_s{k}.png" if s == last and not all_stages else f"{stem}_s{k}_g{s}.png"
                written.append(viz.save_png(viz.to_image(images[s][row]), folder / name))
                index.append(f"{name}\t{c.line}\t{k}\t{s}\t{c.text}\n")
            if with_maps:
                sheet = _sheet(c.text, images, maps, row, [vocab.words[t] for t in c.tokens], gates)
                if sheet is not None:
                    written.append(viz.save_png(sheet, folder / f"{stem}_s{k}_attention.png"))
    (folder / "index.tsv").write_text("".join(index), encoding="utf-8")
    return written
