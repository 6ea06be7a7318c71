"""Original checkpoints: bit-exact key round trips, safe loading, clear key-mismatch errors, CLI import/export."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from t2i.cli import app
from t2i.legacy import KeyMismatchError, LegacyError, load_into, load_original, to_original, to_t2i
from t2i.registry import get_registry, registries

for _registry in registries.values():
    _registry.discover()  # before conftest's per-test registry snapshot (the CLI resolves whole recipes)

G, E, C, Z = 3, 8, 5, 6


def tiny_generator(refiner: str, params: dict | None = None, res_blocks: int = 1, stages: int = 3) -> nn.Module:
    entry = get_registry("refiner").get(refiner)
    return get_registry("generator").build(
        "stacked",
        {"res_blocks": res_blocks},
        z_dim=Z,
        cond_dim=C,
        text_dim=E,
        gf_dim=G,
        stages=stages,
        base_size=8,
        refiner=lambda _i, size: entry.build(params or {}, image_dim=G, word_dim=E, cond_dim=C, size=size),
    )


def randomized(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.normal_()
    return module


REFINERS = [
    ("attention", {}),
    ("glam", {}),
    ("dm", {}),
    ("dm", {"legacy_unused_conv": True}),
    ("gldm", {}),
    ("gldm", {"legacy_unused_conv": True}),
]


@pytest.mark.parametrize(("refiner", "params"), REFINERS, ids=[f"{r}-{sorted(p)}" for r, p in REFINERS])
@pytest.mark.parametrize("stages", [1, 3, 4])
def test_generator_round_trip_bit_exact(refiner: str, params: dict, stages: int) -> None:
    state = randomized(tiny_generator(refiner, params, stages=stages)).state_dict()
    original = to_original("generator", state)
    assert len(original) == len(state)
    assert all(k.startswith(("ca_net.", "h_net", "img_net")) for k in original), sorted(original)
    assert f"img_net{stages}.img.0.weight" in original and "h_net1.upsample1.1.weight" in original
    back = to_t2i("generator", original)
    assert list(back) == list(state)
    for key, value in state.items():
        assert back[key] is value and torch.equal(back[key], value)
    assert list(to_original("generator", back)) == list(original)


def test_original_names_per_refiner() -> None:
    """Refiner-specific keys land where the original NEXT_STAGE_G keeps them."""
    keys = set(to_original("generator", tiny_generator("glam").state_dict()))
    assert {"h_net2.att.conv_context.weight", "h_net2.att.linear.bias", "h_net2.conv.weight"} <= keys
    keys = set(to_original("generator", tiny_generator("gldm", {"legacy_unused_conv": True}).state_dict()))
    assert {"h_net3.M_c.0.bias", "h_net3.response_gate.0.weight", "h_net3.conv.weight", "h_net2.A_c.weight"} <= keys
    assert "h_net2.residual.0.block.3.weight" in keys and "h_net2.upsample.1.weight" in keys


def test_text_encoder_round_trip() -> None:
    encoder = randomized(get_registry("text_encoder").build("rnn", {}, vocab_size=11, text_dim=E))
    state = encoder.state_dict()
    back = to_t2i("text_encoder", to_original("text_encoder", state))
    assert list(back) == list(state) and all(torch.equal(back[k], v) for k, v in state.items())


def test_load_original_refuses_arbitrary_pickles(tmp_path: Path) -> None:
    path = tmp_path / "netG_epoch_1.pth"
    torch.save({"weight": torch.zeros(2), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(LegacyError, match="arbitrary code") as info:
        load_original(path)
    assert str(path) in str(info.value) and "weights_only" in str(info.value)


def test_load_original_reads_plain_state_dicts(tmp_path: Path) -> None:
    path = tmp_path / "netD0.pth"
    state = {"module.a.weight": torch.arange(3.0), "module.b.bias": torch.ones(1)}
    torch.save(state, path)
    loaded = load_original(path)
    assert list(loaded) == ["a.weight", "b.bias"]  # DataParallel prefix removed
    with pytest.raises(LegacyError, match="not found"):
        load_original(tmp_path / "missing.pth")


def test_key_mismatch_lists_missing_and_unexpected() -> None:
    dm_state = to_t2i("generator", to_original("generator", tiny_generator("dm").state_dict()))
    dmm = tiny_generator("dm", {"legacy_unused_conv": True})
    with pytest.raises(KeyMismatchError) as info:
        load_into(dmm, dm_state, "generator")
    message = str(info.value)
    assert "missing keys (2)" in message and "stages.0.refiner.conv.weight" in message
    assert info.value.missing == ["stages.0.refiner.conv.weight", "stages.1.refiner.conv.weight"]
    gldm_state = tiny_generator("gldm").state_dict()
    with pytest.raises(KeyMismatchError) as info:
        load_into(tiny_generator("dm"), gldm_state, "generator")
    assert "stages.0.refiner.A_c.weight" in info.value.unexpected
    assert any("response_gate.0.weight" in s for s in info.value.shapes)


# -- CLI ----------------------------------------------------------------------------------------
TINY_SETS = [
    "model.gf_dim=3",
    "model.text_dim=8",
    "model.cond_dim=5",
    "model.z_dim=6",
    "model.base_size=8",
    "model.stages=2",
]


def _invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_cli_import_export_round_trip(tmp_path: Path) -> None:
    sets = [arg for s in TINY_SETS for arg in ("--set", s)]
    generator = randomized(tiny_generator("dm", res_blocks=2, stages=2))
    encoder = randomized(get_registry("text_encoder").build("rnn", {}, vocab_size=13, text_dim=E))
    originals = {
        "netG_epoch_3.pth": to_original("generator", generator.state_dict()),
        "text_encoder7.pth": to_original("text_encoder", encoder.state_dict()),
    }
    for name, state in originals.items():
        torch.save(state, tmp_path / name)
    out = tmp_path / "ck" / "imported.pt"
    result, text = _invoke(
        "import", "dmgan_bird", *sets, tmp_path / "netG_epoch_3.pth", tmp_path / "text_encoder7.pth", "-o", out
    )
    assert result.exit_code == 0, text
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint["format_version"] == 1 and checkpoint["recipe"]["model"]["gf_dim"] == 3
    assert set(checkpoint["models"]) == {"generator", "generator_ema", "text_encoder"}
    for key, value in generator.state_dict().items():
        assert torch.equal(checkpoint["models"]["generator_ema"][key], value)

    exported = tmp_path / "exported"
    result, text = _invoke("export", out, "-o", exported)
    assert result.exit_code == 0, text
    for written, source in (("netG.pth", "netG_epoch_3.pth"), ("text_encoder.pth", "text_encoder7.pth")):
        back, original = torch.load(exported / written, weights_only=True), originals[source]
        assert list(back) == list(original)
        assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in original.items())


def test_cli_import_reports_mismatch_and_unknown_files(tmp_path: Path) -> None:
    sets = [arg for s in TINY_SETS for arg in ("--set", s)]
    torch.save(
        to_original("generator", tiny_generator("dm", res_blocks=2, stages=2).state_dict()),
        tmp_path / "netG_epoch_1.pth",
    )
    result, text = _invoke(
        "import",
        "dmgan_bird",
        *sets,
        "--set",
        "model.refiner=attention",
        tmp_path / "netG_epoch_1.pth",
        "-o",
        tmp_path / "x.pt",
    )
    assert result.exit_code == 1
    assert "missing keys" in text and "unexpected keys" in text and "stages.0.refiner.M_r.0.weight" in text
    assert not (tmp_path / "x.pt").exists()

    strange = tmp_path / "weights.bin"
    torch.save({}, strange)
    result, text = _invoke("import", "dmgan_bird", *sets, strange, "-o", tmp_path / "x.pt")
    assert result.exit_code == 1 and "--as" in text
    torch.save({"x": argparse.Namespace()}, tmp_path / "netG_bad.pth")
    result, text = _invoke("import", "dmgan_bird", *sets, tmp_path / "netG_bad.pth", "-o", tmp_path / "x.pt")
    assert result.exit_code == 1 and "arbitrary code" in text


# -- every part at once: generator, discriminators, text encoder, image encoder, captioner ---------------------
FULL_SETS = [
    "model.gf_dim=3",
    "model.df_dim=2",
    "model.text_dim=8",
    "model.cond_dim=5",
    "model.z_dim=6",
    "model.stages=2",
    "model.text_encoder.word_dim=8",
    'model.image_encoder={name="cnn_small", width=4}',
    'model.captioner={name="stream", backbone="small", small_width=4, embed_size=8, hidden_size=8}',
]
VOCAB = 11


def _full_originals() -> dict[str, dict[str, torch.Tensor]]:
    """Randomised original-format state dicts of every part of the MirrorGAN-shapes recipe, by original file name."""
    from t2i import networks
    from t2i import recipe as recipe_mod
    from t2i.legacy import split_stream_checkpoint

    recipe = recipe_mod.load("mirrorgan_shapes", FULL_SETS)
    encoder, decoder = split_stream_checkpoint(
        to_original("captioner", randomized(networks.build_captioner(recipe, VOCAB)).state_dict())
    )
    originals = {
        "netG_epoch_5.pth": to_original("generator", randomized(networks.build_generator(recipe)).state_dict()),
        "text_encoder5.pth": to_original(
            "text_encoder", randomized(networks.build_text_encoder(recipe, VOCAB)).state_dict()
        ),
        "image_encoder5.pth": to_original(
            "image_encoder", randomized(networks.build_image_encoder(recipe)).state_dict()
        ),
        "encoder-5-300.ckpt": encoder,
        "decoder-5-300.ckpt": decoder,
    }
    for index, d in enumerate(networks.build_discriminators(recipe)):
        originals[f"netD{index}.pth"] = to_original("discriminator", randomized(d).state_dict())
    return originals


def _assert_bit_exact(back: dict[str, torch.Tensor], original: dict[str, torch.Tensor], what: str) -> None:
    assert list(back) == list(original), f"{what}: keys or their order changed"
    for key, value in original.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), f"{what}: {key} changed"


def test_cli_round_trip_of_every_part_is_bit_exact(tmp_path: Path) -> None:
    originals = _full_originals()
    for name, state in originals.items():
        torch.save(state, tmp_path / name)
    sets = [arg for s in FULL_SETS for arg in ("--set", s)]
    out = tmp_path / "imported.pt"
    result, text = _invoke("import", "mirrorgan_shapes", *sets, *(tmp_path / n for n in originals), "-o", out)
    assert result.exit_code == 0, text
    checkpoint = torch.load(out, weights_only=True)
    models = checkpoint["models"]
    assert set(models) == {"generator", "generator_ema", "discriminators", "text_encoder", "image_encoder", "captioner"}
    assert len(models["discriminators"]) == 2 and checkpoint["kind"] == "gan"
    assert {k.split(".")[0] for k in models["captioner"]} == {"encoder", "decoder"}  # merged, in t2i names

    exported = tmp_path / "exported"
    result, text = _invoke("export", out, "-o", exported)
    assert result.exit_code == 0, text
    names = {
        "netG.pth": "netG_epoch_5.pth",
        "netD0.pth": "netD0.pth",
        "netD1.pth": "netD1.pth",
        "text_encoder.pth": "text_encoder5.pth",
        "image_encoder.pth": "image_encoder5.pth",
        "encoder-t2i.ckpt": "encoder-5-300.ckpt",
        "decoder-t2i.ckpt": "decoder-5-300.ckpt",
    }
    assert {p.name for p in exported.iterdir()} == set(names)
    for written, source in names.items():
        _assert_bit_exact(torch.load(exported / written, weights_only=True), originals[source], written)

    # The exported files import again (the captioner pair by its names) into the same checkpoint.
    again = tmp_path / "again.pt"
    result, text = _invoke("import", "mirrorgan_shapes", *sets, *sorted(exported.iterdir()), "-o", again)
    assert result.exit_code == 0, text
    second = torch.load(again, weights_only=True)["models"]
    for part in ("generator", "text_encoder", "image_encoder", "captioner"):
        _assert_bit_exact(second[part], models[part], part)


def test_cli_captioner_pair_by_as_and_incomplete_pair(tmp_path: Path) -> None:
    originals = _full_originals()
    encoder, decoder = tmp_path / "stream_cnn.pt", tmp_path / "stream_rnn.pt"
    torch.save(originals["encoder-5-300.ckpt"], encoder)
    torch.save(originals["decoder-5-300.ckpt"], decoder)
    sets = [arg for s in FULL_SETS for arg in ("--set", s)]
    out = tmp_path / "stream.pt"
    result, text = _invoke(
        "import", "mirrorgan_shapes", *sets, "--as", f"captioner_encoder={encoder}", "--as",
        f"captioner_decoder={decoder}", "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, text
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint["kind"] == "stream" and set(checkpoint["models"]) == {"captioner"}

    result, text = _invoke("import", "mirrorgan_shapes", *sets, "--as", f"captioner_encoder={encoder}", "-o", out)
    assert result.exit_code == 1 and "decoder-*.ckpt" in text and "--as captioner_decoder" in text

    # Swapped files: the error names the file that is not a STREAM decoder.
    result, text = _invoke(
        "import", "mirrorgan_shapes", *sets, "--as", f"captioner_encoder={decoder}", "--as",
        f"captioner_decoder={encoder}", "-o", tmp_path / "bad.pt",
    )  # fmt: skip
    assert result.exit_code == 1 and "stream_cnn.pt has no embed.weight" in text


# -- the released files, as released --------------------------------------------------------------
def _as_released(state: dict, path: Path) -> Path:
    """Write a state dict as the AttnGAN-era releases are: no BatchNorm ``num_batches_tracked`` (PyTorch < 0.4.1),
    ``module.`` prefixes (nn.DataParallel), the pre-1.6 serialisation."""
    from collections import OrderedDict

    old = OrderedDict((f"module.{k}", v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    torch.save(old, path, _use_new_zipfile_serialization=False)
    return path


def test_released_names_are_recognised() -> None:
    from t2i.cli.model_io import classify

    for name in ("bird_DMGAN.pth", "coco_DMGAN.pth", "bird_AttnGAN2.pth", "coco_AttnGAN2.pth", "netG_epoch_800.pth"):
        assert classify(Path(name)) == "generator", name
    assert classify(Path("text_encoder200.pth")) == "text_encoder"
    assert classify(Path("image_encoder100.pth")) == "image_encoder"
    assert classify(Path("netD2.pth")) == "discriminator2"
    assert classify(Path("encoder.ckpt")) == "captioner_encoder"
    assert classify(Path("decoder-200.ckpt")) == "captioner_decoder"
    assert classify(Path("bird_DMGAN.txt")) is None


_RELEASED = [
    ("dmgan__g_net__eval.pt", "dmgan_bird", "bird_DMGAN.pth"),
    ("attngan__g_net.pt", "attngan_bird", "bird_AttnGAN2.pth"),
]


@pytest.mark.parametrize(("fixture", "recipe", "name"), _RELEASED, ids=[r[2] for r in _RELEASED])
def test_released_generator_imports_and_reproduces_the_original(tmp_path: Path, fixture, recipe, name) -> None:
    """A generator file in the released format, under its released name, imports and computes what the original
    computed (float64, the golden fixture's outputs)."""
    from golden import GOLDEN_DIR, assert_close_f64, load, to_double

    from t2i import networks
    from t2i import recipe as recipe_mod

    path = GOLDEN_DIR / fixture
    if not path.is_file():
        pytest.fail(f"golden fixture {path} is missing (set T2I_GOLDEN)")
    fx = load(path)
    cfg = fx["config"]
    released = _as_released(fx["state_dict"], tmp_path / name)
    sets = [
        f"model.gf_dim={cfg['GAN.GF_DIM']}",
        f"model.z_dim={cfg['GAN.Z_DIM']}",
        f"model.cond_dim={cfg['GAN.CONDITION_DIM']}",
        f"model.text_dim={cfg['TEXT.EMBEDDING_DIM']}",
        f"model.stages={cfg['TREE.BRANCH_NUM']}",
    ]
    out = tmp_path / "imported.pt"
    result, text = _invoke("import", recipe, *[a for s in sets for a in ("--set", s)], released, "-o", out)
    assert result.exit_code == 0, text

    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint["imported_from"] == {"generator": str(released)}
    imported = recipe_mod.validate(checkpoint["recipe"], str(out))
    generator = networks.build_generator(imported)
    generator.load_state_dict(checkpoint["models"]["generator_ema"], strict=True)
    generator.double().train(fx["mode"] == "train")
    inputs = to_double(fx["inputs"])
    with torch.no_grad():
        images = generator(inputs["z_code"], inputs["sent_emb"], inputs["word_embs"], inputs["mask"], eps=inputs["eps"])
    assert_close_f64(
        {"fake_imgs": images.images, "mu": images.mu},
        {"fake_imgs": fx["outputs_f64"]["fake_imgs"], "mu": fx["outputs_f64"]["mu"]},
        name,
    )


def test_released_text_encoder_without_modern_keys(tmp_path: Path) -> None:
    """text_encoder200.pth written by an old PyTorch (pre-1.6 serialisation, DataParallel prefix) imports."""
    encoder = randomized(get_registry("text_encoder").build("rnn", {}, vocab_size=13, text_dim=E))
    released = _as_released(to_original("text_encoder", encoder.state_dict()), tmp_path / "text_encoder200.pth")
    sets = [arg for s in TINY_SETS for arg in ("--set", s)]
    out = tmp_path / "imported.pt"
    result, text = _invoke("import", "dmgan_bird", *sets, released, "-o", out)
    assert result.exit_code == 0, text
    state = torch.load(out, weights_only=True)["models"]["text_encoder"]
    assert all(torch.equal(state[k], v) for k, v in encoder.state_dict().items())


def test_load_into_fills_missing_batchnorm_counters_only() -> None:
    module = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    state = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    loaded = load_into(module, state, "bn")
    assert "1.num_batches_tracked" in loaded
    with pytest.raises(KeyMismatchError, match="1.running_mean"):
        load_into(module, {k: v for k, v in state.items() if k != "1.running_mean"}, "bn")


def test_import_stores_the_vocabulary_of_the_originals_captions_pickle(tmp_path: Path) -> None:
    """Original encoders index words by captions.pickle's ixtoword: --vocab takes that file (or finds it in the
    recipe's data folder), keeping its order, so `t2i sample` can run the imported model."""
    import pickle

    words = ["<end>", "this", "bird", "is", "red", "small", "a", "with", "wings", "blue", "beak", "long", "white"]
    data = tmp_path / "birds"
    data.mkdir()
    ixtoword = dict(enumerate(words))
    (data / "captions.pickle").write_bytes(
        pickle.dumps([[[1, 2]], [[2, 3]], ixtoword, {w: i for i, w in ixtoword.items()}])
    )
    encoder = randomized(get_registry("text_encoder").build("rnn", {}, vocab_size=len(words), text_dim=E))
    released = tmp_path / "text_encoder200.pth"
    torch.save(to_original("text_encoder", encoder.state_dict()), released)
    sets = [arg for s in TINY_SETS for arg in ("--set", s)]
    for extra in (
        ["--vocab", str(data / "captions.pickle")],
        ["--vocab", str(data)],
        ["--set", f'data.dataset.root="{data}"'],
    ):
        out = tmp_path / "imported.pt"
        result, text = _invoke("import", "dmgan_bird", *sets, released, "-o", out, *extra)
        assert result.exit_code == 0, text
        assert torch.load(out, weights_only=True)["vocab"]["words"] == words
    result, text = _invoke("import", "dmgan_bird", *sets, released, "-o", tmp_path / "none.pt")
    assert result.exit_code == 0 and "no vocabulary stored" in text
    result, text = _invoke("import", "dmgan_bird", *sets, released, "-o", tmp_path / "x.pt", "--vocab", tmp_path)
    assert result.exit_code == 1 and "holds none of" in text
