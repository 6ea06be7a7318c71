"""DAMSM image encoders (Xu et al., "AttnGAN", CVPR 2018: the image encoder of the DAMSM).

``damsm_inception.v1`` is the originals' CNN_ENCODER: torchvision's Inception-v3 trunk, frozen,
cut where the original cuts it —

    resize to 299 (bilinear) -> Conv2d_1a .. Conv2d_4a, Mixed_5b .. Mixed_6e -> (B, 768, 17, 17)
        -> emb_features  = conv1x1(768 -> e, no bias)           -> regions (B, e, 17, 17)
    Mixed_7a .. Mixed_7c -> avg pool 8×8 -> (B, 2048)
        -> emb_cnn_code = Linear(2048 -> e)                      -> global code (B, e)

The [-1, 1] image goes in without ImageNet re-normalisation (the Google weights expect [-1, 1]).
``align_corners`` of the resize is a parameter (True in DM-GAN/DMM-GAN, False in the modern
PyTorch reading of AttnGAN/MirrorGAN). Layer names equal the original's, so an original
``image_encoder*.pth`` loads unchanged.

``cnn_small.v1`` is a small, fully trainable CNN with the same output contract for the 32-128 px
synthetic data set (no ImageNet weights needed).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from t2i.ops import fold_batchnorm, frozen_conv_relu, frozen_pool_conv1x1_relu
from t2i.registry import Params, register

__all__ = ["DamsmInceptionEncoder", "DamsmInceptionParams", "SmallCnnEncoder", "SmallCnnParams"]

INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"
INCEPTION_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
WEIGHTS_NAME = "inception_v3_imagenet"  # its weights manifest entry
TRUNK_LAYERS = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
)


class DamsmInceptionParams(Params):
    weights: str | None = Field(
        None,
        description=f"ImageNet Inception-v3 trunk: the manifest name {WEIGHTS_NAME!r} (fetched on first use), a "
        f"local file ({INCEPTION_FILE} or the older inception_v3_google-1a9a5a14.pth), or 'random' (tests); "
        "unset is an error.",
    )
    align_corners: bool = Field(True, description="align_corners of the bilinear resize to 299 (recipes pick).")


@functools.cache
def _folding_basic_conv():
    """torchvision's ``BasicConv2d`` (conv → BN(ε 1e-3) → ReLU; same parameters and keys) that, frozen in eval mode,
    runs as one conv with its BatchNorm folded in (:func:`~t2i.ops.fold_batchnorm`) and keeps only the ReLU's 1-byte
    mask for backward (:func:`~t2i.ops.frozen_conv_relu`): the frozen encoder scores the fake images on every
    generator step, and backward runs through it to the pixels."""
    from torchvision.models.inception import BasicConv2d

    class FoldingBasicConv2d(BasicConv2d):
        def forward(self, x: Tensor) -> Tensor:
            folded = fold_batchnorm(self.conv, self.bn)
            if folded is None:
                return super().forward(x)
            c = self.conv
            return frozen_conv_relu(x, *folded, c.stride, c.padding, c.dilation, c.groups)

    return FoldingBasicConv2d


def _pool_branch(block: nn.Module, x: Tensor) -> Tensor:
    """``block.branch_pool(avg_pool3x3(x))``; folded, the pool runs after the 1x1 conv (they commute)."""
    branch = block.branch_pool
    folded = fold_batchnorm(branch.conv, branch.bn)
    if folded is None:
        return branch(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
    return frozen_pool_conv1x1_relu(x, *folded)


@functools.cache
def _pool_last_blocks() -> tuple[type, type, type]:
    """torchvision's InceptionA/C/E (same layers and keys) whose pool branch goes through :func:`_pool_branch`."""
    from torchvision.models import inception as tv

    class InceptionA(tv.InceptionA):
        def _forward(self, x: Tensor) -> list[Tensor]:
            b5x5 = self.branch5x5_2(self.branch5x5_1(x))
            b3x3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return [self.branch1x1(x), b5x5, b3x3, _pool_branch(self, x)]

    class InceptionC(tv.InceptionC):
        def _forward(self, x: Tensor) -> list[Tensor]:
            b7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            b7x7dbl = self.branch7x7dbl_1(x)
            for name in ("branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5"):
                b7x7dbl = getattr(self, name)(b7x7dbl)
            return [self.branch1x1(x), b7x7, b7x7dbl, _pool_branch(self, x)]

    class InceptionE(tv.InceptionE):
        def _forward(self, x: Tensor) -> list[Tensor]:
            b3x3 = self.branch3x3_1(x)
            b3x3 = torch.cat((self.branch3x3_2a(b3x3), self.branch3x3_2b(b3x3)), 1)
            b3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            b3x3dbl = torch.cat((self.branch3x3dbl_3a(b3x3dbl), self.branch3x3dbl_3b(b3x3dbl)), 1)
            return [self.branch1x1(x), b3x3, b3x3dbl, _pool_branch(self, x)]

    return InceptionA, InceptionC, InceptionE


