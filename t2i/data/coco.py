"""``coco.v1``: MS-COCO 2014 in the AttnGAN layout.

``images/<key>.jpg`` (train2014 and val2014 together), ``text/<key>.txt``, ``train|test/filenames.pickle``,
``captions.pickle`` at the root; no bounding boxes, no class info (class ids 0..N-1), 5 captions per image.
"""

from __future__ import annotations

from pydantic import Field

from t2i.data.layout import COCO_LAYOUT, DatasetParams, build_dataset
from t2i.registry import register


class CocoParams(DatasetParams):
    root: str = Field("data/coco", description="data root holding images/, text/, train/, test/")
    words_num: int = Field(12, ge=1, description="caption length limit for GAN training")
    eval_words_num: int = Field(20, ge=1, description="caption length limit for evaluation")
    captions_per_image: int = Field(5, ge=1, description="captions per image (extra lines are ignored)")
    crop_bbox: bool = Field(False, description="COCO has no bounding boxes; keep false")


def build_coco(params: CocoParams, *, split: str, image_sizes: list[int], words_num: int | None = None):
    """MS-COCO, AttnGAN layout."""
    return build_dataset(COCO_LAYOUT, params, split=split, image_sizes=image_sizes, words_num=words_num)


register("dataset", "coco.v1", build_coco, params=CocoParams, description="MS-COCO 2014 in the AttnGAN layout")

__all__ = ["CocoParams", "build_coco"]
