"""Multi-process training: DDP on gloo with 2 CPU processes, tiny DM-GAN recipe.

The multi-process tests launch ``torch.distributed.run`` with this file as the worker script (``python -m
torch.distributed.run ... tests/test_distributed.py OUT DATA_ROOT STEPS``): each rank trains, then saves its own
parameters and buffers to ``OUT/rank<r>.pt`` (the test-only hook) so the test can compare ranks with each other and
with a one-process run. Rank 1 is given its own empty run folder, which must stay empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
STEPS = 3


def _flat_state(trainer) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of G and each D (state-dict names prefixed by network)."""
    out = {f"G.{k}": v.clone() for k, v in trainer.nets.generator.state_dict().items()}
    for i, d in enumerate(trainer.nets.discriminators):
        out.update({f"D{i}.{k}": v.clone() for k, v in d.state_dict().items()})
    return out


def _parameter_names(trainer, trainable: bool = False) -> set[str]:
    """Parameter names of G and each D; ``trainable``: without the spectral-norm u/v (no-gradient Parameters)."""
    networks = {"G": trainer.nets.generator, **{f"D{i}": d for i, d in enumerate(trainer.nets.discriminators)}}
    names = {f"{prefix}.{k}" for prefix, net in networks.items() for k, _ in net.named_parameters()}
    return {k for k in names if not k.endswith(("weight_u", "weight_v"))} if trainable else names


def fix_batchnorm(module: nn.Module) -> None:
    """Test-only hook: every BatchNorm of ``module`` normalises with its running statistics (initially 0 and 1)
    instead of the batch's, so its output no longer depends on which items share the batch."""
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.forward = lambda x, bn=bn: F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False)


def _recipe(data_root: Path, extra: list[str]):
    from test_train import tiny_overrides

    from t2i import recipe as recipe_mod

    recipe = recipe_mod.load("dmgan_shapes", tiny_overrides(data_root) + extra)
    return recipe, recipe.data.dataset.build(split="train", image_sizes=recipe.stage_sizes())


def _worker(out: Path, data_root: Path, steps: int, fixed_bn: bool, extra: list[str]) -> None:
    """Run inside torchrun: train ``steps`` steps, then write this rank's tensors."""
    from t2i.train import distributed
    from t2i.train import run_dir as run_dirs
    from t2i.train.loop import GANTrainer

    info = distributed.init_from_env()
    recipe, dataset = _recipe(data_root, extra)
    if info.is_main:
        run = run_dirs.create(recipe, out / "runs")
    else:
        run = run_dirs.RunDir(out / f"rank{info.rank}_run")  # must stay empty: only rank 0 writes
        run.path.mkdir(parents=True)
    trainer = GANTrainer(recipe, run, dataset, rank=info.rank, world=info.world, quiet=True)
    if fixed_bn:
        fix_batchnorm(trainer.nets.generator)
    trainer.fit(steps=steps)
    state = {
        "tensors": _flat_state(trainer),
        "parameters": sorted(_parameter_names(trainer)),
        "trainable": sorted(_parameter_names(trainer, trainable=True)),
        "run": str(run.path),
    }
    torch.save(state, out / f"rank{info.rank}.pt")
    distributed.shutdown(info)


# -- helpers for the tests --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "shapes"
    _recipe(root, [])  # generate the data set once, before several processes read it
    return root


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=600)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "t2i", *args], capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=600
    )


def _one_process(data_root: Path, out: Path, steps: int, fixed_bn: bool, extra: list[str]) -> dict[str, dict]:
    from t2i.train import run_dir as run_dirs
    from t2i.train.loop import GANTrainer

    recipe, dataset = _recipe(data_root, extra)
    trainer = GANTrainer(recipe, run_dirs.create(recipe, out), dataset, quiet=True)
    if fixed_bn:
        fix_batchnorm(trainer.nets.generator)
    initial = _flat_state(trainer)
    trainer.fit(steps=steps)
    return {"initial": initial, "final": _flat_state(trainer)}


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: set[str]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in names)


