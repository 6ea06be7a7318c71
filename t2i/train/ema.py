"""Exponential moving average of the generator (as the originals' trainers keep it; StyleGAN's half-life option).

The originals average parameters only (decay 0.999, no bias correction) and pair the averaged parameters with the
live BatchNorm buffers; ``include_buffers`` averages the floating-point buffers too.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(decay: float, half_life_steps: float | None) -> float:
    return 0.5 ** (1.0 / half_life_steps) if half_life_steps else decay


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, include_buffers: bool = False):
        self.decay = decay
        self.include_buffers = include_buffers
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = list(self.model.parameters())
        live_params = list(model.parameters())
        torch._foreach_lerp_(ema_params, live_params, 1.0 - self.decay)  # avg <- d*avg + (1-d)*theta
        for ema_buf, live_buf in zip(self.model.buffers(), model.buffers(), strict=True):
            if self.include_buffers and ema_buf.is_floating_point():
                ema_buf.lerp_(live_buf, 1.0 - self.decay)
            else:
                ema_buf.copy_(live_buf)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
