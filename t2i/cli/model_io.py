"""``t2i import`` / ``t2i export``: original checkpoint files <-> one t2i checkpoint.

Which original file is what is decided by its name (override with ``--as PART=PATH``):

=============================  =====================  ==========================================
file name                      part                   goes to
=============================  =====================  ==========================================
``netG*.pth``                  ``generator``          models.generator and models.generator_ema
``bird_DMGAN.pth`` and the     ``generator``          (the released generators: ``bird_DMGAN.pth``,
other released generators                             ``coco_DMGAN.pth``, ``bird_AttnGAN2.pth``...)
``netD<i>.pth``                ``discriminator<i>``   models.discriminators[i]
``text_encoder*.pth``          ``text_encoder``       models.text_encoder
``image_encoder*.pth``         ``image_encoder``      models.image_encoder
``encoder[-*].ckpt``           ``captioner_encoder``  models.captioner (``caption_cnn.*``)
``decoder[-*].ckpt``           ``captioner_decoder``  models.captioner (``caption_rnn.*``)
=============================  =====================  ==========================================

The original netG holds the EMA weights (DM-GAN's trainer swaps them in before saving), so it fills both
generators. Files older than PyTorch 0.4.1 (no BatchNorm ``num_batches_tracked``), ``module.``-prefixed keys
(``nn.DataParallel``) and the pre-1.6 serialisation all load, with ``weights_only=True``. Every part
is converted with its registered key map (t2i.legacy) and loaded strictly into the module the recipe
builds, so a wrong recipe is reported with the missing and unexpected keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from t2i.cli._common import (
    CodeOption,
    SetOption,
    UserError,
    check_output,
    console,
    err_console,
    load_recipe,
    report_plugin_errors,
    user_errors,
)

PATTERNS: list[tuple[str, str]] = [
    (r"^netG.*\.pth$", "generator"),
    (r"^(bird|coco)_(AttnGAN|DMGAN|MirrorGAN|DMMGAN)\d*\.pth$", "generator"),  # the released generators
    (r"^netD(\d+)\.pth$", "discriminator{0}"),
    (r"^text_encoder.*\.pth$", "text_encoder"),
    (r"^image_encoder.*\.pth$", "image_encoder"),
    (r"^encoder(-.*)?\.ckpt$", "captioner_encoder"),
    (r"^decoder(-.*)?\.ckpt$", "captioner_decoder"),
]
PART_RE = re.compile(r"^(generator|text_encoder|image_encoder|captioner_encoder|captioner_decoder|discriminator\d+)$")
CAPTIONER_PARTS = ("captioner_encoder", "captioner_decoder")


def classify(path: Path) -> str | None:
    """The part an original file holds, from its name (None if unknown)."""
    for pattern, part in PATTERNS:
        match = re.match(pattern, path.name)
        if match:
            return part.format(*[g for g in match.groups() if g is not None])
    return None


def _assign(files: list[Path], overrides: list[str]) -> dict[str, Path]:
    parts: dict[str, Path] = {}
    for item in overrides:
        part, sep, raw = item.partition("=")
        if not sep or not PART_RE.match(part.strip()):
            raise UserError(
                f"--as {item!r}: expected PART=PATH with PART one of generator, discriminator0.., text_encoder, "
                "image_encoder, captioner_encoder, captioner_decoder"
            )
        parts[part.strip()] = Path(raw.strip())
    given = set(parts.values())
    for file in files:
        if file in given:
            continue
        part = classify(file)
        if part is None:
            raise UserError(
                f"cannot tell what {file} holds from its name; name it like the originals "
                "(netG_epoch_600.pth, bird_DMGAN.pth, netD0.pth, text_encoder200.pth, image_encoder200.pth, "
                f"encoder-5-3000.ckpt, decoder-5-3000.ckpt) or pass --as PART={file}"
            )
        if part in parts:
            raise UserError(f"two files for {part}: {parts[part]} and {file}; pass one, or use --as")
        parts[part] = file
    if not parts:
        raise UserError("no original files given")
    return parts


def import_originals(recipe: Any, parts: dict[str, Path], vocab: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert and strictly check original files against modules built from ``recipe``; return a checkpoint dict."""
    from t2i import __version__, networks
    from t2i.legacy import load_into, load_original, to_t2i
    from t2i.train.checkpoint import FORMAT_VERSION
    from t2i.weights import loaded_from_checkpoint

    raw = {part: _state_dict(load_original(path), path) for part, path in parts.items()}
    models: dict[str, Any] = {}

    text_vocab = None
    if "text_encoder" in raw:
        state = to_t2i("text_encoder", raw["text_encoder"])
        text_vocab = int(next(iter(state.values())).shape[0])  # the embedding table comes first
        where = f"text_encoder ({parts['text_encoder']})"
        models["text_encoder"] = load_into(networks.build_text_encoder(recipe, text_vocab), state, where)
    if "generator" in raw:
        state = to_t2i("generator", raw["generator"])
        state = load_into(networks.build_generator(recipe), state, f"generator ({parts['generator']})")
        models["generator"] = state
        models["generator_ema"] = dict(state)
    discriminators = sorted(int(p[len("discriminator") :]) for p in raw if p.startswith("discriminator"))
    if discriminators:
        expected = list(range(recipe.model.stages))
        if discriminators != expected:
            raise UserError(f"discriminators given for stages {discriminators}; the recipe has stages {expected}")
        built = networks.build_discriminators(recipe)
        models["discriminators"] = []
        for index in discriminators:
            state = to_t2i("discriminator", raw[f"discriminator{index}"])
            where = f"discriminator {index} ({parts[f'discriminator{index}']})"
            models["discriminators"].append(load_into(built[index], state, where))
    if "image_encoder" in raw:
        state = to_t2i("image_encoder", raw["image_encoder"])
        with loaded_from_checkpoint():  # the original file holds the whole encoder, its Inception trunk too
            module = networks.build_image_encoder(recipe)
        if module is None:
            raise UserError("an image encoder file was given but the recipe has no model.image_encoder")
        models["image_encoder"] = load_into(module, state, f"image_encoder ({parts['image_encoder']})")
    captioner_parts = [p for p in CAPTIONER_PARTS if p in raw]
    if captioner_parts:
        if len(captioner_parts) != 2:
            given = ", ".join(str(parts[p]) for p in captioner_parts)
            raise UserError(
                f"a captioner needs both its encoder-*.ckpt and decoder-*.ckpt files (got only {given}); "
                "pass the pair, or name them with --as captioner_encoder=PATH --as captioner_decoder=PATH"
            )
        from t2i.legacy import merge_stream_checkpoints

        # The two files of the original STREAM trainer -> its combined form (caption_cnn.* / caption_rnn.*).
        merged = merge_stream_checkpoints(raw["captioner_encoder"], raw["captioner_decoder"])
        state = to_t2i("captioner", merged)
        embedding = raw["captioner_decoder"].get("embed.weight")
        if embedding is None and text_vocab is None:
            raise UserError(f"{parts['captioner_decoder']} has no embed.weight: is it a STREAM decoder checkpoint?")
        vocab_size = text_vocab or int(embedding.shape[0])
        with loaded_from_checkpoint():
            module = networks.build_captioner(recipe, vocab_size)
        if module is None:
            raise UserError("captioner files were given but the recipe has no model.captioner")
        where = f"{parts['captioner_encoder']} + {parts['captioner_decoder']}"
        models["captioner"] = load_into(module, state, f"captioner ({where})")

    kind = (
        "gan"
        if "generator" in models or "discriminators" in models
        else ("stream" if models.keys() == {"captioner"} else "damsm")
    )
    checkpoint = {
        "format_version": FORMAT_VERSION,
        "t2i_version": __version__,
        "kind": kind,
        "step": 0,
        "recipe": recipe.to_dict(resolved=True),
        "models": models,
        "imported_from": {part: str(path) for part, path in parts.items()},
    }
    if vocab is not None:
        checkpoint["vocab"] = vocab
    return checkpoint


