"""Behaviour of the loss components, spectral norm and discriminators beyond the golden fixtures."""

from __future__ import annotations

import pytest
import torch

import t2i.encoders.damsm_image  # noqa: F401  (registers before conftest snapshots the registries)
import t2i.encoders.stream_captioner  # noqa: F401
import t2i.losses.adversarial  # noqa: F401
import t2i.losses.damsm  # noqa: F401
import t2i.losses.stream  # noqa: F401
import t2i.models.discriminator  # noqa: F401
from t2i.batch import TextFeatures
from t2i.losses.damsm import sentence_loss, words_loss
from t2i.models.spectral_norm import SpectralNorm
from t2i.registry import get_registry

E = 8


def _text(batch: int = 3, length: int = 5, vocab: int = 12, class_ids=None, seed: int = 0) -> TextFeatures:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.arange(length, length - batch, -1).clamp(min=2)
    captions = torch.randint(1, vocab, (batch, length), generator=g)
    mask = torch.arange(length)[None, :] >= lengths[:, None]
    captions = captions.masked_fill(mask, 0)
    words = torch.randn(batch, E, length, generator=g).masked_fill(mask[:, None, :], 0.0)
    sentence = torch.randn(batch, E, generator=g)
    class_ids = torch.arange(batch) if class_ids is None else torch.as_tensor(class_ids)
    return TextFeatures(words, sentence, mask, captions, lengths, class_ids)


def _damsm(**params):
    encoder = get_registry("image_encoder").build("cnn_small.v1", {"width": 4, "regions": 4}, text_dim=E)
    loss = get_registry("alignment_loss").build("damsm.v1", params, networks={"image_encoder": encoder})
    return loss, encoder


def _stream(vocab: int = 12):
    captioner = get_registry("captioner").build(
        "stream.v1",
        {"embed_size": E, "hidden_size": 16, "backbone": "small", "small_width": 4, "resize": None},
        vocab_size=vocab,
    )
    loss = get_registry("alignment_loss").build("stream.v1", {"weight": 2.0}, networks={"captioner": captioner})
    return loss, captioner


# -- DAMSM --------------------------------------------------------------------------
def test_class_masking_only_matters_for_shared_classes():
    torch.manual_seed(0)
    regions, global_code = torch.randn(3, E, 4, 4), torch.randn(3, E)
    distinct = _text(class_ids=[0, 1, 2])
    shared = _text(class_ids=[7, 1, 7])
    per_sample = words_loss(regions, distinct.words, distinct.lengths, None, 4.0, 5.0, 10.0)[:2]
    masked_distinct = words_loss(regions, distinct.words, distinct.lengths, distinct.class_ids, 4.0, 5.0, 10.0)[:2]
    masked_shared = words_loss(regions, shared.words, shared.lengths, shared.class_ids, 4.0, 5.0, 10.0)[:2]
    assert torch.allclose(torch.stack(per_sample), torch.stack(masked_distinct))
    assert not torch.allclose(torch.stack(per_sample), torch.stack(masked_shared))
    # Masking removes negatives, so each cross-entropy can only drop.
    assert all(m <= p + 1e-12 for m, p in zip(masked_shared, per_sample, strict=True))
    s_per_sample = sentence_loss(global_code, shared.sentence, None, 10.0)
    s_masked = sentence_loss(global_code, shared.sentence, shared.class_ids, 10.0)
    assert all(m < p for m, p in zip(s_masked, s_per_sample, strict=True))


def test_damsm_class_masking_param():
    torch.manual_seed(0)
    text = _text(class_ids=[7, 1, 7])
    image = torch.rand(3, 3, 32, 32) * 2 - 1
    masked, _ = _damsm()
    unmasked, _ = _damsm(class_masking=False)
    unmasked._networks["image_encoder"].load_state_dict(masked._networks["image_encoder"].state_dict())
    assert masked(image, text)[0] < unmasked(image, text)[0]


