"""A user refiner: word attention whose context is gated per pixel before it joins the image features.

Register it from your own file and use it from a recipe:

    t2i components refiner --code docs/examples/my_refiner.py
    t2i train docs/examples/my_refiner.toml --code docs/examples/my_refiner.py
"""

import torch
from pydantic import Field
from torch import nn

import t2i
from t2i.registry import Params


class GatedAttentionParams(Params):
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the word attention")


@t2i.register("refiner", "gated_attention.v1", params=GatedAttentionParams,
              description="word attention with a per-pixel sigmoid gate on the context (docs/extending.md)")
class GatedAttention(nn.Module):
    def __init__(self, params: GatedAttentionParams, *, image_dim: int, word_dim: int, cond_dim: int, size: int):
        super().__init__()
        self.temperature = params.temperature
        self.project_words = nn.Conv1d(word_dim, image_dim, 1, bias=False)  # u_t = W e_t
        self.gate = nn.Conv2d(2 * image_dim, 1, 1)

    def forward(self, h, words, mask, c_code):
        B, g, H, W = h.shape
        u = self.project_words(words)  # (B, g, T)
        scores = torch.bmm(h.flatten(2).transpose(1, 2), u) / self.temperature  # (B, HW, T)
        scores = scores.masked_fill(mask[:, None, :], float("-inf"))
        attention = scores.softmax(dim=2)  # (B, HW, T)
        context = torch.bmm(u, attention.transpose(1, 2)).view(B, g, H, W)
        gate = torch.sigmoid(self.gate(torch.cat([h, context], 1)))
        joined = torch.cat([h, gate * context], 1)  # (B, 2g, H, W): the residual trunk's input
        return joined, attention.transpose(1, 2).reshape(B, -1, H, W)
