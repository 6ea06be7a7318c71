"""Params and on-disk layout names shared by the data sets; torch-free, so ``t2i data make-shapes`` starts fast."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from t2i.data.layout_spec import COCO_LAYOUT, CUB_LAYOUT, LayoutSpec
from t2i.registry import Params

__all__ = ["COCO_LAYOUT", "CUB_LAYOUT", "DatasetParams", "LayoutSpec"]


class DatasetParams(Params):
    """Fields every built-in data set shares."""

    root: str = Field("data", description="data root directory")
    words_num: int = Field(18, ge=1, description="caption length limit L for training (WORDS_NUM; B counts specials)")
    eval_words_num: int = Field(25, ge=1, description="caption length limit for the non-train splits")
    captions_per_image: int = Field(10, ge=1, description="captions kept per image (CAPTIONS_PER_IMAGE)")
    convention: Literal["A", "B"] = Field("A", description="caption convention (docs/data.md)")
    cache: bool = Field(True, description="decode and pre-resize images once into a memory-mapped cache")
    cache_dir: str | None = Field(None, description="where the cache lives (default: <root>/.t2i_cache)")
    crop_bbox: bool = Field(False, description="CUB square crop around the bird's bounding box before resizing")
    skip_bad: bool = Field(False, description="skip (and report) unreadable images instead of stopping")
    flip: bool = Field(True, description="random horizontal flip of every item, as the originals do")
