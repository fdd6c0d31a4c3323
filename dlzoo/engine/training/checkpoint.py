"""Checkpoints: what a run writes so it can be resumed exactly (every RNG stream included) and its best epochs
kept. Every file is written to a temporary name and renamed, so a crash or a full disk never leaves a corrupt one."""

from __future__ import annotations

import random
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from torch import nn

from dlzoo.errors import DlzooError
from dlzoo.paths import atomic_write


def resume_command(folder: Path, overrides: list[str] | None = None) -> str:
    """The command that continues the run in `folder`, ready to copy: `dlzoo train`, the overrides it was started
    with (Hydra's, unless given; shell-quoted; any trainer.resume left out) and trainer.resume=<folder>. Outside a
    Hydra run, where they are not known, `<same overrides>` stands for them."""
    if overrides is None:
        if not HydraConfig.initialized():
            return f"dlzoo train <same overrides> trainer.resume={folder}"
        overrides = list(HydraConfig.get().overrides.task)
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "trainer.resume"]
    return shlex.join(["dlzoo", "train", *kept, f"trainer.resume={folder}"])


def start_command(folder: Path) -> str:
    """The command that started the run in `folder` (to run again when it has no checkpoint to resume from)."""
    resume = resume_command(folder)
    return shlex.join(shlex.split(resume)[:-1]) if "<" not in resume else "the same command"


@dataclass
class Checkpointing:
    """Where and how often the loop writes checkpoints.

    Args:
        folder: the run's checkpoints/ folder; last.pt (resumable) and best-*.pt (weights) live there.
        every: write last.pt after every `every` epochs (and always at the end and on interruption).
        top_k: keep the k best epochs' weights by `monitor`; 0 keeps none.
        monitor: val/loss (lower is better) or val/acc (higher is better).
        extra: stored in every checkpoint (the resolved config, run metadata).
        file: the resumable file's name (a stack of members writes stack.pt beside its members' folders).
    """

    folder: Path
    every: int = 1
    top_k: int = 1
    monitor: str = "val/loss"
    extra: dict[str, Any] = field(default_factory=dict)
    best: list[tuple[float, Path]] = field(default_factory=list)  # (signed metric, file), best first
    file: str = "last.pt"

    @property
    def last(self) -> Path:
        return self.folder / self.file

    def best_path(self, epoch: int) -> Path:
        return self.folder / f"best-epoch{epoch:03d}.pt"

    def adopt_best(self, history: list[dict[str, float]]) -> None:
        """On resume: count the best-epochNNN.pt files the run already kept, so top-k carries on from them."""
        by_epoch = {int(h["epoch"]): h[self.monitor] for h in history}
        kept = [(int(p.stem.removeprefix("best-epoch")), p) for p in self.folder.glob("best-epoch*.pt")]
        self.best = sorted(((signed(self.monitor, by_epoch[e]), p) for e, p in kept if e in by_epoch),
                           key=lambda item: item[0])  # fmt: skip


def signed(monitor: str, value: float) -> float:
    """`value` turned so that lower is better: losses as they are, accuracies negated."""
    return value if monitor.endswith("loss") else -value


def best_epoch(history: list[dict[str, float]], monitor: str) -> int:
    """The epoch best by `monitor` (the first of equals, as save_best keeps it)."""
    return int(min(history, key=lambda h: signed(monitor, h[monitor]))["epoch"])


def rng_state(order: torch.Generator | None = None) -> dict[str, Any]:
    """Every random stream a run draws from (and the batch-order generator, if given), so a resumed run draws
    the same numbers."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if order is not None:
        state["order"] = order.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restorable_problem(resume: dict[str, Any], model: torch.nn.Module) -> str | None:
    """What in a checkpoint (from another dlzoo version, or edited) cannot be restored into `model` and this
    process, said before training starts rather than as a RuntimeError from load_state_dict or set_rng_state."""
    ours = model.state_dict()
    saved = resume.get("model")
    if not isinstance(saved, dict) or set(saved) != set(ours):
        names = sorted(set(saved or {}) ^ set(ours))[:4]
        return f"its weights name other layers than this model's ({', '.join(names)})"
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(ours[k].shape)}" for k, v in saved.items()
              if not isinstance(v, torch.Tensor) or v.shape != ours[k].shape]  # fmt: skip
    if shapes:
        return "its weights have other shapes than this model's (" + "; ".join(shapes[:3]) + ")"
    rng = resume.get("rng")
    torch_rng = rng.get("torch") if isinstance(rng, dict) else None
    if not isinstance(torch_rng, torch.Tensor) or torch_rng.shape != torch.get_rng_state().shape:
        return "its random-number state is not the one this torch keeps"
    if not all(k in rng for k in ("numpy", "python")):
        return "its random-number state lacks numpy's or Python's stream"
    return None


def set_rng_state(state: dict[str, Any], order: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if order is not None:
        order.set_state(state["order"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_best(ck: Checkpointing, model: nn.Module, epoch: int, metrics: dict[str, float]) -> None:
    """Keep the top-k epochs' weights by the monitored metric as best-epochNNN.pt, dropping those pushed out."""
    if ck.top_k <= 0:
        return
    value = signed(ck.monitor, metrics[ck.monitor])
    if len(ck.best) >= ck.top_k and value >= ck.best[-1][0]:
        return
    path = ck.best_path(epoch)
    save_checkpoint(path, {"model": model.state_dict(), "epoch": epoch, ck.monitor: metrics[ck.monitor]} | ck.extra)
    ck.best = sorted([*ck.best, (value, path)], key=lambda item: item[0])
    for _, old in ck.best[ck.top_k :]:
        old.unlink(missing_ok=True)
    ck.best = ck.best[: ck.top_k]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file and rename it over `path`, so a crash or a full disk mid-write never leaves a
    corrupt checkpoint behind: the previous file stays until the new one is complete."""
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except (OSError, RuntimeError) as e:  # torch.save's zip writer reports a full disk as a RuntimeError
        if isinstance(e, RuntimeError) and not _looks_like_a_write_failure(e):
            raise
        kept = f" The previous {path.name} is intact." if path.exists() else ""
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        run = path.parent.parent
        if not (path.parent / "last.pt").is_file():  # the first write of the run: nothing to resume from
            raise DlzooError(
                f"Could not write the checkpoint {path}: {why}. The run had no checkpoint yet. Fix: free disk space "
                f"and run `{start_command(run)}` again, or give it hydra.run.dir=<folder> on another disk."
            ) from None
        raise DlzooError(
            f"Could not write the checkpoint {path}: {why}.{kept} Fix: free disk space and resume in place with "
            f"`{resume_command(run)}`, or continue in a folder on another disk with "
            f"`{resume_command(run)} hydra.run.dir=<new-folder>` (the run so far is copied there)."
        ) from None


def _looks_like_a_write_failure(e: RuntimeError) -> bool:
    """torch.save's errors from the file system (a full disk, a vanished folder) rather than from the state."""
    text = str(e).lower()
    return any(w in text for w in ("file write failed", "unexpected pos", "no space", "write", "errno"))
