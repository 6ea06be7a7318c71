"""``rnn.v1``: the DAMSM bidirectional-LSTM text encoder (AttnGAN, Xu et al., CVPR 2018, DAMSM "text encoder").

Embedding(V, 300) (init U(-0.1, 0.1)) → Dropout on the embeddings → packed bidirectional 1-layer
LSTM (or GRU) with e/2 units per direction → unpacked. Word features are ``[h_fwd_t ; h_bwd_t]``
for T = max(lengths) steps, exactly 0 beyond each caption's length; the sentence embedding is
``[h_fwd at the last real token ; h_bwd at token 0]``. Module names (``encoder``, ``drop``,
``rnn``) follow the original ``RNN_ENCODER`` so original weights load without renaming.
The vocabulary is not a concern of this module: it travels with the weights in checkpoints.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from t2i.registry import Params, register


class RnnEncoderParams(Params):
    word_dim: int = Field(300, ge=1, description="word-embedding size (ninput)")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout on the word embeddings (train mode only)")
    rnn_type: Literal["lstm", "gru"] = Field("lstm", description="recurrent cell")


class RnnTextEncoder(nn.Module):
    """Token ids (B, L) + lengths (B,) → words (B, e, T), sentence (B, e)."""

    def __init__(self, params: RnnEncoderParams, *, vocab_size: int, text_dim: int):
        super().__init__()
        if text_dim % 2:
            raise ValueError(f"text_dim must be even (two directions of text_dim/2 units), got {text_dim}")
        self.text_dim = text_dim
        self.encoder = nn.Embedding(vocab_size, params.word_dim)
        self.drop = nn.Dropout(params.dropout)
        rnn_class = nn.LSTM if params.rnn_type == "lstm" else nn.GRU
        self.rnn = rnn_class(params.word_dim, text_dim // 2, num_layers=1, batch_first=True, bidirectional=True)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)

    def forward(self, captions: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        embedded = self.drop(self.encoder(captions))  # (B, L, 300)
        packed = pack_padded_sequence(embedded, lengths.detach().cpu(), batch_first=True, enforce_sorted=False)
        output, hidden = self.rnn(packed)
        output, _ = pad_packed_sequence(output, batch_first=True)  # (B, T, e), zeros beyond each length
        h_n = hidden[0] if isinstance(hidden, tuple) else hidden  # (2, B, e/2)
        words = output.transpose(1, 2).contiguous()  # (B, e, T)
        sentence = h_n.transpose(0, 1).reshape(-1, self.text_dim)  # (B, e) = [forward ; backward]
        return words, sentence


register(
    "text_encoder",
    "rnn.v1",
    RnnTextEncoder,
    params=RnnEncoderParams,
    description="DAMSM bi-LSTM text encoder: word features and a sentence embedding",
)
