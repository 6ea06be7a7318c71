"""The evaluation loop itself (t2i/metrics/evaluation.py), with a stand-in generator, text encoder and metric.

``test_evaluate.py`` runs ``t2i eval`` on a trained checkpoint with the real metrics; these tests pin what the loop
hands a metric, exactly: which items, in which order, with which noise, which images (generated, real or shuffled),
how many, in which mode the generator ran, and what the rows, image files and per-item records it writes contain.
The expected values come from the same steps written out here (the test split's seeded batches, the noise stream
drawn z then ε per batch), so a changed seed, order, count or field fails a test instead of moving a number.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel
from torch import nn

from t2i.data.loader import SeededItems, make_loader
from t2i.data.shapes import ShapesParams, build_shapes
from t2i.metrics import evaluation as ev
from t2i.metrics.base import (
    Metric,
    MetricError,
    MetricResult,
    default_cache_dir,
    default_weights_dir,
    module_fingerprint,
)
from t2i.registry import get_registry

Z_DIM, COND_DIM, SIZE = 3, 2, 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The test split of a 40-image shapes set: 8 items, three stages up to 16 px (the last one is evaluated)."""
    root = tmp_path_factory.mktemp("evalloop") / "shapes"
    return build_shapes(ShapesParams(root=str(root), n=40, size=32), split="test", image_sizes=[4, 8, SIZE])


class TextEncoder(nn.Module):
    """Word vectors from an embedding; refuses batches that are not sorted by length (as packing does)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 4)
        with torch.no_grad():
            self.embed.weight.copy_(torch.linspace(-1, 1, vocab_size * 4).view(vocab_size, 4).flip(0))

    def forward(self, captions, lengths):
        assert bool((lengths[:-1] >= lengths[1:]).all()), "captions must come sorted by length"
        words = self.embed(captions).transpose(1, 2)  # (B, 4, L)
        return words, words.sum(2) / lengths[:, None]


class Generator(nn.Module):
    """Images that depend on every input: z, ε, the sentence and the unmasked words; fp64, to see the fp32 cast."""

    def __init__(self):
        super().__init__()
        self.pattern = nn.Parameter(torch.linspace(-2, 2, 3 * SIZE * SIZE, dtype=torch.float64))
        self.modes: list[bool] = []

    def forward(self, z, sentence, words, mask, eps=None):
        self.modes.append(self.training)
        words = words.masked_fill(mask[:, None, :], 0.0)
        code = z.sum(1) + 0.5 * eps.sum(1) + sentence.sum(1) + 0.1 * words.sum((1, 2))  # (B,)
        images = torch.tanh(code.double()[:, None] * self.pattern).view(-1, 3, SIZE, SIZE)
        return SimpleNamespace(images=[images[:, :, ::4, ::4], images[:, :, ::2, ::2], images])


class RecorderParams(BaseModel):
    fail: str = ""  # a MetricError at build time: the metric cannot run


RECORDERS: list[Recorder] = []


class Recorder(Metric):
    """Keeps every batch it is given; value = mean pixel, one score per image."""

    name = "recorder.v1"

    def __init__(self, params: RecorderParams, *, context):
        if params.fail:
            raise MetricError(params.fail)
        super().__init__(context)
        self.seen: list[tuple[torch.Tensor, dict]] = []
        RECORDERS.append(self)

    def update(self, fake, batch_info):
        self.seen.append((fake.clone(), dict(batch_info)))

    def images(self) -> torch.Tensor:
        return torch.cat([fake for fake, _ in self.seen])

    def compute(self):
        images = self.images()
        return MetricResult(
            value=float(images.mean()),
            std=0.25,
            n=len(images),
            protocol=self.base_protocol(n_samples=len(images)),
            details={"first": float(images[0, 0, 0, 0])},
        )

    def per_item(self):
        return {"scores": self.images().mean((1, 2, 3)).numpy()}


class Lower(Recorder):
    name = "lower.v1"
    higher_is_better = False

    def per_item(self):
        return None


@pytest.fixture
def recorders():
    RECORDERS.clear()
    with get_registry("metric").snapshot() as registry:
        registry.register("recorder.v1", Recorder, params=RecorderParams)
        registry.register("lower.v1", Lower, params=RecorderParams)
        yield RECORDERS
    RECORDERS.clear()


def nets(dataset):
    return Generator(), TextEncoder(len(dataset.vocab))


def spec(name: str = "recorder.v1", **params) -> ev.MetricSpec:
    return (name, RecorderParams(**params))


def expected_batches(dataset, generator, encoder, *, n, batch_size, seed=100):
    """The loop written out: the split's seeded batches (drop_last), z then ε per batch, the last batch cut to n."""
    batch_size = min(batch_size, len(dataset))
    noise = torch.Generator().manual_seed(seed)
    mask_ids = torch.tensor(sorted(dataset.vocab.mask_ids))
    done, out = 0, []
    for batch in make_loader(dataset, batch_size, seed):
        if done >= n:
            break
        take = min(batch_size, n - done)
        z, eps = torch.randn(take, Z_DIM, generator=noise), torch.randn(take, COND_DIM, generator=noise)
        captions, lengths = batch.captions[:take], batch.lengths[:take]
        with torch.no_grad():
            words, sentence = encoder(captions, lengths)
            mask = torch.isin(captions[:, : words.shape[2]], mask_ids)
            images = generator(z, sentence, words, mask, eps=eps).images[-1].float()
        out.append(
            {
                "images": images,
                "real": batch.images[-1][:take],
                "keys": list(batch.keys[:take]),
                "captions": captions,
                "lengths": lengths,
                "class_ids": batch.class_ids[:take],
                "sentence": sentence,
                "z": z,
                "eps": eps,
            }
        )
        done += take
    return out


