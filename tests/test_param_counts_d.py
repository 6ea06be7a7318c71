"""Parameter counts of discriminators and alignment networks equal the originals'.

Full-size networks are built on the meta device (counts only: orthogonal init of a 160M-parameter
D takes minutes on 2 cores); closed forms in the widths are checked on real tiny networks.
"""

from __future__ import annotations

import pytest
import torch

import t2i.encoders.damsm_image  # noqa: F401  (registers before conftest snapshots the registries)
import t2i.encoders.stream_captioner  # noqa: F401
import t2i.models.discriminator  # noqa: F401
from t2i.registry import get_registry


def _trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _frozen(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if not p.requires_grad)


def _build_d(name: str, d: int, e: int, size: int, device: str = "cpu") -> torch.nn.Module:
    with torch.device(device):
        return get_registry("discriminator").build(name, df_dim=d, text_dim=e, size=size)


@pytest.mark.parametrize(
    ("name", "d", "counts"),
    [
        ("bn.v1", 64, (6_313_730, 19_424_002, 71_858_946)),  # AttnGAN / MirrorGAN bird
        ("sn.v1", 32, (1_878_242, 5_155_810, 18_264_546)),  # DM-GAN / DMM-GAN bird
        ("bn.v1", 96, (13_304_450, 42_800_258, 160_774_274)),  # AttnGAN COCO
    ],
)
def test_published_discriminators(name, d, counts):
    for size, expected in zip((64, 128, 256), counts, strict=True):
        assert _trainable(_build_d(name, d, 256, size, "meta")) == expected, (name, d, size)


def test_spectral_norm_vectors_are_not_trainable():
    # the originals' spectral-norm u + v per D = 8,976 / 18,448 / 37,392 (DM-GAN bird)
    for size, expected in zip((64, 128, 256), (8_976, 18_448, 37_392), strict=True):
        assert _frozen(_build_d("sn.v1", 32, 256, size, "meta")) == expected


def _bn_closed_form(d: int, e: int, k: int) -> int:
    s16 = 672 * d * d + 76 * d
    heads = (128 * d + 1) + (576 * d * d + 72 * d * e + 144 * d + 1)
    down = [2048 * d * d + 32 * d, 8192 * d * d + 64 * d]
    back = {1: [1152 * d * d + 16 * d], 2: [4608 * d * d + 32 * d, 1152 * d * d + 16 * d]}
    return s16 + heads + sum(down[:k]) + sum(back.get(k, []))


def _sn_closed_form(d: int, e: int, k: int) -> int:
    total = 672 * d * d + 63 * d + (128 * d + 1) + (576 * d * d + 72 * d * e + 136 * d + 1)
    channels = 8 * d
    for _ in range(k):
        total += 16 * channels * 2 * channels + 2 * channels
        channels *= 2
    for _ in range(k):
        total += 9 * channels * (channels // 2) + channels // 2
        channels //= 2
    return total


@pytest.mark.parametrize(("d", "e"), [(1, 4), (2, 16), (3, 5)])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_closed_forms_tiny(d, e, k):
    size = 64 * 2**k
    assert _trainable(_build_d("bn.v1", d, e, size)) == _bn_closed_form(d, e, k)
    assert _trainable(_build_d("sn.v1", d, e, size)) == _sn_closed_form(d, e, k)


def test_sn_closed_form_general_depth():
    # beyond the originals: a 512 px D follows the same recursion
    assert _trainable(_build_d("sn.v1", 1, 4, 512, "meta")) == _sn_closed_form(1, 4, 3)


def test_damsm_inception_counts():
    with torch.device("meta"):
        encoder = get_registry("image_encoder").build("damsm_inception.v1", {"weights": "random"}, text_dim=256)
    assert _trainable(encoder) == 721_152
    assert _frozen(encoder) == 21_785_568
    assert _trainable(encoder.emb_features) == 196_608
    assert _trainable(encoder.emb_cnn_code) == 524_544


def test_stream_counts():
    with torch.device("meta"):
        captioner = get_registry("captioner").build("stream.v1", {"weights": "random"}, vocab_size=5450)
    assert _trainable(captioner.encoder) == 525_056
    assert _frozen(captioner.encoder) == 58_143_808
    assert _trainable(captioner.decoder) == 5_768_010
    with torch.device("meta"):
        thesis = get_registry("captioner").build("stream.v1", {"weights": "random"}, vocab_size=5453)
    assert _trainable(thesis.decoder) == 5_770_317


@pytest.mark.parametrize(("E", "H", "V"), [(8, 16, 40), (5, 7, 11)])
def test_stream_closed_forms(E, H, V):
    captioner = get_registry("captioner").build(
        "stream.v1", {"embed_size": E, "hidden_size": H, "backbone": "small", "small_width": 2}, vocab_size=V
    )
    assert _trainable(captioner.decoder) == E * V + 4 * H * (E + H) + 8 * H + H * V + V
    assert _trainable(captioner.encoder.linear) + _trainable(captioner.encoder.bn) == 16 * E + 3 * E  # F = 8·2
