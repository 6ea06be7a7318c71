"""Run folders: ``runs/<recipe>/<YYYYmmdd-HHMMSS>-<hash8>/`` that explain themselves.

One folder per run holds everything about it, as StyleGAN, timm and Hydra keep their runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class RunDirError(RuntimeError):
    t2i_user_error = True


@dataclass
class RunDir:
    path: Path
    created: bool = False  # this process made the folder (so a failed start may remove it)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def log_file(self) -> Path:
        return self.path / "log.txt"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_file.open("a") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")

    def record_runtime(self, info: dict[str, Any]) -> None:
        """Add the resolved device and precision to env.json (written before the runtime is known)."""
        env_file = self.path / "env.json"
        try:
            env = json.loads(env_file.read_text())
        except (OSError, ValueError):
            env = {}
        env.setdefault("runtimes", []).append(info)  # one entry per start (a resume may change the device)
        env["device"] = info.get("device_name", env.get("device"))
        env_file.write_text(json.dumps(env, indent=2, sort_keys=True) + "\n")

    def log(self, line: str) -> None:
        stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        with self.log_file.open("a") as handle:
            handle.write(f"[{stamp}] {line}\n")

    @property
    def validation_file(self) -> Path:
        return self.path / "validation.jsonl"

    def truncate_logs(self, step: int) -> None:
        """Keep the rows of metrics.jsonl, eval.jsonl and validation.jsonl up to ``step``: a resumed run logs the
        later ones again."""
        for path in (self.metrics_file, self.path / "eval.jsonl", self.validation_file):
            truncate_jsonl(path, step)

    def record_resume(self, step: int, overrides: list[str], resolved_toml: str) -> None:
        """Append the overrides a resume accepted, with the step they took effect at; rewrite the resolved recipe."""
        with (self.path / "overrides.txt").open("a") as handle:
            handle.write(f"# resumed at step {step}\n" + "".join(f"{o}\n" for o in overrides))
        write_atomic(self.path / "config.resolved.toml", resolved_toml)

    def has_checkpoint(self) -> bool:
        return self.checkpoints.is_dir() and any(self.checkpoints.glob("*.pt"))

    def remove_failed_start(self) -> bool:
        """After a start that failed before its first checkpoint: remove what this process created. -> removed?"""
        if self.has_checkpoint():
            return False
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        else:  # an empty folder given with --run-dir: empty it again, so the same command can be re-run
            for child in self.path.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        return True


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop rows with ``step`` > ``step`` (and a torn last line), rewriting the file atomically if anything goes."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed process
        if not isinstance(row, dict) or not isinstance(row.get("step"), int) or row["step"] <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        write_atomic(path, "".join(kept))


def recipe_hash(resolved_toml: str) -> str:
    return hashlib.sha256(resolved_toml.encode()).hexdigest()[:8]


def create(recipe, root: str | Path = "runs", *, run_dir: str | Path | None = None) -> RunDir:
    """Make a fresh run folder and write the recipe as given, the overrides, the resolved recipe and env.json."""
    resolved = recipe.to_toml()
    if run_dir is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(root) / (recipe.name or "recipe") / f"{stamp}-{recipe_hash(resolved)}"
        path, n = base, 1
        while path.exists():  # the same recipe started twice within one second: a folder of its own each
            n += 1
            path = base.with_name(f"{base.name}-{n}")
    else:
        path = Path(run_dir)
    if path.exists() and any(path.iterdir()):
        raise RunDirError(f"run folder {path} exists and is not empty; use --resume {path} to continue it")
    created = not path.exists()
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    (path / "samples").mkdir(exist_ok=True)
    source = Path(recipe.source)
    if source.is_file():
        shutil.copyfile(source, path / "recipe.toml")
    (path / "overrides.txt").write_text("".join(f"{o}\n" for o in recipe.overrides))
    (path / "config.resolved.toml").write_text(resolved)
    env = {**environment(recipe.seed), **recipe_environment(recipe)}
    (path / "env.json").write_text(json.dumps(env, indent=2, sort_keys=True) + "\n")
    return RunDir(path, created=created)


def recipe_environment(recipe) -> dict[str, Any]:
    """What the recipe decides about the environment: the frozen networks it keeps random on purpose."""
    from t2i.weights import random_weights

    return {"random_weights": random_weights(recipe)}


def open_existing(path: str | Path) -> RunDir:
    path = Path(path)
    if not (path / "config.resolved.toml").is_file():
        raise RunDirError(f"{path} is not a t2i run folder (no config.resolved.toml)")
    return RunDir(path)


def git_commit() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def environment(seed: int, world_size: int = 1) -> dict[str, Any]:
    import numpy
    import torch

    import t2i

    packages = {"t2i": t2i.__version__, "torch": torch.__version__, "numpy": numpy.__version__}
    for name in ("torchvision", "pydantic", "scipy", "PIL"):
        try:
            packages[name] = __import__(name).__version__
        except Exception:  # optional in this record
            packages[name] = None
    return {
        "argv": sys.argv,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "packages": packages,
        "git": git_commit(),
        "seed": seed,
        "world_size": world_size,
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
    }
