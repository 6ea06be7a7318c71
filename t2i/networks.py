"""Every network of a recipe, built in one place: generator, discriminators, encoders, captioner, loss terms.

Each part is built through the registry: ``recipe.model.<part>.build(**runtime)`` calls the registered factory with
its validated params and the sizes the pipeline owns (widths, stage sizes, vocabulary size). Nothing here knows
component names; the pipeline asks each component what it needs (an alignment term's ``requires``).

``build_networks`` makes the networks and loss terms of one training run. Pretrained weights load after building:
frozen networks (text encoder, DAMSM image encoder, STREAM captioner) come from pretraining checkpoints named in
``[train.pretrained]``, and their vocabulary must equal the data set's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2i.recipe import Recipe
from t2i.train import checkpoint as ckpt


class SetupError(RuntimeError):
    t2i_user_error = True


RANDOM = "random"  # [train.pretrained] value: keep a randomly initialised frozen network (debugging, tests)


@dataclass
class Networks:
    text_encoder: nn.Module
    generator: nn.Module
    discriminators: nn.ModuleList
    frozen: dict[str, nn.Module] = field(default_factory=dict)  # by role: image_encoder, captioner
    alignment: list[nn.Module] = field(default_factory=list)
    alignment_names: list[str] = field(default_factory=list)
    adversarial: Any = None


# -- one network ------------------------------------------------------------------------------------------------------
def build_refiner(recipe: Recipe, stage_index: int, size: int) -> nn.Module:
    """The refiner of generator stage ``stage_index`` (first stage = 0) whose input is ``size``²."""
    model = recipe.model
    return model.refiner.build(image_dim=model.gf_dim, word_dim=model.text_dim, cond_dim=model.cond_dim, size=size)


def build_generator(recipe: Recipe, **overrides: Any) -> nn.Module:
    """The generator with the recipe's refiner in every refinement stage (``overrides`` replace runtime kwargs)."""
    model = recipe.model
    runtime: dict[str, Any] = {
        "z_dim": model.z_dim,
        "cond_dim": model.cond_dim,
        "text_dim": model.text_dim,
        "gf_dim": model.gf_dim,
        "stages": model.stages,
        "base_size": model.base_size,
        "refiner": lambda stage_index, size: build_refiner(recipe, stage_index, size),
    }
    runtime.update(overrides)
    return model.generator.build(**runtime)


def build_text_encoder(recipe: Recipe, vocab_size: int) -> nn.Module:
    return recipe.model.text_encoder.build(vocab_size=vocab_size, text_dim=recipe.model.text_dim)


def build_discriminators(recipe: Recipe) -> list[nn.Module]:
    """One discriminator per stage, for images of ``base_size * 2**i``."""
    model = recipe.model
    return [
        model.discriminator.build(df_dim=model.df_dim, text_dim=model.text_dim, size=size)
        for size in recipe.stage_sizes()
    ]


def build_image_encoder(recipe: Recipe) -> nn.Module | None:
    component = recipe.model.image_encoder
    return None if component is None else component.build(text_dim=recipe.model.text_dim)


def build_captioner(recipe: Recipe, vocab_size: int) -> nn.Module | None:
    component = recipe.model.captioner
    return None if component is None else component.build(vocab_size=vocab_size)


# -- the networks of a training run -----------------------------------------------------------------------------------
def build_role(recipe: Recipe, role: str, vocab_size: int, *, from_checkpoint: bool = False) -> nn.Module:
    """Build the frozen network that plays ``role`` ("image_encoder" or "captioner") from the recipe.

    ``from_checkpoint``: a checkpoint's full state is loaded next, so its ImageNet trunk is not fetched or read.
    """
    from t2i.weights import loaded_from_checkpoint

    with loaded_from_checkpoint(from_checkpoint):
        module = build_image_encoder(recipe) if role == "image_encoder" else build_captioner(recipe, vocab_size)
    if module is None:
        raise SetupError(f"an alignment term needs model.{role}, but the recipe does not set it")
    return module


def load_pretrained(module: nn.Module, path: str | None, key: str, vocab, *, what: str, hint: str) -> None:
    """Load ``models[key]`` of a t2i checkpoint into ``module``; check the vocabulary travels with it."""
    if path == RANDOM:
        return
    if not path:
        raise SetupError(f'train.pretrained.{what} is not set: {hint} (or set it to "random" for a debugging run)')
    if not Path(path).exists():
        raise SetupError(f"train.pretrained.{what} = {path!r} does not exist: {hint}")
    state = ckpt.load(path)
    models = state.get("models", {})
    if key not in models:
        raise SetupError(f"{path} holds no {key} (it has: {', '.join(sorted(models)) or 'nothing'})")
    saved_vocab = state.get("vocab")
    if vocab is not None and saved_vocab is not None:
        from t2i.data.vocab import Vocabulary

        theirs = Vocabulary.from_dict(saved_vocab)
        if theirs.sha256() != vocab.sha256():
            raise SetupError(
                f"{path}: its {key} was trained with a different vocabulary ({len(theirs)} words, "
                f"sha256 {theirs.sha256()[:12]}) than this data set's ({len(vocab)} words, {vocab.sha256()[:12]})"
            )
    missing, unexpected = module.load_state_dict(models[key], strict=False)
    if missing or unexpected:
        raise SetupError(f"{path}: {key} does not fit the recipe's network: missing {missing}, unexpected {unexpected}")


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


def build_networks(recipe: Recipe, vocab, *, device: torch.device, pretrain_hint: str = "") -> Networks:
    from t2i.models.generator import init_weights

    pre = recipe.train.pretrained
    text_encoder = freeze(build_text_encoder(recipe, len(vocab)))
    load_pretrained(
        text_encoder,
        pre.text_encoder,
        "text_encoder",
        vocab,
        what="text_encoder",
        hint=f"run `t2i pretrain damsm {pretrain_hint}` first and point it at the checkpoint",
    )

    generator = build_generator(recipe)
    discriminators = nn.ModuleList(build_discriminators(recipe))
    init_weights(generator)  # the discriminators initialise themselves (spectral-norm aware)

    frozen: dict[str, nn.Module] = {}
    alignment, names = [], []
    for spec in recipe.train.alignment:
        networks = {}
        for role in getattr(spec.entry.factory, "requires", ()):
            if role not in frozen:
                path = getattr(pre, role, None)
                net = freeze(build_role(recipe, role, len(vocab), from_checkpoint=bool(path) and path != RANDOM))
                command = "stream" if role == "captioner" else "damsm"
                load_pretrained(
                    net,
                    path,
                    role,
                    vocab,
                    what=role,
                    hint=f"run `t2i pretrain {command} {pretrain_hint}` first and point it at the checkpoint",
                )
                frozen[role] = net.to(device)
            networks[role] = frozen[role]
        alignment.append(spec.build(networks=networks).to(device))
        names.append(spec.entry.base)
    adversarial = recipe.train.adversarial.build()
    return Networks(
        text_encoder=text_encoder.to(device),
        generator=generator.to(device),
        discriminators=discriminators.to(device),
        frozen=frozen,
        alignment=alignment,
        alignment_names=_unique(names),
        adversarial=adversarial,
    )


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}{seen[name]}")
    return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
