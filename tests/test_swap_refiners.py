"""Swappability: the DM-GAN recipe with its refiner replaced by each built-in one and by a user's refiner.

Recipes are loaded as a user would (``--set model.refiner=...``, a ``--code`` file), the generator is
built through ``t2i.networks`` at tiny width and run forward and backward; every trainable parameter
that takes part in the forward pass gets a non-zero gradient, and the DMM-GAN unused conv none.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from t2i import recipe as recipes
from t2i.networks import build_generator, build_text_encoder
from t2i.registry import import_user_file, registries

for _registry in registries.values():
    _registry.discover()  # before conftest's per-test registry snapshot

TINY = ["model.gf_dim=4", "model.text_dim=6", "model.cond_dim=5", "model.z_dim=7", "model.base_size=8"]

USER_REFINER = '''
import torch
from torch import nn
from t2i.registry import Params, register


class GatedConcatParams(Params):
    scale: float = 1.0


@register("refiner", "gated_concat.v1", params=GatedConcatParams, description="test refiner from a user file")
class GatedConcat(nn.Module):
    """Mean word feature, projected and gated per pixel, joined to h."""

    def __init__(self, params, *, image_dim, word_dim, cond_dim, size):
        super().__init__()
        self.scale = params.scale
        self.project = nn.Conv1d(word_dim, image_dim, 1)
        self.gate = nn.Conv2d(image_dim, 1, 1)

    def forward(self, h, words, mask, c_code):
        keep = (~mask).to(words.dtype)[:, None, :]  # (B, 1, T)
        u = self.project(words)  # (B, g, T)
        mean = (u * keep).sum(-1) / keep.sum(-1).clamp(min=1)  # (B, g)
        gate = torch.sigmoid(self.gate(h))  # (B, 1, H, W)
        context = gate * mean[:, :, None, None] * self.scale
        weights = keep.transpose(1, 2)[..., None] / keep.sum(-1)[:, :, None, None]  # (B, T, 1, 1)
        attention = weights * gate  # (B, T, H, W)
        return torch.cat((h, context), dim=1), attention
'''


def _run(loaded: recipes.Recipe, vocab_size: int = 20) -> tuple[torch.nn.Module, list]:
    torch.manual_seed(0)
    generator = build_generator(loaded).train()
    encoder = build_text_encoder(loaded, vocab_size).eval()
    captions = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0], [11, 12, 0, 0, 0]])
    lengths = torch.tensor([5, 3, 2])
    with torch.no_grad():
        words, sentence = encoder(captions, lengths)
    mask = captions[:, : words.size(2)] == 0
    out = generator(torch.randn(3, loaded.model.z_dim), sentence, words, mask)
    sizes = loaded.stage_sizes()
    assert [tuple(im.shape) for im in out.images] == [(3, 3, s, s) for s in sizes]
    assert [tuple(a.shape) for a in out.attention] == [(3, words.size(2), s, s) for s in sizes[:-1]]
    loss = sum(img.square().mean() for img in out.images) + out.mu.square().mean()
    loss.backward()
    return generator, out.attention


@pytest.mark.parametrize(
    "refiner",
    ["attention", "glam", "dm", "gldm", "{name='gldm', legacy_unused_conv=true}", "{name='dm', mask='legacy'}"],
)
def test_builtin_refiners_swap_into_dmgan(refiner: str) -> None:
    loaded = recipes.load("dmgan_bird", [*TINY, f"model.refiner={refiner}"])
    generator, attention = _run(loaded)
    no_grad = [n for n, p in generator.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    # only DMM-GAN's dead conv (kept for its checkpoints) may stay without a gradient
    expected = (
        ["stages.0.refiner.conv.weight", "stages.1.refiner.conv.weight"] if "legacy_unused_conv" in refiner else []
    )
    assert no_grad == expected
    assert all(torch.allclose(a.sum(1), torch.ones_like(a.sum(1))) for a in attention)


def test_user_refiner_from_file(tmp_path: Path) -> None:
    code = tmp_path / "my_refiner.py"
    code.write_text(USER_REFINER)
    import_user_file(code)
    loaded = recipes.load("dmgan_bird", [*TINY, "model.refiner={name='gated_concat', scale=0.5}", "model.stages=2"])
    assert loaded.model.refiner.entry.name == "gated_concat.v1" and loaded.model.refiner.params.scale == 0.5
    generator, _ = _run(loaded)
    assert type(generator.stages[0].refiner).__name__ == "GatedConcat"
    missing = [n for n, p in generator.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []
