"""Caption consistency on the shapes data set: the parser matches the ground truth, and the judge ranks
real images (ceiling) far above the same images with shuffled captions (floor)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from t2i.data.shapes import ShapesParams, build_shapes, make_shapes
from t2i.data.vocab import tokenize
from t2i.metrics.base import EvalContext, MetricError
from t2i.metrics.caption_consistency import (
    CaptionConsistency,
    CaptionConsistencyParams,
    parse_caption,
    reference_scores,
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "set"
    make_shapes(root, n=120, seed=3, size=64, workers=1)
    return build_shapes(ShapesParams(root=str(root), cache=False), split="test", image_sizes=[64])


def test_parser_recovers_every_ground_truth_caption(shapes):
    attributes = json.loads((shapes.root / "attributes.json").read_text())
    colours = list(attributes["colours"])
    checked = 0
    for record in attributes["images"].values():
        for caption in record["captions"]:
            req = parse_caption(tokenize(caption["text"]), colours)
            want = [(record["shapes"][i]["colour"], record["shapes"][i]["kind"]) for i in caption["shapes"]]
            assert [(s["colour"], s["kind"]) for s in req.shapes] == want, caption["text"]
            assert req.relation == (caption["relation"][1] if caption["relation"] else None), caption["text"]
            for shape, i in zip(req.shapes, caption["shapes"], strict=True):
                assert shape.get("size", record["shapes"][i]["size"]) == record["shapes"][i]["size"]
            checked += 1
    assert checked == 1200


def test_real_images_score_far_above_shuffled_captions(shapes):
    scores = reference_scores(shapes, seed=0)
    ceiling, floor = scores["ceiling"], scores["floor"]
    assert ceiling["value"] > 0.9 and floor["value"] < 0.3
    for attribute in ("colour", "kind", "size", "relation"):
        assert ceiling[f"{attribute}_rate"] > floor[f"{attribute}_rate"]
    assert ceiling["colour_rate"] > 0.97


def _real_batch(dataset, indices, caption_of):
    side = dataset.imsize
    images, captions, lengths = [], [], []
    for i in indices:
        pre = dataset.precrop(i)
        top, left = (pre.shape[0] - side) // 2, (pre.shape[1] - side) // 2
        crop = torch.from_numpy(np.ascontiguousarray(pre[top : top + side, left : left + side]))
        images.append(crop.permute(2, 0, 1).float() / 127.5 - 1)
        words = dataset.captions_of(caption_of(i))[0]
        captions.append(words + [0] * (25 - len(words)))
        lengths.append(len(words))
    info = {"captions": torch.tensor(captions), "lengths": torch.tensor(lengths)}
    return torch.stack(images), info


def test_metric_on_real_and_shuffled_batches(shapes):
    n = len(shapes)
    context = EvalContext(dataset=shapes, batch_size=8)
    real = CaptionConsistency(CaptionConsistencyParams(), context=context)
    shuffled = CaptionConsistency(CaptionConsistencyParams(), context=context)
    for start in range(0, n, 8):
        indices = list(range(start, min(n, start + 8)))
        real.update(*_real_batch(shapes, indices, lambda i: i))
        shuffled.update(*_real_batch(shapes, indices, lambda i: (i + 7) % n))
    r, s = real.compute(), shuffled.compute()
    assert r.value > 0.9 > 0.3 > s.value
    assert r.n == n and set(r.details) >= {"colour_rate", "kind_rate"}
    assert r.protocol["judge"] == "shapes-judge/1" and len(r.protocol["attributes_sha256"]) == 64


def test_other_data_sets_are_refused(tmp_path):
    class NotShapes:
        root = tmp_path

    with pytest.raises(MetricError, match="shapes"):
        CaptionConsistency(CaptionConsistencyParams(), context=EvalContext(dataset=NotShapes()))