class Precision:
    """Counts the autocast regions the loop opens (the real one casts to fp16/bf16 on a GPU)."""

    def __init__(self):
        self.regions = 0

    def autocast(self):
        from contextlib import nullcontext

        self.regions += 1
        return nullcontext()


def run(dataset, metrics, generator=None, encoder=None, **options):
    if generator is None:
        generator, encoder = nets(dataset)
    options = {"z_dim": Z_DIM, "cond_dim": COND_DIM, "n": 8, "batch_size": 3, **options}
    return ev.evaluate(generator, encoder, dataset, metrics, **options)


# -- what a metric is given --------------------------------------------------------------------------------------------
def test_each_batch_carries_the_generated_images_and_everything_they_came_from(dataset, recorders):
    generator, encoder = nets(dataset)
    calls: list[int] = []
    precision = Precision()
    started = time.perf_counter()
    result = run(dataset, [spec()], generator, encoder, n=7, batch_size=3, on_batch=calls.append, precision=precision)
    assert 0 < result.seconds <= time.perf_counter() - started
    assert precision.regions == 3  # generation autocasts, batch by batch
    want = expected_batches(dataset, Generator(), encoder, n=7, batch_size=3)
    (recorder,) = recorders
    assert [len(fake) for fake, _ in recorder.seen] == [3, 3, 1] and calls == [3, 6, 7] and result.images == 7
    index_of = {key: i for i, key in enumerate(dataset.keys)}
    for (fake, info), expected in zip(recorder.seen, want, strict=True):
        assert fake.dtype == torch.float32 and fake.shape[1:] == (3, SIZE, SIZE)
        torch.testing.assert_close(fake, expected["images"], rtol=0, atol=0)
        assert set(info) == {"captions", "lengths", "class_ids", "keys", "sentence_embeddings", "indices", "z", "eps"}
        assert info["keys"] == expected["keys"]
        assert info["indices"].tolist() == [index_of[k] for k in expected["keys"]]
        assert info["indices"].dtype == torch.long
        for name in ("captions", "lengths", "class_ids", "z", "eps"):
            torch.testing.assert_close(info[name], expected[name], rtol=0, atol=0)
        torch.testing.assert_close(info["sentence_embeddings"], expected["sentence"], rtol=0, atol=0)
        assert info["sentence_embeddings"].dtype == torch.float32


