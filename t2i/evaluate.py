"""Evaluate a checkpoint: load its EMA generator and text encoder, pick the judges (``t2i eval``, ``t2i sample``).

The evaluator networks (text encoder + image encoder for R-precision) default to the encoders the generator was
trained against, and the protocol says so (``judge_is_trainer``); ``evaluator`` picks an independent pair. The
evaluation loop itself (generation, metrics, ``eval.jsonl``) is ``t2i.metrics.evaluation``; its public names are
re-exported here, the one place a user of ``t2i eval`` looks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from t2i.metrics.base import module_fingerprint, sha256_file
from t2i.metrics.evaluation import (
    REFERENCES,
    RUN_SPECIFIC_KEYS,
    EvalSetupError,
    Evaluation,
    append_rows,
    default_metrics,
    evaluate,
    evaluate_reference,
    evaluate_references,
    items_path,
    load_items,
    metric_specs,
    protocol_id,
    read_rows,
    save_items,
    write_image,
)

__all__ = [
    "REFERENCES",
    "RUN_SPECIFIC_KEYS",
    "EvalSetupError",
    "Evaluation",
    "LoadedModel",
    "append_rows",
    "default_metrics",
    "evaluate",
    "evaluate_reference",
    "evaluate_references",
    "items_path",
    "load_evaluators",
    "load_items",
    "load_model",
    "metric_specs",
    "pick_checkpoint",
    "protocol_id",
    "read_rows",
    "save_items",
    "training_hashes",
    "write_image",
]


# -- loading a checkpoint ----------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A GAN checkpoint ready for generation: EMA G and text encoder in eval mode, plus where it came from."""

    recipe: Any
    generator: nn.Module
    text_encoder: nn.Module
    vocab: Any
    state: dict[str, Any]
    path: Path  # the checkpoint file
    run_path: Path | None  # the run folder, when the checkpoint lives in one

    @property
    def name(self) -> str:
        return self.recipe.name or self.path.stem

    @property
    def eval_file(self) -> Path:
        return (self.run_path or self.path.parent) / "eval.jsonl"

    def checkpoint_record(self) -> dict[str, Any]:
        return {"sha256": sha256_file(self.path), "path": str(self.path), "step": int(self.state.get("step", 0))}


def pick_checkpoint(run: str | Path, which: str) -> Path:
    """A run folder's checkpoint by name: ``last``, ``best`` (the ``best-<metric>.pt`` in-training evaluation kept;
    the recipe's ``best_metric`` when there are several), ``best-<metric>``, or a file name in ``checkpoints/``."""
    folder = Path(run) / "checkpoints"
    if not Path(run).is_dir():
        raise EvalSetupError(f"--checkpoint {which} goes with a run folder; {run} is not one (give the file itself)")
    bests = sorted(folder.glob("best-*.pt"))
    if which == "best":
        if len(bests) > 1:
            from t2i import recipe as recipe_mod

            target = recipe_mod.read_toml(Path(run) / "config.resolved.toml").get("eval", {}).get("best_metric")
            bests = [p for p in bests if target and p.stem[5:].split(".v")[0] == target.split(".v")[0]] or bests
        if len(bests) == 1:
            return bests[0]
        if not bests:
            raise EvalSetupError(
                f"{folder} has no best-<metric>.pt: the run kept none (set [eval] every_steps and best_metric "
                "before training); give --checkpoint last or a file name"
            )
        raise EvalSetupError(f"{folder} has several best checkpoints ({', '.join(p.name for p in bests)}); name one")
    name = which if which.endswith(".pt") else f"{which}.pt"
    path = folder / name
    if not path.is_file():
        present = ", ".join(sorted(p.name for p in folder.glob("*.pt"))) or "none"
        raise EvalSetupError(f"no checkpoint {name} in {folder}; there are: {present}")
    return path


