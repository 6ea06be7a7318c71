"""Trainable parameter counts equal the originals' at the published configurations.

The expected numbers come from building the original networks and counting ``requires_grad`` parameters (DM-GAN's own
``count_parameters`` rule; docs/models.md lists the totals). Full-size generators are built (no forward pass).
Closed forms in g, e, c, z and R, derived from the layer shapes, are checked at tiny widths, for any number of
residual blocks and with/without the GLDM and DMM-GAN's unused conv.
"""

from __future__ import annotations

import pytest
from torch import nn

from t2i.registry import get_registry

for _kind in ("refiner", "generator", "text_encoder"):
    get_registry(_kind).discover()  # before conftest's per-test registry snapshot


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_generator(
    refiner: str, refiner_params: dict, *, g: int, res_blocks: int, e: int = 256, c: int = 100, z: int = 100
):
    entry = get_registry("refiner").get(refiner)
    return get_registry("generator").build(
        "stacked",
        {"res_blocks": res_blocks},
        z_dim=z,
        cond_dim=c,
        text_dim=e,
        gf_dim=g,
        stages=3,
        base_size=64,
        refiner=lambda _i, size: entry.build(refiner_params, image_dim=g, word_dim=e, cond_dim=c, size=size),
    )


PUBLISHED = [
    ("AttnGAN bird", "attention", {}, 32, 2, 7_084_592),
    ("MirrorGAN bird", "glam", {}, 32, 2, 7_105_392),
    ("DM-GAN bird", "dm", {}, 64, 2, 21_449_042),
    ("DMM-GAN bird (GLDM)", "gldm", {"legacy_unused_conv": True}, 64, 2, 21_525_278),
    ("DMM-GAN bird (GLDM off)", "dm", {"legacy_unused_conv": True}, 64, 2, 21_498_194),
    ("AttnGAN coco", "attention", {}, 48, 3, 13_811_456),
    ("DM-GAN coco", "dm", {}, 64, 3, 22_335_314),
]


@pytest.mark.parametrize(
    ("label", "refiner", "params", "g", "res_blocks", "expected"), PUBLISHED, ids=[p[0] for p in PUBLISHED]
)
def test_generator_counts_published(
    label: str, refiner: str, params: dict, g: int, res_blocks: int, expected: int
) -> None:
    assert trainable(build_generator(refiner, params, g=g, res_blocks=res_blocks)) == expected


def test_dm_gan_breakdown() -> None:
    """The per-submodule numbers of the original DM-GAN bird generator (``cfg/bird_DMGAN.yml``)."""
    generator = build_generator("dm", {}, g=64, res_blocks=2)
    assert trainable(generator.ca_net) == 102_800
    assert trainable(generator.init_stage) == 19_156_736
    assert trainable(generator.init_stage.fc) == 6_619_136
    assert [trainable(b) for b in generator.init_stage.upsample] == [9_439_232, 2_360_320, 590_336, 147_712]
    assert [trainable(s) for s in generator.stages] == [1_092_161, 1_092_161]
    assert trainable(generator.stages[0].refiner) == 58_177
    assert trainable(generator.stages[0].residual) == 886_272
    assert [trainable(h) for h in generator.image_heads] == [1_728] * 3


def test_text_encoder_count() -> None:
    encoder = get_registry("text_encoder").build("rnn", {}, vocab_size=5450, text_dim=256)
    assert trainable(encoder) == 2_075_320
    encoder = get_registry("text_encoder").build("rnn", {}, vocab_size=5453, text_dim=256)
    assert trainable(encoder) == 2_076_220


# -- closed forms in the widths --------------------------------------------------------------
def closed_form(refiner: str, *, g: int, e: int, c: int, z: int, R: int, unused_conv: bool = False) -> int:
    ca = 4 * c * e + 4 * c
    init = (z + c) * 512 * g + 1024 * g + 3060 * g * g + 60 * g
    head = 27 * g
    trunk = R * (108 * g * g + 12 * g) + 36 * g * g + 4 * g
    attn = e * g + trunk
    stage = {
        "attention": attn,
        "glam": attn + g * g + (c * g + g) + 6 * g * g,  # 100g in the original: its Linear input is a literal 100
        "dm": e + 2 * e * g + 6 * g * g + 9 * g + 1 + trunk,
        "gldm": e + 2 * e * g + 6 * g * g + 9 * g + 1 + trunk + c + 2 * c * g + 10 * g + 2,
    }[refiner]
    if unused_conv:
        stage += 6 * g * g
    return ca + init + 3 * head + 2 * stage


TINY = [
    (refiner, g, e, R, unused)
    for refiner in ("attention", "glam", "dm", "gldm")
    for g, e, R in ((2, 4, 0), (4, 6, 1), (3, 8, 3))
    for unused in ((False, True) if refiner in ("dm", "gldm") else (False,))
]


@pytest.mark.parametrize(("refiner", "g", "e", "R", "unused"), TINY)
def test_closed_forms(refiner: str, g: int, e: int, R: int, unused: bool) -> None:
    params = {"legacy_unused_conv": True} if unused else {}
    generator = build_generator(refiner, params, g=g, res_blocks=R, e=e, c=5, z=7)
    assert trainable(generator) == closed_form(refiner, g=g, e=e, c=5, z=7, R=R, unused_conv=unused)


@pytest.mark.parametrize(("vocab", "e"), [(40, 16), (7, 4), (5450, 256)])
def test_text_encoder_closed_form(vocab: int, e: int) -> None:
    encoder = get_registry("text_encoder").build("rnn", {}, vocab_size=vocab, text_dim=e)
    assert trainable(encoder) == 300 * vocab + 2 * (4 * (e // 2) * (300 + e // 2) + 4 * e)