def test_the_seed_chooses_the_items_and_the_noise(dataset, recorders):
    run(dataset, [spec()], n=4, batch_size=4, seed=100)
    run(dataset, [spec()], n=4, batch_size=4, seed=100)
    run(dataset, [spec()], n=4, batch_size=4, seed=7)
    (a, info_a), (b, _), (c, info_c) = (r.seen[0] for r in recorders)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c) and not torch.equal(info_a["z"], info_c["z"])
    generator, encoder = nets(dataset)
    (want,) = expected_batches(dataset, generator, encoder, n=4, batch_size=4, seed=7)
    torch.testing.assert_close(c, want["images"], rtol=0, atol=0)


def test_n_beyond_the_split_takes_further_passes_and_a_large_batch_is_cut_to_the_split(dataset, recorders):
    result = run(dataset, [spec()], n=20, batch_size=50)
    (recorder,) = recorders
    assert len(dataset) == 8 and [len(f) for f, _ in recorder.seen] == [8, 8, 4] and result.images == 20
    protocol = result.rows[0]["protocol"]
    assert protocol["batch_size"] == 8 and protocol["n_samples"] == 20 and protocol["seed"] == 100
    assert recorder.context.batch_size == 8
    # each pass is the whole split once: every key once per pass
    assert sorted(recorder.seen[0][1]["keys"]) == sorted(recorder.seen[1][1]["keys"]) == sorted(dataset.keys)


def test_the_generator_runs_in_eval_mode_and_gets_its_mode_back(dataset, recorders):
    for training in (True, False):
        generator, encoder = nets(dataset)
        generator.train(training)
        run(dataset, [spec()], generator, encoder, n=4, batch_size=2)
        assert generator.modes == [False, False] and generator.training is training
    generator, encoder = nets(dataset)
    with get_registry("metric").snapshot() as registry:

        class Crash(Recorder):
            def update(self, fake, batch_info):
                raise RuntimeError("metric crashed")

        registry.register("crash.v1", Crash, params=RecorderParams)
        with pytest.raises(RuntimeError, match="metric crashed"):
            run(dataset, [spec("crash.v1")], generator, encoder)
    assert generator.training is True  # restored on the way out of an error too


def test_the_context_a_metric_is_built_with(dataset, recorders, tmp_path):
    judge = nn.Linear(2, 2).train()
    run(
        dataset,
        [spec()],
        n=2,
        batch_size=2,
        seed=5,
        evaluators={"image_encoder": judge},
        training_network_hashes={"text_encoder": "abc"},
        run_info={"checkpoint": {"step": 3}},
        weights_dir=tmp_path / "w",
        cache_dir=tmp_path / "c",
        keep_items=True,
    )
    run(dataset, [spec()], n=2, batch_size=2)
    given, default = (r.context for r in recorders)
    assert given.networks == {"image_encoder": judge} and judge.training is False
    assert given.device == torch.device("cpu") and given.seed == 5 and given.batch_size == 2
    assert given.dataset is dataset and given.keep_items is True
    assert given.training_network_hashes == {"text_encoder": "abc"} and given.run_info == {"checkpoint": {"step": 3}}
    assert given.weights_dir == tmp_path / "w" and given.cache_dir == tmp_path / "c"
    assert default.weights_dir == default_weights_dir() and default.cache_dir == default_cache_dir()
    assert default.networks == {} and default.run_info == {} and default.training_network_hashes == {}
    assert default.keep_items is False and default.seed == 100
    # the real images of the split, one seeded pass in batches of the (cut) batch size, none dropped
    loader = torch.utils.data.DataLoader(SeededItems(dataset, 5), batch_size=2, collate_fn=dataset.collate)
    real = list(given.real_images())
    assert [len(b) for b in real] == [2, 2, 2, 2]
    for got, batch in zip(real, loader, strict=True):
        torch.testing.assert_close(got, batch.images[-1], rtol=0, atol=0)


def test_the_context_can_regenerate_captions_given_in_any_order(dataset, recorders):
    generator, encoder = nets(dataset)
    precision = Precision()
    run(dataset, [spec()], generator, encoder, n=6, batch_size=6, precision=precision)
    (recorder,) = recorders
    fake, info = recorder.seen[0]
    order = torch.tensor([2, 0, 5, 1, 4, 3])  # not sorted by length
    again = recorder.context.generate(info["captions"][order], info["lengths"][order], info["z"][order],
                                      info["eps"][order])  # fmt: skip
    assert precision.regions == 2  # the evaluation's batch, then the regeneration
    assert again.dtype == torch.float32
    torch.testing.assert_close(again, fake[order], rtol=0, atol=1e-6)
    assert generator.training is True  # regenerating leaves the mode alone: evaluate restored it already


