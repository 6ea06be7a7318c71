"""The originals' checkpoint files: safe loading, key maps to t2i's modules, strict loading.

The AttnGAN, MirrorGAN, DM-GAN and DMM-GAN trainers save plain ``state_dict()`` files. t2i's modules keep the
originals' sub-module names wherever they exist (``rnn``, ``fc.0``, ``residual.0.block.3``, ``A``, ``M_r``,
``img_code_s16``...), so only two kinds of file need their keys moved; every other kind maps by identity:

* ``generator`` (``netG_epoch_*.pth``, the released ``bird_DMGAN.pth``...): G_NET's stage prefixes, below.
* ``captioner``: the STREAM trainer's two files (``encoder-*.ckpt``, ``decoder-*.ckpt``) combined under the
  prefixes its GAN trainers use (``caption_cnn.`` / ``caption_rnn.``) become t2i's ``encoder.`` / ``decoder.``.

=============================  ===============================
original G_NET key             t2i ``stacked.v1`` key
=============================  ===============================
``ca_net.*``                   ``ca_net.*``
``h_net1.fc.*``                ``init_stage.fc.*``
``h_net1.upsample{k}.*``       ``init_stage.upsample.{k-1}.*``
``img_net{k}.img.*``           ``image_heads.{k-1}.*``
``h_net{k}.residual.*``        ``stages.{k-2}.residual.*``   (k >= 2)
``h_net{k}.upsample.*``        ``stages.{k-2}.upsample.*``
``h_net{k}.<anything else>``   ``stages.{k-2}.refiner.<same>``
=============================  ===============================

Every refiner keeps the original stage's own sub-module names, so refiner keys move as a block without knowing
which refiner it is. Both directions are pure: ``to_original(what, to_t2i(what, sd)) == sd`` key for key,
tensors untouched, order kept.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

StateDict = dict[str, Tensor]
KeyMap = Callable[[StateDict], StateDict]


class LegacyError(ValueError):
    """A problem with an original checkpoint file or its keys (shown to CLI users without a traceback)."""

    t2i_user_error = True


class KeyMismatchError(LegacyError):
    def __init__(self, what: str, missing: list[str], unexpected: list[str], shapes: list[str] | None = None):
        self.missing, self.unexpected, self.shapes = missing, unexpected, shapes or []
        lines = [f"{what}: the state dict does not match the model built from the recipe."]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if self.shapes:
            lines.append(f"  shape mismatches ({len(self.shapes)}): " + ", ".join(self.shapes))
        lines.append("  Check the recipe (widths, res_blocks, refiner, legacy_unused_conv) against the checkpoint.")
        super().__init__("\n".join(lines))


# -- key maps -------------------------------------------------------------------------------------
_TRUNK = ("residual.", "upsample.")


def generator_key_to_t2i(key: str) -> str:
    if key.startswith("ca_net."):
        return key
    if m := re.match(r"h_net1\.upsample(\d+)\.(.*)$", key):
        return f"init_stage.upsample.{int(m.group(1)) - 1}.{m.group(2)}"
    if m := re.match(r"h_net1\.(.*)$", key):
        return f"init_stage.{m.group(1)}"
    if m := re.match(r"img_net(\d+)\.img\.(.*)$", key):
        return f"image_heads.{int(m.group(1)) - 1}.{m.group(2)}"
    if m := re.match(r"h_net(\d+)\.(.*)$", key):
        stage, rest = int(m.group(1)) - 2, m.group(2)
        return f"stages.{stage}.{rest}" if rest.startswith(_TRUNK) else f"stages.{stage}.refiner.{rest}"
    raise LegacyError(f"generator: unrecognised original key {key!r}")


def generator_key_to_original(key: str) -> str:
    if key.startswith("ca_net."):
        return key
    if m := re.match(r"init_stage\.upsample\.(\d+)\.(.*)$", key):
        return f"h_net1.upsample{int(m.group(1)) + 1}.{m.group(2)}"
    if m := re.match(r"init_stage\.(.*)$", key):
        return f"h_net1.{m.group(1)}"
    if m := re.match(r"image_heads\.(\d+)\.(.*)$", key):
        return f"img_net{int(m.group(1)) + 1}.img.{m.group(2)}"
    if m := re.match(r"stages\.(\d+)\.refiner\.(.*)$", key):
        return f"h_net{int(m.group(1)) + 2}.{m.group(2)}"
    if m := re.match(r"stages\.(\d+)\.(.*)$", key):
        return f"h_net{int(m.group(1)) + 2}.{m.group(2)}"
    raise LegacyError(f"generator: unrecognised t2i key {key!r}")


def rename_prefixes(state_dict: Mapping[str, Tensor], rules: list[tuple[str, str]]) -> StateDict:
    """Rename keys by the first matching ``(old_prefix, new_prefix)`` rule; others stay. Keeps order."""
    out: StateDict = {}
    for key, value in state_dict.items():
        for old, new in rules:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def _check_prefixes(state_dict: Mapping[str, Tensor], prefixes: tuple[str, ...], what: str) -> None:
    stray = [k for k in state_dict if not k.startswith(prefixes)]
    if stray:
        raise LegacyError(f"{what}: keys without a {' / '.join(prefixes)} prefix: {', '.join(stray[:8])}")


_CAPTIONER = [("caption_cnn.", "encoder."), ("caption_rnn.", "decoder.")]


def _captioner_to_t2i(state_dict: StateDict) -> StateDict:
    _check_prefixes(state_dict, ("caption_cnn.", "caption_rnn."), "captioner (original form)")
    return rename_prefixes(state_dict, _CAPTIONER)


def _captioner_to_original(state_dict: StateDict) -> StateDict:
    _check_prefixes(state_dict, ("encoder.", "decoder."), "captioner (t2i form)")
    return rename_prefixes(state_dict, [(new, old) for old, new in _CAPTIONER])


def _identity(state_dict: StateDict) -> StateDict:
    return dict(state_dict)


#: ``what -> (original -> t2i, t2i -> original)``; a kind not listed maps by identity
#: (text_encoder, image_encoder, discriminator: t2i keeps the original names).
KEY_MAPS: dict[str, tuple[KeyMap, KeyMap]] = {
    "generator": (
        lambda sd: {generator_key_to_t2i(k): v for k, v in sd.items()},
        lambda sd: {generator_key_to_original(k): v for k, v in sd.items()},
    ),
    "captioner": (_captioner_to_t2i, _captioner_to_original),
}


def to_t2i(what: str, state_dict: Mapping[str, Tensor]) -> StateDict:
    return KEY_MAPS.get(what, (_identity, _identity))[0](dict(state_dict))


def to_original(what: str, state_dict: Mapping[str, Tensor]) -> StateDict:
    return KEY_MAPS.get(what, (_identity, _identity))[1](dict(state_dict))


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


# -- files ----------------------------------------------------------------------------------------
def load_original(path: str | Path) -> Any:
    """Read an original checkpoint with ``weights_only=True`` (tensors and plain containers only).

    Both serialisations load: the zip format (PyTorch >= 1.6) and the older one the released AttnGAN-era files
    use. A ``module.`` prefix from ``nn.DataParallel`` is removed when every key has it.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise LegacyError(f"checkpoint not found: {file}")
    if file.stat().st_size == 0:
        raise LegacyError(f"{file} is empty (0 bytes); download it again")
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise LegacyError(
            f"refusing to load {file}: it contains Python objects other than tensors and plain containers, "
            "and unpickling them could run arbitrary code (torch.load(weights_only=True) rejected it: "
            f"{str(exc).splitlines()[0]}). Original checkpoints are plain state dicts; if this file comes from a "
            "source you trust, re-save its state_dict() in a separate environment and import that."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise LegacyError(f"cannot read {file} as a PyTorch checkpoint (truncated or not one?): {exc}") from None
    if isinstance(data, dict) and data and all(isinstance(k, str) and k.startswith("module.") for k in data):
        data = {k[len("module.") :]: v for k, v in data.items()}
    return data


def load_into(module: nn.Module, state_dict: Mapping[str, Tensor], what: str = "model") -> StateDict:
    """``load_state_dict(strict=True)`` with one error listing missing/unexpected keys and bad shapes.

    BatchNorm's ``num_batches_tracked`` counter (PyTorch >= 0.4.1) may be absent, as in files written before it
    existed; it is taken from the module (it only matters with ``momentum=None``, which no model here uses).
    Returns the state dict as loaded, completed that way.
    """
    expected = module.state_dict()
    state = dict(state_dict)
    for key, value in expected.items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = value.clone()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise KeyMismatchError(what, missing, unexpected, shapes)
    module.load_state_dict(state, strict=True)
    return {k: state[k] for k in expected}
