"""``cub.v1``: CUB-200-2011 birds in the original on-disk layout (as AttnGAN's ``datasets.py`` reads it).

Reads ``train|test/filenames.pickle`` + ``class_info.pickle``, ``CUB_200_2011/images.txt`` +
``bounding_boxes.txt`` (rows matched by order) and ``text/<key>.txt``, or ``captions.pickle`` when present. The
originals switch the bbox crop on when the path contains "birds"; here it is the explicit ``crop_bbox`` (default on).
"""

from __future__ import annotations

from pydantic import Field

from t2i.data.layout import CUB_LAYOUT, CaptionImageDataset, DatasetParams, build_dataset
from t2i.registry import register


class CubParams(DatasetParams):
    root: str = Field("data/birds", description="data root holding CUB_200_2011/, text/, train/, test/")
    words_num: int = Field(18, ge=1, description="caption length limit for training (B: use 20)")
    eval_words_num: int = Field(25, ge=1, description="caption length limit for test (B: use 27)")
    captions_per_image: int = Field(10, ge=1, description="captions per image")
    crop_bbox: bool = Field(True, description="square crop of 1.5*max(w, h) around the bird's bounding box")


def build_cub(params: CubParams, *, split: str, image_sizes: list[int], words_num: int | None = None):
    """CUB birds, original layout."""
    return build_dataset(CUB_LAYOUT, params, split=split, image_sizes=image_sizes, words_num=words_num)


register("dataset", "cub.v1", build_cub, params=CubParams, description="CUB-200-2011 birds in the original layout")

__all__ = ["CaptionImageDataset", "CubParams", "build_cub"]
