"""Where each on-disk layout keeps its files (the layouts the original AttnGAN code's
``datasets.py`` reads; docs/data.md). No third-party imports: the shapes generator's
helper interpreters read it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COCO_LAYOUT", "CUB_LAYOUT", "LayoutSpec"]


@dataclass(frozen=True)
class LayoutSpec:
    """Where a layout keeps its files, relative to the data root."""

    name: str
    images_dir: str
    text_dir: str = "text"
    bbox_dir: str | None = None  # holds images.txt + bounding_boxes.txt
    pickle_names: tuple[str, ...] = ("captions.pickle",)


CUB_LAYOUT = LayoutSpec(
    "cub", "CUB_200_2011/images", bbox_dir="CUB_200_2011", pickle_names=("captions.pickle", "bird_captions.pickle")
)
COCO_LAYOUT = LayoutSpec("coco", "images")
