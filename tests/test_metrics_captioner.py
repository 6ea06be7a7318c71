"""captioner_accuracy.v1: the STREAM captioner's teacher-forced token accuracy on evaluated images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2i.encoders.stream_captioner import StreamCaptioner, StreamCaptionerParams
from t2i.metrics.base import EvalContext, MetricError, module_fingerprint
from t2i.metrics.captioner_accuracy import CaptionerAccuracy, CaptionerAccuracyParams, token_scores

VOCAB = 12


def _captioner(seed: int = 0) -> StreamCaptioner:
    torch.manual_seed(seed)
    params = StreamCaptionerParams(backbone="small", embed_size=16, hidden_size=24, small_width=4, resize=None)
    return StreamCaptioner(params, vocab_size=VOCAB).eval()


def _batch(seed: int = 1, b: int = 5, length: int = 7):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, 16, 16, generator=generator) * 2 - 1
    lengths = torch.tensor([3, 7, 1, 5, 7][:b])
    captions = torch.randint(1, VOCAB, (b, length), generator=generator)
    captions[torch.arange(length)[None, :] >= lengths[:, None]] = 0
    return images, captions, lengths


def test_token_scores_are_each_images_own_in_input_order():
    captioner = _captioner()
    images, captions, lengths = _batch()
    accuracy, ce = token_scores(captioner, images, captions, lengths)
    assert accuracy.shape == ce.shape == (5,) and accuracy.dtype == torch.float64
    with torch.no_grad():
        for i in range(5):  # one image at a time: nothing to sort or pack across items
            n = int(lengths[i])
            logits = captioner(captioner.encode(images[i : i + 1]), captions[i : i + 1, :n], lengths[i : i + 1])
            target = captions[i, :n]
            assert accuracy[i].item() == pytest.approx((logits.argmax(1) == target).double().mean().item(), abs=1e-12)
            assert ce[i].item() == pytest.approx(F.cross_entropy(logits.double(), target).item(), rel=1e-5)


def test_a_captioner_that_reads_the_caption_off_the_image_scores_one():
    class Oracle(torch.nn.Module):
        """Predicts each token perfectly: its logits are the one-hot targets (packed order, as the decoder)."""

        def encode(self, images):
            return images.flatten(1)[:, :1]

        def forward(self, features, captions, lengths):
            packed = torch.nn.utils.rnn.pack_padded_sequence(captions, lengths, batch_first=True).data
            return F.one_hot(packed, VOCAB).float() * 20

    images, captions, lengths = _batch()
    accuracy, ce = token_scores(Oracle(), images, captions, lengths)
    assert torch.equal(accuracy, torch.ones(5, dtype=torch.float64))
    assert float(ce.max()) < 1e-6


def test_metric_averages_images_and_flags_the_captioner_the_generator_trained_against():
    captioner = _captioner()
    fingerprint = module_fingerprint(captioner)
    context = EvalContext(
        batch_size=5, networks={"captioner": captioner}, training_network_hashes={"captioner": fingerprint}
    )
    metric = CaptionerAccuracy(CaptionerAccuracyParams(), context=context)
    images, captions, lengths = _batch()
    expected = []
    for seed in (1, 2):
        images, captions, lengths = _batch(seed)
        metric.update(images, {"captions": captions, "lengths": lengths})
        expected.append(token_scores(captioner, images, captions, lengths)[0].numpy())
    result = metric.compute()
    scores = np.concatenate(expected)
    assert result.n == 10 and result.value == pytest.approx(scores.mean(), abs=1e-12)
    assert np.array_equal(metric.per_item()["scores"], scores)
    assert result.protocol["judge_is_trainer"] is True and result.protocol["captioner"]["state_sha256"] == fingerprint
    assert result.details["cross_entropy"] > 0
    other = CaptionerAccuracy(CaptionerAccuracyParams(), context=EvalContext(networks={"captioner": _captioner(5)}))
    other.update(images, {"captions": captions, "lengths": lengths})
    assert other.compute().protocol["judge_is_trainer"] is False


def test_metric_without_a_captioner_says_what_it_needs():
    with pytest.raises(MetricError, match="needs the evaluator network.*captioner"):
        CaptionerAccuracy(CaptionerAccuracyParams(), context=EvalContext(networks={}))


def test_metric_spread_cross_entropy_and_protocol_fields():
    captioner = _captioner()
    metric = CaptionerAccuracy(
        CaptionerAccuracyParams(), context=EvalContext(batch_size=5, networks={"captioner": captioner})
    )
    images, captions, lengths = _batch()
    metric.update(images, {"captions": captions, "lengths": lengths})
    accuracy, ce = token_scores(captioner, images, captions, lengths)
    result = metric.compute()
    assert result.std == pytest.approx(float(accuracy.numpy().std()), abs=1e-12) and result.std > 0
    assert result.details == {"cross_entropy": pytest.approx(float(ce.numpy().mean()), rel=1e-9)}
    assert result.protocol["n_samples"] == 5 and result.protocol["metric"] == "captioner_accuracy.v1"
    assert result.protocol["captioner"]["class"] == "StreamCaptioner"
    assert result.protocol["judge_is_trainer"] is False  # no training fingerprint given


def test_metric_of_no_images_is_nan_with_no_spread():
    metric = CaptionerAccuracy(CaptionerAccuracyParams(), context=EvalContext(networks={"captioner": _captioner()}))
    with pytest.warns(RuntimeWarning):  # numpy: mean of an empty array
        result = metric.compute()
    assert np.isnan(result.value) and result.std is None and result.n == 0 and result.protocol["n_samples"] == 0
    assert metric.per_item()["scores"].shape == (0,)
