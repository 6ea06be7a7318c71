"""Original ``text_encoder*.pth`` (RNN_ENCODER) <-> ``rnn.v1``: identical names (``encoder``, ``rnn``)."""

from __future__ import annotations

from t2i.legacy import StateDict, register_converter


def text_encoder_to_t2i(state_dict: StateDict) -> StateDict:
    return dict(state_dict)


def text_encoder_to_original(state_dict: StateDict) -> StateDict:
    return dict(state_dict)


register_converter("text_encoder", text_encoder_to_t2i, text_encoder_to_original)
