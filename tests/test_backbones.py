"""Inception backbones for FID / IS: weight lookup and hash checks, strict loading, the FID Inception's structure.

Random-initialised networks and weight files written here only (never a download); each full-size network is built
a handful of times in all (module fixtures).
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from t2i import weights
from t2i.metrics import backbones
from t2i.metrics.backbones import (
    FID_INCEPTION,
    TORCHVISION_INCEPTION,
    InceptionBackbone,
    WeightsMismatchError,
    WeightsNotFoundError,
    WeightSpec,
    classifier_inception,
    fid_inception,
    locate_weights,
    torchvision_inception,
)
from t2i.metrics.base import EvalContext, sha256_file
from t2i.metrics.fid import FID, FIDParams
from t2i.weights import WeightsError

URL = "https://example.invalid/weights.pth"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _state_equal(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = net.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert torch.equal(own[k], v), k


def _spec_for(path: Path, description: str) -> WeightSpec:
    return WeightSpec(path.name, sha256_file(path), URL, description)


# -- shared networks: two weight files (torchvision layout, FID layout) and the backbones loaded from them ---------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Seed-3 random networks saved as weight files (a different init from any seed-0 network)."""
    folder = tmp_path_factory.mktemp("weights")
    empty = tmp_path_factory.mktemp("empty")
    tv = torchvision_inception(empty, allow_random=True, seed=3).net.state_dict()
    fid = fid_inception(empty, allow_random=True, seed=3).net.state_dict()
    torch.save(tv, folder / "tv.pth")
    torch.save(fid, folder / "fid.pth")
    return {"dir": folder, "empty": empty, "tv": tv, "fid": fid}


