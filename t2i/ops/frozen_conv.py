"""Frozen convolution + ReLU whose backward gives the input gradient only.

    frozen_conv_relu(x, W, b)          = relu(conv2d(x, W, b))
    frozen_pool_conv1x1_relu(x, W, b)  = relu(conv1x1(avg_pool3x3(x), W) + b)   (zero padding counted in the mean)

A frozen network still sits in the generator's graph: the DAMSM image encoder scores the fake images, so backward
runs through it to the pixels. Autograd's conv keeps its input for backward even when the weight is frozen, and
ReLU keeps its float output; the input gradient needs neither: ∂L/∂x = conv2d_input(W, ∂L/∂y ⊙ [y > 0]). These ops
keep the 1-byte mask [y > 0] instead: a quarter of the bytes of one activation per layer, where autograd keeps one
to two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from t2i.runtime import autocast_inputs


def _input_grad_only(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Autograd is recording, x needs a gradient and the weight and bias do not."""
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    return frozen and x.requires_grad and torch.is_grad_enabled()


class _FrozenConvReLU(torch.autograd.Function):
    """``relu(conv2d(x, weight, bias))`` with a frozen weight and bias; backward gives ∂L/∂x only."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups) -> Tensor:
        y = F.relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups), inplace=True)
        ctx.save_for_backward(y > 0, weight)
        ctx.conv = (x.shape, stride, padding, dilation, groups)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        mask, weight = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conv
        # relu's backward (threshold_backward: the gradient where the output is positive), then conv's input gradient
        masked = grad.masked_fill(~mask, 0)
        grad_x = torch.nn.grad.conv2d_input(shape, weight, masked, stride, padding, dilation, groups)
        return grad_x, None, None, None, None, None, None


def frozen_conv_relu(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride=1, padding=0, dilation=1, groups=1
) -> Tensor:
    """``F.relu(F.conv2d(x, weight, bias, ...))`` keeping only a bool mask for backward when the weights are frozen.

    Falls back to the plain composition when the weight or bias needs a gradient, or when nothing does.
    """
    if _input_grad_only(x, weight, bias):
        x, weight, bias = autocast_inputs(x, weight, bias)  # mixed precision: one type in backward
        return _FrozenConvReLU.apply(x, weight, bias, stride, padding, dilation, groups)
    return F.relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups), inplace=True)


class _FrozenConvPoolReLU(torch.autograd.Function):
    """``relu(avg_pool3x3(conv1x1(x)) + bias)``: Inception's pool branch with the pool moved after its 1x1 conv."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        y = F.avg_pool2d(F.conv2d(x, weight), kernel_size=3, stride=1, padding=1)
        y = F.relu(y if bias is None else y.add_(bias[:, None, None]), inplace=True)
        ctx.save_for_backward(y > 0, weight)
        ctx.shape = x.shape
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        mask, weight = ctx.saved_tensors
        # a 3x3, stride 1, zero-padded mean that counts the padding is its own adjoint
        pooled = F.avg_pool2d(grad.masked_fill(~mask, 0), kernel_size=3, stride=1, padding=1)
        return torch.nn.grad.conv2d_input(ctx.shape, weight, pooled), None, None


def frozen_pool_conv1x1_relu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``relu(conv1x1(avg_pool3x3(x)) + bias)`` (Inception's pool branch, zero padding counted in the mean).

    A 1x1 conv and that mean commute, so the pool runs on the conv's output, which has 4-10x fewer channels than the
    block input in Inception-v3, and backward keeps only the ReLU mask (frozen weights) instead of the block input.
    """
    if weight.shape[-2:] != (1, 1):
        raise ValueError(f"frozen_pool_conv1x1_relu needs a 1x1 kernel, got {tuple(weight.shape[-2:])}")
    if _input_grad_only(x, weight, bias):
        x, weight, bias = autocast_inputs(x, weight, bias)
        return _FrozenConvPoolReLU.apply(x, weight, bias)
    y = F.avg_pool2d(F.conv2d(x, weight), kernel_size=3, stride=1, padding=1)
    return F.relu(y if bias is None else y + bias[:, None, None], inplace=True)
