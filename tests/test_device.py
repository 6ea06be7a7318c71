"""Device and precision without a GPU: the ``meta`` device, bf16 autocast and fp16 loss scaling on the CPU.

On ``meta`` tensors carry shapes, dtypes and devices but no data: a training step there runs every network's
forward, autograd and Adam, and any tensor created on the CPU by mistake meets a meta tensor and raises (the same
mistake would fail on CUDA). What needs data is replaced, in these tests only:

* the frozen text encoder: its packed LSTM takes the caption lengths on the host (``lengths.cpu()``), which a meta
  tensor cannot give, so :func:`meta_text_features` returns meta word/sentence features of the right shapes, with
  the lengths on the host as the losses read them (``lengths.tolist()``);
* ``aten::batch_norm_update_stats`` (used by the fused BatchNorm+GLU) has no meta kernel in torch: the module
  fixture below registers one (shapes only) for the duration of these tests;
* the finiteness check (``GANTrainer._check``) and the ``.item()`` / ``float()`` of logged values, which read data.

Tests parametrised over ``DEVICES`` also run on CUDA where a GPU is visible, and are skipped otherwise.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from test_train import make, tiny_overrides
from typer.testing import CliRunner

from t2i import registry
from t2i.batch import TextFeatures
from t2i.runtime import DeviceError, Precision, Runtime, StepScaler, resolve_device
from t2i.train import run_dir as run_dirs
from t2i.train.loop import GANTrainer

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device here"))]
SHAPES_RECIPES = ["dmgan_shapes", "attngan_shapes", "mirrorgan_shapes", "dmmgan_shapes"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shapes") / "shapes"


def meta_text_features(text_encoder, batch, mask_ids) -> TextFeatures:
    """What ``text_features`` returns, as meta tensors (the text encoder's packing needs host data)."""
    B, T = batch.captions.shape
    e = _TEXT_DIM
    words = torch.empty(B, e, T, device="meta")
    mask = torch.isin(batch.captions[:, :T], mask_ids)  # on the device of captions and mask ids: both meta
    return TextFeatures(
        words=words,
        sentence=torch.empty(B, e, device="meta"),
        mask=mask,
        captions=batch.captions,
        lengths=torch.full((B,), T, dtype=torch.long),  # host metadata, as the packed LSTM and losses read it
        class_ids=batch.class_ids,
    )


_TEXT_DIM = 8  # model.text_dim of the tiny recipes (tiny_overrides)


@pytest.fixture(scope="module")
def _meta_batch_norm_stats():
    lib = torch.library.Library("aten", "IMPL")  # noqa: TOR901 (a test-only Meta kernel for an aten op)

    def stats(x, running_mean, running_var, momentum):
        return x.new_empty((x.shape[1],)), x.new_empty((x.shape[1],))

    lib.impl("batch_norm_update_stats", stats, "Meta")
    yield
    del lib  # the registration lives as long as the Library object


@pytest.fixture
def on_meta(monkeypatch, _meta_batch_norm_stats):
    """Replace the data-reading seams (see the module docstring) for a meta-device step."""
    import t2i.metrics.evaluation
    import t2i.train.loop
    import t2i.train.samples

    for module in (t2i.train.loop, t2i.train.samples, t2i.metrics.evaluation):  # each calls its own import of it
        monkeypatch.setattr(module, "text_features", meta_text_features)
    monkeypatch.setattr(GANTrainer, "_check", lambda self, name, value: True)
    item, to_float = torch.Tensor.item, torch.Tensor.__float__
    monkeypatch.setattr(torch.Tensor, "item", lambda t: math.nan if t.device.type == "meta" else item(t))
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: math.nan if t.device.type == "meta" else to_float(t))


def first_batch(dataset, batch_size: int = 4):
    from t2i.data.loader import make_loader

    return next(iter(make_loader(dataset, batch_size, 0)))


