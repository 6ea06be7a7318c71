"""A convolution over a channel concatenation ``[a; b; ...]``, computed part by part.

A convolution is linear in its input channels, so with the kernel split by input channels W = [W_a, W_b, ...]::

    conv([a; b; ...]; W, bias) = conv(a; W_a, bias) + conv(b; W_b) + ...

and a part given twice, as in DM-GAN's residual input [r; r], is one conv with the summed kernel slices::

    conv([r; r]; W, bias) = conv(r; W_1 + W_2, bias)

Same function to float rounding, without the concatenated copy, which autograd would otherwise keep for the weight
gradient next to the parts it keeps anyway (and, for [r; r], with half the multiply-adds). A refiner can so write
the paper's ``[o; r]`` as a tuple of tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Channels = Tensor | Sequence[Tensor]  # a (B, C, H, W) tensor, or its channel parts: the tensor is their concatenation


class ConcatConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters and keys) whose input may be given as channel parts (:data:`Channels`)."""

    def _conv_forward(self, x: Channels, weight: Tensor, bias: Tensor | None) -> Tensor:  # nn.Conv2d.forward calls it
        if isinstance(x, Tensor):
            return super()._conv_forward(x, weight, bias)
        if self.padding_mode != "zeros":
            raise ValueError(f"{type(self).__name__} over channel parts needs padding_mode='zeros'")
        return conv2d_of_concat(x, weight, bias, self.stride, self.padding, self.dilation)


class ConcatConv1x1(ConcatConv2d):
    """1x1 :class:`ConcatConv2d`: ``ConcatConv1x1(2g, 1)((r, o))`` equals ``conv1x1(2g, 1)(torch.cat((r, o), 1))``."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)


def conv2d_of_concat(parts: Sequence[Tensor], weight: Tensor, bias: Tensor | None, stride=1, padding=0, dilation=1):
    """``F.conv2d(torch.cat(parts, 1), weight, bias, ...)`` as one conv per distinct part (groups = 1)."""
    kernels: list[tuple[Tensor, Tensor]] = []  # (part, its summed kernel slices), parts in first-seen order
    start = 0
    for part in parts:
        width = part.shape[1]
        piece = weight[:, start : start + width]
        start += width
        same = next((i for i, (seen, _) in enumerate(kernels) if seen is part), None)
        if same is None:
            kernels.append((part, piece))
        else:
            kernels[same] = (part, kernels[same][1] + piece)
    if start != weight.shape[1]:
        raise ValueError(f"conv over channel parts: the parts have {start} channels, the conv takes {weight.shape[1]}")
    out = None
    for i, (part, kernel) in enumerate(kernels):
        term = F.conv2d(part, kernel, bias if i == 0 else None, stride, padding, dilation)
        out = term if out is None else out + term
    return out


def add_channels(y: Tensor, x: Channels) -> Tensor:
    """``y + x`` for x given as a tensor or as channel parts (never building their concatenation)."""
    if isinstance(x, Tensor):
        return y + x
    widths = [part.shape[1] for part in x]
    return torch.cat([y_part + part for y_part, part in zip(y.split(widths, dim=1), x, strict=True)], dim=1)


def concat(x: Channels) -> Tensor:
    """The tensor that x stands for: x itself, or the concatenation of its parts."""
    return x if isinstance(x, Tensor) else torch.cat(tuple(x), dim=1)
