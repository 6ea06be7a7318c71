"""Original ``netD*.pth`` (D_NET64/128/256, both flavours) <-> ``bn.v1`` / ``sn.v1``: identical names.

t2i's discriminator keeps the originals' module names (``img_code_s16``, ``img_code_s32_1``,
``UNCOND_DNET.outlogits.0``, ``COND_DNET.jointConv.0.module.weight_bar``, ...), so both maps are
the identity; they exist so that every checkpoint kind goes through the same import/export path.
"""

from __future__ import annotations

from t2i.legacy import StateDict, register_converter


def discriminator_to_t2i(state_dict: StateDict) -> StateDict:
    return dict(state_dict)


def discriminator_to_original(state_dict: StateDict) -> StateDict:
    return dict(state_dict)


register_converter("discriminator", discriminator_to_t2i, discriminator_to_original)
