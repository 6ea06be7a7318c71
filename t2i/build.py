"""Turn a resolved recipe into modules: every component is built through the registry.

Nothing here knows component names: ``recipe.model.<part>.build(**runtime)`` calls the registered
factory with its validated params and the runtime sizes the pipeline owns (common contracts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from t2i.recipe import Recipe


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
