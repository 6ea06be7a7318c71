"""Pretraining of the frozen networks the GAN relies on.

``damsm``: the text encoder and the DAMSM image encoder's trainable heads, as the originals' pretrain_DAMSM.py
(training.md §2): word + sentence matching losses unweighted, Adam (0.5, 0.999) re-created every epoch, lr decayed by
``lr_decay`` after each epoch down to ``lr_floor``, total-norm clip on the text encoder only, both modules in train
mode (so a frozen Inception trunk's BatchNorm statistics drift, models.md §12 Q11).

``stream``: the STREAM captioner (training.md §3.1). The originals never released this code; t2i's choices,
documented in docs/training.md: teacher forcing on real training images with the GAN's own vocabulary and caption
convention, cross-entropy over packed tokens, Adam(lr) on every trainable captioner parameter, and the same image
preprocessing the captioner sees during GAN training (the recipe's ``imagenet_normalize`` / resize settings), so that
it is not surprised by the generator's [-1, 1] images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import t2i
from t2i.build import build_text_encoder
from t2i.recipe import Recipe
from t2i.runtime import Runtime
from t2i.train import checkpoint as ckpt
from t2i.train import rng
from t2i.train.data import make_loader
from t2i.train.loop import Stop
from t2i.train.networks import build_role
from t2i.train.progress import Progress
from t2i.train.run_dir import RunDir


class Pretrainer:
    """Shared loop: epochs of batches, logging, atomic checkpoints, exact resume, clean stop on signals."""

    kind = ""

    def __init__(
        self,
        recipe: Recipe,
        run: RunDir,
        dataset,
        *,
        resume: dict[str, Any] | None = None,
        quiet: bool = False,
        runtime: Runtime | None = None,
    ):
        self.recipe, self.run, self.dataset, self.quiet = recipe, run, dataset, quiet
        self.runtime = runtime or Runtime.from_section(recipe.runtime)
        self.vocab = dataset.vocab
        rng.seed_everything(recipe.seed)
        self.step = 0
        self.modules = {name: self.runtime.module(m) for name, m in self.build().items()}
        self.scaler = self.runtime.precision.scaler()  # one optimiser (re-created per epoch): one scaler
        self.optimizer = self.make_optimizer(self.lr_for_epoch(0))
        if resume is not None:
            self.load_state(resume)

    # hooks ------------------------------------------------------------------------------
    def build(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def trainable(self) -> list[nn.Parameter]:
        return [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]

    def lr_for_epoch(self, epoch: int) -> float:
        return self.settings.lr

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.trainable(), lr=lr, betas=(0.5, 0.999))

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def before_step(self) -> None:
        pass

    @property
    def settings(self):
        return getattr(self.recipe.pretrain, self.kind)

    # state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "t2i_version": t2i.__version__,
            "kind": self.kind,
            "step": self.step,
            "recipe": self.recipe.to_dict(),
            "vocab": self.vocab.to_dict(),
            "models": {name: m.state_dict() for name, m in self.modules.items()},
            "optimizers": {"main": self.optimizer.state_dict()},
            "rng": rng.capture(),
            "data": {"batches_consumed": self.step, "seed": self.recipe.seed},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state["models"][name])
        self.step = int(state["step"])
        self.optimizer = self.make_optimizer(self.lr_for_epoch(self.epoch_of(self.step)))
        self.optimizer.load_state_dict(state["optimizers"]["main"])
        rng.restore(state["rng"])

    def epoch_of(self, step: int) -> int:
        return step // self.per_epoch

    @property
    def per_epoch(self) -> int:
        return max(1, len(self.dataset) // self.settings.batch_size)

    # loop -------------------------------------------------------------------------------
    def fit(self, stop: Stop | None = None) -> Path:
        stop = stop or Stop()
        s = self.settings
        total = s.epochs * self.per_epoch
        loader = make_loader(
            self.dataset,
            s.batch_size,
            self.recipe.seed,
            workers=self.recipe.data.workers,
            start_batch=self.step,
            **self.runtime.loader_options(),
            setting=f"pretrain.{self.kind}.batch_size",
        )
        keeper = ckpt.CheckpointKeeper(self.run.checkpoints, keep=self.recipe.train.keep_checkpoints)
        self.run.log(f"pretrain {self.kind}: {s.epochs} epochs x {self.per_epoch} steps, batch {s.batch_size}")
        self.run.log(self.runtime.describe())
        self.run.record_runtime(self.runtime.info())
        last = keeper.last
        sums: dict[str, float] = {}
        count, window_start = 0, time.perf_counter()
        with Progress(total, start=self.step, enabled=not self.quiet, description=f"pretrain {self.kind}") as bar:
            iterator = iter(loader)
            while self.step < total:
                if self.step % self.per_epoch == 0:
                    self.on_epoch_start(self.epoch_of(self.step))
                for m in self.modules.values():
                    m.train()
                with self.runtime.precision.autocast():
                    loss, logs = self.loss(self.runtime.batch(next(iterator)))
                if not torch.isfinite(loss):
                    raise ckpt.CheckpointError(f"pretrain {self.kind}: loss is {loss.item()} at step {self.step + 1}")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.backward(loss)
                if self.scaler.enabled:
                    self.scaler.scaler.unscale_(self.optimizer)  # clipping sees the true gradients
                self.before_step()
                self.scaler.step(self.optimizer)
                self.step += 1
                count += 1
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.update(self.step, {"loss/G": loss.item()})
                end_of_epoch = self.step % self.per_epoch == 0
                if self.step % self.recipe.train.log_every == 0 or self.step == total:
                    elapsed = time.perf_counter() - window_start
                    row = {
                        "step": self.step,
                        "epoch": self.epoch_of(self.step - 1),
                        "images_per_s": count * s.batch_size / max(elapsed, 1e-9),
                        "lr": self.optimizer.param_groups[0]["lr"],
                        **{k: v / count for k, v in sums.items()},
                    }
                    self.run.append_metrics(row)
                    line = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("step",))
                    self.run.log(f"step {self.step}/{total} {line}")
                    if not bar.live:
                        bar.print(f"step {self.step}/{total} {line}")
                    sums, count, window_start = {}, 0, time.perf_counter()
                snapshot = end_of_epoch and (self.epoch_of(self.step - 1) % s.snapshot_every == 0)
                if snapshot or self.step == total or stop.signal_name:
                    last = keeper.save(self.state(), self.step, periodic=snapshot)[0]
                if stop.signal_name:
                    self.run.log(f"{stop.signal_name}: checkpoint written at step {self.step}")
                    break
        self.run.log(f"done: {self.step} steps; checkpoint {last}")
        return last


class DamsmPretrainer(Pretrainer):
    kind = "damsm"

    def build(self) -> dict[str, nn.Module]:
        text_encoder = build_text_encoder(self.recipe, len(self.vocab))
        if self.recipe.model.image_encoder is None:
            raise ckpt.CheckpointError("t2i pretrain damsm needs model.image_encoder in the recipe")
        image_encoder = build_role(self.recipe, "image_encoder", len(self.vocab))
        return {"text_encoder": text_encoder, "image_encoder": image_encoder}

    def lr_for_epoch(self, epoch: int) -> float:
        s = self.settings
        lr = s.lr
        for _ in range(epoch):
            if lr > s.lr_floor:
                lr *= s.lr_decay
        return lr

    def on_epoch_start(self, epoch: int) -> None:
        if self.step > 0 or epoch > 0:
            # The originals create a fresh Adam every epoch (moments reset), training.md §2.3.
            self.optimizer = self.make_optimizer(self.lr_for_epoch(epoch))

    def before_step(self) -> None:
        nn.utils.clip_grad_norm_(self.modules["text_encoder"].parameters(), self.settings.grad_clip)

    def loss(self, batch):
        from t2i.losses.damsm import sentence_loss, words_loss

        s = self.settings
        text_encoder, image_encoder = self.modules["text_encoder"], self.modules["image_encoder"]
        words, sentence = text_encoder(batch.captions, batch.lengths)
        regions, global_code = image_encoder(batch.images[-1])
        w0, w1, _ = words_loss(regions, words, batch.lengths, batch.class_ids, s.gamma1, s.gamma2, s.gamma3)
        s0, s1 = sentence_loss(global_code, sentence, batch.class_ids, s.gamma3)
        total = w0 + w1 + s0 + s1
        return total, {"w_loss": (w0 + w1).item(), "s_loss": (s0 + s1).item(), "loss": total.item()}


class StreamPretrainer(Pretrainer):
    kind = "stream"

    def build(self) -> dict[str, nn.Module]:
        return {"captioner": build_role(self.recipe, "captioner", len(self.vocab))}

    def loss(self, batch):
        captioner = self.modules["captioner"]
        features = captioner.encode(batch.images[-1])
        logits = captioner(features, batch.captions, batch.lengths)
        targets = pack_padded_sequence(batch.captions, batch.lengths.cpu(), batch_first=True)[0]
        loss = nn.functional.cross_entropy(logits, targets)
        accuracy = (logits.argmax(1) == targets).float().mean()
        return loss, {"loss": loss.item(), "token_accuracy": accuracy.item()}


PRETRAINERS = {"damsm": DamsmPretrainer, "stream": StreamPretrainer}