def meta_trainer(data_root, recipe_name: str = "dmgan_shapes", extra=None, resume=None):
    from t2i import recipe as recipe_mod

    sets = tiny_overrides(data_root) + list(extra or [])
    if recipe_name in ("mirrorgan_shapes", "dmmgan_shapes"):
        sets.append('train.pretrained.captioner="random"')
    recipe = recipe_mod.load(recipe_name, sets)
    dataset = recipe.data.dataset.build(split="train", image_sizes=recipe.stage_sizes())
    run = run_dirs.RunDir(Path(tempfile.mkdtemp(prefix="t2i_meta_")))
    trainer = GANTrainer(recipe, run, dataset, runtime=Runtime.create("meta"), quiet=True, resume=resume)
    return trainer, dataset


# -- meta device -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe_name", SHAPES_RECIPES)
def test_training_step_on_meta(data_root, on_meta, recipe_name):
    trainer, dataset = meta_trainer(data_root, recipe_name)
    logs = trainer.train_step(first_batch(dataset))
    assert logs is not None and "loss/G" in logs
    nets = trainer.nets
    modules = [nets.generator, *nets.discriminators, trainer.ema.model, *nets.frozen.values()]
    assert {p.device.type for m in modules for p in m.parameters()} == {"meta"}
    assert {b.device.type for m in modules for b in m.buffers()} == {"meta"}
    # Adam ran on meta: its moments exist there for G and every D
    for opt in (trainer.opt_g, *trainer.opt_d):
        states = [s for s in opt.state.values() if "exp_avg" in s]
        assert states and {s["exp_avg"].device.type for s in states} == {"meta"}


def test_meta_catches_a_tensor_made_on_the_cpu(data_root, on_meta):
    trainer, dataset = meta_trainer(data_root)
    text = meta_text_features(trainer.nets.text_encoder, first_batch(dataset).to("meta"), trainer.mask_ids)
    m = trainer.recipe.model
    z_cpu, eps = torch.randn(4, m.z_dim), torch.empty(4, m.cond_dim, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError), match="(?i)meta|device"):
        trainer.nets.generator(z_cpu, text.sentence, text.words, text.mask, eps=eps)


def test_sampling_and_an_evaluation_batch_on_meta(data_root, on_meta):
    from t2i.evaluate import evaluate, evaluate_references
    from t2i.metrics.base import Metric, MetricResult
    from t2i.train.samples import caption_batch, generate

    trainer, dataset = meta_trainer(data_root)
    rt = trainer.runtime
    vocab = trainer.vocab
    batch = rt.batch(caption_batch([vocab.wrap([vocab.num_specials] * 3)] * 2, vocab.pad_id))
    z = torch.empty(2, trainer.recipe.model.z_dim, device="meta")
    eps = torch.empty(2, trainer.recipe.model.cond_dim, device="meta")
    out, _ = generate(trainer.ema.model, trainer.nets.text_encoder, batch, trainer.mask_ids, z, eps)
    assert out.images[-1].device.type == "meta" and out.images[-1].shape == (2, 3, 64, 64)

    seen = []

    class Probe(Metric):
        name = "device_probe.v1"

        def __init__(self, params, *, context):
            super().__init__(context)

        def update(self, fake, info):
            seen.append((fake.device.type, tuple(fake.shape), fake.dtype))

        def compute(self):
            return MetricResult(value=0.0, std=None, n=len(seen), protocol=self.base_protocol())

    registry.register("metric", "device_probe.v1", Probe, params=registry.Params)
    result = evaluate(
        trainer.ema.model,
        trainer.nets.text_encoder,
        dataset,
        [("device_probe.v1", registry.Params())],
        z_dim=trainer.recipe.model.z_dim,
        cond_dim=trainer.recipe.model.cond_dim,
        n=4,
        batch_size=4,
        device="meta",
        precision=rt.precision,
    )
    assert result.images == 4 and seen == [("meta", (4, 3, 64, 64), torch.float32)]
    # the real-image references go through the same loop: the data's images land on the device too
    seen.clear()
    rows = evaluate_references(trainer.nets.text_encoder, dataset, [("device_probe.v1", registry.Params())],
                               z_dim=trainer.recipe.model.z_dim, cond_dim=trainer.recipe.model.cond_dim, n=4,
                               batch_size=4, device="meta")  # fmt: skip
    assert [row["reference"] for row in rows] == ["real", "shuffled"]
    assert seen == [("meta", (4, 3, 64, 64), torch.float32)] * 2


