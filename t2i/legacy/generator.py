"""Original ``netG_*.pth`` (G_NET) <-> ``stacked.v1`` key map, derived from structure.

=============================  ===============================
original                       t2i
=============================  ===============================
``ca_net.*``                   ``ca_net.*``
``h_net1.fc.*``                ``init_stage.fc.*``
``h_net1.upsample{k}.*``       ``init_stage.upsample.{k-1}.*``
``img_net{k}.img.*``           ``image_heads.{k-1}.*``
``h_net{k}.residual.*``        ``stages.{k-2}.residual.*``   (k >= 2)
``h_net{k}.upsample.*``        ``stages.{k-2}.upsample.*``
``h_net{k}.<anything else>``   ``stages.{k-2}.refiner.<same>``
=============================  ===============================

Every refiner keeps the original stage's own sub-module names (``att.*``, ``conv``, ``A``, ``M_r``,
``response_gate.0``...), so refiner-specific keys move as a block without knowing which refiner it is.
"""

from __future__ import annotations

import re

from t2i.legacy import LegacyError, StateDict, register_converter

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


def generator_to_t2i(state_dict: StateDict) -> StateDict:
    return {generator_key_to_t2i(k): v for k, v in state_dict.items()}


def generator_to_original(state_dict: StateDict) -> StateDict:
    return {generator_key_to_original(k): v for k, v in state_dict.items()}


register_converter("generator", generator_to_t2i, generator_to_original)
