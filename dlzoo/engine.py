"""The one training loop, with mixed precision, exact resume and the stops of dlzoo.stopping (early stopping,
divergence, stop requests). Data stays on the device as whole tensors; batches are drawn by index and the loop
reads values back to the host only at logging intervals."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from dlzoo.checkpoint import Checkpointing, rng_state, save_best, save_checkpoint, set_rng_state
from dlzoo.compiled import compile_forward
from dlzoo.data import Splits
from dlzoo.distributed import Dist
from dlzoo.errors import DlzooError
from dlzoo.optim import Scheduler
from dlzoo.probes import activation_stats, layer_stats
from dlzoo.regularize import Regularizer
from dlzoo.stopping import EarlyStopping, Interrupted, StopFlag, diverged_error

# Mixed precision for the training step. The weights, the optimizer and evaluation stay fp32.
PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Tracker(Protocol):
    """What the loop reports to (dlzoo.tracking.RunTracker; tests may pass a stub)."""

    def on_epoch_start(self, epoch: int, steps: int) -> None: ...
    def log_step(self, step: int, loss: float, lr: float, samples_per_s: float) -> None: ...
    def log_layer_stats(self, step: int, stats: dict[str, float]) -> None: ...
    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None: ...


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
    weights_epoch: int  # the epoch whose weights the model ends with (the best one after restore_best)
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    compile_time_s: float = 0.0  # torch.compile's first (compiling) step, outside train_time_s


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
    checkpointing: Checkpointing | None = None,
    resume: dict[str, Any] | None = None,
    stop: StopFlag | None = None,
    max_loss: float | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    precision: str = "fp32",
    dist: Dist | None = None,
    compile_mode: str | None = None,
    warn: Callable[[str], None] = print,
) -> FitResult:
    """Train `model` on `data.x_train` with softmax cross-entropy, validating after every epoch.

    Args:
        seed: seeds the generator that orders each epoch's batches (on the data's device).
        max_steps: stop after this many optimizer steps in total (the epoch in progress is still validated).
        regularizer: weight penalty, gradient clipping and max-norm around each step.
        early_stopping: stops on a stalled validation metric; with `restore_best`, the model ends with the best
            epoch's weights and the returned metrics are that epoch's.
        checkpointing: writes last.pt (everything needed to resume) and the top-k best weights. Files are
            replaced atomically, so a crash or divergence leaves the last good checkpoint on disk.
        resume: a checkpoint dict from last.pt: training continues exactly where it stopped (on CPU the result
            is bit-identical to an uninterrupted run), mid-epoch included.
        stop: checked after every step; when set, last.pt is written and Interrupted raised.
        max_loss: a logged loss above this counts as divergence too (an exploded run is as useless as a NaN one).
        on_epoch_end: called with (epoch, metrics) after each epoch is validated, logged and checkpointed; the
            caller's way in (a search pruning a trial by raising, a schedule of frozen layers).
        precision: fp32, or bf16/fp16 autocast for the forward pass and loss (fp16 adds dynamic loss scaling,
            because its gradients underflow; bf16 has fp32's exponent range and needs none).
        dist: this process's rank in data-parallel training: each rank trains on its shard of every global batch
            of `batch_size` through DDP, and the epoch's metrics are summed over ranks (default: one process).
        compile_mode: a torch.compile mode for the training forward (None: eager). Steps that record layer
            statistics run eagerly, because their forward hooks would break the compiled graph.
        warn: where a non-fatal problem is reported (a compile that fell back to eager).

    Returns:
        The final (or restored best) epoch's train and validation metrics plus timing.
    """
    device = data.x_train.device
    reg = regularizer or Regularizer()
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / batch_size)
    order = torch.Generator(device=device).manual_seed(seed)
    step, seen, train_time, first_epoch = 0, 0, 0.0, 1
    last_finite_loss = float("nan")
    history: list[dict[str, float]] = []
    partial: dict[str, Any] | None = None
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        step, seen, train_time = resume["step"], resume["seen"], resume["train_time"]
        history = list(resume["history"])
        first_epoch = resume["epoch"] + 1
        partial = resume.get("partial_epoch")
        if early_stopping is not None and resume.get("early_stopping"):
            early_stopping.load_state_dict(resume["early_stopping"])
        set_rng_state(resume["rng"], order)
    # Disabled for fp32/bf16, where scale() and step() pass straight through.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if resume is not None and resume.get("scaler"):
        scaler.load_state_dict(resume["scaler"])
    stopped_early = False
    dist = dist or Dist()
    forward = dist.wrap(model)  # DDP averages the gradients across ranks during backward
    model.train()

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, _AUTOCAST.get(precision), enabled=precision != "fp32")

    fast_forward, compile_time = forward, 0.0
    if compile_mode is not None and n > 0:
        probe_idx = dist.shard(torch.arange(min(batch_size, n), device=device))

        def probe(fn: Callable[[Tensor], Tensor]) -> Tensor:
            with autocast():
                return dist.loss(fn(data.prep(data.x_train[probe_idx])), data.y_train[probe_idx], min(batch_size, n))

        t_compile = time.perf_counter()
        fast_forward = compile_forward(forward, compile_mode, probe, warn)
        compile_time = time.perf_counter() - t_compile

    def save(epoch_done: int, partial_epoch: dict[str, Any] | None = None) -> None:
        if checkpointing is None:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch_done,
            "step": step,
            "seen": seen,
            "train_time": train_time,
            "history": history,
            "rng": rng_state(order),
            "early_stopping": early_stopping.state_dict() if early_stopping is not None else None,
            "partial_epoch": partial_epoch,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        }
        save_checkpoint(checkpointing.last, state | checkpointing.extra)

    for epoch in range(first_epoch, epochs + 1):
        tracker.on_epoch_start(epoch, steps_per_epoch)
        if partial is not None:  # resuming mid-epoch: the same permutation, from the same batch on
            perm, start = partial["perm"].to(device), partial["next_batch"]
            loss_sum, correct = partial["loss_sum"].to(device), partial["correct"].to(device)
            epoch_seen, partial = partial["epoch_seen"], None
        else:
            perm, start = torch.randperm(n, generator=order, device=device), 0
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            epoch_seen = 0
        t0 = time.perf_counter()
        for i in range(start, steps_per_epoch):
            batch = perm[i * batch_size : (i + 1) * batch_size]
            idx = dist.shard(batch)
            x, y = data.prep(data.x_train[idx]), data.y_train[idx]
            logging_step = (step + 1) % log_every_n_steps == 0
            with autocast():
                if logging_step and layer_stats_enabled:
                    with activation_stats(model) as act:
                        logits = forward(x)
                else:
                    logits = fast_forward(x)
                loss = dist.loss(logits, y, len(batch))
            penalty = reg.penalty(model)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss if penalty is None else loss + penalty).backward()
            scaler.unscale_(optimizer)  # clipping and the logged gradient norms need the true gradients
            reg.clip_(model)
            step += 1
            if logging_step and layer_stats_enabled:
                tracker.log_layer_stats(step, layer_stats(model) | act)
            scaler.step(optimizer)
            scaler.update()
            reg.constrain_(model)
            scheduler.step()
            loss_sum += loss.detach() * (len(batch) / dist.world)  # this rank's share of the batch's loss sum
            correct += (logits.detach().argmax(1) == y).sum()
            epoch_seen += len(y)
            if logging_step:
                value = dist.mean(loss.item())  # the one host sync per logging interval
                if not math.isfinite(value) or (max_loss is not None and value > max_loss):
                    raise diverged_error(step, last_finite_loss, checkpointing, value, max_loss)
                last_finite_loss = value
                elapsed = time.perf_counter() - t0
                tracker.log_step(step, value, scheduler.get_last_lr()[0], dist.world * epoch_seen / max(elapsed, 1e-9))
            if stop is not None and stop.signum is not None and i + 1 < steps_per_epoch:
                train_time += time.perf_counter() - t0
                # `seen` counts finished epochs; the partial one's count travels in its own state.
                state = {"perm": perm.cpu(), "next_batch": i + 1, "loss_sum": loss_sum.cpu(),
                         "correct": correct.cpu(), "epoch_seen": epoch_seen}  # fmt: skip
                save(epoch - 1, state)
                raise Interrupted(checkpointing.last if checkpointing else None, stop.signum)
            if max_steps is not None and step >= max_steps:
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time += time.perf_counter() - t0
        loss_total, correct_total, epoch_seen = dist.sum(loss_sum.item(), correct.item(), epoch_seen)
        seen += epoch_seen

        train_loss, train_acc = loss_total / epoch_seen, correct_total / epoch_seen
        # The epoch mean too: between logged steps a loss can explode (and settle) unseen by the check above.
        if not math.isfinite(train_loss) or (max_loss is not None and train_loss > max_loss):
            raise diverged_error(step, last_finite_loss, checkpointing, train_loss, max_loss, "epoch mean loss")
        val_loss, val_acc = dist.evaluate(model, data.x_val, data.y_val, eval_batch_size, data.prep)
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
        finished = epoch == epochs or (max_steps is not None and step >= max_steps)
        if early_stopping is not None and early_stopping.update(epoch, metrics, model):
            stopped_early = finished = True
        if checkpointing is not None:
            save_best(checkpointing, model, epoch, metrics)
            if finished or epoch % checkpointing.every == 0 or (stop is not None and stop.signum is not None):
                save(epoch)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
        if stop is not None and stop.signum is not None and not finished:
            raise Interrupted(checkpointing.last if checkpointing else None, stop.signum)
        if finished:
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
        weights_epoch=int(final["epoch"]),
        stopped_early=stopped_early,
        history=history,
        compile_time_s=compile_time,
    )