# -- the tests --------------------------------------------------------------------------------------------------


# BatchNorm-free discriminators (sn.v1, the recipe's), no mismatched pairs and no DAMSM term: what then still
# depends on how the batch is split is only the generator's BatchNorm (batch statistics over B/2 instead of B).
BATCH_INDEPENDENT = ['train.adversarial={name="cond_uncond", mismatch=false}', "train.alignment=[]"]


@pytest.mark.slow
def test_two_processes_keep_identical_parameters_and_only_rank_0_writes(data_root, tmp_path):
    result = _torchrun(2, "tests/test_distributed.py", str(tmp_path), str(data_root), str(STEPS), "batch")
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    params = set(rank0["parameters"])
    assert params == set(rank1["parameters"]) and any(".weight_u" in k for k in params)  # u/v are parameters too

    # Every parameter (G, each D, spectral-norm u/v) is bit-identical across ranks after the steps ...
    differing = [k for k in params if not torch.equal(rank0["tensors"][k], rank1["tensors"][k])]
    assert not differing, f"parameters differ across ranks: {differing[:5]}"
    # ... while the generator's BatchNorm running statistics are each rank's own, by design.
    buffers = [k for k in set(rank0["tensors"]) - params if not torch.equal(rank0["tensors"][k], rank1["tensors"][k])]
    assert buffers and all(k.startswith("G.") and ".running_" in k for k in buffers), buffers[:5]

    # Only rank 0 wrote a run folder, log, metrics and checkpoints.
    assert not any(Path(rank1["run"]).iterdir()), "rank 1 wrote into its run folder"
    run = Path(rank0["run"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert (run / "log.txt").read_text().count("training ") == 1
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == STEPS and state["world_size"] == 2


@pytest.mark.slow
def test_two_processes_of_half_batches_match_one_process(data_root, tmp_path):
    # With the generator's BatchNorm on fixed statistics (test hook), 2 × B/2 must reproduce 1 × B up to float32
    # summation order: same items, same per-item noise, gradients averaged by DDP. Measured: max |Δθ| 1e-6 (B=4) and
    # 2.4e-7 (B=16) after 3 steps (lr 2e-4); with batch statistics in G the runs differ by about one Adam update.
    result = _torchrun(
        2, "tests/test_distributed.py", str(tmp_path), str(data_root), str(STEPS), "fixed", *BATCH_INDEPENDENT
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    single = _one_process(data_root, tmp_path / "single", STEPS, True, BATCH_INDEPENDENT)
    trainable = set(rank0["trainable"])
    diff = _max_difference(rank0["tensors"], single["final"], trainable)
    moved = _max_difference(single["initial"], single["final"], trainable)
    print(f"2x(B/2) vs 1xB after {STEPS} steps: max |Δθ| = {diff:.3e}; the steps moved θ by up to {moved:.3e}")
    assert moved > 1e-4 and diff < 1e-5, (diff, moved)


@pytest.mark.slow
def test_cli_nproc_2_then_resume_with_one_process(data_root, tmp_path):
    from test_train import tiny_overrides

    sets = [x for o in tiny_overrides(data_root) for x in ("--set", o)]
    run = tmp_path / "run"
    first = _run_cli("train", "dmgan_shapes", *sets, "--run-dir", str(run), "--steps", "2", "--nproc", "2", "-q")
    assert first.returncode == 0, first.stderr[-4000:]
    assert "torch.distributed.run" in first.stdout and first.stdout.count("run folder:") == 1
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 2 and state["world_size"] == 2

    second = _run_cli("train", "--resume", str(run), "--steps", "3", "-q")
    assert second.returncode == 0, second.stderr[-4000:]
    resumed = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["step"] == 3 and resumed["world_size"] == 1
    moved = [
        k for k, v in resumed["models"]["generator"].items() if not torch.equal(v, state["models"]["generator"][k])
    ]
    assert moved, "the resumed step changed nothing"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


@pytest.mark.parametrize(("world", "stop"), [(2, 3), (4, 7), (1, 5)])
def test_resuming_with_another_number_of_processes_sees_the_one_process_batches(world, stop):
    """Steps before ``stop`` on ``world`` processes, then one process: the same global batches as one process."""
    from itertools import islice

    from t2i.data.loader import ResumableBatches

    n, batch, seed, total = 22, 4, 5, 12  # 5 batches per epoch: the runs cross two epoch boundaries
    single = list(islice(ResumableBatches(n, batch, seed), total))
    ranks = [iter(ResumableBatches(n, batch, seed, rank=r, world=world)) for r in range(world)]
    before = [sorted(i for it in ranks for i in next(it)) for _ in range(stop)]
    after = list(islice(ResumableBatches(n, batch, seed, start_batch=stop), total - stop))
    assert before == [sorted(b) for b in single[:stop]]
    assert after == single[stop:]
    assert len({i % n for i in single[5]}) == batch and single[5] != single[0]  # epoch 2 is a new permutation


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of one process, so DDP wrappers can be built inside pytest."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_discriminator_gives_the_plain_loss_and_gradients(one_rank_group):
    from t2i.models.discriminator import Discriminator
    from t2i.registry import registries
    from t2i.train.distributed import DDPDiscriminator, all_finite

    loss = registries["adversarial_loss"].get("cond_uncond.v1").build()
    for spectral in (False, True):
        torch.manual_seed(0)
        plain = Discriminator(df_dim=2, text_dim=8, size=64, spectral=spectral)
        wrapped_copy = Discriminator(df_dim=2, text_dim=8, size=64, spectral=spectral)
        wrapped_copy.load_state_dict(plain.state_dict())
        wrapped = DDPDiscriminator(wrapped_copy)
        real, fake, sentence = torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64), torch.randn(3, 8)
        for _ in range(2):  # twice: the reducer must be ready again after the first backward
            expected, _ = loss.discriminator_loss(plain, real, fake, sentence)
            got, logs = loss.discriminator_loss(wrapped, real, fake, sentence)
            assert set(logs) >= {"real_cond", "fake_cond", "wrong_cond", "real_uncond", "fake_uncond"}
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
            expected.backward()
            got.backward()
        for (name, p), q in zip(plain.named_parameters(), wrapped.module.parameters(), strict=True):
            if p.requires_grad:
                assert q.grad is not None, name
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7, msg=name)
            else:  # spectral-norm u, v: updated in the forward passes, identically
                torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)
        assert wrapped.has_unconditional and wrapped.module is wrapped_copy
    assert all_finite(torch.tensor(1.0), 1) and not all_finite(torch.tensor(float("nan")), 1)


def test_one_network_per_ddp_wrapper(one_rank_group):
    from t2i.models.discriminator import Discriminator
    from t2i.train.distributed import wrap_ddp

    g = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ds = nn.ModuleList(Discriminator(df_dim=2, text_dim=8, size=s, spectral=True) for s in (64, 128))
    g_ddp, d_ddp = wrap_ddp(g, ds)
    assert g_ddp.module is g and [d.module for d in d_ddp] == list(ds)
    for wrapper in [g_ddp, *(d.ddp for d in d_ddp)]:  # buffers (BatchNorm statistics) stay per rank
        assert getattr(wrapper, "forward_sync_buffers", getattr(wrapper, "broadcast_buffers", None)) is False
    with pytest.raises(ValueError, match="unknown discriminator entry"):
        d_ddp[0].ddp("logits", torch.randn(2, 3, 64, 64))


if __name__ == "__main__":  # torchrun worker: OUT DATA_ROOT STEPS batch|fixed [--set strings...]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    _worker(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "fixed", sys.argv[5:])