def load_model(checkpoint: str | Path, *, ema: bool = True, runtime: Any = None) -> LoadedModel:
    """Load a GAN checkpoint (or a run folder's last.pt) for evaluation, onto ``runtime``'s device (default CPU).

    Weights are stored in fp32 whatever precision trained them (autocast never changes parameters), so a bf16
    run's checkpoint samples in fp32 and the other way round.
    """
    from t2i import recipe as recipe_mod
    from t2i.data.vocab import Vocabulary
    from t2i.networks import build_generator, build_text_encoder
    from t2i.train import checkpoint as ckpt

    state = ckpt.load(checkpoint)
    path = Path(state["_path"])
    if state.get("kind") != "gan" or "generator_ema" not in state.get("models", {}):
        raise EvalSetupError(f"{path} is not a GAN checkpoint (kind {state.get('kind')!r})")
    if state.get("vocab") is None:
        raise EvalSetupError(f"{path} carries no vocabulary; re-import it with its captions.pickle")
    recipe = recipe_mod.validate(state["recipe"], f"{path}[recipe]", import_plugins=False)
    vocab = Vocabulary.from_dict(state["vocab"])
    generator = build_generator(recipe)
    generator.load_state_dict(state["models"]["generator_ema" if ema else "generator"])
    text_encoder = build_text_encoder(recipe, len(vocab))
    text_encoder.load_state_dict(state["models"]["text_encoder"])
    generator.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    if runtime is not None:
        generator = runtime.compiled(runtime.module(generator))
        text_encoder.to(runtime.device)
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    if run is not None and not (run / "config.resolved.toml").is_file():
        run = None
    return LoadedModel(recipe, generator, text_encoder, vocab, state, path, run)


def _encoder_from(state: dict[str, Any], role: str, vocab_size: int) -> nn.Module | None:
    """Build ``role`` from a checkpoint's own recipe and load its weights (None if the checkpoint has none)."""
    from t2i import recipe as recipe_mod
    from t2i.networks import build_role, build_text_encoder

    if role not in state.get("models", {}):
        return None
    recipe = recipe_mod.validate(state["recipe"], f"{state['_path']}[recipe]", import_plugins=False)
    if role == "text_encoder":
        module = build_text_encoder(recipe, vocab_size)
    else:
        module = build_role(recipe, role, vocab_size, from_checkpoint=True)
    module.load_state_dict(state["models"][role])
    return module.eval().requires_grad_(False)


def load_evaluators(model: LoadedModel, evaluator: str | Path | None = None) -> dict[str, nn.Module]:
    """Evaluator encoders: from ``evaluator`` (a DAMSM or GAN checkpoint), else the ones ``model`` was trained with.

    Without ``evaluator`` the image encoder and the captioner come from the GAN checkpoint (models trained with DAMSM
    or STREAM carry them) or from the recipe's ``train.pretrained`` files; a model that has neither gets no
    R-precision judge (no captioner accuracy).
    """
    from t2i.train import checkpoint as ckpt

    vocab_size = len(model.vocab)
    if evaluator is not None:
        state = ckpt.load(evaluator)
        if state.get("vocab") is not None and state["vocab"] != model.vocab.to_dict():
            from t2i.data.vocab import Vocabulary

            theirs = Vocabulary.from_dict(state["vocab"])
            raise EvalSetupError(
                f"evaluator {state['_path']} uses a different vocabulary ({len(theirs)} words, sha256 "
                f"{theirs.sha256()[:12]}) than the model ({vocab_size} words, {model.vocab.sha256()[:12]})"
            )
        networks = {r: _encoder_from(state, r, vocab_size) for r in ("text_encoder", "image_encoder")}
        missing = [r for r, m in networks.items() if m is None]
        if missing:
            raise EvalSetupError(f"evaluator {state['_path']} holds no {', '.join(missing)}")
        return {r: m for r, m in networks.items() if m is not None}
    networks: dict[str, nn.Module] = {"text_encoder": model.text_encoder}
    for role in ("image_encoder", "captioner"):
        module = _encoder_from(model.state, role, vocab_size)
        pretrained = getattr(model.recipe.train.pretrained, role)
        if module is None and pretrained and Path(pretrained).is_file():
            module = _encoder_from(ckpt.load(pretrained), role, vocab_size)
        if module is not None:
            networks[role] = module
    return networks


def training_hashes(model: LoadedModel) -> dict[str, str]:
    """Fingerprints of the networks the generator was trained against (R-precision flags a judge among them)."""
    hashes = {"text_encoder": module_fingerprint(model.text_encoder)}
    for role in ("image_encoder", "captioner"):
        if role in model.state["models"]:
            net = _encoder_from(model.state, role, len(model.vocab))
            if net is not None:
                hashes[role] = module_fingerprint(net)
    return hashes
