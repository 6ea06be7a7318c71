"""Golden parity of the discriminators and the adversarial (+ alignment) losses.

Every ``*__d_net__*``, ``*__discriminator_loss*`` and ``*__generator_loss*`` fixture runs in
float64 against ``outputs_f64`` (1e-8 relative) and in float32 against ``outputs``, in the call
order of the fixture notes, including BatchNorm running stats and spectral-norm u/v after the
calls (``state_after``) and the gradients (``grad_*``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from golden import check, fixture_params, load, precision

import t2i.models.discriminator  # noqa: F401  (registers bn.v1 / sn.v1 before conftest snapshots the registries)
from t2i.batch import TextFeatures
from t2i.legacy import load_into, to_original, to_t2i
from t2i.losses.adversarial import CondUncondLoss, CondUncondParams
from t2i.losses.damsm import DamsmLoss, DamsmParams
from t2i.registry import get_registry

# fixture term names -> our log names
D_TERMS = {
    "cond_real_errD": "real_cond",
    "cond_fake_errD": "fake_cond",
    "cond_wrong_errD": "wrong_cond",
    "real_errD": "real_uncond",
    "fake_errD": "fake_uncond",
}


def _strip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _build_d(state: dict[str, Any], config: dict[str, Any], size: int, dtype: torch.dtype) -> torch.nn.Module:
    spectral = any(k.endswith("weight_bar") for k in state)
    D = get_registry("discriminator").build(
        "sn.v1" if spectral else "bn.v1",
        {"unconditional": bool(config.get("arg.b_jcu", True))},
        df_dim=int(config["GAN.DF_DIM"]),
        text_dim=int(config["TEXT.EMBEDDING_DIM"]),
        size=size,
    )
    load_into(D, to_t2i("discriminator", state), "discriminator")  # through t2i's importer
    return D.to(dtype)


def _state_after(modules: dict[str, torch.nn.Module], ref: dict[str, Any]) -> dict[str, Any]:
    ours = {}
    for prefix, module in modules.items():
        for key, value in module.state_dict().items():
            ours[prefix + key] = value
    return {k: ours[k] for k in ref}


@pytest.mark.parametrize("double", [True, False], ids=["f64", "f32"])
@pytest.mark.parametrize("path", fixture_params("*__d_net__*.pt"))
def test_d_net(path, double):
    fx = load(path)
    dtype, inputs, ref = precision(fx, double)
    D = _build_d(fx["state_dict"], fx["config"], int(fx["config"]["arg.res"]), dtype)
    D.train(fx["mode"] == "train")
    features = D(inputs["img"])
    ours = {"features": features, "cond_logits": D.cond_logits(features, inputs["sent_emb"])}
    if "uncond_logits" in ref:
        ours["uncond_logits"] = D.uncond_logits(features)
    ours["state_after"] = _state_after({"": D}, ref["state_after"])
    check(ours, ref, fx, double, path.stem)


@pytest.mark.parametrize("double", [True, False], ids=["f64", "f32"])
@pytest.mark.parametrize("path", fixture_params("*__discriminator_loss*.pt"))
def test_discriminator_loss(path, double):
    fx = load(path)
    dtype, inputs, ref = precision(fx, double)
    D = _build_d(_strip(fx["state_dict"], "netD."), fx["config"], inputs["real_imgs"].shape[-1], dtype)
    D.train(fx["mode"] == "train")
    conditions = inputs["conditions"].clone().requires_grad_(True)
    loss_fn = CondUncondLoss(CondUncondParams())
    err, logs = loss_fn.discriminator_loss(D, inputs["real_imgs"], inputs["fake_imgs"], conditions)
    err.backward()
    ours = {
        "errD": err,
        "terms": {name: logs[ours_name] for name, ours_name in D_TERMS.items() if name in ref["terms"]},
        "grad_conditions": conditions.grad,
        "grad_params": {"netD." + k: p.grad for k, p in D.named_parameters() if "netD." + k in ref["grad_params"]},
        "state_after": _state_after({"netD.": D}, ref["state_after"]),
    }
    assert set(ref["grad_params"]) == {"netD." + k for k, p in D.named_parameters() if p.requires_grad}
    check(ours, {k: v for k, v in ref.items() if k != "log"}, fx, double, path.stem)
    if "log" in ref:  # DM-GAN's 'Real_Acc: %.4f Fake_Acc: %.4f '
        assert ref["log"] == f"Real_Acc: {float(logs['real_acc']):.4f} Fake_Acc: {float(logs['fake_acc']):.4f} "


def _alignment_terms(fx, inputs, dtype, text):
    """The fixture's extra term on fake_imgs[-1], through our alignment components' feature paths."""
    config = fx["config"]
    terms: dict[str, torch.Tensor] = {}
    total = torch.zeros((), dtype=dtype)
    grads: dict[str, torch.Tensor] = {}
    if "region_features" in inputs:
        weight = float(config.get("TRAIN.SMOOTH.LAMBDA_DAMSM", config.get("TRAIN.SMOOTH.LAMBDA", 5.0)))
        damsm = DamsmLoss(
            DamsmParams(
                weight=weight,
                gamma1=float(config["TRAIN.SMOOTH.GAMMA1"]),
                gamma2=float(config["TRAIN.SMOOTH.GAMMA2"]),
                gamma3=float(config["TRAIN.SMOOTH.GAMMA3"]),
            ),
            networks={"image_encoder": torch.nn.Identity()},
        )
        regions = inputs["region_features"].clone().requires_grad_(True)
        global_code = inputs["cnn_code"].clone().requires_grad_(True)
        weighted, logs = damsm.from_features(regions, global_code, text)
        total = total + weighted
        terms.update({k: logs[k] for k in ("w_loss0", "w_loss1", "s_loss0", "s_loss1")})
        grads.update(grad_region_features=regions, grad_cnn_code=global_code)
    if "resnet_features" in inputs:
        from t2i.encoders.stream_captioner import StreamCaptioner, StreamCaptionerParams
        from t2i.losses.stream import StreamLoss, StreamParams

        captioner = StreamCaptioner(
            StreamCaptionerParams(
                embed_size=int(config["CAP.embed_size"]),
                hidden_size=2 * int(config["CAP.hidden_size"]),
                num_layers=int(config["CAP.num_layers"]),
                backbone="small",
            ),
            vocab_size=int(config["arg.ntoken"]),
            feature_dim=inputs["resnet_features"].shape[1],
        )
        captioner.load_original_head(_strip(fx["state_dict"], "caption_cnn."), _strip(fx["state_dict"], "caption_rnn."))
        captioner.to(dtype)
        stream = StreamLoss(
            StreamParams(
                weight=float(
                    config["TRAIN.SMOOTH.LAMBDA_STREAM"]
                    if "TRAIN.SMOOTH.LAMBDA_STREAM" in config
                    else config["TRAIN.SMOOTH.LAMBDA1"]
                )
            ),
            networks={"captioner": captioner},
        )
        pooled = inputs["resnet_features"].clone().requires_grad_(True)
        weighted, logs = stream.from_backbone_features(pooled, text)
        total = total + weighted
        terms["caption_ce"] = logs["caption_ce"]
        grads["grad_resnet_features"] = pooled
    return total, terms, grads


@pytest.mark.parametrize("double", [True, False], ids=["f64", "f32"])
@pytest.mark.parametrize("path", fixture_params("*__generator_loss*.pt"))
def test_generator_loss(path, double):
    fx = load(path)
    dtype, inputs, ref = precision(fx, double)
    state = fx["state_dict"]
    num_d = len({k.split(".")[1] for k in state if k.startswith("netsD.")})
    size = inputs["fake_img"].shape[-1]
    nets = [_build_d(_strip(state, f"netsD.{i}."), fx["config"], size, dtype) for i in range(num_d)]
    for D in nets:
        D.train(fx["mode"] == "train")
    fake = inputs["fake_img"].clone().requires_grad_(True)
    sentence = inputs["sent_emb"].clone().requires_grad_(True)
    words = inputs["words_embs"].clone().requires_grad_(True)
    lengths = inputs["cap_lens"]
    mask = torch.arange(words.shape[2])[None, :] >= lengths[:, None]
    text = TextFeatures(words, sentence, mask, inputs["captions"], lengths, inputs["class_ids"])
    loss_fn = CondUncondLoss(CondUncondParams())
    total = torch.zeros((), dtype=dtype)
    terms: dict[str, torch.Tensor] = {}
    for i, D in enumerate(nets):  # the fixture feeds the same 64×64 batch to every D
        loss, logs = loss_fn.generator_loss(D, fake, sentence)
        total = total + loss
        terms[f"d{i}_cond_errG"] = logs["fake_cond"]
        terms[f"d{i}_uncond_errG"] = logs["fake_uncond"]
    extra, extra_terms, grad_inputs = _alignment_terms(fx, inputs, dtype, text)
    total = total + extra
    terms.update(extra_terms)
    total.backward()
    ours: dict[str, Any] = {
        "errG_total": total,
        "terms": terms,
        "grad_fake_img": fake.grad,
        "grad_sent_emb": sentence.grad,
        "state_after": _state_after({f"netsD.{i}.": D for i, D in enumerate(nets)}, ref["state_after"]),
    }
    if "grad_words_embs" in ref:
        ours["grad_words_embs"] = words.grad
    for name, tensor in grad_inputs.items():
        ours[name] = tensor.grad
    check(ours, {k: v for k, v in ref.items() if k != "logs"}, fx, double, path.stem)


@pytest.mark.parametrize("name", ["bn.v1", "sn.v1"])
def test_converter_round_trip_is_bit_exact(name):
    D = get_registry("discriminator").build(name, df_dim=2, text_dim=5, size=128)
    state = D.state_dict()
    original = to_original("discriminator", state)
    back = to_t2i("discriminator", original)
    assert list(back) == list(state)
    assert all(back[k] is state[k] or torch.equal(back[k], state[k]) for k in state)
    load_into(get_registry("discriminator").build(name, df_dim=2, text_dim=5, size=128), original)
