"""Every PIL image mode a data set can hold, as 8-bit RGB with the right values.

``Image.convert("RGB")`` is right for 8-bit modes but clips wider ones: a 16-bit PNG (``I;16``, values 0..65535)
becomes almost all white. Rules (docs/data.md):

- 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ...): PIL's own conversion;
- 16-bit (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): ``round(v / 257)``, so 65535 -> 255;
- ``I`` (32-bit integers): values up to 255 are taken as 8-bit; if the image's maximum is above 255 it is assumed to
  be 16-bit data (what PIL makes of many 16-bit PNGs and TIFFs) and scaled like ``I;16``; clipped to the range;
- ``F`` (32-bit float): assumed in [0, 1], scaled by 255 and clipped;
- transparency (``LA``, ``PA``, ``RGBA``, ``RGBa``, ``P`` or ``L``/``RGB`` with a transparent colour) is composited
  on white, so a cut-out object keeps the background an image viewer shows, not whatever colour hides under alpha 0.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["describe_mode", "to_rgb"]

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA = ("LA", "PA", "RGBA", "RGBa")

_NOTES = {
    "1": "1-bit, black and white",
    "L": "greyscale, copied to three channels",
    "P": "palette",
    "CMYK": "CMYK, converted by PIL",
    "YCbCr": "YCbCr, converted by PIL",
    "I": "32-bit integers: 8-bit if all <= 255, else taken as 16-bit and scaled",
    "F": "32-bit float, taken as [0, 1]",
}


def describe_mode(image_or_mode: Image.Image | str) -> str:
    """A short note on how ``to_rgb`` reads a mode (for ``t2i data check``)."""
    if isinstance(image_or_mode, Image.Image):
        mode, transparent = image_or_mode.mode, "transparency" in image_or_mode.info
    else:
        mode, transparent = image_or_mode, False
    if mode in _SIXTEEN_BIT:
        return "16-bit, scaled to 8 bits"
    if mode in _ALPHA or transparent:
        return "transparency composited on white"
    return _NOTES.get(mode, "converted by PIL")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as an 8-bit RGB image (decodes it fully; see the module docstring for each mode)."""
    mode = image.mode
    if mode in _SIXTEEN_BIT:
        return _grey(np.asarray(image).astype(np.float64) / 257.0)
    if mode == "I":
        values = np.asarray(image).astype(np.float64)
        scale = 257.0 if values.size and values.max() > 255 else 1.0
        return _grey(values / scale)
    if mode == "F":
        return _grey(np.asarray(image).astype(np.float64) * 255.0)
    if mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _grey(values: np.ndarray) -> Image.Image:
    grey = np.rint(np.clip(values, 0, 255)).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