@pytest.fixture(scope="module")
def loaded(files):
    """torchvision_inception / fid_inception built from those files (their specs pointed at them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backbones, "TORCHVISION_INCEPTION", _spec_for(files["dir"] / "tv.pth", "test torchvision"))
        mp.setattr(backbones, "FID_INCEPTION", _spec_for(files["dir"] / "fid.pth", "test FID"))
        return {"tv": torchvision_inception(files["dir"]), "fid": fid_inception(files["dir"])}


# -- specs and lookup --------------------------------------------------------------------------------------------------
def test_specs_mirror_the_packaged_manifest(tmp_path, monkeypatch):
    """File, digest, first URL, accepted alternatives and manifest name, from the packaged manifest (not the env's)."""
    other = tmp_path / "manifest.toml"
    other.write_text('[fid_inception]\nfile = "x.pth"\nurls = ["http://x/x.pth"]\nsha256 = ""\n')
    monkeypatch.setenv("T2I_WEIGHTS_MANIFEST", str(other))
    manifest = weights.load_manifest(weights.PACKAGED_MANIFEST)
    for name, constant in (("fid_inception", FID_INCEPTION), ("inception_v3_imagenet", TORCHVISION_INCEPTION)):
        e = manifest[name]
        spec = backbones._spec(name, "described")
        assert spec == WeightSpec(e.file, e.expected, e.urls[0], "described", e.also_accepted, manifest_name=name)
        assert spec == WeightSpec(**{**constant.__dict__, "description": "described"})
    assert FID_INCEPTION.filename == "pt_inception-2015-12-05-6726825d.pth" and len(FID_INCEPTION.sha256) == 64
    assert FID_INCEPTION.alternatives == (("weights-inception-2015-12-05-6726825d.pth", "6726825d"),)
    assert TORCHVISION_INCEPTION.url == "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"


def test_describe_hash():
    """A full digest is shown as is, a prefix as a prefix."""
    assert backbones._describe_hash("ab" * 32) == "ab" * 32
    assert backbones._describe_hash("6726825d") == "starting with 6726825d"


def test_locate_finds_the_file_or_an_accepted_alternative(tmp_path):
    """An accepted older name is found; the main name wins when both are there; the full digest is returned."""
    main, old = b"main weights" * 10, b"older name" * 10
    spec = WeightSpec("main.pth", _digest(main), URL, "test trunk", alternatives=(("old.pth", _digest(old)[:8]),))
    (tmp_path / "old.pth").write_bytes(old)
    assert locate_weights(spec, tmp_path) == (tmp_path / "old.pth", _digest(old))  # the full digest, not the prefix
    (tmp_path / "main.pth").write_bytes(main)
    assert locate_weights(spec, tmp_path) == (tmp_path / "main.pth", _digest(main))  # the main name first


def test_locate_refuses_a_file_with_another_hash(tmp_path):
    """A wrong file (main name or alternative) is refused, naming its path and digest, the expected hash and the URL."""
    good, bad = b"good" * 10, b"bad" * 10
    spec = WeightSpec("main.pth", _digest(good), URL, "test trunk", alternatives=(("old.pth", "0123abcd"),))
    (tmp_path / "old.pth").write_bytes(bad)
    with pytest.raises(WeightsMismatchError) as info:
        locate_weights(spec, tmp_path)
    message = str(info.value)
    assert str(tmp_path / "old.pth") in message and _digest(bad) in message
    assert "expected starting with 0123abcd" in message and "test trunk" in message and URL in message
    (tmp_path / "main.pth").write_bytes(bad)
    with pytest.raises(WeightsMismatchError, match=f"expected {_digest(good)}: it is not the test trunk"):
        locate_weights(spec, tmp_path)


def test_not_found_names_every_accepted_file_the_hash_and_where_to_put_it(tmp_path):
    """The not-found message lists the accepted names, the hash, the URL and the destination."""
    spec = WeightSpec("main.pth", "ab" * 32, URL, "test trunk", alternatives=(("a.pth", "1"), ("b.pth", "2")))
    with pytest.raises(WeightsNotFoundError) as info:
        locate_weights(spec, tmp_path)
    message = str(info.value)
    assert message.startswith(f"weights file main.pth (or a.pth) (or b.pth) not found in {tmp_path}. ")
    assert f"expected SHA-256 {'ab' * 32}. Fetch it from {URL} and place it at {tmp_path / 'main.pth'}" in message
    assert message.endswith("T2I_WEIGHTS environment variable at the directory that holds it).")
    prefixed = WeightSpec("p.pth", "abcd1234", URL, "test trunk")
    with pytest.raises(WeightsNotFoundError, match="weights file p.pth not found .* SHA-256 starting with abcd1234"):
        locate_weights(prefixed, tmp_path)


def test_find_or_random(tmp_path, monkeypatch, caplog):
    """Random only when allowed and the file is absent; a wrong file is never replaced by a random network."""
    monkeypatch.setenv("T2I_OFFLINE", "1")
    data = b"weights" * 10
    spec = WeightSpec("w.pth", _digest(data), URL, "test trunk")
    with caplog.at_level(logging.WARNING, logger="t2i.weights"):
        assert backbones._find_or_random(spec, tmp_path, allow_random=True) == (None, "random-init")
    [record] = [r for r in caplog.records if r.name == "t2i.weights"]
    assert record.getMessage() == f"test trunk: no weights file in {tmp_path}, using a random-initialised network"
    with pytest.raises(WeightsNotFoundError, match="weights file w.pth not found"):  # no manifest entry: not fetched
        backbones._find_or_random(spec, tmp_path, allow_random=False)
    fetched = WeightSpec("w.pth", _digest(data), URL, "test trunk", manifest_name="fid_inception")
    with pytest.raises(weights.WeightsUnavailableError, match="T2I_OFFLINE"):  # a manifest entry: fetched (offline)
        backbones._find_or_random(fetched, tmp_path, allow_random=False)
    (tmp_path / "w.pth").write_bytes(data)
    assert backbones._find_or_random(spec, tmp_path, allow_random=True) == (tmp_path / "w.pth", _digest(data))
    (tmp_path / "w.pth").write_bytes(b"corrupt")
    with pytest.raises(WeightsMismatchError):
        backbones._find_or_random(spec, tmp_path, allow_random=True)


def test_missing_weights_are_not_silently_random(tmp_path, monkeypatch):
    """Without allow_random a missing file is an error (offline here), never a random network."""
    monkeypatch.setenv("T2I_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="inception_v3_google-0cc3c7bd.pth"):
        torchvision_inception(tmp_path)


# -- _load -------------------------------------------------------------------------------------------------------------
class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)


def _other_state():
    other = _Small()
    with torch.no_grad():
        for t in other.state_dict().values():
            t.copy_(torch.randn_like(t.float()).to(t.dtype) if t.is_floating_point() else t + 5)
    return other.state_dict()


@pytest.mark.parametrize("wrapped", [False, True])
def test_load_copies_every_tensor(tmp_path, wrapped):
    """A state dict, or a checkpoint ``{"state_dict": ...}``; AuxLogits entries (not built here) are dropped."""
    state = _other_state()
    saved = {**state, "AuxLogits.fc.weight": torch.ones(2, 2)}
    torch.save({"state_dict": saved, "epoch": 3} if wrapped else saved, tmp_path / "w.pth")
    net = _Small()
    backbones._load(net, tmp_path / "w.pth")
    _state_equal(net, state)


@pytest.mark.parametrize(("change", "words"), [("missing", "Missing key(s)"), ("extra", "Unexpected key(s)")])
def test_load_is_strict(tmp_path, change, words):
    """A state dict with a missing or an extra key is refused, naming the key."""
    state = _other_state()
    if change == "missing":
        del state["fc.bias"]
    else:
        state["head.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=re.escape(words)) as info:
        backbones._load(_Small(), tmp_path / "w.pth")
    assert ("fc.bias" if change == "missing" else "head.weight") in str(info.value)
    assert str(info.value).startswith(f"{tmp_path / 'w.pth'}: these weights do not fit _Small: ")


_EXECUTED: list[str] = []


def _record(what: str) -> str:
    _EXECUTED.append(what)
    return what


class _Payload:
    def __reduce__(self):
        return _record, ("unpickled code ran",)


@pytest.mark.parametrize("old_torch_default", [False, True], ids=["default", "torch<2.6-default"])
def test_load_never_runs_pickled_code(tmp_path, monkeypatch, old_torch_default):
    """Weight files are read with weights_only=True, also where torch defaults to False (torch < 2.6, or this env
    variable): a pickled object is refused before its code runs."""
    if old_torch_default:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    torch.save({**_other_state(), "payload": _Payload()}, tmp_path / "w.pth")
    _EXECUTED.clear()
    with pytest.raises(pickle.UnpicklingError):
        backbones._load(_Small(), tmp_path / "w.pth")
    assert _EXECUTED == []


# -- the networks ------------------------------------------------------------------------------------------------------
def test_torchvision_layout_has_no_aux_head_and_default_init():
    """No AuxLogits; PyTorch's default layer init (not torchvision's truncated normal, nor its FutureWarning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = backbones._torchvision_inception3(5)
    assert net.AuxLogits is None and net.fc.out_features == 5
    assert float(net.fc.weight.detach().abs().max()) <= 1 / math.sqrt(
        2048
    )  # kaiming-uniform bound; trunc-normal std 0.1
    assert float(net.Conv2d_1a_3x3.conv.weight.detach().abs().max()) <= 1 / math.sqrt(3 * 3 * 3)


def test_torchvision_inception_loads_its_file(files, loaded):
    """Every tensor comes from the file; 1000 classes; the record names the file and its digest; biased logits."""
    backbone = loaded["tv"]
    _state_equal(backbone.net, files["tv"])
    assert backbone.net.fc.out_features == 1000 and backbone.net.AuxLogits is None
    assert backbone.info == {"name": "torchvision_inception_v3_imagenet", "weights_file": "tv.pth",
                             "sha256": sha256_file(files["dir"] / "tv.pth")}  # fmt: skip
    assert backbone.unbiased_logits is False


def test_fid_inception_loads_its_file(files, loaded):
    """Every tensor comes from the file; 1008 classes; the record names the file and its digest; unbiased logits."""
    backbone = loaded["fid"]
    _state_equal(backbone.net, files["fid"])
    assert backbone.net.fc.out_features == 1008
    assert backbone.info == {"name": "fid_inception_tf2015", "weights_file": "fid.pth",
                             "sha256": sha256_file(files["dir"] / "fid.pth")}  # fmt: skip
    assert backbone.unbiased_logits is True


@pytest.mark.parametrize("build", [fid_inception, torchvision_inception], ids=["fid", "torchvision"])
def test_random_backbone_is_seeded_recorded_and_leaves_the_global_rng(files, build):
    """Seed 0 by default, the same network in every process; the caller's RNG stream is untouched."""
    before = torch.random.get_rng_state()
    default = build(files["empty"], allow_random=True)
    assert torch.equal(torch.random.get_rng_state(), before)
    name = "fid_inception_tf2015" if build is fid_inception else "torchvision_inception_v3_imagenet"
    assert default.info == {"name": name, "weights_file": None, "sha256": "random-init"}
    _state_equal(default.net, build(files["empty"], allow_random=True, seed=0).net.state_dict())
    seeded3 = files["fid" if build is fid_inception else "tv"]
    assert not torch.equal(default.net.fc.weight, seeded3["fc.weight"])


def test_backbone_is_frozen_and_stays_in_inference_mode(loaded):
    """``train()`` keeps eval mode: BN running statistics, so a batch's features do not depend on its neighbours."""
    backbone = loaded["tv"]
    x = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = backbone(x)
        assert backbone.train() is backbone
        after = backbone(x)
        alone = backbone(x[:1])
    assert not backbone.training and not any(m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    torch.testing.assert_close(alone, before[:1], rtol=1e-5, atol=1e-6)


def test_features_are_the_pool3_of_the_wrapped_network_and_logits_its_fc(loaded):
    """forward = torchvision's Inception3 up to the 2048-d average pool; logits = its fc (with bias)."""
    backbone = loaded["tv"]
    pooled = []
    hook = backbone.net.avgpool.register_forward_hook(lambda m, i, o: pooled.append(o))
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            reference = backbone.net(x)  # eval: logits of the whole torchvision graph
            features = backbone(x)
    finally:
        hook.remove()
    assert features.shape == (2, 2048)
    torch.testing.assert_close(features, pooled[0].flatten(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(backbone.logits(features), reference, rtol=1e-5, atol=1e-5)


def test_fid_logits_are_unbiased(loaded):
    """IS on the FID Inception uses fc without its bias (improved-GAN / torch-fidelity "logits_unbiased")."""
    backbone = loaded["fid"]
    pool = torch.randn(3, 2048, generator=torch.Generator().manual_seed(2))
    fc = backbone.net.fc
    assert float(fc.bias.abs().max()) > 0
    torch.testing.assert_close(backbone.logits(pool), pool @ fc.weight.t(), rtol=0, atol=0)
    torch.testing.assert_close(backbone.logits(pool), fc(pool) - fc.bias, rtol=1e-5, atol=1e-5)


def test_classifier_inception_loads_a_user_classifier(files, tmp_path):
    """num_classes outputs loaded from the file (fc with bias); a file of another class count or no file is an error."""
    state = {**files["tv"], "fc.weight": torch.randn(7, 2048), "fc.bias": torch.randn(7)}
    path = tmp_path / "bird.pth"
    torch.save(state, path)
    backbone = classifier_inception(path, 7)
    _state_equal(backbone.net, state)
    assert backbone.info == {"name": "classifier_inception_v3_7", "weights_file": "bird.pth",
                             "sha256": _digest(path.read_bytes())}  # fmt: skip
    pool = torch.randn(2, 2048)
    assert backbone.logits(pool).shape == (2, 7) and backbone.unbiased_logits is False
    torch.testing.assert_close(backbone.logits(pool), pool @ state["fc.weight"].t() + state["fc.bias"])
    with pytest.raises(WeightsError, match=r"size mismatch for fc.weight.*\[7, 2048\].*\[5, 2048\]"):
        classifier_inception(path, 5)
    with pytest.raises(WeightsNotFoundError, match=f"{tmp_path / 'none.pth'} not found.* 5 outputs"):
        classifier_inception(tmp_path / "none.pth", 5)


# -- the FID Inception is pytorch-fid's, quirks included ------------------------------------------------------------
def test_fid_inception_has_pytorch_fids_blocks(loaded):
    """pytorch-fid's patched blocks where it patches them, 1008 classes, no aux head."""
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    net = loaded["fid"].net
    kinds = {"Mixed_5b": FIDInceptionA, "Mixed_5c": FIDInceptionA, "Mixed_5d": FIDInceptionA,
             "Mixed_6b": FIDInceptionC, "Mixed_6c": FIDInceptionC, "Mixed_6d": FIDInceptionC, "Mixed_6e": FIDInceptionC,
             "Mixed_7b": FIDInceptionE_1, "Mixed_7c": FIDInceptionE_2}  # fmt: skip
    assert {name: type(getattr(net, name)) for name in kinds} == kinds
    assert net.fc.out_features == 1008 and net.AuxLogits is None  # TF's 1008 classes (1000 + unused)


@pytest.mark.parametrize(
    ("block", "channels", "size", "pool"),
    [
        ("Mixed_5b", 192, 5, "avg"),
        ("Mixed_6b", 768, 4, "avg"),
        ("Mixed_7b", 1280, 3, "avg"),
        ("Mixed_7c", 2048, 3, "max"),
    ],
)
def test_fid_pool_branches_follow_tensorflow(loaded, block, channels, size, pool):
    """Average pools leave the zero padding out of the mean (TF); the last block's pool branch is a max pool."""
    module = getattr(loaded["fid"].net, block)
    x = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(3)).abs() + 0.5
    with torch.no_grad():
        out = module(x)
        k = module.branch_pool.conv.out_channels
        if pool == "avg":
            expected = module.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
            torchvision_way = module.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        else:
            expected = module.branch_pool(F.max_pool2d(x, 3, stride=1, padding=1))
            torchvision_way = module.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
    torch.testing.assert_close(out[:, -k:], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[:, -k:], torchvision_way, rtol=1e-3, atol=1e-4)


def test_fid_features_equal_pytorch_fids_inceptionv3(files, loaded, monkeypatch):
    """fid.v1's whole feature path (quantise, resize to 299, [-1, 1], pool3) = pytorch-fid's InceptionV3 on the
    same weights (which pytorch-fid loads strictly: same keys and shapes)."""
    import pytorch_fid.inception as pf

    monkeypatch.setattr(pf, "load_state_dict_from_url", lambda *a, **k: files["fid"])
    theirs = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

    class Ours(FID):
        def build_backbone(self):
            return loaded["fid"]

    metric = Ours(FIDParams(), context=EvalContext(weights_dir=files["empty"], cache_dir=files["empty"]))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    uint8 = ((images + 1) * 127.5).round()
    with torch.no_grad():
        expected = theirs(uint8 / 255)[0].flatten(1).double()
    ours = metric.features(images, real=True)
    assert ours.shape == (2, 2048)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def _bilinear_299(image: np.ndarray) -> np.ndarray:
    """Half-pixel-centre bilinear resize (align_corners=False) of an (H, W) array to 299x299, written out."""

    def taps(n: int):
        src = np.maximum((np.arange(299) + 0.5) * n / 299 - 0.5, 0)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n - 1), src - i0

    r0, r1, wr = taps(image.shape[0])
    c0, c1, wc = taps(image.shape[1])
    rows = image[r0] * (1 - wr)[:, None] + image[r1] * wr[:, None]
    return rows[:, c0] * (1 - wc) + rows[:, c1] * wc


def test_fid_v1_feeds_the_backbone_rounded_uint8_steps_resized_bilinearly(tmp_path):
    """The standard protocol's input: [-1, 1] -> uint8 by rounding -> back to [-1, 1] -> bilinear 299."""
    seen = []

    class Recorder(nn.Module):
        info = {"name": "recorder", "weights_file": None, "sha256": "recorder"}

        def forward(self, x):
            seen.append(x)
            return x.mean((2, 3))

    class Recorded(FID):
        def build_backbone(self):
            return Recorder()

    metric = Recorded(FIDParams(), context=EvalContext(weights_dir=tmp_path, cache_dir=tmp_path))
    images = torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(5)) * 2 - 1
    metric.features(images, real=False)
    steps = np.round((images.double().numpy() + 1) * 127.5) / 127.5 - 1
    expected = np.stack([_bilinear_299(steps[0, c]) for c in range(3)])[None]
    assert seen[0].shape == (1, 3, 299, 299)
    np.testing.assert_allclose(seen[0].double().numpy(), expected, atol=1e-5, rtol=0)


def test_backbone_wraps_any_inception_layout():
    """The wrapper runs the trunk blocks in torchvision's order, then the global average pool."""
    order = []
    names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
             "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
             "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]  # fmt: skip

    class Step(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            order.append(self.name)
            return x * 2 + 1

    net = nn.Module()
    for name in names:
        setattr(net, name, Step(name))
    backbone = InceptionBackbone(net, info={"name": "steps"})
    x = torch.randn(2, 4, 3, 3)
    out = backbone(x)
    assert order == names
    torch.testing.assert_close(out, (x * 2**18 + (2**18 - 1)).mean((2, 3)))
    assert backbone.info == {"name": "steps"} and backbone.unbiased_logits is False
