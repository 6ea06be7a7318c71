"""Generator building blocks shared by every model (AttnGAN, Xu et al. CVPR 2018, and its descendants).

Submodule layouts (``nn.Sequential`` indices) follow the originals, so original state dicts map onto these modules
by renaming prefixes only (t2i/legacy.py). Forward passes call the performance kernels of :mod:`t2i.ops` by name;
each computes the same function as the layers it stands for.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from t2i.ops import Channels, ConcatConv2d, UpsampleConv3x3, add_channels, conv_bn, conv_bn_glu
from t2i.ops import up2_conv3x3 as up2_conv3x3  # noqa: F401  (t2i.bench imports it from here)


class GLU(nn.Module):
    """Gated linear unit over channels: ``a * σ(b)`` for ``[a, b] = split(x, 2, dim=1)``."""

    def forward(self, x: Tensor) -> Tensor:
        channels = x.size(1)
        if channels % 2:
            raise ValueError(f"GLU needs an even number of channels, got {channels}")
        return F.glu(x, dim=1)


def conv3x3(in_channels: int, out_channels: int, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution, stride 1, padding 1 (no bias on the generator side)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)


def conv1x1(in_channels: int, out_channels: int, bias: bool = False) -> nn.Conv2d:
    """1x1 convolution (no bias unless asked)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0, bias=bias)


class UpBlock(nn.Sequential):
    """upBlock: nearest x2 upsample → conv3x3(i, 2o) → BN → GLU: (B, i, H, W) → (B, o, 2H, 2W).

    The upsample happens inside the conv (:class:`~t2i.ops.UpsampleConv3x3`); index 0 stays a parameter-free
    placeholder so the Sequential indices, and therefore the original state-dict keys, are unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int):
        conv = UpsampleConv3x3(in_channels, out_channels * 2)
        super().__init__(nn.Identity(), conv, nn.BatchNorm2d(out_channels * 2), GLU())

    def forward(self, x: Tensor) -> Tensor:
        _upsample, conv, bn, _glu = self
        return conv_bn_glu(conv, bn, x)  # GLU(BN(conv3x3(up(x))))


def up_block(in_channels: int, out_channels: int) -> UpBlock:
    return UpBlock(in_channels, out_channels)


class ResBlock(nn.Module):
    """conv3x3(C, 2C) → BN → GLU → conv3x3(C, C) → BN, plus the input (no activation after the sum).

    The input may come as channel parts (:data:`~t2i.ops.Channels`), e.g. DM-GAN's duplicated ``[r; r]``: the
    first conv then runs part by part, and on r once with the two kernel halves summed.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            ConcatConv2d(channels, channels * 2, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels * 2),
            GLU(),
            conv3x3(channels, channels),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Channels) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        conv1, bn1, _glu, conv2, bn2 = self.block
        y = conv_bn_glu(conv1, bn1, x)  # GLU(BN(conv3x3(x)))
        y = conv_bn(conv2, bn2, y)  # BN(conv3x3(y))
        return add_channels(y, x)  # y + x


def image_head(channels: int) -> nn.Sequential:
    """GET_IMAGE_G: conv3x3(g, 3) -> tanh, images in [-1, 1]."""
    return nn.Sequential(conv3x3(channels, 3), nn.Tanh())
