"""``stacked.v1``: the multi-stage generator of AttnGAN, MirrorGAN, DM-GAN and DMM-GAN.

G(z, s, words, mask) = conditioning augmentation → first stage → for every further stage: refiner (from the
recipe) → R × ResBlock(2g) → upBlock(2g → g), with an image head (conv3x3 → tanh) after every stage (the
stacked generator of AttnGAN, Xu et al. CVPR 2018, fig. 2). Stage i works at ``base_size · 2**i``. The generator
knows refiners only through their contract ``refiner(h, words, mask, c_code) -> (residual input, attention)``; the
residual input is a (B, 2g, H, W) tensor or its channel parts (DM-GAN's duplicated ``(r, r)``), which the first
residual block consumes part by part.

``init_weights`` is the originals' ``weights_init``; the training loop calls it, not ``__init__``, so that loading a
checkpoint or fixture starts from the module as constructed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import Field
from torch import Tensor, nn

from t2i.models.blocks import GLU, ResBlock, image_head, up_block
from t2i.ops import RecomputeGLUOutputs, concat
from t2i.registry import Params, register


class ConditioningAugmentation(nn.Module):
    """CA_NET: μ, logvar from GLU(fc(s)); c = μ + ε ⊙ exp(logvar / 2), ε sampled in eval too."""

    def __init__(self, text_dim: int, cond_dim: int):
        super().__init__()
        self.cond_dim = cond_dim
        self.fc = nn.Linear(text_dim, cond_dim * 4, bias=True)
        self.glu = GLU()

    def forward(self, sentence: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        x = self.glu(self.fc(sentence))  # (B, 2c); gates applied before the split, as the originals do
        mu, logvar = x[:, : self.cond_dim], x[:, self.cond_dim :]
        std = torch.exp(0.5 * logvar)
        if eps is None:
            eps = torch.randn_like(std)
        return eps * std + mu, mu, logvar


class InitStage(nn.Module):
    """INIT_STAGE_G: [c ; z] → Linear → BN1d → GLU → 4×4 map → upBlocks to base_size."""

    def __init__(self, in_dim: int, gf_dim: int, base_size: int):
        super().__init__()
        if base_size < 4 or base_size & (base_size - 1):
            raise ValueError(f"base_size must be a power of two >= 4, got {base_size}")
        n_up = int(math.log2(base_size // 4))
        self.channels = gf_dim * 2**n_up  # 16g at base 64
        self.fc = nn.Sequential(
            nn.Linear(in_dim, self.channels * 4 * 4 * 2, bias=False),
            nn.BatchNorm1d(self.channels * 4 * 4 * 2),
            GLU(),
        )
        self.upsample = nn.ModuleList(
            up_block(self.channels // 2**i, self.channels // 2 ** (i + 1)) for i in range(n_up)
        )

    def forward(self, z: Tensor, c_code: Tensor) -> Tensor:
        h = self.fc(torch.cat((c_code, z), dim=1)).view(-1, self.channels, 4, 4)  # c first, then z
        for block in self.upsample:
            h = block(h)
        return h  # (B, g, base, base)


class RefinementStage(nn.Module):
    """NEXT_STAGE_G: refiner → R × ResBlock(2g) → upBlock(2g → g), doubling the resolution."""

    def __init__(self, refiner: nn.Module, gf_dim: int, res_blocks: int):
        super().__init__()
        self.refiner = refiner
        self.residual = nn.Sequential(*(ResBlock(gf_dim * 2) for _ in range(res_blocks)))
        self.upsample = up_block(gf_dim * 2, gf_dim)

    def forward(self, h: Tensor, words: Tensor, mask: Tensor | None, c_code: Tensor) -> tuple[Tensor, Tensor]:
        joined, attention = self.refiner(h, words, mask, c_code)  # (B, 2g, H, W) or its parts, (B, T, H, W)
        x = self.residual(joined) if len(self.residual) else concat(joined)
        return self.upsample(x), attention


@dataclass
class GeneratorOutput:
    images: list[Tensor]  # one per stage, (B, 3, S_i, S_i) in [-1, 1]
    attention: list[Tensor]  # one per refinement stage, (B, T, S_{i-1}, S_{i-1})
    mu: Tensor  # (B, c)
    logvar: Tensor  # (B, c)
    c_code: Tensor  # (B, c)


class GeneratorParams(Params):
    res_blocks: int = Field(2, ge=0, description="residual blocks per refinement stage (R_NUM)")


class StackedGenerator(nn.Module):
    """CA → first stage → refinement stages, an image head per stage."""

    def __init__(
        self,
        params: GeneratorParams,
        *,
        z_dim: int,
        cond_dim: int,
        text_dim: int,
        gf_dim: int,
        stages: int,
        base_size: int,
        refiner: Callable[[int, int], nn.Module],
    ):
        super().__init__()
        if stages < 1:
            raise ValueError(f"a generator needs at least one stage, got stages={stages}")
        self.z_dim = z_dim
        self.ca_net = ConditioningAugmentation(text_dim, cond_dim)
        self.init_stage = InitStage(z_dim + cond_dim, gf_dim, base_size)
        # refiner(stage_index, size): stage_index counts all stages (the first stage is 0), size is its input H=W.
        self.stages = nn.ModuleList(
            RefinementStage(refiner(i, base_size * 2 ** (i - 1)), gf_dim, params.res_blocks) for i in range(1, stages)
        )
        self.image_heads = nn.ModuleList(image_head(gf_dim) for _ in range(stages))

    def forward(
        self, z: Tensor, sentence: Tensor, words: Tensor, mask: Tensor | None, eps: Tensor | None = None
    ) -> GeneratorOutput:
        if self.training and torch.is_grad_enabled():
            with RecomputeGLUOutputs():  # convs after a BN+GLU keep no copy of its output
                return self._forward(z, sentence, words, mask, eps)
        return self._forward(z, sentence, words, mask, eps)

    def _forward(
        self, z: Tensor, sentence: Tensor, words: Tensor, mask: Tensor | None, eps: Tensor | None
    ) -> GeneratorOutput:
        c_code, mu, logvar = self.ca_net(sentence, eps)
        h = self.init_stage(z, c_code)
        images = [self.image_heads[0](h)]
        attention = []
        for stage, head in zip(self.stages, self.image_heads[1:], strict=True):
            h, att = stage(h, words, mask, c_code)
            images.append(head(h))
            attention.append(att)
        return GeneratorOutput(images=images, attention=attention, mu=mu, logvar=logvar, c_code=c_code)


register(
    "generator",
    "stacked.v1",
    StackedGenerator,
    params=GeneratorParams,
    description="Multi-stage generator: CA, first stage, refiner + residual blocks + upsampling per further stage",
)


@torch.no_grad()
def init_weights(module: nn.Module) -> nn.Module:
    """The originals' ``weights_init``: orthogonal conv/linear weights (gain 1), BN weight N(1, 0.02).

    Conv biases keep PyTorch's defaults; Linear biases and BN biases are zeroed. Spectral-norm convs
    are initialised through their trainable ``weight_bar``. Apply with ``init_weights(model)``.
    """
    for sub in module.modules():
        name = type(sub).__name__
        if "Conv" in name:
            weight = getattr(sub, "weight_bar", None)
            if weight is None:
                weight = getattr(sub, "weight", None)
            if isinstance(weight, Tensor):
                nn.init.orthogonal_(weight, 1.0)
        elif "BatchNorm" in name:
            if sub.weight is not None:
                sub.weight.normal_(1.0, 0.02)
                sub.bias.fill_(0)
        elif isinstance(sub, nn.Linear):
            nn.init.orthogonal_(sub.weight, 1.0)
            if sub.bias is not None:
                sub.bias.fill_(0.0)
    return module
