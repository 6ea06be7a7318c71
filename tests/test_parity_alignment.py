"""Golden parity of the alignment side: DAMSM image-encoder heads, words/sentence losses, KL, STREAM.

Every ``*__cnn_encoder_proj*``, ``*__words_loss*``, ``*__sent_loss*``, ``*__kl_loss*`` and
``*__stream*`` fixture runs in float64 against ``outputs_f64`` (1e-8 relative, the proof) and in
float32 against ``outputs`` (the fixture's own f32 tolerance), gradients included.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from golden import check, fixture_params, load, precision

import t2i.encoders.damsm_image  # noqa: F401  (registers before conftest snapshots the registries)
import t2i.encoders.stream_captioner  # noqa: F401
from t2i.encoders.stream_captioner import packed_targets
from t2i.legacy import load_into, merge_stream_checkpoints, split_stream_checkpoint, to_original, to_t2i
from t2i.losses.damsm import sentence_loss, words_loss
from t2i.losses.kl import kl_loss
from t2i.registry import get_registry

PRECISIONS = pytest.mark.parametrize("double", [True, False], ids=["f64", "f32"])


@functools.lru_cache(maxsize=4)
def _inception_encoder(text_dim: int) -> torch.nn.Module:
    # Building Inception-v3 costs seconds on 2 cores: once per width, reused by every fixture.
    return get_registry("image_encoder").build("damsm_inception.v1", {"weights": "random"}, text_dim=text_dim)


@PRECISIONS
@pytest.mark.parametrize("path", fixture_params("*__cnn_encoder_proj*.pt"))
def test_cnn_encoder_proj(path, double):
    fx = load(path)
    dtype, inputs, ref = precision(fx, double)
    text_dim = int(fx["config"]["TEXT.EMBEDDING_DIM"]) if fx["config"].get("TRAIN.FLAG", True) else 256
    encoder = _inception_encoder(text_dim)
    missing, unexpected = encoder.load_state_dict(to_t2i("image_encoder", fx["state_dict"]), strict=False)
    assert not unexpected and not [k for k in missing if k.startswith("emb_")]
    encoder.to(dtype).train(fx["mode"] == "train")
    with torch.no_grad():
        regions, global_code = encoder.project(inputs["mixed_6e"], inputs["pooled_2048"])
    encoder.float()
    check({"words_features": regions, "sent_code": global_code}, ref, fx, double, path.stem)


@PRECISIONS
@pytest.mark.parametrize("path", fixture_params("*__words_loss*.pt"))
def test_words_loss(path, double):
    fx = load(path)
    _, inputs, ref = precision(fx, double)
    cfg = fx["config"]
    gammas = (cfg["TRAIN.SMOOTH.GAMMA1"], cfg["TRAIN.SMOOTH.GAMMA2"], cfg["TRAIN.SMOOTH.GAMMA3"])
    assert torch.equal(inputs["labels"], torch.arange(len(inputs["labels"])))
    regions = inputs["img_features"].clone().requires_grad_(True)
    words = inputs["words_emb"].clone().requires_grad_(True)
    loss0, loss1, maps = words_loss(regions, words, inputs["cap_lens"], inputs["class_ids"], *gammas)
    (loss0 + loss1).backward()
    with torch.no_grad():
        noclass0, noclass1, _ = words_loss(regions, words, inputs["cap_lens"], None, *gammas)
    ours = {
        "loss0": loss0,
        "loss1": loss1,
        "att_maps": maps,
        "grad_img_features": regions.grad,
        "grad_words_emb": words.grad,
        "noclass_loss0": noclass0,
        "noclass_loss1": noclass1,
    }
    check(ours, ref, fx, double, path.stem)


@PRECISIONS
@pytest.mark.parametrize("path", fixture_params("*__sent_loss*.pt"))
def test_sent_loss(path, double):
    fx = load(path)
    _, inputs, ref = precision(fx, double)
    gamma3 = fx["config"]["TRAIN.SMOOTH.GAMMA3"]
    cnn_code = inputs["cnn_code"].clone().requires_grad_(True)
    rnn_code = inputs["rnn_code"].clone().requires_grad_(True)
    loss0, loss1 = sentence_loss(cnn_code, rnn_code, inputs["class_ids"], gamma3)
    (loss0 + loss1).backward()
    with torch.no_grad():
        noclass0, noclass1 = sentence_loss(cnn_code, rnn_code, None, gamma3)
    ours = {
        "loss0": loss0,
        "loss1": loss1,
        "grad_cnn_code": cnn_code.grad,
        "grad_rnn_code": rnn_code.grad,
        "noclass_loss0": noclass0,
        "noclass_loss1": noclass1,
    }
    check(ours, ref, fx, double, path.stem)


@PRECISIONS
@pytest.mark.parametrize("path", fixture_params("*__kl_loss*.pt"))
def test_kl_loss(path, double):
    fx = load(path)
    _, inputs, ref = precision(fx, double)
    mu = inputs["mu"].clone().requires_grad_(True)
    logvar = inputs["logvar"].clone().requires_grad_(True)
    kl = kl_loss(mu, logvar)
    kl.backward()
    check({"kl": kl, "grad_mu": mu.grad, "grad_logvar": logvar.grad}, ref, fx, double, path.stem)


def _strip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@PRECISIONS
# "*gan__stream*": "*__stream*" would also catch "*__generator_loss__stream" (test_parity_discriminators.py runs those)
@pytest.mark.parametrize("path", fixture_params("*gan__stream*.pt"))
def test_stream(path, double):
    fx = load(path)
    dtype, inputs, ref = precision(fx, double)
    cfg = fx["config"]
    captioner = get_registry("captioner").build(
        "stream.v1",
        {
            "embed_size": cfg["CAP.embed_size"],
            "hidden_size": 2 * cfg["CAP.hidden_size"],  # CAPTION_RNN is built with 2 × CAP.hidden_size
            "num_layers": cfg["CAP.num_layers"],
            "backbone": "small",  # the ResNet-152 trunk is stubbed by the fixture's pooled features
        },
        vocab_size=int(cfg["arg.ntoken"]),
        feature_dim=inputs["resnet_features"].shape[1],
    )
    # the fixture holds caption_cnn.linear/bn (no ResNet trunk) and the whole caption_rnn
    state = to_t2i("captioner", fx["state_dict"])
    captioner.load_original_head(_strip(state, "encoder."), _strip(state, "decoder."))
    captioner.to(dtype).train(fx["mode"] == "train")
    captions, lengths = inputs["captions"], inputs["cap_lens"]
    with torch.no_grad():
        features = captioner.encoder.head(inputs["resnet_features"])
        logits = captioner(features, captions, lengths)
        targets = packed_targets(captions, lengths)
        ce = torch.nn.functional.cross_entropy(logits, targets)
    batch_sizes = torch.nn.utils.rnn.pack_padded_sequence(captions, lengths, batch_first=True).batch_sizes
    ours = {
        "features": features,
        "cap_output": logits,
        "target_cap": targets,
        "packed_batch_sizes": batch_sizes,
        "caption_ce": ce,
    }
    check(ours, ref, fx, double, path.stem)
    samples = captioner.sample(features, max_length=5)
    assert samples.shape == (captions.shape[0], 5) and samples.dtype == torch.int64


def _assert_bit_exact(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_image_encoder_converter_round_trip():
    encoder = _inception_encoder(16)
    state = encoder.state_dict()
    original = to_original("image_encoder", state)
    assert "Conv2d_1a_3x3.conv.weight" in original and "emb_cnn_code.bias" in original  # CNN_ENCODER names
    _assert_bit_exact(to_t2i("image_encoder", original), state)


def test_captioner_converter_round_trip():
    captioner = get_registry("captioner").build(
        "stream.v1", {"embed_size": 4, "hidden_size": 6, "backbone": "small", "small_width": 2}, vocab_size=9
    )
    state = captioner.state_dict()
    encoder_file, decoder_file = split_stream_checkpoint(to_original("captioner", state))
    assert {"linear.weight", "bn.running_var"} <= set(encoder_file)  # encoder-*.ckpt names
    assert {"embed.weight", "lstm.weight_ih_l0", "linear.bias"} <= set(decoder_file)  # decoder-*.ckpt names
    back = to_t2i("captioner", merge_stream_checkpoints(encoder_file, decoder_file))
    _assert_bit_exact(back, state)
    fresh = get_registry("captioner").build(
        "stream.v1", {"embed_size": 4, "hidden_size": 6, "backbone": "small", "small_width": 2}, vocab_size=9
    )
    load_into(fresh, back, "captioner")