def test_damsm_words_attention_maps_shapes():
    text = _text()
    _, _, maps = words_loss(torch.randn(3, E, 4, 4), text.words, text.lengths, text.class_ids, 4.0, 5.0, 10.0)
    assert [tuple(m.shape) for m in maps] == [(1, int(n), 4, 4) for n in text.lengths]
    for m in maps:  # softmax over regions for every word
        assert torch.allclose(m.sum(dim=(2, 3)), torch.ones(1, m.shape[1]))


@pytest.mark.parametrize("which", ["damsm", "stream"])
def test_gradients_reach_the_image_not_the_frozen_network(which):
    torch.manual_seed(0)
    text = _text()
    loss_fn, network = _damsm() if which == "damsm" else _stream()
    image = (torch.rand(3, 3, 32, 32) * 2 - 1).requires_grad_(True)
    total, logs = loss_fn(image, text)
    total.backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in network.parameters())
    assert not network.training
    assert set(logs) == ({"w_loss0", "w_loss1", "s_loss0", "s_loss1"} if which == "damsm" else {"caption_ce"})
    assert list(loss_fn.parameters()) == []  # the frozen network is not owned (nor saved) by the loss


def test_weighted_total():
    torch.manual_seed(0)
    text = _text()
    image = torch.rand(3, 3, 32, 32) * 2 - 1
    loss_fn, _ = _damsm(weight=3.0)
    total, logs = loss_fn(image, text)
    assert torch.allclose(total, 3.0 * sum(logs.values()))
    stream, _ = _stream()
    total, logs = stream(image, text)
    assert torch.allclose(total, 2.0 * logs["caption_ce"])


@pytest.mark.parametrize(("which", "required_drop"), [("damsm", 0.5), ("stream", 1e-3)])
def test_optimising_the_image_lowers_the_loss(which, required_drop):
    # A random frozen captioner barely looks at the image, so STREAM's drop is small but steady.
    torch.manual_seed(0)
    text = _text()
    loss_fn, _ = _damsm() if which == "damsm" else _stream()
    image = torch.randn(3, 3, 32, 32).requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=0.3)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        total, _ = loss_fn(torch.tanh(image), text)
        total.backward()
        optimizer.step()
        losses.append(total.item())
    if which == "damsm":
        assert losses[-1] < required_drop * losses[0], losses
    else:
        assert losses[-1] < losses[0] - required_drop, losses


# -- missing weights files ---------------------------------------------------------------
def test_missing_inception_weights_error(tmp_path):
    missing = tmp_path / "nowhere" / "inception_v3_google-0cc3c7bd.pth"
    with pytest.raises(FileNotFoundError) as info:
        get_registry("image_encoder").build("damsm_inception.v1", {"weights": str(missing)}, text_dim=E)
    message = str(info.value)
    assert str(missing) in message
    assert "inception_v3_google-0cc3c7bd.pth" in message
    assert "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth" in message


def test_missing_resnet_weights_error(tmp_path):
    missing = tmp_path / "resnet152.pth"
    with pytest.raises(FileNotFoundError) as info:
        get_registry("captioner").build("stream.v1", {"weights": str(missing)}, vocab_size=10)
    assert str(missing) in str(info.value) and "resnet152-394f9c45.pth" in str(info.value)


def test_random_trunk_says_so():
    encoder = get_registry("image_encoder").build("damsm_inception.v1", {"weights": "random"}, text_dim=E)
    assert encoder.pretrained is False
    assert all(not p.requires_grad for name, p in encoder.named_parameters() if not name.startswith("emb_"))
    regions, global_code = encoder.eval()(torch.rand(1, 3, 40, 40) * 2 - 1)
    assert regions.shape == (1, E, 17, 17) and global_code.shape == (1, E)


def test_small_encoder_contract():
    encoder = get_registry("image_encoder").build("cnn_small.v1", {"width": 4, "regions": 5}, text_dim=E)
    for size in (32, 64, 128):
        regions, global_code = encoder(torch.rand(2, 3, size, size))
        assert regions.shape == (2, E, 5, 5) and global_code.shape == (2, E)
    assert all(p.requires_grad for p in encoder.parameters())


