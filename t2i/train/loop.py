"""The GAN training loop shared by every recipe, in the originals' iteration order (AttnGAN, Xu et al. 2018).

One iteration: encode text (frozen) → one G forward → for each stage, a D update on (real, fake.detach()) →
one G update with the recipe's adversarial term, alignment terms on the last image and the KL term → EMA.
Loss terms come from the recipe; the loop never branches on which ones are present. Memory policy (heap release,
recomputation) is installed once at set-up by ``t2i.train.memory``; evaluation is called with explicit arguments
(``t2i.metrics.evaluation``), as StyleGAN's loop calls its metrics.
"""

from __future__ import annotations

import functools
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import t2i
from t2i.batch import Batch, item_noise, text_features
from t2i.data.holdout import build_split
from t2i.data.loader import make_loader
from t2i.losses.kl import kl_loss
from t2i.metrics.evaluation import append_rows, evaluate_at_step, higher_is_better, metric_specs
from t2i.networks import Networks, build_networks
from t2i.recipe import Recipe
from t2i.runtime import Runtime
from t2i.train import checkpoint as ckpt
from t2i.train import memory, rng
from t2i.train.budget import Budget
from t2i.train.distributed import all_finite, wrap_ddp
from t2i.train.ema import EMA, ema_decay
from t2i.train.finite import NonFiniteError, nonfinite_groups
from t2i.train.gate_log import gate_logging
from t2i.train.progress import Progress
from t2i.train.run_dir import RunDir
from t2i.train.samples import SampleWriter, sheet_paths
from t2i.train.tb import RunLogger


class NonFiniteLossError(NonFiniteError):
    """A loss term is NaN or Inf."""


_MAX_RESTORES_IN_A_ROW = 3  # nan_policy=skip: a run that diverges again right after each restore is stopped


@dataclass
class Stop:
    """Set by a signal handler; the loop checkpoints and leaves at the end of the step."""

    signal_name: str | None = None