# -- which metrics run -------------------------------------------------------------------------------------------------
def test_a_metric_that_cannot_run_is_skipped_only_when_asked(dataset, recorders):
    result = run(dataset, [spec(), spec("lower.v1", fail="needs an image encoder")], skip_unavailable=True)
    assert result.skipped == {"lower.v1": "needs an image encoder"}
    assert [row["metric"] for row in result.rows] == ["recorder.v1"]
    with pytest.raises(MetricError, match="needs an image encoder"):
        run(dataset, [spec(), spec("lower.v1", fail="needs an image encoder")])
    with pytest.raises(ev.EvalSetupError) as info:
        run(dataset, [spec(fail="no judge"), spec("lower.v1", fail="no captioner")], skip_unavailable=True)
    assert str(info.value) == "no metric can run: recorder.v1: no judge; lower.v1: no captioner"


def test_rows_hold_each_metric_s_result_and_protocol(dataset, recorders):
    result = run(dataset, [spec(), spec("lower.v1")], n=5, batch_size=2, run_info={"split": "test"})
    assert [row["metric"] for row in result.rows] == ["recorder.v1", "lower.v1"]
    images = recorders[0].images()
    for row in result.rows:
        assert set(row) == {"time", "metric", "value", "std", "n", "details", "protocol", "protocol_id", "images_per_s"}
        assert row["value"] == pytest.approx(float(images.mean())) and row["std"] == 0.25 and row["n"] == 5
        assert row["details"] == {"first": float(images[0, 0, 0, 0])}
        assert row["protocol"]["split"] == "test" and row["protocol"]["metric"] == row["metric"]
        assert row["protocol_id"] == ev.protocol_id(row["protocol"])
        assert row["images_per_s"] == pytest.approx(5 / result.seconds, rel=0.5)
        assert len(row["time"]) == 19  # ISO, seconds
    assert result.rows[0]["protocol_id"] != result.rows[1]["protocol_id"]
    assert result.images_per_s == 5 / result.seconds and result.items == {}
    assert ev.Evaluation(rows=[], images=3, seconds=0.0, skipped={}).images_per_s == 3 / 1e-9


def test_kept_items_hold_each_image_s_score_and_key(dataset, recorders):
    result = run(dataset, [spec(), spec("lower.v1")], n=5, batch_size=2, keep_items=True)
    assert set(result.items) == {"recorder.v1"}  # lower.v1 cannot be split by image
    record = result.items["recorder.v1"]
    seen = recorders[0].seen
    np.testing.assert_allclose(record["scores"], recorders[0].images().mean((1, 2, 3)).numpy())
    assert record["keys"].tolist() == [k for _, info in seen for k in info["keys"]]
    assert run(dataset, [spec()], n=2, batch_size=2).items == {}


def test_images_are_written_under_the_original_names_one_pass_each(dataset, recorders, tmp_path):
    run(dataset, [spec()], n=12, batch_size=3, write_images=tmp_path / "out")
    (recorder,) = recorders
    per_pass = len(dataset) // 3  # 2 batches of 3 per pass (drop_last): passes 0, 0, 1, 1
    files = sorted(p.name for p in (tmp_path / "out").rglob("*.png"))
    expected = []
    for number, (fake, info) in enumerate(recorder.seen):
        for image, key in zip(fake, info["keys"], strict=True):
            path = tmp_path / "out" / f"{key}_s-1_{number // per_pass}.png"
            expected.append(path.name)
            pixels = ((image + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(np.asarray(Image.open(path)), pixels)
    assert files == sorted(expected) and len(files) == 12 and per_pass == 2


def test_write_image_truncates_like_the_originals(tmp_path):
    image = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.999, 1.0, 1.5]).view(1, 1, 7).expand(3, 1, 7)
    path = ev.write_image(image, tmp_path / "a" / "b", "001.class/item", 2)
    assert path == tmp_path / "a" / "b" / "001.class" / "item_s-1_2.png"
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (1, 7, 3) and pixels[0, :, 0].tolist() == [0, 0, 63, 127, 254, 255, 255]


