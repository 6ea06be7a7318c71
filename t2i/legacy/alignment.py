"""Original alignment-network checkpoints <-> t2i (DAMSM image encoder, STREAM captioner).

* ``image_encoder``: the original ``image_encoder*.pth`` holds the whole CNN_ENCODER (Inception
  layers ``Conv2d_1a_3x3.*`` .. ``Mixed_7c.*`` incl. their BatchNorm statistics, which drift in
  DAMSM pretraining (Q11), plus ``emb_features.*`` and ``emb_cnn_code.*``). ``damsm_inception.v1``
  uses the same names: identity.
* ``captioner``: the originals save two files, ``encoder-*.ckpt`` (``resnet.*``, ``linear.*``,
  ``bn.*``) and ``decoder-*.ckpt`` (``embed.*``, ``lstm.*``, ``linear.*``). Their combined
  "original" form is one dict with the trainers' module prefixes ``caption_cnn.`` / ``caption_rnn.``
  (as in the golden fixtures): ``merge_stream_checkpoints`` builds it from the two files and
  ``split_stream_checkpoint`` gives them back. In t2i the prefixes are ``encoder.`` / ``decoder.``.
"""

from __future__ import annotations

from t2i.legacy import LegacyError, StateDict, register_converter, rename_prefixes

__all__ = ["merge_stream_checkpoints", "split_stream_checkpoint"]

_CAPTIONER_RULES = [("caption_cnn.", "encoder."), ("caption_rnn.", "decoder.")]
_CAPTIONER_BACK = [(new, old) for old, new in _CAPTIONER_RULES]


def image_encoder_to_t2i(state_dict: StateDict) -> StateDict:
    return dict(state_dict)


def image_encoder_to_original(state_dict: StateDict) -> StateDict:
    return dict(state_dict)


def _check_prefixes(state_dict: StateDict, prefixes: tuple[str, ...], what: str) -> None:
    stray = [k for k in state_dict if not k.startswith(prefixes)]
    if stray:
        raise LegacyError(f"{what}: keys without a {' / '.join(prefixes)} prefix: {', '.join(stray[:8])}")


def captioner_to_t2i(state_dict: StateDict) -> StateDict:
    _check_prefixes(state_dict, ("caption_cnn.", "caption_rnn."), "captioner (original form)")
    return rename_prefixes(state_dict, _CAPTIONER_RULES)


def captioner_to_original(state_dict: StateDict) -> StateDict:
    _check_prefixes(state_dict, ("encoder.", "decoder."), "captioner (t2i form)")
    return rename_prefixes(state_dict, _CAPTIONER_BACK)


def merge_stream_checkpoints(encoder_state: StateDict, decoder_state: StateDict) -> StateDict:
    """``encoder-*.ckpt`` + ``decoder-*.ckpt`` state dicts -> the combined original form."""
    merged = {"caption_cnn." + k: v for k, v in encoder_state.items()}
    merged.update({"caption_rnn." + k: v for k, v in decoder_state.items()})
    return merged


def split_stream_checkpoint(state_dict: StateDict) -> tuple[StateDict, StateDict]:
    """The combined original form -> (``encoder-*.ckpt``, ``decoder-*.ckpt``) state dicts."""
    _check_prefixes(state_dict, ("caption_cnn.", "caption_rnn."), "captioner (original form)")
    encoder = {k[len("caption_cnn.") :]: v for k, v in state_dict.items() if k.startswith("caption_cnn.")}
    decoder = {k[len("caption_rnn.") :]: v for k, v in state_dict.items() if k.startswith("caption_rnn.")}
    return encoder, decoder


register_converter("image_encoder", image_encoder_to_t2i, image_encoder_to_original)
register_converter("captioner", captioner_to_t2i, captioner_to_original)
