"""STREAM captioner: the re-description network of MirrorGAN (Qiao et al., CVPR 2019), reused by DMM-GAN.

Show-and-Tell style (Vinyals et al. 2015), as the originals' CAPTION_CNN + CAPTION_RNN:

* ``encoder``: a frozen backbone -> pooled features (B, F) -> ``linear`` (F -> E) -> ``bn``
  BatchNorm1d(E, momentum 0.01). Backbone ``resnet152``: torchvision's ResNet-152 minus its fc,
  frozen ImageNet weights from a local file (F = 2048); ``small``: a little trainable CNN for the
  synthetic data set. The [-1, 1] image is bilinearly resized to ``resize`` and, like the
  originals, NOT ImageNet-normalised unless ``imagenet_normalize`` (although the
  captioner was pretrained on ImageNet-normalised crops).
* ``decoder``: ``embed`` Embedding(V, E), ``lstm`` LSTM(E -> H, batch_first), ``linear`` H -> V.
  Teacher forcing: inputs [f, embed(tok_0), ..., embed(tok_{L-2})] packed with the caption
  lengths (the last token is never an input); logits come out in packed, time-major order,
  matching ``pack_padded_sequence(captions, lengths).data`` as targets: f predicts tok_0.

Submodule names equal the originals' (``resnet``, ``linear``, ``bn``; ``embed``, ``lstm``,
``linear``), so original checkpoints load by adding the ``encoder.`` / ``decoder.`` prefix.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from t2i.registry import Params, register

__all__ = ["CaptionDecoder", "CaptionEncoder", "StreamCaptioner", "StreamCaptionerParams"]

RESNET152_FILE = "resnet152-394f9c45.pth"
RESNET152_URL = "https://download.pytorch.org/models/resnet152-394f9c45.pth"
WEIGHTS_NAME = "resnet152_imagenet"  # its weights manifest entry
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class StreamCaptionerParams(Params):
    embed_size: int = Field(256, description="E: image feature and word embedding size (CAP.embed_size).")
    hidden_size: int = Field(512, description="H: LSTM size (the originals build it as 2 × CAP.hidden_size = 512).")
    num_layers: int = Field(1, description="LSTM layers.")
    max_length: int = Field(20, description="Steps of greedy sampling.")
    backbone: Literal["resnet152", "small"] = Field(
        "resnet152",
        description="resnet152: frozen ImageNet ResNet-152 (originals); small: a trainable CNN for synthetic data.",
    )
    weights: str | None = Field(
        None,
        description=f"ImageNet ResNet-152 trunk (backbone resnet152): the manifest name {WEIGHTS_NAME!r} (fetched on "
        f"first use), a local file ({RESNET152_FILE}), or 'random' (tests); unset is an error.",
    )
    small_width: int = Field(32, description="Base width of the 'small' backbone.")
    resize: int | None = Field(224, description="Bilinear resize of the input image (None: keep its size).")
    imagenet_normalize: bool = Field(False, description="Apply ImageNet mean/std (the originals do not).")


def _small_backbone(width: int) -> nn.Sequential:
    """Four stride-2 conv blocks + global average pool: (B, 3, S, S) -> (B, 8·width)."""
    layers: list[nn.Module] = []
    channels = 3
    for out in (width, 2 * width, 4 * width, 8 * width):
        layers += [nn.Conv2d(channels, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1)]
    return nn.Sequential(*layers)


def _resnet152_trunk(weights: str | None) -> nn.Sequential:
    """ResNet-152 minus fc (avgpool kept), as ``nn.Sequential(*children[:-1])`` like the original."""
    from torchvision.models import resnet152

    from t2i.weights import resolve

    # resolved (and checked) before building the slow network
    path = resolve(weights, param="model.captioner.weights", what="STREAM ResNet-152 trunk", suggest=WEIGHTS_NAME)
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(
                f"STREAM captioner: ImageNet ResNet-152 weights not found at {path}. Put torchvision's "
                f"{RESNET152_FILE} ({RESNET152_URL}) at that path, or set model.captioner.weights = "
                f'"{WEIGHTS_NAME}" to have t2i fetch it into its cache folder.'
            )
    model = resnet152(weights=None)
    if path is not None:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return nn.Sequential(*list(model.children())[:-1])


class CaptionEncoder(nn.Module):
    """CAPTION_CNN: image [-1, 1] -> (B, E) features."""

    def __init__(self, params: StreamCaptionerParams, feature_dim: int | None = None):
        super().__init__()
        self.params = params
        if params.backbone == "resnet152":
            self.resnet = _resnet152_trunk(params.weights)
            self.resnet.requires_grad_(False)  # frozen ImageNet trunk
            self.pretrained = params.weights not in (None, "random")
            feature_dim = 2048
        else:
            self.resnet = _small_backbone(params.small_width)
            self.pretrained = False
            feature_dim = feature_dim or 8 * params.small_width
        self.linear = nn.Linear(feature_dim, params.embed_size)
        self.bn = nn.BatchNorm1d(params.embed_size, momentum=0.01)

    def backbone(self, images: Tensor) -> Tensor:  # (B, 3, H, W) in [-1, 1] -> (B, F)
        x = images
        if self.params.resize is not None:
            x = F.interpolate(x, size=(self.params.resize, self.params.resize), mode="bilinear", align_corners=False)
        if self.params.imagenet_normalize:
            mean = x.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
            std = x.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
            x = ((x + 1) / 2 - mean) / std
        return self.resnet(x).flatten(1)

    def head(self, pooled: Tensor) -> Tensor:  # (B, F) -> (B, E)
        return self.bn(self.linear(pooled))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))


class CaptionDecoder(nn.Module):
    """CAPTION_RNN(E, H, V, num_layers): teacher-forced logits and greedy sampling."""

    def __init__(self, embed_size: int, hidden_size: int, vocab_size: int, num_layers: int, max_length: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.lstm = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True)
        self.linear = nn.Linear(hidden_size, vocab_size)
        self.max_length = max_length

    def forward(self, features: Tensor, captions: Tensor, lengths: Tensor) -> Tensor:
        """features (B, E), captions (B, L), lengths (B,) descending -> logits (Σ lengths, V), packed order."""
        inputs = torch.cat((features.unsqueeze(1), self.embed(captions)), dim=1)  # (B, L+1, E)
        packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True)
        hiddens, _ = self.lstm(packed)
        return self.linear(hiddens.data)

    @torch.no_grad()
    def sample(self, features: Tensor, max_length: int | None = None) -> Tensor:
        """Greedy decoding: (B, E) -> token ids (B, max_length)."""
        inputs = features.unsqueeze(1)
        states = None
        tokens = []
        for _ in range(max_length or self.max_length):
            hiddens, states = self.lstm(inputs, states)
            predicted = self.linear(hiddens.squeeze(1)).argmax(dim=1)
            tokens.append(predicted)
            inputs = self.embed(predicted).unsqueeze(1)
        return torch.stack(tokens, dim=1)


def packed_targets(captions: Tensor, lengths: Tensor) -> Tensor:
    """The ground-truth tokens in the decoder's packed order: (Σ lengths,)."""
    return pack_padded_sequence(captions, lengths.cpu(), batch_first=True).data