# -- real images in place of generated ones ----------------------------------------------------------------------------
def test_reference_images_are_each_item_s_own_or_its_neighbour_s(dataset, recorders):
    _, encoder = nets(dataset)
    options = {"z_dim": Z_DIM, "cond_dim": COND_DIM, "n": 5, "batch_size": 3}
    judge = nn.Linear(1, 1)
    real = ev.evaluate_reference("real", encoder, dataset, [spec()], evaluators={"judge": judge},
                                 training_network_hashes={"text_encoder": "h"}, weights_dir="w", cache_dir="c",
                                 **options)  # fmt: skip
    context = recorders[0].context
    assert context.networks == {"judge": judge} and context.training_network_hashes == {"text_encoder": "h"}
    assert context.weights_dir == Path("w") and context.cache_dir == Path("c")
    shuffled = ev.evaluate_reference("shuffled", encoder, dataset, [spec()], **options)
    want = expected_batches(dataset, Generator(), encoder, n=5, batch_size=3)
    for recorder, kind, result in ((recorders[0], "real", real), (recorders[1], "shuffled", shuffled)):
        assert recorder.context.generate is None and recorder.context.keep_items is False
        assert result.rows[0]["protocol"]["reference"] == kind and result.items == {}
        for (fake, info), expected in zip(recorder.seen, want, strict=True):
            images = expected["real"] if kind == "real" else expected["real"].roll(1, dims=0)
            torch.testing.assert_close(fake, images, rtol=0, atol=0)
            assert info["keys"] == expected["keys"]  # same items and captions as the generator's evaluation
            torch.testing.assert_close(info["z"], expected["z"], rtol=0, atol=0)
    assert [len(f) for f, _ in recorders[1].seen] == [3, 2]


def test_reference_kinds_and_their_limits(dataset, recorders):
    _, encoder = nets(dataset)
    options = {"z_dim": Z_DIM, "cond_dim": COND_DIM, "n": 2}
    with pytest.raises(ValueError) as info:
        ev.evaluate_reference("fake", encoder, dataset, [spec()], **options)
    assert str(info.value) == "reference 'fake': use one of real, shuffled"
    with pytest.raises(ev.EvalSetupError, match=r"another item of its batch: batch_size >= 2$"):
        ev.evaluate_reference("shuffled", encoder, dataset, [spec()], batch_size=1, **options)
    assert ev.evaluate_reference("real", encoder, dataset, [spec()], batch_size=1, **options).images == 2
    # a metric that cannot run on real images is skipped by default
    result = ev.evaluate_reference("real", encoder, dataset, [spec(), spec("lower.v1", fail="regenerates")],
                                   batch_size=2, **options)  # fmt: skip
    assert result.skipped == {"lower.v1": "regenerates"}
    with pytest.raises(MetricError):
        ev.evaluate_reference("real", encoder, dataset, [spec("lower.v1", fail="x")], skip_unavailable=False,
                              batch_size=2, **options)  # fmt: skip


def test_references_run_every_kind_and_tag_the_rows(dataset, recorders):
    _, encoder = nets(dataset)
    calls: list[tuple[str, int]] = []
    rows = ev.evaluate_references(encoder, dataset, [spec()], on_batch=lambda *a: calls.append(a), z_dim=Z_DIM,
                                  cond_dim=COND_DIM, n=4, batch_size=2, run_info={"checkpoint": "c"})  # fmt: skip
    assert [(row["reference"], row["protocol"]["reference"]) for row in rows] == [("real", "real"),
                                                                                  ("shuffled", "shuffled")]  # fmt: skip
    assert all(row["protocol"]["checkpoint"] == "c" for row in rows)
    assert calls == [("real", 2), ("real", 4), ("shuffled", 2), ("shuffled", 4)]
    assert len(ev.evaluate_references(encoder, dataset, [spec()], z_dim=Z_DIM, cond_dim=COND_DIM, n=2)) == 2


