"""``t2i sample CHECKPOINT "caption" ...``: images from your own captions, with the checkpoint's vocabulary."""

from __future__ import annotations

from pathlib import Path

import typer

from t2i.cli._common import CodeOption, UserError, console, err_console, import_code, user_errors
from t2i.cli._runtime import ChannelsLastOption, CompileOption, DeviceOption, PrecisionOption, RuntimeFlags


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)


def load_generator(checkpoint: Path, *, ema: bool = True, runtime=None):
    """(recipe, generator, text_encoder, vocab) from a t2i GAN checkpoint or run folder, on ``runtime``'s device."""
    from t2i.evaluate import load_model

    model = load_model(checkpoint, ema=ema, runtime=runtime)
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
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images generated per forward (device memory)."),
    code: list[Path] = CodeOption,
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    channels_last: bool = ChannelsLastOption,
    compile: bool = CompileOption,
) -> None:
    """Generate images for your own captions; unknown words are reported, not silently dropped.

    Example: [bold]t2i sample runs/demo/dmgan_shapes/<run> "a big red circle above a small blue square" -o grid.png[/]
    """
    import torch

    from t2i import viz
    from t2i.train.samples import caption_batch, generate

    import_code(code)
    rt = RuntimeFlags(device, precision, channels_last, compile).runtime()
    recipe, generator, text_encoder, vocab = load_generator(checkpoint, ema=not live, runtime=rt)
    tokens = []
    for text in captions:
        ids, unknown = vocab.encode(text)
        if unknown:
            err_console.print(f"[yellow]warning:[/] not in the vocabulary, left out of {text!r}: {', '.join(unknown)}")
        if not ids:
            raise UserError(f"caption {text!r} has no word the model knows")
        tokens.append(vocab.wrap(ids))
    order = sorted(range(len(tokens)), key=lambda i: -len(tokens[i]))
    repeated = [tokens[i] for i in order for _ in range(n)]
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(repeated), recipe.model.z_dim, generator=gen)
    eps = torch.randn(len(repeated), recipe.model.cond_dim, generator=gen)
    mask_ids = torch.tensor(sorted(vocab.mask_ids), device=rt.device)
    images, maps = [], []
    B = batch_size
    for start in range(0, len(repeated), B):  # one batch on the device at a time: bounded device memory
        batch = rt.batch(caption_batch(repeated[start : start + B], vocab.pad_id))
        noise, cond = rt.images(z[start : start + B]), rt.images(eps[start : start + B])
        with torch.inference_mode(), rt.precision.autocast():
            output, _ = generate(generator, text_encoder, batch, mask_ids, noise, cond)
        images.append(output.images[-1].float().cpu())
        maps.append([m.float().cpu() for m in output.attention])
    grid = viz.caption_grid(torch.cat(images), [captions[i] for i in order], columns=n)
    viz.save_png(grid, out)
    console.print(f"wrote {out}")
    if attention is not None:
        sheets = []
        for row, i in enumerate(order):
            words = [vocab.words[t] for t in tokens[i]]
            flat = row * n
            chunk, offset = divmod(flat, B)
            full = torch.cat(images)
            rows = [
                (f"stage {s + 2}", full[flat], stage_maps[offset, : len(words)])
                for s, stage_maps in enumerate(maps[chunk])
            ]
            if rows:
                sheets.append(viz.attention_sheet(rows, words, title=captions[i]))
        if sheets:
            viz.save_png(viz.stack_vertical(sheets), attention)
            console.print(f"wrote {attention}")
