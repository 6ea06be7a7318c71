"""Pretraining of the frozen networks the GAN relies on.

``damsm``: the text encoder and the DAMSM image encoder's trainable heads, as the originals' pretrain_DAMSM.py
(AttnGAN, Xu et al. 2018, eqs. 7-14): word + sentence matching losses unweighted, Adam (0.5, 0.999) re-created every
epoch, lr decayed by ``lr_decay`` after each epoch down to ``lr_floor``, total-norm clip on the text encoder only,
both modules in train mode (so a frozen Inception trunk's BatchNorm statistics drift, as in the originals).

``stream``: the STREAM captioner (MirrorGAN, Qiao et al. 2019). The originals never released this code; t2i's choices,
documented in docs/training.md: teacher forcing on real training images with the GAN's own vocabulary and caption
convention, cross-entropy over packed tokens, Adam(lr) on every trainable captioner parameter, and the same image
preprocessing the captioner sees during GAN training (the recipe's ``imagenet_normalize`` / resize settings), so that
it is not surprised by the generator's [-1, 1] images.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import t2i
from t2i.data.loader import make_loader
from t2i.networks import build_role, build_text_encoder
from t2i.recipe import Recipe
from t2i.runtime import Runtime
from t2i.train import checkpoint as ckpt
from t2i.train import rng
from t2i.train.loop import Stop
from t2i.train.progress import Progress
from t2i.train.run_dir import RunDir
from t2i.train.tb import RunLogger


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
        val_dataset=None,
    ):
        self.recipe, self.run, self.dataset, self.quiet = recipe, run, dataset, quiet
        self.val_dataset = val_dataset  # held-out split measured after every epoch (None: no validation)
        self.best: dict[str, float] = {}
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

    #: the validation value whose best epoch is kept as ``best-val_<name>.pt`` (higher is better)
    best_metric = ""

    def validate_batch(self, batch) -> dict[str, Any]:
        """Per-batch validation values (summed over batches by ``validate``); tensors are gathered instead."""
        raise NotImplementedError

    def summarise_validation(self, gathered: dict[str, list]) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The held-out split in eval mode, one pass in a fixed order: mean losses plus ``summarise_validation``."""
        data = self.val_dataset
        size = min(self.settings.batch_size, len(data))
        if size < 2:
            return {}
        loader = make_loader(data, size, self.recipe.seed, workers=0)
        for m in self.modules.values():
            m.eval()
        sums: dict[str, float] = {}
        gathered: dict[str, list] = {}
        batches = len(data) // size
        for _, batch in zip(range(batches), loader, strict=False):
            with self.runtime.precision.autocast():
                values = self.validate_batch(self.runtime.batch(batch))
            for k, v in values.items():
                if isinstance(v, torch.Tensor):
                    gathered.setdefault(k, []).append(v.float().cpu())
                else:
                    sums[k] = sums.get(k, 0.0) + v
        rows = {f"val/{k}": v / batches for k, v in sums.items()}
        rows.update({f"val/{k}": v for k, v in self.summarise_validation(gathered).items()})
        return rows

    def end_of_epoch(self, epoch: int, keeper: ckpt.CheckpointKeeper, bar: Progress) -> None:
        if self.val_dataset is None:
            return
        rows = self.validate()
        if not rows:
            return
        with self.run.validation_file.open("a") as handle:  # metrics.jsonl keeps one row per training step
            handle.write(json.dumps({"step": self.step, "epoch": epoch, **rows}, sort_keys=True) + "\n")
        self.tb.scalars({"step": self.step, **rows})  # the val/ values (the epoch is in the training rows)
        line = f"epoch {epoch} validation: " + " ".join(f"{k[4:]}={v:.4g}" for k, v in rows.items())
        key = f"val/{self.best_metric}"
        if key in rows and rows[key] > self.best.get(key, float("-inf")):
            self.best[key] = rows[key]
            path = keeper.save_best(self.state(), f"val_{self.best_metric}")
            line += f"; best so far, kept as {path.name}"
        self.run.log(line)
        if not bar.live:
            bar.print(line)

    tb = RunLogger()  # TensorBoard copy of the logs: opened by `fit` when [log] tensorboard is on

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
            "metrics": {"best": dict(self.best)},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state["models"][name])
        self.step = int(state["step"])
        self.optimizer = self.make_optimizer(self.lr_for_epoch(self.epoch_of(self.step)))
        self.optimizer.load_state_dict(state["optimizers"]["main"])
        rng.restore(state["rng"])
        self.best = dict(state.get("metrics", {}).get("best", {}))

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
        self.tb = RunLogger.open(self.recipe, self.run.path, self.step)
        bar = Progress(total, start=self.step, enabled=not self.quiet, description=f"pretrain {self.kind}")
        with bar, self.tb:
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
                    self.tb.scalars(row)
                    line = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("step",))
                    self.run.log(f"step {self.step}/{total} {line}")
                    if not bar.live:
                        bar.print(f"step {self.step}/{total} {line}")
                    sums, count, window_start = {}, 0, time.perf_counter()
                if end_of_epoch:
                    self.end_of_epoch(self.epoch_of(self.step - 1), keeper, bar)
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
            # The originals create a fresh Adam every epoch (moments reset).
            self.optimizer = self.make_optimizer(self.lr_for_epoch(epoch))

    def before_step(self) -> None:
        nn.utils.clip_grad_norm_(self.modules["text_encoder"].parameters(), self.settings.grad_clip)

    def _losses(self, batch):
        from t2i.losses.damsm import sentence_loss, words_loss

        s = self.settings
        words, sentence = self.modules["text_encoder"](batch.captions, batch.lengths)
        regions, global_code = self.modules["image_encoder"](batch.images[-1])
        w0, w1, _ = words_loss(regions, words, batch.lengths, batch.class_ids, s.gamma1, s.gamma2, s.gamma3)
        s0, s1 = sentence_loss(global_code, sentence, batch.class_ids, s.gamma3)
        return w0 + w1, s0 + s1, global_code, sentence

    def loss(self, batch):
        w_loss, s_loss, _, _ = self._losses(batch)
        total = w_loss + s_loss
        return total, {"w_loss": w_loss.item(), "s_loss": s_loss.item(), "loss": total.item()}

    best_metric = "r_at_1"

    def validate_batch(self, batch) -> dict[str, Any]:
        """The originals' per-epoch test-split losses, plus the codes for image-to-text retrieval."""
        w_loss, s_loss, global_code, sentence = self._losses(batch)
        return {"w_loss": w_loss.item(), "s_loss": s_loss.item(), "image_codes": global_code, "sentences": sentence}

    def summarise_validation(self, gathered: dict[str, list]) -> dict[str, float]:
        if not gathered.get("image_codes"):
            return {}
        return {"r_at_1": retrieval_r_at_1(torch.cat(gathered["image_codes"]), torch.cat(gathered["sentences"]))}


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

    best_metric = "token_accuracy"

    def validate_batch(self, batch) -> dict[str, Any]:
        return self.loss(batch)[1]


def retrieval_r_at_1(image_codes: torch.Tensor, sentences: torch.Tensor, candidates: int = 100, seed: int = 0) -> float:
    """Image-to-text R@1 as the R-precision protocol (AttnGAN, DM-GAN) measures it: for each image, its own caption
    against ``candidates - 1`` others drawn at random from the split, ranked by cosine similarity of the sentence
    embedding and the global image code; the share of images whose own caption ranks first."""
    n = image_codes.shape[0]
    sims = nn.functional.normalize(image_codes.double(), dim=1) @ nn.functional.normalize(sentences.double(), dim=1).T
    gen = torch.Generator().manual_seed(seed)
    hits = 0
    for i in range(n):
        others = torch.cat([torch.arange(i), torch.arange(i + 1, n)])
        if len(others) > candidates - 1:
            others = others[torch.randperm(len(others), generator=gen)[: candidates - 1]]
        hits += int(sims[i, i] > sims[i, others].max()) if len(others) else 1
    return hits / max(n, 1)


PRETRAINERS = {"damsm": DamsmPretrainer, "stream": StreamPretrainer}