def test_resume_moves_optimizer_states_to_the_target_device(data_root, tmp_path):
    recipe, dataset = make(data_root)
    cpu = GANTrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, runtime=Runtime(), quiet=True)
    cpu.train_step(first_batch(dataset))
    cpu.step = 1  # as fit() counts it
    state = cpu.state()
    trainer, _ = meta_trainer(data_root, resume=state)
    for opt in (trainer.opt_g, *trainer.opt_d):
        tensors = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
        assert tensors and {v.device.type for v in tensors} == {"meta"}
    assert trainer.step == 1


# -- device resolution and the CLI -----------------------------------------------------------------------------------
def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if CUDA else "cpu")
    with pytest.raises(DeviceError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    if not CUDA:
        with pytest.raises(DeviceError, match="CUDA is not available on this machine"):
            resolve_device("cuda:1")


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "sample", "bench"])
def test_cli_device_cuda_without_cuda_is_exit_1(data_root, tmp_path, command):
    from t2i.cli import app

    if command == "train":
        args = ["train", "dmgan_shapes", *[x for o in tiny_overrides(data_root) for x in ("--set", o)]]
        args += ["--run-dir", str(tmp_path / "run")]
    elif command == "sample":
        args = ["sample", str(tmp_path / "no-such-run"), "a red circle"]
    else:
        args = ["bench", "dmgan_shapes", "--what", "train"]
    result = CliRunner().invoke(app, [*args, "--device", "cuda"])
    assert result.exit_code == 1, result.output
    assert "CUDA is not available on this machine" in result.output and "--device cpu" in result.output
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_cli_rejects_an_unknown_precision(tmp_path):
    from t2i.cli import app

    result = CliRunner().invoke(app, ["sample", str(tmp_path), "a red circle", "--precision", "fp8"])
    assert result.exit_code == 1 and "--precision" in result.output and "fp32" in result.output


