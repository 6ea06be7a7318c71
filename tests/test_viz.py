"""t2i.viz: caption grids, attention sheets, bar charts and atomic PNG writing draw what they claim."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFont

from t2i import viz

WHITE = np.array([255, 255, 255])


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(np.int64)  # (H, W, 3)


def _solid_images(colours: list[tuple[int, int, int]], size: int) -> torch.Tensor:
    """(N, 3, size, size) in [-1, 1] whose uint8 rendering is exactly the given colours."""
    values = torch.tensor(colours, dtype=torch.float64) / 127.5 - 1.0  # (N, 3)
    return values[:, :, None, None].expand(-1, -1, size, size).clone()


def _box(pixels: np.ndarray, colour: tuple[int, int, int]) -> tuple[int, int, int, int, int]:
    """Bounding box (top, left, bottom, right) of an exact colour and how many pixels have it."""
    ys, xs = np.nonzero((pixels == np.array(colour)).all(axis=-1))
    assert ys.size, f"colour {colour} not found"
    return ys.min(), xs.min(), ys.max(), xs.max(), ys.size


def _dark(region: np.ndarray) -> int:
    return int((region.max(axis=-1) < 170).sum())  # dark or muted grey text on white


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous [start, stop) runs of True in a 1-D mask."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2], strict=True))


# Colours that never appear in text (dark grey) or background (white).
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


# ---------------------------------------------------------------------------------------------------------- grids


def test_caption_grid_places_each_sample_in_its_row_and_column() -> None:
    images = _solid_images(COLOURS, 16)
    grid = viz.caption_grid(images, ["a red bird", "a blue bird"], columns=3, cell=32)
    pixels = _pixels(grid)
    boxes = [_box(pixels, c) for c in COLOURS]
    for top, left, bottom, right, count in boxes:
        assert (bottom - top + 1, right - left + 1, count) == (32, 32, 32 * 32)  # upscaled to cell, unblended
    for r in range(2):
        row = boxes[r * 3 : r * 3 + 3]
        assert len({b[0] for b in row}) == 1  # one row per caption
        assert [b[1] for b in row] == sorted(b[1] for b in row)  # samples left to right
    assert boxes[3][0] > boxes[0][2]  # second caption's row is below the first
    assert grid.width >= 3 * 32


def test_caption_is_drawn_under_its_row_and_wrapped_inside_the_grid() -> None:
    long_caption = "this bird has a bright red crown, a short pointed black beak and white wing bars on its wings"
    images = _solid_images(COLOURS[:4], 16)
    grid = viz.caption_grid(images, ["short", long_caption], columns=2, cell=48)
    pixels = _pixels(grid)
    first, second = _box(pixels, COLOURS[0]), _box(pixels, COLOURS[2])
    right_edge = _box(pixels, COLOURS[1])[3]
    under_first = pixels[first[2] + 1 : second[0], first[1] : right_edge + 1]
    under_second = pixels[second[2] + 1 :, first[1] : right_edge + 1]
    assert _dark(under_first) > 20 and _dark(under_second) > 20  # text actually drawn, dark on white
    assert _dark(pixels[: first[0]]) == 0  # no title or headings were asked for
    # The long caption wraps to several lines (taller text block) and never spills right of the row.
    text_rows = lambda region: int((region.max(axis=-1) < 170).any(axis=1).sum())  # noqa: E731
    assert text_rows(under_second) > 2 * text_rows(under_first)
    assert _dark(pixels[:, right_edge + 2 :]) == 0


def test_caption_grid_title_and_column_titles() -> None:
    images = _solid_images(COLOURS[:2], 16)
    plain = viz.caption_grid(images, ["a bird"], columns=2, cell=48)
    titled = viz.caption_grid(
        images, ["a bird"], columns=2, cell=48, title="Model comparison", column_titles=["AttnGAN", "DM-GAN"]
    )
    assert titled.width == plain.width and titled.height > plain.height
    pixels = _pixels(titled)
    top = _box(pixels, COLOURS[0])[0]
    left_tile, right_tile = _box(pixels, COLOURS[0]), _box(pixels, COLOURS[1])
    heading_band = pixels[top - 25 : top]
    assert _dark(heading_band[:, left_tile[1] : left_tile[3] + 1]) > 10  # "AttnGAN" above column 0
    assert _dark(heading_band[:, right_tile[1] : right_tile[3] + 1]) > 10  # "DM-GAN" above column 1


def test_caption_grid_accepts_numpy_and_is_deterministic() -> None:
    images = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    captions = ["one", "two"]
    from_tensor = viz.caption_grid(images, captions, columns=2, cell=36, title="t")
    from_numpy = viz.caption_grid(images.numpy(), captions, columns=2, cell=36, title="t")
    again = viz.caption_grid(images, captions, columns=2, cell=36, title="t")
    assert from_tensor.tobytes() == from_numpy.tobytes() == again.tobytes()
    default_cell = viz.caption_grid(images, captions, columns=2)  # cell defaults to the image width
    assert default_cell.width < from_tensor.width


def test_caption_grid_rejects_mismatched_inputs() -> None:
    images = torch.zeros(5, 3, 8, 8)
    with pytest.raises(ValueError, match=r"2 \* 3 = 6 images, got 5"):
        viz.caption_grid(images, ["a", "b"], columns=3)
    with pytest.raises(ValueError, match="column_titles"):
        viz.caption_grid(torch.zeros(2, 3, 8, 8), ["a"], columns=2, column_titles=["only one"])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        viz.caption_grid(torch.zeros(2, 8, 8), ["a"], columns=2)


def test_text_falls_back_when_font_size_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ImageFont.load_default

    def old_pillow(*args, **kwargs):
        if "size" in kwargs:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return original()

    monkeypatch.setattr(ImageFont, "load_default", old_pillow)
    viz._font.cache_clear()
    try:
        grid = viz.caption_grid(_solid_images(COLOURS[:1], 16), ["a small bird"], columns=1, cell=64)
    finally:
        viz._font.cache_clear()
    pixels = _pixels(grid)
    assert _dark(pixels[_box(pixels, COLOURS[0])[2] + 1 :]) > 10


# ---------------------------------------------------------------------------------------------------- attention


def _panel_columns(pixels: np.ndarray, band: slice) -> list[tuple[int, int]]:
    """Column runs that are non-white over the whole band: the panels of one sheet row."""
    filled = (pixels[band] != WHITE).any(axis=-1).all(axis=0)
    return _runs(filled)


def test_attention_overlay_is_strongest_where_the_map_is_high() -> None:
    base = (200, 30, 30)
    image = _solid_images([base], 32)[0]
    maps = torch.zeros(3, 4, 4)
    maps[0, 0, 0] = 1.0  # word 0 attends to the top-left corner
    maps[1, 3, 3] = 1.0  # word 1 to the bottom-right
    figure = viz.attention_figure(image, maps, ["red", "crown"], cell=48)  # the third map is padding
    pixels = _pixels(figure)
    top, left, bottom, right, count = _box(pixels, base)
    assert (bottom - top + 1, right - left + 1, count) == (48, 48, 48 * 48)  # the plain image comes first
    panels = _panel_columns(pixels, slice(top, bottom + 1))
    assert len(panels) == 3 and all(stop - start == 48 for start, stop in panels)
    change = []
    for start, stop in panels[1:]:
        panel = pixels[top : bottom + 1, start:stop]
        diff = np.abs(panel - np.array(base)).sum(axis=-1)
        change.append((diff[:12, :12].mean(), diff[-12:, -12:].mean()))
        # The heat colour itself: high = yellow-ish (R, G > B), low = dark violet (B > G).
        hot = panel[:4, :4] if len(change) == 1 else panel[-4:, -4:]
        assert hot[..., 1].mean() > hot[..., 2].mean() + 20
    assert change[0][0] > 2 * change[0][1]
    assert change[1][1] > 2 * change[1][0]
    under = pixels[bottom + 1 :]
    for start, stop in panels:
        assert _dark(under[:, start:stop]) > 5  # "image", "red", "crown" written under their panels


def test_attention_maps_are_normalised_per_map() -> None:
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    maps = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(2))
    scaled = maps * torch.tensor([1000.0, 0.001])[:, None, None] + torch.tensor([5.0, -3.0])[:, None, None]
    a = viz.attention_figure(image, maps, ["a", "b"], cell=32)
    b = viz.attention_figure(image.numpy(), scaled.numpy(), ["a", "b"], cell=32)
    assert np.abs(_pixels(a) - _pixels(b)).max() <= 1  # equal up to float32 rounding of the rescaled maps
    # A constant map (padded word) draws without dividing by zero.
    flat = viz.attention_figure(image, torch.ones(1, 5, 5), ["pad"], cell=32)
    assert flat.size[1] == a.size[1]


def test_bilinear_upsampling_matches_torch_interpolate() -> None:
    maps = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(3))
    ours = viz._bilinear(maps.numpy(), 17, 12)
    reference = F.interpolate(maps[None], size=(17, 12), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(ours, reference.numpy(), atol=1e-6)


def test_attention_sheet_stacks_labelled_rows_of_different_sizes() -> None:
    words = ["small", "bird"]
    row_small = ("stage 1 (64->128) attention", torch.zeros(3, 16, 16), torch.rand(4, 4, 4))
    row_large = ("stage 2 (128->256) memory", torch.zeros(3, 32, 32), torch.rand(4, 8, 8))
    single = viz.attention_figure(row_small[1], row_small[2], words, cell=40)
    sheet = viz.attention_sheet([row_small, row_large], words, cell=40)
    assert sheet.width == single.width
    assert sheet.height > 2 * single.height  # two rows plus their labels
    pixels = _pixels(sheet)
    ys, _ = np.nonzero((pixels == 128).all(axis=-1))
    first_panel_top = ys.min()
    assert _dark(pixels[:first_panel_top]) > 20  # the row label sits above the first row
    with pytest.raises(ValueError, match="2 words but only 1 attention maps"):
        viz.attention_sheet([("x", torch.zeros(3, 8, 8), torch.rand(1, 2, 2))], words)
    with pytest.raises(ValueError, match=r"\(T, h, w\)"):
        viz.attention_figure(torch.zeros(3, 8, 8), torch.rand(2, 2), ["a"])


def test_heat_colours_run_dark_to_bright() -> None:
    colours = viz.heat_colours(np.linspace(0, 1, 11))
    luminance = colours @ np.array([0.299, 0.587, 0.114])
    assert colours.shape == (11, 3)
    assert np.all(np.diff(luminance) > 0)


# ----------------------------------------------------------------------------------------------------- bar chart


def _bars(pixels: np.ndarray) -> list[int]:
    """Heights (pixels) of the bars, left to right, measured beside the error-bar whisker."""
    is_bar = (pixels == np.array(viz.BAR_COLOUR)).all(axis=-1)
    heights = []
    for start, _stop in _runs(is_bar.any(axis=0)):
        heights.append(int(is_bar[:, start + 1].sum()))
    return heights


def test_bar_heights_follow_the_means() -> None:
    means = [4.36, 4.75, 2.0, 4.86]
    chart = viz.bar_chart(["AttnGAN", "DM-GAN", "tiny", "DMM-GAN"], means, [0.04, 0.07, 0.3, 0.04],
                          title="IS", ylabel="Inception score")  # fmt: skip
    heights = _bars(_pixels(chart))
    assert len(heights) == 4
    assert np.argsort(heights).tolist() == np.argsort(means).tolist()
    ratio = np.array(heights) / heights[-1]
    np.testing.assert_allclose(ratio, np.array(means) / means[-1], atol=0.02)  # heights proportional, base 0


def test_bar_chart_draws_value_labels_and_error_bars() -> None:
    chart = viz.bar_chart(["a", "b"], [1.0, 2.0], [0.5, 0.0], title="t", ylabel="y")
    pixels = _pixels(chart)
    is_bar = (pixels == np.array(viz.BAR_COLOUR)).all(axis=-1)
    (a_start, a_stop), (b_start, b_stop) = _runs(is_bar.any(axis=0))
    a_top = np.flatnonzero(is_bar[:, a_start + 1]).min()
    b_top = np.flatnonzero(is_bar[:, b_start + 1]).min()
    centre_a = (a_start + a_stop) // 2
    whisker = np.flatnonzero((pixels[:, centre_a] == np.array(viz.ERROR_COLOUR)).all(axis=-1))
    assert whisker.min() < a_top - 10  # the +std whisker rises above bar a
    assert _dark(pixels[b_top - 20 : b_top, b_start:b_stop]) > 5  # "2.00" above bar b
    grid_rows = np.flatnonzero((pixels[:, b_stop + 2] == np.array(viz.GRID_COLOUR)).all(axis=-1))
    assert b_top in grid_rows  # bar b (mean 2.0) ends exactly on the 2.0 grid line
    no_std = viz.bar_chart(["a", "b"], [1.0, 2.0], None, title="t", ylabel="y")
    assert _bars(_pixels(no_std)) == _bars(pixels)


def test_bar_chart_negative_values_and_errors() -> None:
    chart = viz.bar_chart(["down", "up"], [-1.0, 1.0], [0.1, 0.1], title="delta", ylabel="R-precision")
    is_bar = (_pixels(chart) == np.array(viz.BAR_COLOUR)).all(axis=-1)
    (d_start, _), (u_start, _) = _runs(is_bar.any(axis=0))
    down, up = np.flatnonzero(is_bar[:, d_start + 1]), np.flatnonzero(is_bar[:, u_start + 1])
    assert down.min() >= up.max()  # the negative bar hangs below the baseline the positive one stands on
    assert abs(down.size - up.size) <= 1
    with pytest.raises(ValueError, match="2 labels but 3 means"):
        viz.bar_chart(["a", "b"], [1, 2, 3], None, title="t", ylabel="y")
    with pytest.raises(ValueError, match="finite"):
        viz.bar_chart(["a"], [float("nan")], None, title="t", ylabel="y")


def test_bar_chart_is_deterministic() -> None:
    args = (["a", "b", "c"], [0.5, 0.25, 0.125], [0.01, 0.02, 0.03])
    assert (
        viz.bar_chart(*args, title="t", ylabel="y").tobytes() == viz.bar_chart(*args, title="t", ylabel="y").tobytes()
    )


# -------------------------------------------------------------------------------------------------------- saving


def test_save_png_creates_parents_and_round_trips(tmp_path) -> None:
    image = viz.caption_grid(_solid_images(COLOURS[:2], 8), ["x"], columns=2, cell=16)
    target = tmp_path / "run" / "Image" / "grid.png"
    assert viz.save_png(image, target) == target
    viz.save_png(image, target)  # overwriting is fine
    with Image.open(target) as loaded:
        assert loaded.format == "PNG"
        assert np.array_equal(np.asarray(loaded.convert("RGB")), np.asarray(image))
    assert [p.name for p in target.parent.iterdir()] == ["grid.png"]  # no temporary left behind
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert target.read_bytes() == buffer.getvalue()  # byte-identical output run to run


def test_save_png_leaves_no_partial_file_on_failure(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "grid.png"
    target.write_bytes(b"previous")
    image = Image.new("RGB", (4, 4))

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        viz.save_png(image, target)
    assert target.read_bytes() == b"previous"  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