# -- during training ---------------------------------------------------------------------------------------------------
def test_evaluation_during_training_records_step_judges_and_split(dataset, recorders, tmp_path):
    generator, encoder = nets(dataset)
    generator.train()
    judge = nn.Linear(3, 1)
    precision = Precision()
    rows = ev.evaluate_at_step(generator, encoder, dataset, [spec()], step=40,
                               trained_against={"text_encoder": encoder}, z_dim=Z_DIM, cond_dim=COND_DIM, n=4,
                               batch_size=2, device="cpu", precision=precision)  # fmt: skip
    assert precision.regions == 2  # the run's precision reaches generation
    ((row,),) = [rows]
    assert row["step"] == 40 and row["n"] == 4 and row["protocol"]["batch_size"] == 2
    assert row["protocol"]["checkpoint"] == {"step": 40, "path": None, "sha256": None, "in_training": True}
    assert row["protocol"]["split"] == "test" and row["protocol"]["seed"] == 100
    context = recorders[0].context
    assert context.networks == {"text_encoder": encoder}  # the trainers are the judges by default
    assert context.training_network_hashes == {"text_encoder": module_fingerprint(encoder)}
    assert generator.training is True and not (tmp_path / "eval_items").exists()
    rows = ev.evaluate_at_step(generator, encoder, dataset, [spec(), spec("lower.v1", fail="x")], step=41,
                               trained_against={"text_encoder": encoder}, evaluators={"image_encoder": judge},
                               z_dim=Z_DIM, cond_dim=COND_DIM, n=2, batch_size=2, device="cpu",
                               checkpoint={"step": 41, "path": "p"}, items_folder=tmp_path)  # fmt: skip
    assert [r["metric"] for r in rows] == ["recorder.v1"] and rows[0]["step"] == 41  # skipped by default
    assert rows[0]["protocol"]["checkpoint"] == {"step": 41, "path": "p"}
    assert recorders[-1].context.networks == {"image_encoder": judge} and recorders[-1].context.keep_items is True
    saved = ev.load_items(tmp_path, "recorder.v1", rows[0]["protocol_id"])
    assert saved is not None and saved["keys"].tolist() == [k for _, i in recorders[-1].seen for k in i["keys"]]
    with pytest.raises(MetricError):
        ev.evaluate_at_step(generator, encoder, dataset, [spec(fail="x")], step=1, trained_against={}, z_dim=Z_DIM,
                            cond_dim=COND_DIM, n=2, batch_size=2, device="cpu", skip_unavailable=False)  # fmt: skip


# -- which metrics by default ------------------------------------------------------------------------------------------
def _recipe(*names: str):
    entries = [SimpleNamespace(entry=SimpleNamespace(name=n), params=RecorderParams(fail=n)) for n in names]
    return SimpleNamespace(eval=SimpleNamespace(metrics=entries))


def test_default_metrics_follow_the_recipe_then_the_data_set(dataset, tmp_path):
    assert ev.default_metrics(_recipe("fid_dmgan2018.v1", "is.v1"), dataset) == ["fid_dmgan2018.v1", "is.v1"]
    assert ev.default_metrics(_recipe(), dataset) == ["caption_consistency.v1", "r_precision.v1"]  # shapes
    assert ev.default_metrics(_recipe(), SimpleNamespace(root=tmp_path)) == ["fid.v1", "is.v1", "r_precision.v1"]
    (tmp_path / "attributes.json").mkdir()  # not a file
    assert ev.default_metrics(_recipe(), SimpleNamespace(root=tmp_path)) == ["fid.v1", "is.v1", "r_precision.v1"]
    assert ev.default_metrics(_recipe(), object()) == ["fid.v1", "is.v1", "r_precision.v1"]