def _inception(**kwargs) -> nn.Module:
    from torchvision.models import inception as tv

    conv = _folding_basic_conv()
    a, c, e = _pool_last_blocks()
    # Inception3 hands inception_blocks[0] to the stem only: the Mixed blocks get it through their own conv_block
    mixed = [functools.partial(block, conv_block=conv) for block in
             (a, tv.InceptionB, c, tv.InceptionD, e, tv.InceptionAux)]  # fmt: skip
    blocks = [conv, *mixed]
    return tv.inception_v3(weights=None, aux_logits=False, init_weights=False, inception_blocks=blocks, **kwargs)


def _load_inception(weights: str | None) -> nn.Module:
    from t2i.weights import resolve

    path = resolve(weights, param="model.image_encoder.weights", what="DAMSM Inception-v3 trunk", suggest=WEIGHTS_NAME)
    if path is None:
        return _inception()
    if not path.is_file():
        raise FileNotFoundError(
            f"DAMSM image encoder: ImageNet Inception-v3 weights not found at {path}. Put torchvision's "
            f"{INCEPTION_FILE} ({INCEPTION_URL}) at that path, or set model.image_encoder.weights = "
            f'"{WEIGHTS_NAME}" to have t2i fetch it into its cache folder.'
        )
    model = _inception()
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, _ = model.load_state_dict(state, strict=False)  # AuxLogits.* / fc.* are not used
    missing = [k for k in missing if k.split(".")[0] in TRUNK_LAYERS]
    if missing:
        raise KeyError(f"{path} is not an Inception-v3 state dict: missing {missing[:5]} ...")
    return model


class DamsmInceptionEncoder(nn.Module):
    """CNN_ENCODER(e): images [-1, 1] -> regions (B, e, 17, 17), global code (B, e)."""

    def __init__(self, params: DamsmInceptionParams, *, text_dim: int):
        super().__init__()
        self.params = params
        inception = _load_inception(params.weights)
        for name in TRUNK_LAYERS:
            self.add_module(name, getattr(inception, name))
            getattr(self, name).requires_grad_(False)  # frozen from construction, as the original
        self.pretrained = params.weights not in (None, "random")
        self.emb_features = nn.Conv2d(768, text_dim, kernel_size=1, bias=False)
        self.emb_cnn_code = nn.Linear(2048, text_dim)
        nn.init.uniform_(self.emb_features.weight, -0.1, 0.1)
        nn.init.uniform_(self.emb_cnn_code.weight, -0.1, 0.1)

    def trunk(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) [-1, 1] -> Mixed_6e map (B, 768, 17, 17), pooled Mixed_7c (B, 2048)."""
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=self.params.align_corners)
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = getattr(self, name)(x)
        mixed_6e = x  # (B, 768, 17, 17)
        for name in ("Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        pooled = F.avg_pool2d(x, kernel_size=8).flatten(1)  # (B, 2048)
        return mixed_6e, pooled

    def project(self, mixed_6e: Tensor, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """The two trainable heads: (B, 768, 17, 17), (B, 2048) -> regions (B, e, 17, 17), global (B, e)."""
        return self.emb_features(mixed_6e), self.emb_cnn_code(pooled)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.project(*self.trunk(images))


class SmallCnnParams(Params):
    width: int = Field(32, description="Base channel width of the trunk.")
    regions: int = Field(8, description="Side R of the R×R region grid.")


def _down(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False), nn.BatchNorm2d(out_ch), nn.LeakyReLU(0.2))


class SmallCnnEncoder(nn.Module):
    """``cnn_small.v1``: trainable conv trunk, same contract as CNN_ENCODER, for small synthetic images.

    Local features come from a mid-level map pooled to R×R (like Mixed_6e), the global code from a
    deeper, globally pooled map (like Mixed_7c).
    """

    def __init__(self, params: SmallCnnParams, *, text_dim: int):
        super().__init__()
        self.params = params
        w = params.width
        self.local_trunk = nn.Sequential(_down(3, w), _down(w, 2 * w), _down(2 * w, 4 * w))
        self.global_trunk = nn.Sequential(_down(4 * w, 8 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.emb_features = nn.Conv2d(4 * w, text_dim, kernel_size=1, bias=False)
        self.emb_cnn_code = nn.Linear(8 * w, text_dim)
        self.pretrained = False

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:  # (B, 3, S, S) -> (B, e, R, R), (B, e)
        local = F.adaptive_avg_pool2d(self.local_trunk(images), self.params.regions)  # (B, 4w, R, R)
        return self.emb_features(local), self.emb_cnn_code(self.global_trunk(local))


register(
    "image_encoder",
    "damsm_inception.v1",
    DamsmInceptionEncoder,
    params=DamsmInceptionParams,
    description="DAMSM CNN_ENCODER: frozen Inception-v3 trunk + region (768->e) and global (2048->e) heads",
)
register(
    "image_encoder",
    "cnn_small.v1",
    SmallCnnEncoder,
    params=SmallCnnParams,
    description="Small trainable CNN with the DAMSM encoder's outputs (regions R×R, global code), for synthetic data",
)
