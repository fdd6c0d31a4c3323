"""The one training loop, evaluation (plain and MC dropout), early stopping, seeding and checkpoints. Data stays
on the device as whole tensors; batches are drawn by index and the loop reads values back to the host only at
logging intervals."""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from dlzoo.data import Splits, to_float
from dlzoo.errors import DlzooError
from dlzoo.models.blocks import is_dropout
from dlzoo.optim import Scheduler
from dlzoo.probes import activation_stats, layer_stats
from dlzoo.regularize import Regularizer


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
    best_epoch: int  # the epoch whose weights the model ends with
    stopped_early: bool = False
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
        raise DlzooError("trainer.device=cuda was asked for, but no CUDA device is visible. Fix: trainer.device=auto.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DlzooError("trainer.device=mps was asked for, but MPS is not available. Fix: trainer.device=auto.")
    return device


Prep = Callable[[Tensor], Tensor]


@torch.inference_mode()
def evaluate(
    model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 10000, prep: Prep = to_float
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split in a few large batches (eval mode, restored after)."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=labels.device)
    correct = torch.zeros((), device=labels.device, dtype=torch.long)
    for start in range(0, len(labels), batch_size):
        logits = model(prep(images[start : start + batch_size]))
        y = labels[start : start + batch_size]
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    return loss_sum.item() / len(labels), correct.item() / len(labels)


@torch.inference_mode()
def mc_evaluate(
    model: nn.Module, images: Tensor, labels: Tensor, samples: int, batch_size: int = 10000, prep: Prep = to_float
) -> tuple[float, float]:
    """MC dropout (Gal & Ghahramani 2016): average the softmax of `samples` passes with dropout on (batch norm
    stays in eval mode). Returns (accuracy, mean predictive entropy in nats) of the averaged prediction."""
    was_training = model.training
    model.eval()
    for module in model.modules():
        if is_dropout(module):
            module.train()
    correct = torch.zeros((), device=labels.device, dtype=torch.long)
    entropy = torch.zeros((), device=labels.device)
    for start in range(0, len(labels), batch_size):
        x = prep(images[start : start + batch_size])
        probs = torch.stack([model(x).float().softmax(1) for _ in range(samples)]).mean(0)
        correct += (probs.argmax(1) == labels[start : start + batch_size]).sum()
        entropy += -(probs * probs.clamp_min(1e-12).log()).sum()
    model.train(was_training)
    return correct.item() / len(labels), entropy.item() / len(labels)


class EarlyStopping:
    """Stop after `patience` epochs without `monitor` improving by more than `min_delta`; remember the best
    epoch's weights (on their device) so they can be restored (Keras' EarlyStopping)."""

    def __init__(self, patience: int, monitor: str = "val/loss", min_delta: float = 0.0) -> None:
        self.patience, self.monitor, self.min_delta = patience, monitor, min_delta
        self.sign = 1.0 if monitor.endswith("loss") else -1.0  # minimize losses, maximize accuracies
        self.best, self.best_epoch, self.bad_epochs = math.inf, 0, 0
        self.best_state: dict[str, Tensor] | None = None

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Record this epoch; True when training should stop."""
        value = self.sign * metrics[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience


def fit(
    model: nn.Module,
    data: Splits,
    optimizer: Optimizer,
    scheduler: Scheduler,
    tracker: Tracker,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    max_steps: int | None = None,
    eval_batch_size: int = 10000,
    log_every_n_steps: int = 50,
    layer_stats_enabled: bool = True,
    regularizer: Regularizer | None = None,
    early_stopping: EarlyStopping | None = None,
    restore_best: bool = True,
    checkpoint_path: Path | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
) -> FitResult:
    """Train `model` on `data.x_train` with softmax cross-entropy, validating after every epoch.

    Args:
        seed: seeds the generator that orders each epoch's batches (on the data's device).
        max_steps: stop after this many optimizer steps in total (the epoch in progress is still validated).
        regularizer: weight penalty, gradient clipping and max-norm around each step.
        early_stopping: stops on a stalled validation metric; with `restore_best`, the model ends with the best
            epoch's weights and the returned metrics are that epoch's.
        checkpoint_path: if set, model + optimizer + epoch are written there (atomically) after every epoch, so
            a crash or divergence leaves the last good epoch on disk.
        checkpoint_extra: stored alongside (e.g. the resolved config).

    Returns:
        The final (or restored best) epoch's train and validation metrics plus timing.
    """
    device = data.x_train.device
    reg = regularizer or Regularizer()
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / batch_size)
    order = torch.Generator(device=device).manual_seed(seed)
    step, seen, train_time = 0, 0, 0.0
    last_finite_loss = float("nan")
    history: list[dict[str, float]] = []
    stopped_early = False
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
            x, y = data.prep(data.x_train[idx]), data.y_train[idx]
            logging_step = (step + 1) % log_every_n_steps == 0
            if logging_step and layer_stats_enabled:
                with activation_stats(model) as act:
                    logits = model(x)
            else:
                logits = model(x)
            loss = F.cross_entropy(logits, y)
            penalty = reg.penalty(model)
            optimizer.zero_grad(set_to_none=True)
            (loss if penalty is None else loss + penalty).backward()
            reg.clip_(model)
            step += 1
            if logging_step and layer_stats_enabled:
                tracker.log_layer_stats(step, layer_stats(model) | act)
            optimizer.step()
            reg.constrain_(model)
            scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            epoch_seen += len(y)
            if logging_step:
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
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val, eval_batch_size, data.prep)
        scheduler.epoch_end(val_loss)
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
        if early_stopping is not None and early_stopping.update(epoch, metrics, model):
            stopped_early = True
            break
        if max_steps is not None and step >= max_steps:
            break

    final = history[-1]
    if early_stopping is not None and restore_best and early_stopping.best_state is not None:
        model.load_state_dict(early_stopping.best_state)
        final = history[early_stopping.best_epoch - 1]
    return FitResult(
        epochs=len(history),
        steps=step,
        train_loss=final["train/loss"],
        train_acc=final["train/acc"],
        val_loss=final["val/loss"],
        val_acc=final["val/acc"],
        train_time_s=train_time,
        train_samples=seen,
        best_epoch=int(final["epoch"]),
        stopped_early=stopped_early,
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
        "(model.init=xavier_uniform or he_normal), clip gradients (reg.clip_norm=1.0), or add model.norm=batch."
    )


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: Optimizer, epoch: int, step: int, extra: dict[str, Any]
) -> None:
    """Write the checkpoint to a temporary file and rename it over `path`, so a crash mid-write never
    leaves a corrupt checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step}
    torch.save(state | extra, tmp)
    os.replace(tmp, path)
