"""``t2i sample CHECKPOINT "caption" ...``: images from your own captions, with the checkpoint's vocabulary."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from t2i.cli._common import CodeOption, UserError, check_output, console, err_console, import_code, user_errors


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)


def load_generator(checkpoint: Path, *, ema: bool = True):
    """(recipe, generator, text_encoder, vocab) from a t2i GAN checkpoint or run folder."""
    from t2i.evaluate import load_model

    model = load_model(checkpoint, ema=ema)
    return model.recipe, model.generator, model.text_encoder, model.vocab


@user_errors
def sample(
    checkpoint: Path = typer.Argument(..., help="A t2i GAN checkpoint (.pt) or a run folder (uses its last.pt)."),
    captions: list[str] = typer.Argument(..., help="One or more captions."),
    n: int = typer.Option(8, "--n", min=1, help="Samples per caption."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (same seed, same images)."),
    out: Path = typer.Option(Path("samples.png"), "--out", "-o", help="Where the grid goes."),
    attention: Path = typer.Option(None, "--attention", help="Also write each stage's attention/memory maps here."),
    live: bool = typer.Option(False, "--live", help="Use the live generator instead of the EMA one."),
    code: list[Path] = CodeOption,
) -> None:
    """Generate images for your own captions; unknown words are reported, not silently dropped.

    Example: [bold]t2i sample runs/demo/dmgan_shapes/<run> "a big red circle above a small blue square" -o grid.png[/]
    """
    import torch

    from t2i import viz
    from t2i.train.samples import caption_batch, generate

    check_output(out, "--out")
    if attention is not None:
        check_output(attention, "--attention")
    import_code(code)
    recipe, generator, text_encoder, vocab = load_generator(checkpoint, ema=not live)
    tokens = []
    for text in captions:
        ids, unknown = vocab.encode(text)
        if unknown:
            err_console.print(
                f"[yellow]warning:[/] not in the vocabulary, left out of {escape(repr(text))}: "
                + escape(", ".join(unknown))
            )
        if not ids:
            raise UserError(f"caption {text!r} has no word the model knows")
        tokens.append(vocab.wrap(ids))
    order = sorted(range(len(tokens)), key=lambda i: -len(tokens[i]))
    repeated = [tokens[i] for i in order for _ in range(n)]
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(repeated), recipe.model.z_dim, generator=gen)
    eps = torch.randn(len(repeated), recipe.model.cond_dim, generator=gen)
    mask_ids = torch.tensor(sorted(vocab.mask_ids))
    images, maps = [], []
    for start in range(0, len(repeated), 64):  # bounded memory for many samples
        batch = caption_batch(repeated[start : start + 64], vocab.pad_id)
        with torch.inference_mode():
            output, _ = generate(
                generator, text_encoder, batch, mask_ids, z[start : start + 64], eps[start : start + 64]
            )
        images.append(output.images[-1])
        maps.append([m for m in output.attention])
    grid = viz.caption_grid(torch.cat(images), [captions[i] for i in order], columns=n)
    viz.save_png(grid, out)
    console.print(f"wrote {out}", markup=False)
    if attention is not None:
        sheets = []
        for row, i in enumerate(order):
            words = [vocab.words[t] for t in tokens[i]]
            flat = row * n
            chunk, offset = divmod(flat, 64)
            full = torch.cat(images)
            rows = [
                (f"stage {s + 2}", full[flat], stage_maps[offset, : len(words)])
                for s, stage_maps in enumerate(maps[chunk])
            ]
            if rows:
                sheets.append(viz.attention_sheet(rows, words, title=captions[i]))
        if sheets:
            viz.save_png(viz.stack_vertical(sheets), attention)
            console.print(f"wrote {attention}", markup=False)