def test_captioner_sample_and_packed_logits():
    _, captioner = _stream(vocab=9)
    text = _text(vocab=9)
    features = captioner.encode(torch.rand(3, 3, 32, 32))
    assert features.shape == (3, E)
    logits = captioner(features, text.captions, text.lengths)
    assert logits.shape == (int(text.lengths.sum()), 9)
    assert captioner.sample(features).shape == (3, 20)


# -- adversarial -------------------------------------------------------------------------
def _d(name="sn.v1", unconditional=True, size=64):
    return get_registry("discriminator").build(name, {"unconditional": unconditional}, df_dim=1, text_dim=E, size=size)


def test_discriminator_loss_without_unconditional_head():
    torch.manual_seed(0)
    D = _d("bn.v1", unconditional=False)
    loss_fn = get_registry("adversarial_loss").build("cond_uncond.v1")
    real, fake, sentence = torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64), torch.randn(3, E)
    loss, logs = loss_fn.discriminator_loss(D, real, fake, sentence)
    assert set(logs) == {"real_cond", "fake_cond", "wrong_cond"}
    assert torch.allclose(loss, logs["real_cond"] + (logs["fake_cond"] + logs["wrong_cond"]) / 2)
    g_loss, g_logs = loss_fn.generator_loss(D, fake, sentence)
    assert set(g_logs) == {"fake_cond"} and torch.allclose(g_loss, g_logs["fake_cond"])
    with pytest.raises(RuntimeError, match="unconditional"):
        D.uncond_logits(D(real))


def test_discriminator_loss_without_mismatch_and_detached_fake():
    torch.manual_seed(0)
    D = _d()
    loss_fn = get_registry("adversarial_loss").build("cond_uncond.v1", {"mismatch": False})
    real, sentence = torch.randn(2, 3, 64, 64), torch.randn(2, E)
    fake = torch.randn(2, 3, 64, 64, requires_grad=True)
    loss, logs = loss_fn.discriminator_loss(D, real, fake, sentence)
    assert "wrong_cond" not in logs
    expected = (logs["real_uncond"] + logs["real_cond"]) / 2 + (logs["fake_uncond"] + logs["fake_cond"]) / 2
    assert torch.allclose(loss, expected)
    loss.backward()
    assert fake.grad is None  # D's loss never reaches G


# -- spectral norm and discriminator shapes -------------------------------------------------
def test_spectral_norm_semantics():
    torch.manual_seed(0)
    layer = SpectralNorm(torch.nn.Conv2d(3, 5, 3, bias=True))
    state = layer.state_dict()
    assert list(state) == ["module.bias", "module.weight_u", "module.weight_v", "module.weight_bar"]
    assert not layer.module.weight_u.requires_grad and layer.module.weight_bar.requires_grad
    layer.eval()
    before = layer.module.weight_u.clone()
    x = torch.randn(1, 3, 8, 8)
    layer(x)
    assert not torch.equal(before, layer.module.weight_u)  # one power iteration even in eval()
    for _ in range(200):
        sigma = layer.sigma()
    largest = torch.linalg.matrix_norm(layer.module.weight_bar.detach().view(5, -1), ord=2)
    assert torch.allclose(sigma.detach(), largest, rtol=1e-4)
    sigma.backward()
    assert layer.module.weight_bar.grad is not None and layer.module.weight_u.grad is None


@pytest.mark.parametrize("name", ["bn.v1", "sn.v1"])
@pytest.mark.parametrize("size", [16, 32, 64, 128, 512])
def test_discriminator_any_power_of_two_size(name, size):
    D = _d(name, size=size)
    images = torch.randn(2, 3, size, size)
    features = D(images)
    assert features.shape == (2, 8, 4, 4)
    cond = D.cond_logits(features, torch.randn(2, E))
    uncond = D.uncond_logits(features)
    assert cond.shape == uncond.shape == (2,)
    assert ((cond > 0) & (cond < 1)).all()  # probabilities


@pytest.mark.parametrize("size", [8, 96, 100])
def test_discriminator_rejects_other_sizes(size):
    with pytest.raises(ValueError, match="64"):
        _d(size=size)