class GANTrainer:
    def __init__(
        self,
        recipe: Recipe,
        run: RunDir,
        dataset,
        *,
        device: torch.device | str | None = None,
        runtime: Runtime | None = None,
        rank: int = 0,
        world: int = 1,
        resume: dict[str, Any] | None = None,
        sample_dataset=None,
        quiet: bool = False,
    ):
        self.recipe, self.run, self.dataset = recipe, run, dataset
        # device/precision/memory format: `runtime`, else the recipe's [runtime] (with `device` overriding its device)
        self.runtime = runtime or Runtime.from_section(recipe.runtime, device=device)
        self.device, self.precision = self.runtime.device, self.runtime.precision
        self.rank, self.world = rank, world
        self.quiet = quiet
        self.vocab = dataset.vocab
        self.mask_ids = torch.tensor(sorted(self.vocab.mask_ids), dtype=torch.long, device=self.device)
        self.runtime.set_threads(recipe.train.threads)
        torch.use_deterministic_algorithms(recipe.train.deterministic, warn_only=True)

        # The same seed on every rank while building: identical networks everywhere, the frozen ones included
        # (DDP syncs only what it wraps, and a "random" text encoder would otherwise differ per rank).
        rng.seed_everything(recipe.seed)
        self.nets: Networks = build_networks(recipe, self.vocab, device=self.device, pretrain_hint=recipe.source)
        for net in (self.nets.generator, self.nets.discriminators, *self.nets.frozen.values()):
            self.runtime.module(net)  # channels_last when asked (before the EMA copy, so both match)
        if world > 1:
            rng.seed_everything(recipe.seed + rank)  # per-rank randomness from here on
        t = recipe.train
        self.opt_g = torch.optim.Adam(self.nets.generator.parameters(), lr=t.lr_g, betas=t.betas)
        self.opt_d = [
            torch.optim.Adam([p for p in d.parameters() if p.requires_grad], lr=t.lr_d, betas=t.betas)
            for d in self.nets.discriminators
        ]
        # Trainable D parameters (spectral-norm u/v vectors are Parameters without gradients).
        self.d_trainable = [[p for p in d.parameters() if p.requires_grad] for d in self.nets.discriminators]
        # One loss scaler per optimiser (fp16 only; pass-through otherwise): D and G losses differ in size.
        self.scaler_g = self.precision.scaler()
        self.scaler_d = [self.precision.scaler() for _ in self.opt_d]
        self.ema = EMA(self.nets.generator, ema_decay(t.ema.decay, t.ema.half_life_steps), t.ema.include_buffers)
        self.noise = torch.Generator().manual_seed(recipe.seed * 1000 + rank)  # z and CA noise of training steps
        self.step = 0
        self.steps_option: int | None = None  # `--steps`, kept with the run so that a resume stops there too
        self._restores_in_a_row = 0
        self.best: dict[str, float] = {}
        self.budget = Budget(recipe.data.batch_size, world, count=not self.runtime.compile)
        self.g_model: nn.Module = self.nets.generator
        self.d_models: list[nn.Module] = list(self.nets.discriminators)
        # Memory policy, installed here once: recomputation (how the G update calls each D) and, on the CPU, the C
        # heap release around the generator's forward and backward.
        self.d_for_g = memory.install_recompute(self.nets.generator, self.nets.discriminators, t.recompute)
        if resume is not None:
            self.load_state(resume)
        if world > 1:
            self.g_model, self.d_models = wrap_ddp(self.nets.generator, self.nets.discriminators)
        if self.runtime.compile:
            self._compile()
        if self.runtime.is_cpu:
            memory.install_heap_release(self.g_model)
        self.samples = (
            SampleWriter(recipe, sample_dataset or dataset, self.vocab, self.run.samples, mask_ids=self.mask_ids)
            if rank == 0
            else None
        )
        if self.samples is not None:
            self.samples.text_encoder = self.nets.text_encoder

    # -- state ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        frozen = {role: net.state_dict() for role, net in self.nets.frozen.items()}
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "t2i_version": t2i.__version__,
            "kind": "gan",
            "step": self.step,
            "recipe": self.recipe.to_dict(),
            "vocab": self.vocab.to_dict(),
            "models": {
                "generator": self.nets.generator.state_dict(),
                "generator_ema": self.ema.state_dict(),
                "discriminators": [d.state_dict() for d in self.nets.discriminators],
                "text_encoder": self.nets.text_encoder.state_dict(),
                **frozen,
            },
            "optimizers": {
                "generator": self.opt_g.state_dict(),
                "discriminators": [o.state_dict() for o in self.opt_d],
                "scalers": [s.state_dict() for s in (self.scaler_g, *self.scaler_d)],
            },
            "rng": rng.capture({"noise": self.noise}),
            "data": {"batches_consumed": self.step, "seed": self.recipe.seed},
            "metrics": {"best": dict(self.best)},
            "budget": self.budget.state(),
            "world_size": self.world,
            "steps_option": self.steps_option,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self._load_networks(state)
        rng.restore(state["rng"], {"noise": self.noise})
        self.step = int(state["step"])
        self.steps_option = state.get("steps_option")
        self.best = dict(state.get("metrics", {}).get("best", {}))
        self.budget.load_state(state.get("budget"))
        if state.get("world_size", 1) != self.world:
            # Per-rank noise streams (used only without item keys) cannot be split or merged: re-derive them.
            self.noise.manual_seed(self.recipe.seed * 1000 + self.rank + 7919 * self.step)

    def _load_networks(self, state: dict[str, Any]) -> None:
        """Networks, EMA and optimiser states; the learning rates are the recipe's (a resume may change them)."""
        models = state["models"]
        self.nets.generator.load_state_dict(models["generator"])
        self.ema.load_state_dict(models["generator_ema"])
        for d, sd in zip(self.nets.discriminators, models["discriminators"], strict=True):
            d.load_state_dict(sd)
        self.nets.text_encoder.load_state_dict(models["text_encoder"])
        for role, net in self.nets.frozen.items():
            if role in models:
                net.load_state_dict(models[role])
        self.opt_g.load_state_dict(state["optimizers"]["generator"])
        for opt, sd in zip(self.opt_d, state["optimizers"]["discriminators"], strict=True):
            opt.load_state_dict(sd)  # Optimizer.load_state_dict moves the moments to each parameter's device
        for scaler, sd in zip((self.scaler_g, *self.scaler_d), state["optimizers"].get("scalers", []), strict=False):
            scaler.load_state_dict(sd)
        t = self.recipe.train
        for opt, lr in [(self.opt_g, t.lr_g), *((o, t.lr_d) for o in self.opt_d)]:
            for group in opt.param_groups:
                group["lr"] = lr

    # -- one iteration ------------------------------------------------------------------------
    def _check(self, name: str, value: Tensor) -> bool:
        """A loss term before its backward: False when the batch is to be skipped (nan_policy=skip)."""
        if all_finite(value, self.world):  # every rank calls this for the same terms: they skip or stop together
            return True
        what = f"loss term {name!r} is {value.item()}"
        if not self.check_networks(self.step + 1, full=False, reason=what):
            return False  # the networks themselves had diverged: restored (skip) or stopped inside
        if self.recipe.train.nan_policy == "skip":
            self.log(f"step {self.step + 1}: loss term {name} is {value.item()}; skipping this batch (nan_policy=skip)")
            return False
        raise NonFiniteLossError(
            f"{what} at step {self.step + 1}; stopped. The last good checkpoint is {self._last_good()} "
            '(set train.nan_policy = "skip" to skip such batches instead)'
        )

    def _network_groups(self, full: bool) -> dict[str, list[Tensor]]:
        """Every trained tensor by network (parameters and buffers); with ``full`` the optimiser states too."""
        groups: dict[str, list[Tensor]] = {
            "generator": [*self.nets.generator.parameters(), *self.nets.generator.buffers()],
            "generator EMA": [*self.ema.model.parameters(), *self.ema.model.buffers()],
        }
        for i, d in enumerate(self.nets.discriminators):
            groups[f"discriminator {i}"] = [*d.parameters(), *d.buffers()]
        if full:
            optimisers = {"generator": self.opt_g, **{f"discriminator {i}": o for i, o in enumerate(self.opt_d)}}
            for name, opt in optimisers.items():
                groups[f"{name} optimiser state"] = [t for per_param in opt.state.values() for t in per_param.values()]
        return groups

    def _last_good(self) -> str:
        last = self.run.checkpoints / "last.pt"
        return str(last) if last.exists() else "none (no checkpoint written yet)"

    def check_networks(self, step: int, *, full: bool, reason: str = "") -> bool:
        """NaN/Inf in the networks (and with ``full`` the optimiser states)? True when all finite.

        Otherwise nan_policy=stop raises naming the networks; nan_policy=skip loads networks and optimiser states
        from the last good checkpoint (the updates since are dropped; step, data order and RNG go on) -> False.
        """
        bad = nonfinite_groups(self._network_groups(full), self.world)
        if not bad:
            self._restores_in_a_row = 0
            return True
        what = f"step {step}: {', '.join(bad)} hold NaN or Inf values"
        if reason:
            what += f" ({reason})"
        last = self._last_good()
        if self.recipe.train.nan_policy == "stop":
            raise NonFiniteError(f"{what}; stopped. The last good checkpoint is {last}")
        self._restores_in_a_row += 1
        if self._restores_in_a_row > _MAX_RESTORES_IN_A_ROW:
            raise NonFiniteError(
                f"{what} again after {_MAX_RESTORES_IN_A_ROW} restores in a row; stopped (the training diverges "
                f"from the last good checkpoint {last}: lower the learning rates?)"
            )
        try:
            state = ckpt.CheckpointKeeper(self.run.checkpoints).latest_good()
        except ckpt.CheckpointError:
            raise NonFiniteError(f"{what}; no good checkpoint to go back to yet, so stopped") from None
        self._load_networks(state)
        self.log(
            f"{what}; restored the networks and optimiser states of step {state['step']} from "
            f"{Path(state['_path']).name} and continuing (nan_policy=skip)"
        )
        return False

    def _compile(self) -> None:
        """torch.compile G and (in one process) each D; the parameters are shared, so state dicts are unchanged."""
        self.g_model = self.runtime.compiled(self.g_model)
        if self.world == 1:
            compiled = {id(d): self.runtime.compiled(d) for d in self.nets.discriminators}
            self.d_models = [compiled[id(d)] for d in self.d_models]
            self.d_for_g = [compiled.get(id(d), d) for d in self.d_for_g]  # recomputed Ds stay eager

    def train_step(self, batch: Batch) -> dict[str, float] | None:
        nets, adv, amp = self.nets, self.nets.adversarial, self.precision.autocast
        self.opt_g.zero_grad(set_to_none=True)  # the last step's G gradients are spent: free them before G's forward
        batch = self.runtime.batch(batch)
        with amp():
            text = text_features(nets.text_encoder, batch, self.mask_ids)
        B, m = len(batch), self.recipe.model
        noise = item_noise(batch.keys, self.step, self.recipe.seed, m.z_dim, m.cond_dim)
        if noise is None:  # no usable item keys: one stream per rank
            noise = (torch.randn(B, m.z_dim, generator=self.noise), torch.randn(B, m.cond_dim, generator=self.noise))
        z, eps = (t.to(self.device, non_blocking=True) for t in noise)
        self.g_model.train()
        logs: dict[str, float] = {}
        with amp(), gate_logging(self, logs):  # on logged steps, the memory gates' means join the logs
            out = self.g_model(z, text.sentence, text.words, text.mask, eps=eps)

        # D update per stage, on the detached fakes.
        for i, (d, opt) in enumerate(zip(self.d_models, self.opt_d, strict=True)):
            _set_requires_grad(self.d_trainable[i], True)
            opt.zero_grad(set_to_none=True)
            with amp():
                loss_d, d_logs = adv.discriminator_loss(d, batch.images[i], out.images[i].detach(), text.sentence)
            if not self._check(f"D{i}", loss_d):
                return None
            self.scaler_d[i].backward(loss_d)
            self.scaler_d[i].step(opt)
            opt.zero_grad(set_to_none=True)  # D's gradients are spent: not kept through the G update (memory)
            logs[f"loss/D{i}"] = loss_d.item()
            logs.update({f"D{i}/{k}": float(v) for k, v in d_logs.items()})

        # G update: D weights get no gradients (nothing would use them; the originals computed and discarded them).
        terms: dict[str, Tensor] = {}
        with amp():
            for i, d in enumerate(self.d_for_g):
                _set_requires_grad(self.d_trainable[i], False)
                loss_g, _ = adv.generator_loss(d, out.images[i], text.sentence)
                terms[f"G{i}"] = loss_g
            for name, term in zip(nets.alignment_names, nets.alignment, strict=True):
                value, sub = term(out.images[-1], text)
                terms[name] = value
                logs.update({f"{name}/{k}": float(v.detach()) for k, v in sub.items()})
            terms["kl"] = self.recipe.train.kl_weight * kl_loss(out.mu, out.logvar)
        for name, value in terms.items():
            if not self._check(name, value):
                return None
        # at least fp32 (mixed-precision terms differ in type; a no-op for fp32 and float64 runs)
        total = torch.stack([v.to(torch.promote_types(v.dtype, torch.float32)) for v in terms.values()]).sum()
        self.scaler_g.backward(total)
        self.scaler_g.step(self.opt_g)
        self.ema.update(nets.generator)
        logs["loss/G"] = total.item()
        logs.update({f"loss/{k}": v.item() for k, v in terms.items()})
        if self.scaler_g.enabled:  # fp16: steps the scalers skipped for inf/NaN gradients, so far
            logs["amp/skipped_steps"] = float(sum(s.skipped for s in (self.scaler_g, *self.scaler_d)))
        return logs

    # -- the run --------------------------------------------------------------------------
    def log(self, line: str) -> None:
        if self.rank == 0:
            self.run.log(line)
            if self.progress is not None:
                self.progress.print(line)

    progress: Progress | None = None
    tb = RunLogger()  # TensorBoard copy of the logs: opened by `fit` when [log] tensorboard is on (rank 0)

    def fit(self, steps: int | None = None, stop: Stop | None = None) -> Path:
        t = self.recipe.train
        if steps is not None:
            self.steps_option = steps
        total = self.steps_option if self.steps_option is not None else t.steps
        stop = stop or Stop()
        world = self.world
        loader = make_loader(
            self.dataset,
            self.recipe.data.batch_size,
            self.recipe.seed,
            workers=self.recipe.data.workers,
            start_batch=self.step,
            rank=self.rank,
            world=world,
            **self.runtime.loader_options(),
        )
        self.progress = Progress(
            total, start=self.step, enabled=self.rank == 0 and not self.quiet, description=self.recipe.name or "train"
        )
        if self.step == 0 and self.rank == 0:
            self.log(
                f"training {self.recipe.name}: {total} steps, batch {self.recipe.data.batch_size}, "
                f"run folder {self.run.path}"
            )
        elif self.rank == 0:
            self.log(f"resumed at step {self.step} of {total}")
        if self.rank == 0:
            self.log(self.runtime.describe())
            self.run.record_runtime(self.runtime.info())
        last_path = self.run.checkpoints / "last.pt"
        window_start, window_images = time.perf_counter(), 0
        self.tb = RunLogger.open(self.recipe, self.run.path, self.step, enabled=self.rank == 0)
        with self.progress, self.tb:
            iterator = iter(loader)
            while self.step < total:
                started = time.perf_counter()  # training time: the batch and the step, not evaluation or saving
                batch = next(iterator)
                if self.runtime.compile and self.runtime.compile_seconds == 0.0:
                    with self.runtime.timing_compile():  # compilation happens in the first step: timed apart
                        logs = self.train_step(batch)
                    self.log(f"first step (torch.compile included): {self.runtime.compile_seconds:.1f} s")
                    window_start = time.perf_counter()
                else:
                    logs = self.budget.step(functools.partial(self.train_step, batch))
                self.step += 1  # a skipped batch still counts: the data order stays aligned with the step
                self.budget.add_seconds(time.perf_counter() - started)
                if logs is not None:
                    window_images += len(batch) * world
                    self.progress.update(self.step, logs)
                    if self.step % t.finite_check_every == 0 and not self.check_networks(self.step, full=False):
                        logs = None  # this step's update was dropped: nothing to log
                if self.rank == 0 and logs is not None and (self.step % t.log_every == 0 or self.step == total):
                    elapsed = time.perf_counter() - window_start
                    row = {
                        "step": self.step,
                        "time": time.time(),
                        "images_per_s": window_images / max(elapsed, 1e-9),
                        **{k: v for k, v in logs.items() if math.isfinite(v)},
                    }
                    self.run.append_metrics(row)
                    self.tb.scalars(row)
                    if not self.progress.live:
                        self.log(_format_line(self.step, total, row))
                    window_start, window_images = time.perf_counter(), 0
                if self.samples is not None and (self.step % t.sample_every == 0 or self.step == total):
                    self.samples.write(self.ema.model, self.step)
                    self.tb.images(self.step, sheet_paths(self.samples.folder, self.step))
                improved = self.maybe_evaluate()
                periodic = self.step % t.checkpoint_every == 0
                if periodic or self.step == total or stop.signal_name or improved:
                    # Never a NaN checkpoint: under nan_policy=skip this writes the restored last good state.
                    self.check_networks(self.step, full=True)
                    last_path = self.save(periodic=periodic, best=improved)
                if stop.signal_name:
                    self.log(
                        f"{stop.signal_name}: checkpoint written at step {self.step}; resume with "
                        f"`t2i train --resume {self.run.path}`"
                    )
                    break
        if self.rank == 0 and not stop.signal_name:
            self.log(f"done: {self.step} steps; last checkpoint {last_path}")
        return last_path

    def save(self, periodic: bool, best: str | None = None) -> Path:
        if self.rank != 0:
            return self.run.checkpoints / "last.pt"
        keeper = ckpt.CheckpointKeeper(self.run.checkpoints, self.recipe.train.keep_checkpoints)
        state = self.state()
        if best is not None:
            keeper.save_best(state, best)
        return keeper.save(state, self.step, periodic=periodic)[0]

    _eval_set: Any = None

    def evaluate(
        self,
        dataset: Any,
        *,
        metrics: list[str] | None = None,
        n: int | None = None,
        evaluators: dict[str, nn.Module] | None = None,
        skip_unavailable: bool = True,
        checkpoint: dict[str, Any] | None = None,
        keep_items: bool = False,
    ) -> list[dict[str, Any]]:
        """Evaluate the EMA generator now on ``dataset``; append the rows to the run's eval.jsonl and return them.

        The judges are ``evaluators``, else the networks the generator trains against (text encoder and frozen ones).
        With ``keep_items`` each metric's per-image record goes to the run's ``eval_items/`` (paired comparisons).
        """
        recipe = self.recipe
        rows = evaluate_at_step(
            self.ema.model,
            self.nets.text_encoder,
            dataset,
            metric_specs(recipe, metrics, dataset),
            step=self.step,
            trained_against={"text_encoder": self.nets.text_encoder, **self.nets.frozen},
            z_dim=recipe.model.z_dim,
            cond_dim=recipe.model.cond_dim,
            n=n or recipe.eval.n_samples,
            batch_size=recipe.eval.batch_size,
            device=self.device,
            precision=self.precision,
            evaluators=evaluators,
            skip_unavailable=skip_unavailable,
            checkpoint=checkpoint,
            items_folder=self.run.path if keep_items else None,
        )
        rows = [{**row, **self.budget.record(self.step)} for row in rows]  # what the run had spent by then
        append_rows(self.run.path / "eval.jsonl", rows)
        return rows

    def maybe_evaluate(self) -> str | None:
        """Every ``[eval] every_steps``: evaluate EMA G into eval.jsonl; the name of ``best_metric`` if it improved."""
        every = self.recipe.eval.every_steps
        if self.rank != 0 or not every or self.step % every:
            return None
        if self._eval_set is None:
            e = self.recipe.eval
            split = "val" if e.selection_split == "val" else e.split
            self._eval_set = build_split(self.recipe, split, [self.recipe.stage_sizes()[-1]])
        rows = self.evaluate(self._eval_set)
        self.tb.evaluation(rows)
        for row in rows:
            self.log(f"step {self.step}: {row['metric']} = {row['value']:.4g}")
        target = self.recipe.eval.best_metric
        if not target:
            return None
        for row in rows:
            name = row["metric"]
            if name != target and name.split(".v")[0] != target:
                continue
            value = float(row["value"])
            old = self.best.get(name)
            if old is None or (value > old if higher_is_better(name) else value < old):
                self.best[name] = value
                self.log(f"new best {name} = {value:.4g} at step {self.step}")
                return name
        return None


def _set_requires_grad(params: list[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def _format_line(step: int, total: int, row: dict[str, float]) -> str:
    keys = [k for k in row if k.startswith("loss/")]
    losses = " ".join(f"{k[5:]}={row[k]:.3f}" for k in keys)
    return f"step {step}/{total} {row['images_per_s']:.1f} img/s {losses}"


def install_signal_handlers(stop: Stop) -> None:
    def handler(signum, _frame):
        stop.signal_name = signal.Signals(signum).name

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