def export_originals(checkpoint: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the original-format files of every model in a t2i checkpoint; returns the paths written."""
    from t2i.legacy import split_stream_checkpoint, to_original
    from t2i.train.checkpoint import save_atomic

    models = checkpoint.get("models", {})
    written: list[Path] = []

    def save(state: dict[str, Any], name: str) -> None:
        written.append(save_atomic(state, out_dir / name))

    generator = models.get("generator_ema") or models.get("generator")
    if generator is not None:
        save(to_original("generator", generator), "netG.pth")  # originals store the EMA weights
    for index, state in enumerate(models.get("discriminators", [])):
        save(to_original("discriminator", state), f"netD{index}.pth")
    if "text_encoder" in models:
        save(to_original("text_encoder", models["text_encoder"]), "text_encoder.pth")
    if "image_encoder" in models:
        save(to_original("image_encoder", models["image_encoder"]), "image_encoder.pth")
    if "captioner" in models:
        # Back to the original STREAM trainer's two files, named so that `t2i import` recognises the pair.
        encoder, decoder = split_stream_checkpoint(to_original("captioner", models["captioner"]))
        save(encoder, "encoder-t2i.ckpt")
        save(decoder, "decoder-t2i.ckpt")
    if not written:
        raise UserError("the checkpoint holds no models to export")
    return written


def _state_dict(data: Any, path: Path) -> dict[str, Any]:
    import torch

    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{path} is not a plain state dict (a dict of tensors) as the original code saves")
    return data


VOCAB_FILES = ("metadata.json", "captions.pickle", "bird_captions.pickle")


def _load_vocab(path: Path | None, recipe: Any = None) -> dict[str, Any] | None:
    """The vocabulary to store with imported weights: ``--vocab`` (a t2i JSON, the originals' ``captions.pickle``,
    a data set's ``metadata.json`` or a data folder holding one), else the recipe's data folder when it holds one.

    Original encoders index words by ``captions.pickle``'s ``ixtoword``; without that order their embeddings mean
    nothing, so ``t2i sample`` and ``t2i eval`` refuse a checkpoint without a vocabulary.
    """
    from t2i.data.vocab import Vocabulary

    if path is None:
        root = getattr(recipe.data.dataset.params, "root", None) if recipe is not None else None
        folder = Path(root).expanduser() if root else None
        found = [folder / name for name in VOCAB_FILES if folder is not None and (folder / name).is_file()]
        if not found:
            err_console.print(
                "note: no vocabulary stored (no --vocab, and the recipe's data folder holds no "
                f"{' / '.join(VOCAB_FILES)}); `t2i sample` and `t2i eval` need one: re-import with "
                "--vocab data/birds/captions.pickle",
                markup=False,
            )
            return None
        path = found[0]
        console.print(f"vocabulary from {path}", markup=False)
    path = Path(path)
    if path.is_dir():
        inside = [path / name for name in VOCAB_FILES if (path / name).is_file()]
        if not inside:
            raise UserError(f"--vocab {path}: the folder holds none of {', '.join(VOCAB_FILES)}")
        path = inside[0]
    if path.suffix == ".pickle":
        from t2i.data import safe_pickle

        data = safe_pickle.load(path)
        if not (isinstance(data, list) and len(data) == 4 and isinstance(data[2], dict)):
            raise UserError(f"--vocab {path}: expected the originals' [train, test, ixtoword, wordtoix] pickle")
        try:
            return Vocabulary.from_ixtoword({int(k): v for k, v in data[2].items()}).to_dict()
        except ValueError as exc:
            raise UserError(f"--vocab {path}: {exc}") from None
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read vocabulary {path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("vocab"), dict):
        data = data["vocab"]  # a data set's metadata.json carries it under "vocab"
    try:
        return Vocabulary.from_dict(data).to_dict()
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"--vocab {path}: not a vocabulary ({exc})") from None


def register(app: typer.Typer) -> None:
    app.command("import")(import_command)
    app.command("export")(export_command)


@user_errors
def import_command(
    recipe: str = typer.Argument(..., help="Recipe file or built-in recipe name describing the model."),
    files: list[Path] = typer.Argument(None, help="Original files (netG_*.pth, netD0.pth, text_encoder*.pth, ...)."),
    output: Path = typer.Option(..., "--output", "-o", help="The t2i checkpoint to write."),
    assign: list[str] = typer.Option(None, "--as", help="Say what a file holds: PART=PATH (repeatable)."),
    vocab: Path = typer.Option(
        None,
        "--vocab",
        help="Vocabulary to store with it: the originals' captions.pickle, a data folder, or a t2i JSON "
        "(default: the recipe's data folder).",
    ),
    sets: list[str] = SetOption,
    code: list[Path] = CodeOption,
) -> None:
    """Convert original AttnGAN/MirrorGAN/DM-GAN/DMM-GAN checkpoints into one t2i checkpoint.

    Example: [bold]t2i import dmgan_bird netG_epoch_800.pth text_encoder200.pth -o weights/dmgan_bird.pt[/]
    """
    from t2i.train.checkpoint import save_atomic

    check_output(output, "--output")
    loaded = load_recipe(recipe, sets, code)
    report_plugin_errors()
    parts = _assign(list(files or []), list(assign or []))
    checkpoint = import_originals(loaded, parts, _load_vocab(vocab, loaded))
    save_atomic(checkpoint, output)
    names = ", ".join(sorted(checkpoint["models"]))
    console.print(f"[green]wrote[/] {escape(str(output))}  [dim]{escape(names)}[/]", highlight=False)


@user_errors
def export_command(
    checkpoint: Path = typer.Argument(..., help="A t2i checkpoint (from training or t2i import)."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory for the original-format files."),
    code: list[Path] = CodeOption,
) -> None:
    """Write a t2i checkpoint's models back as original-format files (netG.pth, netD0.pth, ...).

    Example: [bold]t2i export weights/dmgan_bird.pt -o exported/[/]
    """
    from t2i.cli._common import import_code
    from t2i.train.checkpoint import load

    check_output(output, "--output", folder=True)
    import_code(code)
    for path in export_originals(load(checkpoint), output):
        console.print(f"[green]wrote[/] {escape(str(path))}", highlight=False)
