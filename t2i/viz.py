"""Figures for runs and papers: captioned sample grids, attention/memory maps, ablation bar charts, metric curves.

The originals save ``Image/G_average_*.png`` with the generated image and its per-word attention maps
every 1000 training steps; the maps are the ``B × T × H × W`` tensors every refiner returns (docs/models.md,
refiners). This module draws such figures with numpy + PIL only, so it works wherever the package does
(no matplotlib). Images are ``(N, 3, H, W)`` or ``(3, H, W)`` in [-1, 1], as torch tensors or numpy
arrays; tensors are read through ``.detach().cpu()`` so torch itself is never imported here.
All output is deterministic: same inputs, same pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "BAR_COLOUR",
    "LINE_COLOURS",
    "GateRow",
    "LineSeries",
    "attention_figure",
    "attention_sheet",
    "bar_chart",
    "caption_grid",
    "heat_colours",
    "line_chart",
    "save_png",
    "to_image",
]

BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (25, 25, 25)
MUTED_COLOUR = (110, 110, 110)
GRID_COLOUR = (225, 225, 225)
BAR_COLOUR = (76, 114, 176)
ERROR_COLOUR = (40, 40, 40)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# Viridis at nine evenly spaced points; interpolated to a 256-entry lookup table below.
_VIRIDIS_STOPS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    dtype=np.float64,
)
_LUT_POSITIONS = np.linspace(0.0, 1.0, 256)
_STOP_POSITIONS = np.linspace(0.0, 1.0, len(_VIRIDIS_STOPS))
HEAT_LUT = np.stack(
    [np.interp(_LUT_POSITIONS, _STOP_POSITIONS, _VIRIDIS_STOPS[:, ch]) for ch in range(3)], axis=1
).astype(np.float32)  # (256, 3) in [0, 255]


# --------------------------------------------------------------------------------------------------------------------
# Input conversion


def _as_array(x: Any) -> np.ndarray:
    """A tensor (any device/dtype), array or sequence of them -> float32 numpy array."""
    if isinstance(x, (list, tuple)):
        return np.stack([_as_array(item) for item in x])
    if hasattr(x, "detach"):  # torch.Tensor, read without importing torch
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _images_uint8(images: Any, *, single: bool = False) -> np.ndarray:
    """[-1, 1] images (N,3,H,W), or (3,H,W) if ``single``, -> (N, H, W, 3) uint8."""
    array = _as_array(images)
    expected = 3 if single else 4
    if array.ndim != expected or array.shape[-3] != 3:
        want = "(3, H, W)" if single else "(N, 3, H, W)"
        raise ValueError(f"expected images of shape {want} in [-1, 1], got {tuple(array.shape)}")
    if single:
        array = array[None]
    # A diverged generator can emit NaN; draw it as mid grey rather than fail the whole figure.
    array = np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=-1.0)
    pixels = np.clip(np.rint((array + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return pixels.transpose(0, 2, 3, 1)  # (N, H, W, 3)


def to_image(image: Any) -> Image.Image:
    """One [-1, 1] image (3, H, W) -> a PIL RGB image at its own size."""
    return Image.fromarray(_images_uint8(image, single=True)[0])


def _resize(image: Image.Image, width: int) -> Image.Image:
    """Scale to ``width`` keeping the aspect ratio (nearest for upscaling keeps small samples crisp)."""
    if image.width == width:
        return image
    height = max(1, round(image.height * width / image.width))
    resample = Image.Resampling.NEAREST if width % image.width == 0 else Image.Resampling.LANCZOS
    return image.resize((width, height), resample)


# --------------------------------------------------------------------------------------------------------------------
# Text


@lru_cache(maxsize=32)
def _font(size: int) -> Font:
    """The built-in scalable font (Pillow >= 10.1), else the fixed bitmap default."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, OSError, ImportError):  # old Pillow or no FreeType
        return ImageFont.load_default()