class StreamCaptioner(nn.Module):
    """``stream.v1``: ``encode(images) -> (B, E)``, ``forward(features, captions, lengths) -> (Σ L, V)``."""

    def __init__(self, params: StreamCaptionerParams, *, vocab_size: int, feature_dim: int | None = None):
        super().__init__()
        self.params = params
        self.encoder = CaptionEncoder(params, feature_dim)
        self.decoder = CaptionDecoder(
            params.embed_size, params.hidden_size, vocab_size, params.num_layers, params.max_length
        )

    @property
    def pretrained(self) -> bool:
        return self.encoder.pretrained

    def encode(self, images: Tensor) -> Tensor:  # (B, 3, H, W) in [-1, 1] -> (B, E)
        return self.encoder(images)

    def forward(self, features: Tensor, captions: Tensor, lengths: Tensor) -> Tensor:
        return self.decoder(features, captions, lengths)

    def sample(self, features: Tensor, max_length: int | None = None) -> Tensor:
        return self.decoder.sample(features, max_length)

    def load_original_head(self, encoder_state: dict[str, Tensor], decoder_state: dict[str, Tensor]) -> None:
        """Load original ``encoder-*.ckpt`` / ``decoder-*.ckpt`` dicts; a missing ``resnet.*`` keeps the trunk."""
        missing, unexpected = self.encoder.load_state_dict(encoder_state, strict=False)
        bad_missing = [k for k in missing if not k.startswith("resnet.")]
        if bad_missing or unexpected:
            raise KeyError(f"captioner encoder state: missing {bad_missing}, unexpected {unexpected}")
        self.decoder.load_state_dict(decoder_state, strict=True)


register(
    "captioner",
    "stream.v1",
    StreamCaptioner,
    params=StreamCaptionerParams,
    description="STREAM captioner: frozen CNN + linear/BN encoder and LSTM decoder (MirrorGAN, DMM-GAN)",
)