def test_metric_specs_resolve_names_take_recipe_params_and_drop_repeats(dataset, recorders):
    recipe = _recipe("recorder.v1")
    specs = ev.metric_specs(recipe, ["recorder", "lower", "recorder.v1"], None)
    assert [name for name, _ in specs] == ["recorder.v1", "lower.v1"]
    assert specs[0][1] == RecorderParams(fail="recorder.v1") and specs[1][1] == RecorderParams()
    assert [name for name, _ in ev.metric_specs(recipe, None, None)] == ["recorder.v1"]
    assert [name for name, _ in ev.metric_specs(recipe, [], None)] == ["recorder.v1"]
    shapes = [name for name, _ in ev.metric_specs(_recipe(), None, dataset)]
    assert shapes == ["caption_consistency.v1", "r_precision.v1"]
    assert ev.higher_is_better("recorder") is True and ev.higher_is_better("lower.v1") is False
    assert ev.higher_is_better("fid") is False and ev.higher_is_better("is") is True
    get_registry("metric").register("plain.v1", lambda params, *, context: Recorder(params, context=context),
                                    params=RecorderParams)  # fmt: skip
    assert ev.higher_is_better("plain") is True  # a factory that does not say: higher is better


# -- eval.jsonl and per-item records -----------------------------------------------------------------------------------
def test_protocol_ids_ignore_what_describes_the_run_and_stay_stable():
    protocol = {"metric": "x.v1", "seed": 100, "checkpoint": {"a": 1}}
    # ids are stored in eval.jsonl and compared across versions of t2i: this value must never change
    assert ev.protocol_id(protocol) == "d14b44254946"
    assert ev.protocol_id({**protocol, "checkpoint": "other", "judge_is_trainer": True}) == "d14b44254946"
    assert ev.protocol_id({"seed": 100, "metric": "x.v1"}) == "d14b44254946"  # key order does not matter
    assert ev.protocol_id({**protocol, "seed": 101}) != "d14b44254946"
    assert ev.protocol_id({**protocol, "path": Path("a")}) == ev.protocol_id({**protocol, "path": "a"})


def test_rows_round_trip_through_eval_jsonl_and_a_cut_line_is_skipped(tmp_path):
    path = tmp_path / "run" / "deep" / "eval.jsonl"
    row = {"value": np.float32(0.5), "n": np.int64(3), "where": Path("/x"), "pair": (1, np.float64(2.5)),
           "details": {1: [np.int32(2)]}, "dtype": torch.float16}  # fmt: skip
    assert ev.append_rows(path, [row]) == path
    ev.append_rows(path, [{"value": 1.0}])
    assert ev.read_rows(path) == [
        {"value": 0.5, "n": 3, "where": "/x", "pair": [1, 2.5], "details": {"1": [2]}, "dtype": "torch.float16"},
        {"value": 1.0},
    ]
    assert path.read_text().splitlines()[1] == '{"value": 1.0}'
    assert path.read_text().startswith('{"details": ')  # keys sorted
    with path.open("a") as handle:
        handle.write('{"value": 2.0, "cut sh\n\n   \n{"value": 3.0}\n')
    assert [r["value"] for r in ev.read_rows(path)] == [0.5, 1.0, 3.0]
    assert ev.read_rows(tmp_path / "missing.jsonl") == []


def test_per_item_records_are_saved_per_metric_and_protocol(tmp_path):
    rows = [{"metric": "b.v1", "protocol_id": "p2"}, {"metric": "a.v1", "protocol_id": "p1"}]
    run = tmp_path / "runs" / "one"  # not created yet
    ev.save_items(run, rows, {"a.v1": {"scores": [1.0, 2.0], "keys": ["x", "y"]}})
    path = run / "eval_items" / "a.v1-p1.npz"
    assert ev.items_path(run, "a.v1", "p1") == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.v1-p1.npz"]  # no partial file, nothing for b
    saved = ev.load_items(run, "a.v1", "p1")
    assert saved["scores"].tolist() == [1.0, 2.0] and saved["keys"].tolist() == ["x", "y"]
    ev.save_items(run, rows[1:], {"a.v1": {"scores": [3.0], "keys": ["z"]}})  # replaces
    assert ev.load_items(run, "a.v1", "p1")["scores"].tolist() == [3.0]
    assert ev.load_items(run, "b.v1", "p2") is None
    np.savez(ev.items_path(run, "b.v1", "p2"), scores=np.array([{"code": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):  # a per-item file never runs a pickle
        ev.load_items(run, "b.v1", "p2")