def _font_size(cell: int) -> int:
    """Caption font size for image cells of ``cell`` pixels: readable at 64 px, not shouting at 256."""
    return int(min(26, max(11, round(cell * 0.12))))


def _text_width(text: str, font: Font) -> int:
    if not text:
        return 0
    left, _, right, _ = font.getbbox(text)
    return int(math.ceil(right - left))


def _line_height(font: Font) -> int:
    try:
        ascent, descent = font.getmetrics()  # type: ignore[union-attr]
        return int(ascent + descent)
    except AttributeError:  # bitmap font
        _, top, _, bottom = font.getbbox("Ag|")
        return int(bottom - top) + 2


def _wrap(text: str, font: Font, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; words longer than a line are split after + - _ / . : or anywhere."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if _text_width(candidate, font) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        while _text_width(word, font) > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and _text_width(word[:cut], font) > width:
                cut -= 1
            joint = max(word.rfind(c, 0, cut) for c in "+-_/.:")  # break after a joint ("damsm+" / "stream")
            cut = joint + 1 if joint > 0 else cut
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines or [""]


def _fit(text: str, size: int, width: int, min_size: int = 9) -> tuple[str, Font]:
    """One line of text in ``width`` pixels: shrink the font down to ``min_size``, then truncate."""
    for s in range(size, min_size - 1, -1):
        font = _font(s)
        if _text_width(text, font) <= width:
            return text, font
    font = _font(min_size)
    while len(text) > 1 and _text_width(text + "…", font) > width:
        text = text[:-1]
    return text + "…", font


def _draw_lines(
    draw: ImageDraw.ImageDraw,
    lines: Sequence[str],
    font: Font,
    *,
    x: int,
    y: int,
    width: int,
    align: str = "left",
    fill: tuple[int, int, int] = TEXT_COLOUR,
) -> int:
    """Draw lines top-down from ``y`` inside ``[x, x + width)``; returns the y below the last line."""
    step = _line_height(font)
    for line in lines:
        offset = 0
        if align == "center":
            offset = max(0, (width - _text_width(line, font)) // 2)
        draw.text((x + offset, y), line, font=font, fill=fill)
        y += step
    return y


def _lines_height(n_lines: int, font: Font) -> int:
    return n_lines * _line_height(font)


# --------------------------------------------------------------------------------------------------------------------
# Caption grid


def caption_grid(
    images: Any,
    captions: Sequence[str],
    *,
    columns: int,
    cell: int | None = None,
    title: str | None = None,
    column_titles: Sequence[str] | None = None,
) -> Image.Image:
    """A grid with one row per caption: its ``columns`` samples, the caption printed under the row.

    ``images`` is ``(N, 3, H, W)`` in [-1, 1] with ``N = len(captions) * columns`` in row-major order
    (``images[r * columns + c]`` is sample c of caption r). For a model comparison put one model per
    column and name them with ``column_titles``. ``cell`` is the drawn size of each image (default: W).
    """
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    if not captions:
        raise ValueError("caption_grid needs at least one caption")
    pixels = _images_uint8(images)  # (N, H, W, 3)
    rows = len(captions)
    if pixels.shape[0] != rows * columns:
        raise ValueError(
            f"expected len(captions) * columns = {rows} * {columns} = {rows * columns} images, got {pixels.shape[0]}"
        )
    if column_titles is not None and len(column_titles) != columns:
        raise ValueError(f"column_titles has {len(column_titles)} entries for {columns} columns")
    cell = int(cell or pixels.shape[2])
    if cell < 8:
        raise ValueError(f"cell must be >= 8 pixels, got {cell}")

    tiles = [_resize(Image.fromarray(p), cell) for p in pixels]
    cell_h = tiles[0].height
    gap = max(2, cell // 32)
    margin = max(8, cell // 10)
    font = _font(_font_size(cell))
    title_font = _font(round(_font_size(cell) * 1.3))
    line = _line_height(font)
    row_width = columns * cell + (columns - 1) * gap
    width = row_width + 2 * margin

    caption_lines = [_wrap(c, font, row_width) for c in captions]
    title_lines = _wrap(title, title_font, row_width) if title else []
    heading = [_fit(t, _font_size(cell), cell) for t in column_titles] if column_titles else []

    height = margin
    height += _lines_height(len(title_lines), title_font) + (margin if title_lines else 0)
    height += (line + gap * 2) if heading else 0
    for lines in caption_lines:
        height += cell_h + gap + _lines_height(len(lines), font) + margin
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    y = margin
    if title_lines:
        y = _draw_lines(draw, title_lines, title_font, x=margin, y=y, width=row_width, align="center") + margin
    if heading:
        for c, (text, heading_font) in enumerate(heading):
            x = margin + c * (cell + gap)
            x += max(0, (cell - _text_width(text, heading_font)) // 2)
            draw.text((x, y), text, font=heading_font, fill=TEXT_COLOUR)
        y += line + gap * 2
    for r, lines in enumerate(caption_lines):
        for c in range(columns):
            canvas.paste(tiles[r * columns + c], (margin + c * (cell + gap), y))
        y += cell_h + gap
        y = _draw_lines(draw, lines, font, x=margin, y=y, width=row_width) + margin
    return canvas


# --------------------------------------------------------------------------------------------------------------------
# Attention maps


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape) to viridis-like RGB floats in [0, 255], shape (..., 3)."""
    index = np.clip(np.rint(np.asarray(values, dtype=np.float64) * 255.0), 0, 255).astype(np.intp)
    return HEAT_LUT[index]


def _bilinear(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (T, h, w) to (T, height, width) with half-pixel centres (align_corners=False)."""
    _, h, w = maps.shape
    if (h, w) == (height, width):
        return maps

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
        lo = np.floor(src).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo).astype(np.float32)

    y0, y1, fy = axis(h, height)
    x0, x1, fx = axis(w, width)
    rows = maps[:, y0, :] * (1 - fy)[None, :, None] + maps[:, y1, :] * fy[None, :, None]  # (T, height, w)
    return rows[:, :, x0] * (1 - fx)[None, None, :] + rows[:, :, x1] * fx[None, None, :]


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Each map to [0, 1] on its own; a constant map (e.g. a padded word) becomes all zeros."""
    maps = np.nan_to_num(maps, nan=0.0)
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def _overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Blend a (H, W) map in [0, 1] over an (H, W, 3) uint8 image; opacity grows with the map value."""
    alpha = (0.3 + 0.35 * heat)[..., None]  # attended regions are coloured most, the rest is dimmed
    blended = image.astype(np.float32) * (1 - alpha) + heat_colours(heat) * alpha
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _attention_panels(image: Any, maps: Any, n_words: int, cell: int) -> list[Image.Image]:
    """The image and one overlay per word, each scaled to ``cell`` pixels wide."""
    pixels = _images_uint8(image, single=True)[0]  # (H, W, 3)
    array = _as_array(maps)
    if array.ndim != 3:
        raise ValueError(f"expected attention maps of shape (T, h, w), got {tuple(array.shape)}")
    if array.shape[0] < n_words:
        raise ValueError(f"{n_words} words but only {array.shape[0]} attention maps")
    height, width = pixels.shape[:2]
    heat = _bilinear(_normalise(array[:n_words]), height, width)  # (n_words, H, W)
    panels = [Image.fromarray(pixels)] + [Image.fromarray(_overlay(pixels, m)) for m in heat]
    return [_resize(p, cell) for p in panels]


@dataclass(frozen=True)
class GateRow:
    """What a memory refiner's gates did for one sample at one stage, drawn beside its word maps.

    ``write`` (T,) in [0, 1]: the memory writing gate per word, a bar under each word's map. ``maps``: extra
    panels after the words, ``(label, (h, w) gate map in [0, 1])``, overlaid on an absolute 0-1 scale (not
    normalised like the word maps, so 0.2 and 0.8 look different) with a bar of the map's mean under it.
    """

    write: Any = None
    maps: Sequence[tuple[str, Any]] = ()


def _gate_panels(image: Any, gates: GateRow | None, cell: int) -> list[Image.Image]:
    if gates is None or not gates.maps:
        return []
    pixels = _images_uint8(image, single=True)[0]
    height, width = pixels.shape[:2]
    maps = np.stack([_as_array(m) for _, m in gates.maps])
    if maps.ndim != 3:
        raise ValueError(f"expected gate maps of shape (h, w), got {tuple(maps.shape[1:])}")
    heat = _bilinear(np.clip(np.nan_to_num(maps, nan=0.0), 0.0, 1.0), height, width)
    return [_resize(Image.fromarray(_overlay(pixels, m)), cell) for m in heat]


def _draw_gate_bars(
    draw: ImageDraw.ImageDraw, values: Sequence[float | None], *, x0: int, y: int, cell: int, gap: int, font: Font
) -> int:
    """A 0-1 bar and its value under each panel from the first word's (x0) on (None: no bar); returns the y below."""
    bar = max(4, cell // 14)
    label, label_font = _fit("gate", _font_size(cell), cell)
    draw.text(
        (x0 - cell - gap + max(0, (cell - _text_width(label, label_font)) // 2), y),
        label,
        font=label_font,
        fill=MUTED_COLOUR,
    )
    for i, value in enumerate(values):
        if value is None:
            continue
        x = x0 + i * (cell + gap)
        value = float(np.clip(np.nan_to_num(value, nan=0.0), 0.0, 1.0))
        draw.rectangle([x, y, x + cell - 1, y + bar - 1], fill=GRID_COLOUR)
        if value > 0:
            draw.rectangle([x, y, x + max(1, round(value * cell)) - 1, y + bar - 1], fill=BAR_COLOUR)
        text = f"{value:.2f}"
        draw.text((x + max(0, (cell - _text_width(text, font)) // 2), y + bar + 1), text, font=font, fill=TEXT_COLOUR)
    return y + bar + 1 + _line_height(font)


def attention_sheet(
    rows: Sequence[tuple[str, Any, Any]],
    words: Sequence[str],
    *,
    cell: int = 96,
    title: str | None = None,
    gates: Sequence[GateRow | None] | None = None,
) -> Image.Image:
    """Attention (or memory-reading) maps of several stages stacked as rows.

    Each row is ``(label, image (3, H, W) in [-1, 1], maps (T, h, w))``; it shows the image and then
    one panel per word with that word's map, upsampled bilinearly to H×W, normalised to [0, 1] and
    overlaid as a heat map. ``words`` label the first ``len(words)`` maps (T may include padding).
    The label is written above its row, e.g. ``"stage 2 (64->128) memory"``. ``gates`` (one ``GateRow``
    or None per row) adds a memory refiner's write gate under each word and its gate maps after the words.
    """
    if not rows:
        raise ValueError("attention_sheet needs at least one row")
    if cell < 16:
        raise ValueError(f"cell must be >= 16 pixels, got {cell}")
    gates = list(gates) if gates is not None else [None] * len(rows)
    if len(gates) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(gates)} gate rows")
    words = list(words)
    panel_rows = [
        (label, _attention_panels(image, maps, len(words), cell) + _gate_panels(image, g, cell))
        for (label, image, maps), g in zip(rows, gates, strict=True)
    ]
    gap = max(3, cell // 24)
    margin = max(8, cell // 10)
    size = _font_size(cell)
    font = _font(size)
    label_font = _font(round(size * 1.15))
    title_font = _font(round(size * 1.3))
    line = _line_height(font)
    n_panels = max(len(panels) for _, panels in panel_rows)
    row_width = n_panels * cell + (n_panels - 1) * gap
    width = row_width + 2 * margin
    word_labels = [_fit("image", size, cell)] + [_fit(w, size, cell) for w in words]
    title_lines = _wrap(title, title_font, row_width) if title else []
    label_lines = [_wrap(label, label_font, row_width) if label else [] for label, _ in panel_rows]
    bar_height = max(4, cell // 14) + 1 + line

    height = margin + (_lines_height(len(title_lines), title_font) + margin if title_lines else 0)
    for lines, (_, panels), g in zip(label_lines, panel_rows, gates, strict=True):
        height += _lines_height(len(lines), label_font) + (gap if lines else 0)
        height += max(p.height for p in panels) + gap + line + margin
        height += bar_height + gap if g is not None else 0
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    y = margin
    if title_lines:
        y = _draw_lines(draw, title_lines, title_font, x=margin, y=y, width=row_width, align="center") + margin
    for lines, (_, panels), g in zip(label_lines, panel_rows, gates, strict=True):
        if lines:
            y = _draw_lines(draw, lines, label_font, x=margin, y=y, width=row_width) + gap
        for i, panel in enumerate(panels):
            canvas.paste(panel, (margin + i * (cell + gap), y))
        y += max(p.height for p in panels) + gap
        gate_labels = [_fit(name, size, cell) for name, _ in g.maps] if g is not None else []
        for i, (text, word_font) in enumerate(word_labels + gate_labels):
            x = margin + i * (cell + gap) + max(0, (cell - _text_width(text, word_font)) // 2)
            muted = i == 0 or i > len(words)
            draw.text((x, y), text, font=word_font, fill=MUTED_COLOUR if muted else TEXT_COLOUR)
        y += line
        if g is not None:  # write gate per word, then each gate map's mean
            write = [None] * len(words) if g.write is None else list(_as_array(g.write).reshape(-1)[: len(words)])
            means = [float(np.nanmean(_as_array(m))) for _, m in g.maps]
            y = _draw_gate_bars(draw, write + means, x0=margin + cell + gap, y=y + gap, cell=cell, gap=gap, font=font)
        y += margin
    return canvas


def attention_figure(image: Any, maps: Any, words: Sequence[str], *, cell: int = 96) -> Image.Image:
    """One generated image (3, H, W) followed by its attention map (T, h, w) for each word."""
    return attention_sheet([("", image, maps)], words, cell=cell)


# --------------------------------------------------------------------------------------------------------------------
# Bar chart


def _nice_step(span: float, target_ticks: int = 5) -> float:
    """A 1/2/5 x 10^k tick step giving about ``target_ticks`` intervals over ``span``."""
    raw = span / max(1, target_ticks)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for multiple in (1.0, 2.0, 2.5, 5.0, 10.0):
        if multiple * magnitude >= raw:
            return multiple * magnitude
    return 10.0 * magnitude


def _tick_decimals(step: float) -> int:
    """Fewest decimals that write every multiple of ``step`` exactly (2.5 -> 1, 0.2 -> 1, 5 -> 0)."""
    for decimals in range(7):
        if abs(round(step, decimals) - step) <= 1e-9 * step:
            return decimals
    return 6


def _value_decimals(values: np.ndarray) -> int:
    """One decimal count for all value labels: three significant digits of the largest |value|."""
    largest = float(np.abs(values).max())
    if largest == 0:
        return 0
    return int(min(6, max(0, 2 - math.floor(math.log10(largest)))))


def _format_number(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def bar_chart(
    labels: Sequence[str],
    means: Sequence[float],
    stds: Sequence[float] | None = None,
    *,
    title: str,
    ylabel: str,
    height: int = 380,
    bar_width: int = 84,
) -> Image.Image:
    """A bar chart for an ablation table: one bar per label at its mean, ±std error bars, value labels.

    Bars start at zero (negative means go down). ``stds`` may be None (no error bars). The chart is
    ``len(labels) * bar_width`` pixels wide plus margins; long labels wrap under their bar.
    """
    means_array = np.asarray(_as_array(means), dtype=np.float64).reshape(-1)
    n = len(labels)
    if n == 0:
        raise ValueError("bar_chart needs at least one bar")
    if means_array.size != n:
        raise ValueError(f"{n} labels but {means_array.size} means")
    stds_array = np.zeros(n) if stds is None else np.abs(np.asarray(_as_array(stds), dtype=np.float64).reshape(-1))
    if stds_array.size != n:
        raise ValueError(f"{n} labels but {stds_array.size} stds")
    if not (np.isfinite(means_array).all() and np.isfinite(stds_array).all()):
        raise ValueError("bar_chart means and stds must be finite")

    font = _font(13)
    small = _font(12)
    title_font = _font(17)
    line = _line_height(font)

    # y range: zero, every whisker, and headroom for the value labels; then round out to nice ticks.
    low = min(0.0, float((means_array - stds_array).min()))
    high = max(0.0, float((means_array + stds_array).max()))
    if high == low:
        high = low + 1.0
    span = high - low
    high += 0.12 * span if high > 0 else 0.0
    low -= 0.12 * span if low < 0 else 0.0
    step = _nice_step(high - low)
    y_min = math.floor(low / step + 1e-9) * step  # the tolerances keep an exact 0 from adding a tick
    y_max = math.ceil(high / step - 1e-9) * step
    ticks = [y_min + i * step for i in range(round((y_max - y_min) / step) + 1)]
    tick_texts = [_format_number(t, _tick_decimals(step)) for t in ticks]

    x_lines = [_wrap(label, small, bar_width - 6) for label in labels]
    pad = 10
    left = pad + line + pad + max(_text_width(t, small) for t in tick_texts) + 6
    title_lines = _wrap(title, title_font, max(200, n * bar_width)) if title else []
    top = pad + _lines_height(len(title_lines), title_font) + pad
    bottom = pad + _lines_height(max(len(x) for x in x_lines), small) + pad
    plot_w = n * bar_width
    plot_h = max(80, height - top - bottom)
    width = left + plot_w + 2 * pad
    canvas = Image.new("RGB", (width, top + plot_h + bottom), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    def to_y(value: float) -> int:
        return round(top + plot_h * (y_max - value) / (y_max - y_min))

    _draw_lines(draw, title_lines, title_font, x=left, y=pad, width=plot_w, align="center")
    for tick, text in zip(ticks, tick_texts, strict=True):
        y = to_y(tick)
        draw.line([(left, y), (left + plot_w, y)], fill=GRID_COLOUR)
        x = left - 6 - _text_width(text, small)
        draw.text((x, y - _line_height(small) // 2), text, font=small, fill=MUTED_COLOUR)
    zero = to_y(0.0)
    decimals = _value_decimals(means_array)

    for i, (mean, std) in enumerate(zip(means_array, stds_array, strict=True)):
        centre = left + i * bar_width + bar_width // 2
        half = round(bar_width * 0.3)
        draw.rectangle([centre - half, min(zero, to_y(mean)), centre + half, max(zero, to_y(mean))], fill=BAR_COLOUR)
        if std > 0:
            cap = max(3, half // 2)
            y_top, y_bottom = to_y(mean + std), to_y(mean - std)
            draw.line([(centre, y_top), (centre, y_bottom)], fill=ERROR_COLOUR, width=2)
            draw.line([(centre - cap, y_top), (centre + cap, y_top)], fill=ERROR_COLOUR, width=2)
            draw.line([(centre - cap, y_bottom), (centre + cap, y_bottom)], fill=ERROR_COLOUR, width=2)
        # Value label beyond the whisker, on the side the bar points to; "±std" only if it fits the slot.
        value = _format_number(float(mean), decimals)
        text = f"{value} ± {_format_number(float(std), decimals)}" if std > 0 else value
        if _text_width(text, small) > bar_width - 4:
            text = value
        if mean >= 0:
            y = to_y(mean + std) - _line_height(small) - 3
        else:
            y = to_y(mean - std) + 3
        draw.text((centre - _text_width(text, small) // 2, y), text, font=small, fill=TEXT_COLOUR)
        x = centre - bar_width // 2
        _draw_lines(draw, x_lines[i], small, x=x, y=top + plot_h + pad, width=bar_width, align="center")

    draw.line([(left, top), (left, top + plot_h)], fill=ERROR_COLOUR)  # y axis
    draw.line([(left, zero), (left + plot_w, zero)], fill=ERROR_COLOUR)  # baseline at 0

    # The y label, rotated to run up the left edge and centred on the plot.
    label_w = _text_width(ylabel, font) + 4
    label_image = Image.new("RGB", (max(1, label_w), line), BACKGROUND)
    ImageDraw.Draw(label_image).text((2, 0), ylabel, font=font, fill=TEXT_COLOUR)
    label_image = label_image.rotate(90, expand=True)
    canvas.paste(label_image, (pad, max(0, top + (plot_h - label_image.height) // 2)))
    return canvas


# --------------------------------------------------------------------------------------------------------------------
# Line chart (metric curves)

# Colour-blind-safe categorical colours (Okabe & Ito 2008), darkest first so a single line reads well.
LINE_COLOURS = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
                (0, 0, 0), (240, 228, 66)]  # fmt: skip
DIAMOND_OUTLINE = (20, 20, 20)


@dataclass
class LineSeries:
    """One line: points (x, y), an optional shaded band [low, high] per point, and the point to mark as best."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None
    best: int | None = None  # index of the point marked with a diamond


def _axis_texts(ticks: Sequence[float], step: float) -> list[str]:
    """Tick texts, with one k/M/G/T/P suffix for the whole axis when its values are large (FLOPs, images)."""
    largest = max(abs(t) for t in ticks)
    for factor, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if largest >= 10 * factor:
            decimals = _tick_decimals(step / factor)
            return [_format_number(t / factor, decimals) + (suffix if t else "") for t in ticks]
    return [_format_number(t, _tick_decimals(step)) for t in ticks]


def _ticks(low: float, high: float) -> tuple[list[float], float]:
    if high == low:
        low, high = low - 0.5 * (abs(low) or 1.0), high + 0.5 * (abs(high) or 1.0)
    step = _nice_step(high - low)
    start = math.floor(low / step + 1e-9) * step
    end = math.ceil(high / step - 1e-9) * step
    return [start + i * step for i in range(round((end - start) / step) + 1)], step


def line_chart(
    series: Sequence[LineSeries],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 720,
    height: int = 440,
) -> Image.Image:
    """Lines with markers, shaded bands and a diamond on each series' best point; ticks, axis labels, a legend.

    Axes are linear, rounded out to 1/2/5 ticks; large x values get k/M/G/T suffixes. Deterministic pixels.
    """
    if not series:
        raise ValueError("line_chart needs at least one series")
    xs_all, ys_all = [], []
    for item in series:
        if len(item.xs) != len(item.ys) or not len(item.xs):
            raise ValueError(f"series {item.label!r}: {len(item.xs)} x values and {len(item.ys)} y values")
        xs_all += list(item.xs)
        ys_all += list(item.ys) + list(item.low or []) + list(item.high or [])
    if not all(math.isfinite(v) for v in xs_all + ys_all):
        raise ValueError("line_chart values must be finite")
    x_ticks, x_step = _ticks(min(xs_all), max(xs_all))
    y_ticks, y_step = _ticks(min(ys_all), max(ys_all))
    x_texts = _axis_texts(x_ticks, x_step)
    y_texts = [_format_number(t, _tick_decimals(y_step)) for t in y_ticks]

    font, small, title_font = _font(13), _font(12), _font(17)
    line, small_line = _line_height(font), _line_height(small)
    pad = 10
    left = pad + line + pad + max(_text_width(t, small) for t in y_texts) + 6
    title_lines = _wrap(title, title_font, width - 2 * pad) if title else []
    top = pad + _lines_height(len(title_lines), title_font) + pad
    legend_rows = len(series)
    bottom = 6 + small_line + pad + line + pad + legend_rows * (small_line + 4) + pad
    plot_w = width - left - 2 * pad
    plot_h = max(120, height - top - bottom)
    canvas = Image.new("RGB", (width, top + plot_h + bottom), BACKGROUND)
    draw = ImageDraw.Draw(canvas, "RGBA")

    def to_x(value: float) -> float:
        return left + plot_w * (value - x_ticks[0]) / (x_ticks[-1] - x_ticks[0])

    def to_y(value: float) -> float:
        return top + plot_h * (y_ticks[-1] - value) / (y_ticks[-1] - y_ticks[0])

    _draw_lines(draw, title_lines, title_font, x=pad, y=pad, width=width - 2 * pad, align="center")
    for tick, text in zip(y_ticks, y_texts, strict=True):
        y = round(to_y(tick))
        draw.line([(left, y), (left + plot_w, y)], fill=GRID_COLOUR)
        draw.text((left - 6 - _text_width(text, small), y - small_line // 2), text, font=small, fill=MUTED_COLOUR)
    for tick, text in zip(x_ticks, x_texts, strict=True):
        x = round(to_x(tick))
        draw.line([(x, top), (x, top + plot_h)], fill=GRID_COLOUR)
        draw.line([(x, top + plot_h), (x, top + plot_h + 4)], fill=MUTED_COLOUR)
        draw.text((x - _text_width(text, small) // 2, top + plot_h + 6), text, font=small, fill=MUTED_COLOUR)
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=MUTED_COLOUR)
    axis_y = top + plot_h + 6 + small_line + pad
    draw.text((left + (plot_w - _text_width(xlabel, font)) // 2, axis_y), xlabel, font=font, fill=TEXT_COLOUR)

    for index, item in enumerate(series):
        colour = LINE_COLOURS[index % len(LINE_COLOURS)]
        points = [(to_x(x), to_y(y)) for x, y in zip(item.xs, item.ys, strict=True)]
        if item.low is not None and item.high is not None and len(points) > 1:
            upper = [(to_x(x), to_y(h)) for x, h in zip(item.xs, item.high, strict=True)]
            lower = [(to_x(x), to_y(v)) for x, v in zip(item.xs, item.low, strict=True)]
            draw.polygon(upper + lower[::-1], fill=(*colour, 56))
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 2.5, py - 2.5, px + 2.5, py + 2.5], fill=colour)
        if item.best is not None:
            px, py = points[item.best]
            r = 7
            draw.polygon([(px, py - r), (px + r, py), (px, py + r), (px - r, py)], fill=colour, outline=DIAMOND_OUTLINE)
        # legend: a line sample, and a diamond for "best"
        ly = axis_y + line + pad + index * (small_line + 4) + small_line // 2
        draw.line([(left, ly), (left + 24, ly)], fill=colour, width=3)
        draw.text((left + 32, ly - small_line // 2), item.label, font=small, fill=TEXT_COLOUR)

    label_w = _text_width(ylabel, font) + 4
    label_image = Image.new("RGB", (max(1, label_w), line), BACKGROUND)
    ImageDraw.Draw(label_image).text((2, 0), ylabel, font=font, fill=TEXT_COLOUR)
    label_image = label_image.rotate(90, expand=True)
    canvas.paste(label_image, (pad, max(0, top + (plot_h - label_image.height) // 2)))
    return canvas


# --------------------------------------------------------------------------------------------------------------------
# Saving


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` as PNG atomically (temporary file + rename), creating parent folders."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        image.save(temporary, format="PNG")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def stack_vertical(images: Sequence[Image.Image], *, gap: int = 8) -> Image.Image:
    """Stack figures top to bottom on white, left-aligned (e.g. one attention sheet per caption)."""
    if not images:
        raise ValueError("stack_vertical needs at least one image")
    width = max(im.width for im in images)
    height = sum(im.height for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    y = 0
    for im in images:
        canvas.paste(im.convert("RGB"), (0, y))
        y += im.height + gap
    return canvas
