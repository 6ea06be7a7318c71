"""Per-scale discriminators D64 / D128 / D256 / ... (the originals' ``D_NET64`` / ``D_NET128`` / ``D_NET256``).

One graph, two normalisation flavours:

* ``bn.v1`` (AttnGAN, MirrorGAN): convs without bias followed by BatchNorm (the first conv has
  none), LeakyReLU(0.2);
* ``sn.v1`` (DM-GAN, DMM-GAN): every trunk / joint conv is wrapped in the originals'
  spectral norm (t2i/models/spectral_norm.py) and has a bias; no BatchNorm.

For an input of size 64·2^k the trunk is ``img_code_s16`` (÷16, 3 → 8d channels), then k
stride-2 ``downBlock``s doubling the channels (``img_code_s32``, ``img_code_s64``, ...) and k
3×3 blocks halving them back to 8d (``img_code_s{16·2^k}_1 .. _k``): k=0,1,2 are the
originals' D_NET64/128/256. Two heads read the ``(B, 8d, 4, 4)`` code: ``UNCOND_DNET`` (a 4×4
stride-4 conv + sigmoid) and ``COND_DNET`` (jointConv on ``cat(code, s tiled to 4×4)``, then the
same output conv). Outputs are probabilities, as the originals' BCE losses expect. Module and
Sequential names are the originals', so original state dicts load unchanged.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn

from t2i.models.spectral_norm import SpectralNorm
from t2i.registry import Params, register

__all__ = ["BNDiscriminatorParams", "Discriminator", "SNDiscriminatorParams", "init_weights"]


class BNDiscriminatorParams(Params):
    unconditional: bool = Field(True, description="Own an unconditional head (all four published models do).")


class SNDiscriminatorParams(Params):
    unconditional: bool = Field(True, description="Own an unconditional head (all four published models do).")


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, padding: int, spectral: bool) -> nn.Module:
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias=spectral)
    return SpectralNorm(conv) if spectral else conv


def _conv_block(in_ch: int, out_ch: int, kernel: int, stride: int, padding: int, spectral: bool) -> nn.Sequential:
    """conv [+ BN] + LeakyReLU(0.2): downBlock (4×4/2) and Block3x3_leakRelu (3×3/1) of the originals."""
    layers = [_conv(in_ch, out_ch, kernel, stride, padding, spectral)]
    if not spectral:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


def _encode_image_by_16(d: int, spectral: bool, keep: int = 0) -> nn.Sequential:
    """img_code_s16: (B, 3, S, S) -> (B, 8d, S/16, S/16); the first conv never has BatchNorm.

    ``keep`` > 0 (images below 64 px, a t2i extension for small CPU recipes) turns the first ``keep`` of the four
    4×4/2 convs into 3×3/1 convs with the same channels, so S = 64 / 2**keep still ends at 4×4.
    """

    def spec(i: int) -> tuple[int, int, int]:  # kernel, stride, padding
        return (3, 1, 1) if i < keep else (4, 2, 1)

    layers: list[nn.Module] = [_conv(3, d, *spec(0), spectral), nn.LeakyReLU(0.2)]
    for i, (in_ch, out_ch) in enumerate(((d, 2 * d), (2 * d, 4 * d), (4 * d, 8 * d)), start=1):
        layers.extend(_conv_block(in_ch, out_ch, *spec(i), spectral))
    return nn.Sequential(*layers)


class _CondHead(nn.Module):
    """COND_DNET: jointConv(8d + e -> 8d) on [code, s tiled to 4×4], then 4×4/4 conv + sigmoid."""

    def __init__(self, d: int, text_dim: int, spectral: bool):
        super().__init__()
        self.jointConv = _conv_block(8 * d + text_dim, 8 * d, 3, 1, 1, spectral)
        self.outlogits = nn.Sequential(nn.Conv2d(8 * d, 1, kernel_size=4, stride=4), nn.Sigmoid())

    def forward(self, code: Tensor, sentence: Tensor) -> Tensor:  # (B, 8d, 4, 4), (B, e) -> (B,)
        # The originals tile to a literal 4×4; the code's own size is the same thing for 64·2^k inputs.
        tiled = sentence[:, :, None, None].expand(-1, -1, code.size(2), code.size(3))
        joint = self.jointConv(torch.cat((code, tiled), dim=1))  # condition AFTER the image code
        return self.outlogits(joint).view(-1)


class _UncondHead(nn.Module):
    """UNCOND_DNET: 4×4 stride-4 conv (with bias) + sigmoid."""

    def __init__(self, d: int):
        super().__init__()
        self.outlogits = nn.Sequential(nn.Conv2d(8 * d, 1, kernel_size=4, stride=4), nn.Sigmoid())

    def forward(self, code: Tensor) -> Tensor:  # (B, 8d, 4, 4) -> (B,)
        return self.outlogits(code).view(-1)


class Discriminator(nn.Module):
    """D for ``size`` = 64·2^k images (k ≥ -2); ``forward`` gives the (B, 8d, 4, 4) code, heads give probabilities."""

    def __init__(self, *, df_dim: int, text_dim: int, size: int, spectral: bool, unconditional: bool = True):
        super().__init__()
        k = math.log2(size / 64) if size > 0 else -99.0
        if k < -2 or k != int(k):
            raise ValueError(f"discriminator size must be 64·2^k (16, 32, 64, 128, 256, ...), got {size}")
        k = int(k)
        keep, k = max(0, -k), max(0, k)
        d = df_dim
        self.size = size
        self.spectral = spectral
        self.img_code_s16 = _encode_image_by_16(d, spectral, keep)
        self._trunk: list[str] = ["img_code_s16"]
        channels = 8 * d
        for j in range(1, k + 1):  # downBlocks: s32, s64, ...
            name = f"img_code_s{16 * 2**j}"
            self.add_module(name, _conv_block(channels, 2 * channels, 4, 2, 1, spectral))
            self._trunk.append(name)
            channels *= 2
        for i in range(1, k + 1):  # 3×3 blocks back down to 8d
            name = f"img_code_s{16 * 2**k}_{i}"
            self.add_module(name, _conv_block(channels, channels // 2, 3, 1, 1, spectral))
            self._trunk.append(name)
            channels //= 2
        self.UNCOND_DNET = _UncondHead(d) if unconditional else None
        self.COND_DNET = _CondHead(d, text_dim, spectral)
        self.apply(init_weights)

    def forward(self, images: Tensor) -> Tensor:  # (B, 3, S, S) -> (B, 8d, 4, 4)
        x = images
        for name in self._trunk:
            x = getattr(self, name)(x)
        return x

    def cond_logits(self, features: Tensor, sentence: Tensor) -> Tensor:  # -> (B,) probabilities
        return self.COND_DNET(features, sentence)

    def uncond_logits(self, features: Tensor) -> Tensor:  # -> (B,) probabilities
        if self.UNCOND_DNET is None:
            raise RuntimeError("this discriminator was built with unconditional=False: it has no unconditional head")
        return self.UNCOND_DNET(features)

    @property
    def has_unconditional(self) -> bool:
        return self.UNCOND_DNET is not None


def init_weights(module: nn.Module) -> None:
    """The originals' ``weights_init`` (``miscc/utils.py``), also reaching spectral-norm ``weight_bar``.

    Conv*: orthogonal, gain 1 (conv biases keep PyTorch defaults); BatchNorm: weight N(1, 0.02),
    bias 0; Linear: orthogonal, bias 0.
    """
    name = type(module).__name__
    weight = module._parameters.get("weight", None)
    if weight is None:
        weight = module._parameters.get("weight_bar", None)
    if "Conv" in name and weight is not None:
        nn.init.orthogonal_(weight.data, 1.0)
    elif "BatchNorm" in name and weight is not None:
        weight.data.normal_(1.0, 0.02)
        if module.bias is not None:
            module.bias.data.fill_(0)
    elif "Linear" in name and weight is not None:
        nn.init.orthogonal_(weight.data, 1.0)
        if module.bias is not None:
            module.bias.data.fill_(0.0)


def _bn_discriminator(params: BNDiscriminatorParams, *, df_dim: int, text_dim: int, size: int) -> Discriminator:
    return Discriminator(
        df_dim=df_dim, text_dim=text_dim, size=size, spectral=False, unconditional=params.unconditional
    )


def _sn_discriminator(params: SNDiscriminatorParams, *, df_dim: int, text_dim: int, size: int) -> Discriminator:
    return Discriminator(df_dim=df_dim, text_dim=text_dim, size=size, spectral=True, unconditional=params.unconditional)


register(
    "discriminator",
    "bn.v1",
    _bn_discriminator,
    params=BNDiscriminatorParams,
    description="AttnGAN/MirrorGAN discriminator: BatchNorm, bias-free convs, cond + uncond sigmoid heads",
)
register(
    "discriminator",
    "sn.v1",
    _sn_discriminator,
    params=SNDiscriminatorParams,
    description="DM-GAN/DMM-GAN discriminator: spectral-norm convs with bias, no BatchNorm, cond + uncond heads",
)
