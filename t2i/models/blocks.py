"""Generator building blocks shared by every model (models.md §2).

Submodule layouts (``nn.Sequential`` indices) follow the originals so that original
state dicts map onto these modules by renaming prefixes only (t2i/legacy/generator.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GLU(nn.Module):
    """Gated linear unit over channels: ``a * σ(b)`` for ``[a, b] = split(x, 2, dim=1)``."""

    def forward(self, x: Tensor) -> Tensor:
        channels = x.size(1)
        if channels % 2:
            raise ValueError(f"GLU needs an even number of channels, got {channels}")
        half = channels // 2
        return x[:, :half] * torch.sigmoid(x[:, half:])


def conv3x3(in_channels: int, out_channels: int, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution, stride 1, padding 1 (no bias on the generator side)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)


def conv1x1(in_channels: int, out_channels: int, bias: bool = False) -> nn.Conv2d:
    """1x1 convolution (no bias unless asked)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0, bias=bias)


def up_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Nearest x2 upsample -> conv3x3(i, 2o) -> BN -> GLU: (B, i, H, W) -> (B, o, 2H, 2W)."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        conv3x3(in_channels, out_channels * 2),
        nn.BatchNorm2d(out_channels * 2),
        GLU(),
    )


class ResBlock(nn.Module):
    """conv3x3(C, 2C) -> BN -> GLU -> conv3x3(C, C) -> BN, plus the input (no activation after the sum)."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            conv3x3(channels, channels * 2),
            nn.BatchNorm2d(channels * 2),
            GLU(),
            conv3x3(channels, channels),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return self.block(x) + x


def image_head(channels: int) -> nn.Sequential:
    """GET_IMAGE_G: conv3x3(g, 3) -> tanh, images in [-1, 1]."""
    return nn.Sequential(conv3x3(channels, 3), nn.Tanh())