# -- precision on the CPU (and on CUDA where present) ----------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_trains_a_few_steps_with_finite_losses(data_root, tmp_path, device):
    recipe, dataset = make(data_root, ['runtime.precision="bf16"'])
    trainer = GANTrainer(
        recipe, run_dirs.create(recipe, tmp_path), dataset, runtime=Runtime.from_section(recipe.runtime, device=device)
    )
    dtypes = set()
    conv = next(m for m in trainer.nets.generator.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
    trainer.quiet = True
    trainer.fit(steps=3)
    rows = [line for line in trainer.run.metrics_file.read_text().splitlines() if line]
    assert len(rows) == 3
    import json

    last = json.loads(rows[-1])
    assert all(math.isfinite(last[k]) for k in last if k.startswith("loss/")) and "loss/G" in last
    assert torch.bfloat16 in dtypes  # the convolutions really ran in bf16
    assert all(p.dtype == torch.float32 for p in trainer.nets.generator.parameters())  # weights stay fp32
    env = json.loads((trainer.run.path / "env.json").read_text())
    assert env["runtimes"][-1]["precision"] == "bf16" and env["runtimes"][-1]["device"].startswith(device)
    assert "precision bf16" in trainer.run.log_file.read_text()


def test_fp32_is_untouched_math():
    """fp32 adds no autocast and no scaler: the context is a no-op and backward/step are the plain calls."""
    p = Precision("fp32", torch.device("cpu"))
    assert not p.enabled and not p.scaler().enabled
    with p.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_fp16_grad_scaler_skips_inf_steps_and_counts_them():
    weight = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([weight], lr=0.1)
    scaler = Precision("fp16", torch.device("cpu")).scaler()
    assert scaler.enabled and scaler.scaler.get_scale() == 65536.0
    scaler.backward((weight * torch.tensor([1.0, float("inf"), 1.0])).sum())
    assert not scaler.step(opt)  # inf gradient: step skipped, scale halved
    assert torch.equal(weight.detach(), torch.ones(3)) and scaler.skipped == 1
    assert scaler.scaler.get_scale() == 32768.0
    opt.zero_grad()
    scaler.backward(weight.sum())
    assert scaler.step(opt)
    assert torch.allclose(weight.detach(), torch.full((3,), 0.9)) and scaler.skipped == 1  # true (unscaled) gradient


def test_fp16_has_one_scaler_per_optimiser(data_root, tmp_path):
    recipe, dataset = make(data_root, ['runtime.precision="fp16"'])
    trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, runtime=Runtime.from_section(
        recipe.runtime, device="cpu"), quiet=True)  # fmt: skip
    scalers = [trainer.scaler_g, *trainer.scaler_d]
    assert len(scalers) == 1 + len(trainer.opt_d) and all(s.enabled for s in scalers)
    assert len({id(s.scaler) for s in scalers}) == len(scalers)
    logs = trainer.train_step(first_batch(dataset))
    assert logs is not None and logs["amp/skipped_steps"] == float(sum(s.skipped for s in scalers))
    saved = trainer.state()["optimizers"]["scalers"]
    assert len(saved) == len(scalers) and all("scale" in s for s in saved)


def test_scaler_is_pass_through_when_disabled():
    weight = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([weight], lr=0.5)
    scaler = StepScaler(None)
    scaler.backward(weight.sum())
    assert scaler.step(opt) and torch.allclose(weight.detach(), torch.full((2,), 0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_a_bf16_checkpoint_samples_in_fp32(data_root, tmp_path, device):
    from t2i.evaluate import load_model
    from t2i.train.samples import caption_batch, generate

    recipe, dataset = make(data_root, ['runtime.precision="bf16"', "train.checkpoint_every=1"])
    trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, runtime=Runtime.from_section(
        recipe.runtime, device=device), quiet=True)  # fmt: skip
    last = trainer.fit(steps=1)
    rt = Runtime.create(device, "fp32")
    model = load_model(last, runtime=rt)
    assert {p.dtype for p in model.generator.parameters()} == {torch.float32}
    assert {p.device.type for p in model.generator.parameters()} == {rt.device.type}
    vocab = model.vocab
    batch = rt.batch(caption_batch([vocab.wrap([vocab.num_specials] * 3)] * 2, vocab.pad_id))
    mask_ids = torch.tensor(sorted(vocab.mask_ids), device=rt.device)
    z = torch.randn(2, recipe.model.z_dim, device=rt.device)
    eps = torch.randn(2, recipe.model.cond_dim, device=rt.device)
    out, _ = generate(model.generator, model.text_encoder, batch, mask_ids, z, eps)
    assert out.images[-1].dtype == torch.float32 and torch.isfinite(out.images[-1]).all()


def test_channels_last_networks_and_images(data_root, tmp_path):
    recipe, dataset = make(data_root, ["runtime.channels_last=true"])
    trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path), dataset, runtime=Runtime.from_section(
        recipe.runtime, device="cpu"), quiet=True)  # fmt: skip
    kernels = [p for net in (trainer.nets.generator, *trainer.nets.discriminators) for p in net.parameters()]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels if p.dim() == 4)
    batch = trainer.runtime.batch(first_batch(dataset))
    assert batch.images[-1].is_contiguous(memory_format=torch.channels_last)
    assert trainer.train_step(first_batch(dataset)) is not None
