"""The one training loop, evaluation, seeding and checkpoints. Data stays on the device as whole tensors;
batches are drawn by index and the loop reads values back to the host only at logging intervals."""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from dlzoo.data import Splits, to_float
from dlzoo.errors import DlzooError


class Tracker(Protocol):
    """What the loop reports to (dlzoo.tracking.RunTracker; tests may pass a stub)."""

    def on_epoch_start(self, epoch: int, steps: int) -> None: ...
    def log_step(self, step: int, loss: float, lr: float, samples_per_s: float) -> None: ...
    def log_layer_stats(self, step: int, stats: dict[str, float]) -> None: ...
    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None: ...


class DivergedError(DlzooError):
    """The loss became NaN or infinite."""


@dataclass
class FitResult:
    epochs: int
    steps: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    train_time_s: float
    train_samples: int
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA too


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda when available, else cpu; an unavailable explicit device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DlzooError(
            "trainer.device=cuda was asked for, but no CUDA device is visible. Fix: trainer.device=auto or cpu."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DlzooError("trainer.device=mps was asked for, but MPS is not available. Fix: trainer.device=auto or cpu.")
    return device


@torch.inference_mode()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 10000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in a few large batches (eval mode, restored after)."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=labels.device)
    correct = torch.zeros((), device=labels.device, dtype=torch.long)
    for start in range(0, len(labels), batch_size):
        logits = model(to_float(images[start : start + batch_size]))
        y = labels[start : start + batch_size]
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = len(labels)
    return loss_sum.item() / n, correct.item() / n


def layer_stats(model: nn.Module) -> dict[str, float]:
    """L2 norms of each weight and of its gradient, keyed `weight_norm/<layer>` and `grad_norm/<layer>`: the
    per-layer view that shows gradients vanishing towards the input of a deep sigmoid net (lecture 10-1)."""
    named = [
        (n.removesuffix(".weight"), p) for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1
    ]
    if not named:
        return {}
    weights = torch.stack(torch._foreach_norm([p.detach() for _, p in named]))
    grads = [p.grad for _, p in named]
    out = {f"weight_norm/{n}": v for (n, _), v in zip(named, weights.tolist(), strict=True)}
    if all(g is not None for g in grads):
        norms = torch.stack(torch._foreach_norm(grads)).tolist()  # type: ignore[arg-type]
        out |= {f"grad_norm/{n}": v for (n, _), v in zip(named, norms, strict=True)}
    return out


def fit(
    model: nn.Module,
    data: Splits,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    tracker: Tracker,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    max_steps: int | None = None,
    eval_batch_size: int = 10000,
    log_every_n_steps: int = 50,
    layer_stats_enabled: bool = True,
    checkpoint_path: Path | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
) -> FitResult:
    """Train `model` on `data.x_train` with softmax cross-entropy, validating after every epoch.

    Args:
        seed: seeds the generator that orders each epoch's batches (on the data's device).
        max_steps: stop after this many optimizer steps in total (the epoch in progress is still validated).
        checkpoint_path: if set, model + optimizer + epoch are written there (atomically) after every epoch, so
            a crash or divergence leaves the last good epoch on disk.
        checkpoint_extra: stored alongside (e.g. the resolved config).

    Returns:
        The last epoch's train and validation metrics plus timing.
    """
    device = data.x_train.device
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / batch_size)
    order = torch.Generator(device=device).manual_seed(seed)
    step, seen, train_time = 0, 0, 0.0
    last_finite_loss = float("nan")
    history: list[dict[str, float]] = []
    model.train()

    for epoch in range(1, epochs + 1):
        tracker.on_epoch_start(epoch, steps_per_epoch)
        perm = torch.randperm(n, generator=order, device=device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        epoch_seen = 0
        t0 = time.perf_counter()
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x, y = to_float(data.x_train[idx]), data.y_train[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            step += 1
            if step % log_every_n_steps == 0 and layer_stats_enabled:
                tracker.log_layer_stats(step, layer_stats(model))
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            epoch_seen += len(y)
            if step % log_every_n_steps == 0:
                value = loss.item()  # the one host sync per logging interval
                if not math.isfinite(value):
                    raise _diverged(step, last_finite_loss, checkpoint_path)
                last_finite_loss = value
                elapsed = time.perf_counter() - t0
                tracker.log_step(step, value, scheduler.get_last_lr()[0], epoch_seen / max(elapsed, 1e-9))
            if max_steps is not None and step >= max_steps:
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time += time.perf_counter() - t0
        seen += epoch_seen

        train_loss, train_acc = loss_sum.item() / epoch_seen, correct.item() / epoch_seen
        if not math.isfinite(train_loss):
            raise _diverged(step, last_finite_loss, checkpoint_path)
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val, eval_batch_size)
        metrics = {
            "train/loss": train_loss,
            "train/acc": train_acc,
            "val/loss": val_loss,
            "val/acc": val_acc,
            "lr": scheduler.get_last_lr()[0],
        }
        history.append({"epoch": epoch, **metrics})
        tracker.log_epoch(epoch, step, metrics)
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, model, optimizer, epoch, step, checkpoint_extra or {})
        if max_steps is not None and step >= max_steps:
            break

    last = history[-1]
    return FitResult(
        epochs=len(history),
        steps=step,
        train_loss=last["train/loss"],
        train_acc=last["train/acc"],
        val_loss=last["val/loss"],
        val_acc=last["val/acc"],
        train_time_s=train_time,
        train_samples=seen,
        history=history,
    )


def _diverged(step: int, last_finite: float, checkpoint_path: Path | None) -> DivergedError:
    kept = (
        f" The last good epoch's checkpoint is kept at {checkpoint_path}."
        if checkpoint_path is not None and checkpoint_path.exists()
        else ""
    )
    return DivergedError(
        f"Training diverged: the loss became NaN or infinite by step {step} (last finite loss "
        f"{last_finite:.4g}).{kept} Fix: lower optim.lr (e.g. by 10x), use an initializer scaled to the layer "
        "(model.init=xavier_uniform or he_normal), or add normalization (model.norm=batch)."
    )


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: Optimizer, epoch: int, step: int, extra: dict[str, Any]
) -> None:
    """Write the checkpoint to a temporary file and rename it over `path`, so a crash mid-write never
    leaves a corrupt checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step, **extra}
    torch.save(state, tmp)
    os.replace(tmp, path)
