"""The one training loop, with mixed precision, exact resume and the stops of dlzoo.engine.training.stopping (early
stopping, divergence, stop requests). Data stays on the device as whole tensors; batches are drawn by index and
the loop reads values back to the host only at logging intervals.

`fit` reads top to bottom: restore, then per epoch train_epoch (the step), end_epoch (means, divergence,
validation, schedule) and after_epoch (early stopping, checkpoints, the caller's hook). The same loop trains a stack
of K members (`trainer.stack`: a dlzoo.models.stacked.StackedNet with FitOptions.members), where every tensor of the
step carries the members along dim 0 and each member keeps its standalone run's batch order, divergence check,
validation, early stopping and checkpoints; a member that diverges or stops early is frozen, the others go on."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from dlzoo.config.schema import PRECISIONS  # noqa: F401  (re-exported: the precisions fit accepts)
from dlzoo.console import console
from dlzoo.data.splits import Splits
from dlzoo.engine.recording.tracking import Tracker
from dlzoo.engine.training.checkpoint import rng_state, save_best, save_checkpoint, set_rng_state
from dlzoo.engine.training.compiled import compile_forward
from dlzoo.engine.training.evaluation import evaluate
from dlzoo.engine.training.probes import activation_stats, layer_stats, layer_tensors
from dlzoo.engine.training.state import EpochSums, FitOptions, FitResult, MemberState, TrainState
from dlzoo.engine.training.stopping import Interrupted, diverged_error
from dlzoo.errors import DlzooError
from dlzoo.models.stacked import StackedNet
from dlzoo.optim.schedules import Scheduler

# Mixed precision for the training step. The weights, the optimizer and evaluation stay fp32.
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    model: nn.Module | StackedNet,
    data: Splits,
    optimizer: Optimizer,
    scheduler: Scheduler,
    tracker: Tracker,
    opts: FitOptions,
    resume: dict[str, Any] | None = None,
) -> FitResult | list[FitResult]:
    """Train `model` on `data.x_train` with softmax cross-entropy, validating after every epoch.

    `resume` is a checkpoint dict from last.pt (a stack's: stack.pt): training continues exactly where it stopped
    (on CPU the result is bit-identical to an uninterrupted run), mid-epoch included. Returns the final (or
    restored best) epoch's train and validation metrics plus timing: a FitResult, or a stack's list of them."""
    loop = _Loop(model, data, optimizer, scheduler, tracker, opts)
    state = loop.restore(resume)
    loop.prepare()
    for epoch in range(state.first_epoch, opts.epochs + 1):
        sums = loop.train_epoch(state, epoch)
        if opts.stop is not None and (epoch == opts.epochs or loop.out_of_steps(state)):
            opts.stop.training_done()  # a stop request from here on has nothing left to stop
        metrics = loop.end_epoch(state, epoch, sums)
        if loop.after_epoch(state, epoch, metrics):
            break
    return loop.result(state)


class _Loop:
    """The parts of one `fit` call and the phases of its epochs."""

    def __init__(
        self,
        model: nn.Module,
        data: Splits,
        optimizer: Optimizer,
        scheduler: Scheduler,
        tracker: Tracker,
        opts: FitOptions,
    ) -> None:
        self.model, self.data, self.optimizer, self.scheduler = model, data, optimizer, scheduler
        self.tracker, self.opts, self.dist = tracker, opts, opts.dist
        self.members = opts.members  # None: one model
        if self.members is not None:
            self.tracker = self.members[0].tracker  # the live bar follows the first member
        self.device = data.x_train.device
        self.n = len(data.y_train)
        self.steps_per_epoch = math.ceil(self.n / opts.batch_size)
        # Disabled for fp32/bf16, where scale() and step() pass straight through.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=opts.precision == "fp16")
        self.compile_time = 0.0

    # --- before the first epoch ------------------------------------------------------------------------------
    def restore(self, resume: dict[str, Any] | None) -> TrainState:
        """A fresh state, or the one last.pt saved (weights, optimizer, schedule, RNG streams, sums)."""
        state = TrainState(order=torch.Generator(device=self.device).manual_seed(self.opts.seed))
        if resume is None:
            return state
        if self.members is not None:
            return self.restore_stack(state, resume)
        self.model.load_state_dict(resume["model"])
        self.optimizer.load_state_dict(resume["optimizer"])
        self.scheduler.load_state_dict(resume["scheduler"])
        state.step, state.seen, state.train_time = resume["step"], resume["seen"], resume["train_time"]
        state.history = list(resume["history"])
        state.first_epoch = resume["epoch"] + 1
        state.partial = resume.get("partial_epoch")
        es = self.opts.early_stopping
        if es is not None and resume.get("early_stopping"):
            es.load_state_dict(resume["early_stopping"])
        set_rng_state(resume["rng"], state.order)
        if resume.get("scaler"):
            self.scaler.load_state_dict(resume["scaler"])
        return state

    def restore_stack(self, state: TrainState, r: dict[str, Any]) -> TrainState:
        """A stack.pt: the stacked tensors, optimizer, schedule, every member's streams and state."""
        net = self.model
        assert isinstance(net, StackedNet) and self.members is not None
        net.load_state_dict(r["model"])
        self.optimizer.load_state_dict(r["optimizer"])
        self.scheduler.load_state_dict(r["scheduler"])
        for g, saved in zip(net.generators, r["generators"], strict=True):
            g.set_state(saved)
        for m, model, saved in zip(self.members, net.members, r["members"], strict=True):
            m.load_state_dict(saved, model)
        state.step, state.seen, state.train_time = r["step"], r["seen"], r["train_time"]
        state.first_epoch, state.partial = r["epoch"] + 1, r["partial"]
        return state

    def prepare(self) -> None:
        """Wrap the model for DDP and, when asked, compile its training forward (timed apart from training)."""
        if self.members is not None:  # config validation refuses DDP and compile for a stack
            self.forward = self.fast_forward = self.model
            return
        self.forward = self.dist.wrap(self.model)  # DDP averages the gradients across ranks during backward
        self.model.train()
        self.fast_forward = self.forward
        if self.opts.compile_mode is None or self.n == 0:
            return
        bs, data = min(self.opts.batch_size, self.n), self.data
        probe_idx = self.dist.shard(torch.arange(bs, device=self.device))

        def probe(fn: Callable[[Tensor], Tensor]) -> Tensor:
            with self.autocast():
                return self.dist.loss(fn(data.prep(data.x_train[probe_idx])), data.y_train[probe_idx], bs)

        t0 = time.perf_counter()
        self.fast_forward = compile_forward(self.forward, self.opts.compile_mode, probe, self.opts.warn)
        self.compile_time = time.perf_counter() - t0

    def autocast(self) -> torch.autocast:
        p = self.opts.precision
        return torch.autocast(self.device.type, _AUTOCAST.get(p), enabled=p != "fp32")

    # --- one epoch -------------------------------------------------------------------------------------------
    def start_epoch(self, state: TrainState) -> EpochSums:
        """A new batch order and zero sums, or, resuming mid-epoch, the same order from the same batch on."""
        if state.partial is not None:
            p, state.partial = state.partial, None
            return EpochSums(p["perm"].to(self.device), p["next_batch"], p["loss_sum"].to(self.device),
                             p["correct"].to(self.device), p["epoch_seen"])  # fmt: skip
        if self.members is None:
            perm, k = torch.randperm(self.n, generator=state.order, device=self.device), ()
        else:  # one order per member, from its own generator: (K, n)
            perm = torch.stack([torch.randperm(self.n, generator=m.order, device=self.device) for m in self.members])
            k = (len(self.members),)
        zeros = torch.zeros(k, device=self.device)
        return EpochSums(perm, 0, zeros, torch.zeros(k, device=self.device, dtype=torch.long))

    def train_epoch(self, state: TrainState, epoch: int) -> EpochSums:
        """The steps of one epoch; a stop request mid-epoch writes last.pt and raises Interrupted."""
        opts, dist, data = self.opts, self.dist, self.data
        for tracker in self.trackers():
            tracker.on_epoch_start(epoch, self.steps_per_epoch)
        sums = self.start_epoch(state)
        t0, seen0 = time.perf_counter(), sums.seen  # the speed of this process's steps (a resumed epoch's too)
        for i in range(sums.start, self.steps_per_epoch):
            batch = sums.perm[..., i * opts.batch_size : (i + 1) * opts.batch_size]  # a stack's: (K, B)
            idx = dist.shard(batch)
            x, y = data.prep(data.x_train[idx]), data.y_train[idx]
            logging_step = (state.step + 1) % opts.log_every_n_steps == 0
            logits, loss = self.step(state, x, y, batch.shape[-1], *self.probes(state, logging_step))
            sums.loss_sum += loss.detach() * (batch.shape[-1] / dist.world)  # this rank's share of the loss sum
            sums.correct += (logits.detach().argmax(-1) == y).sum(-1)
            sums.seen += y.shape[-1]
            if logging_step:
                self.log_step(state, loss, (sums.seen - seen0) / max(time.perf_counter() - t0, 1e-9))
            if self.tracker.progress_due():  # by the host's clock: the sums are read (a device sync) twice a second
                speed = self.dist.world * (sums.seen - seen0) / max(time.perf_counter() - t0, 1e-9)
                shown = sums.loss_sum if self.members is None else sums.loss_sum[0]
                self.tracker.show_progress(state.step, shown.item() / max(sums.seen, 1), speed)
            if opts.stop_requested and i + 1 < self.steps_per_epoch:
                state.train_time += time.perf_counter() - t0
                self.write_back()
                # `seen` counts finished epochs; the partial one's count travels in its own state.
                partial = {"perm": sums.perm.cpu(), "next_batch": i + 1, "loss_sum": sums.loss_sum.cpu(),
                           "correct": sums.correct.cpu(), "epoch_seen": sums.seen}  # fmt: skip
                self.save(state, epoch - 1, partial)
                raise self.interrupted()
            if self.out_of_steps(state):
                break
        self.write_back()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        state.train_time += time.perf_counter() - t0
        return sums

    def probes(self, state: TrainState, logging_step: bool) -> tuple[bool, bool]:
        """(record layer statistics, record histograms) for the step about to run: both from the very first step,
        so the dashboards show the net as initialized, then at their intervals."""
        opts, first = self.opts, state.step == 0
        every = opts.histogram_every_n_steps
        histograms = opts.layer_stats and every > 0 and (first or (state.step + 1) % every == 0)
        return opts.layer_stats and (first or logging_step or histograms), histograms

    def step(
        self, state: TrainState, x: Tensor, y: Tensor, global_batch: int, stats: bool, histograms: bool
    ) -> tuple[Tensor, Tensor]:
        """One optimizer step: forward (eager with activation hooks when `stats`), penalty, backward, clipping,
        update, constraints, schedule. Returns the logits and the data loss (a stack's: (K, B, classes) logits
        and the K members' mean losses, whose sum gives each member its own gradient)."""
        model, reg = self.model, self.opts.regularizer
        outputs: dict[str, Tensor] | None = {} if histograms else None
        with self.autocast():
            if stats:
                logits, act = self.probed_forward(x, outputs)
            else:
                logits = self.fast_forward(x)
            loss = self.dist.loss(logits, y, global_batch) if self.members is None else \
                F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)  # fmt: skip
        penalty = reg.penalty(model)
        total = loss if self.members is None else loss.sum()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total if penalty is None else total + penalty).backward()
        self.scaler.unscale_(self.optimizer)  # clipping and the logged gradient norms need the true gradients
        reg.clip_(model)
        state.step += 1
        if stats:
            self.log_probes(state, loss, act, outputs)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        reg.constrain_(model)
        self.scheduler.step()
        if self.members is not None:
            for m in self.members:
                m.steps = state.step if m.active else m.steps
        return logits, loss

    def probed_forward(self, x: Tensor, outputs: dict[str, Tensor] | None) -> tuple[Tensor, Any]:
        """The forward with each activation layer's statistics recorded (and its outputs kept, for histograms);
        a stack's members run one by one here, each recorded as its standalone run records it."""
        if self.members is None:
            with activation_stats(self.model, outputs) as act:
                logits = self.forward(x)
            return logits, act
        net = self.model
        assert isinstance(net, StackedNet)
        acts: list[dict[str, float]] = []
        kept: list[dict[str, Tensor] | None] = [None if outputs is None else {} for _ in self.members]

        @contextmanager
        def member(k: int) -> Iterator[None]:
            with activation_stats(net.base, kept[k]) as act:
                yield
            acts.append(act)

        return net(x, member), (acts, kept)

    def log_probes(self, state: TrainState, loss: Tensor, act: Any, outputs: dict[str, Tensor] | None) -> None:
        """After backward and clipping, before the update: the layers' weights, gradients and activations (each
        active member's, into its own run)."""
        if self.members is None:
            self.tracker.log_layer_stats(state.step, layer_stats(self.model) | act)
            if outputs is not None:
                # A histogram of NaN/inf has no bins: the step says why (divergence) before the histogram would fail.
                if not math.isfinite(value := loss.item()):
                    raise diverged_error(state.step, state.last_finite_loss, self.opts.checkpointing, value, None)
                self.tracker.log_histograms(state.step, layer_tensors(self.model, outputs))
            return
        net, (acts, kept) = self.model, act
        assert isinstance(net, StackedNet)
        for k, (m, model) in enumerate(zip(self.members, net.members, strict=True)):
            if not m.active:
                continue
            net.write_back([k])
            net.write_grads(k)
            m.tracker.log_layer_stats(state.step, layer_stats(model) | acts[k])
            if kept[k] is not None:
                m.tracker.log_histograms(state.step, layer_tensors(model, kept[k]))
            model.zero_grad(set_to_none=True)

    def log_step(self, state: TrainState, loss: Tensor, samples_per_s: float) -> None:
        """The one host sync per logging interval: check the loss for divergence, then report it. A stack's
        member whose loss went bad is frozen; the others train on (their gradients never see its loss)."""
        if self.members is not None:
            for m, value in zip(self.members, loss.tolist(), strict=True):
                if m.active and _bad(value, self.opts.max_loss):
                    m.diverged_at = state.step
                elif m.active:
                    m.last_finite_loss = value
                    m.tracker.log_step(state.step, value, self.scheduler.get_last_lr()[0], samples_per_s)
            return
        value = self.dist.mean(loss.item())
        max_loss = self.opts.max_loss
        if not math.isfinite(value) or (max_loss is not None and value > max_loss):
            raise diverged_error(state.step, state.last_finite_loss, self.opts.checkpointing, value, max_loss)
        state.last_finite_loss = value
        self.tracker.log_step(state.step, value, self.scheduler.get_last_lr()[0], self.dist.world * samples_per_s)

    def end_epoch(self, state: TrainState, epoch: int, sums: EpochSums) -> dict[str, float] | None:
        """The epoch's train means (checked for divergence), validation, the schedule's epoch step; logged. A
        stack's: each active member's epoch, and their mean (None when none was left to validate)."""
        if self.members is not None:
            return self.end_stack_epoch(state, epoch, sums)
        loss_total, correct_total, epoch_seen = self.dist.sum(sums.loss_sum.item(), sums.correct.item(), sums.seen)
        state.seen += epoch_seen
        train_loss, train_acc = loss_total / epoch_seen, correct_total / epoch_seen
        # The epoch mean too: between logged steps a loss can explode (and settle) unseen by log_step's check.
        max_loss = self.opts.max_loss
        if not math.isfinite(train_loss) or (max_loss is not None and train_loss > max_loss):
            raise diverged_error(state.step, state.last_finite_loss, self.opts.checkpointing, train_loss, max_loss,
                                 "epoch mean loss")  # fmt: skip
        data = self.data
        val_loss, val_acc = self.dist.evaluate(self.model, data.x_val, data.y_val, self.opts.eval_batch_size, data.prep)
        self.scheduler.epoch_end(val_loss)
        metrics = {
            "train/loss": train_loss,
            "train/acc": train_acc,
            "val/loss": val_loss,
            "val/acc": val_acc,
            "lr": self.scheduler.get_last_lr()[0],
        }
        state.history.append({"epoch": epoch, **metrics})
        self.tracker.log_epoch(epoch, state.step, metrics)
        return metrics

    def end_stack_epoch(self, state: TrainState, epoch: int, sums: EpochSums) -> dict[str, float] | None:
        """Each active member's epoch as its standalone run has it: train means (checked), validation, logged to
        its own run, early stopping and best checkpoints; returns the members' mean of each metric."""
        assert self.members is not None and isinstance(self.model, StackedNet)
        state.seen += sums.seen
        loss, acc = (sums.loss_sum / sums.seen).tolist(), (sums.correct.double() / sums.seen).tolist()
        lr, opts, data = self.scheduler.get_last_lr()[0], self.opts, self.data
        done = []
        for k, (m, model) in enumerate(zip(self.members, self.model.members, strict=True)):
            if not m.active:
                continue
            if _bad(loss[k], opts.max_loss):
                m.diverged_at = state.step  # between logged steps a loss can explode unseen by the step check
                continue
            val_loss, val_acc = evaluate(model, data.x_val, data.y_val, opts.eval_batch_size, data.prep)
            metrics = {"train/loss": loss[k], "train/acc": acc[k], "val/loss": val_loss, "val/acc": val_acc, "lr": lr}
            m.history.append({"epoch": epoch, **metrics})
            m.tracker.log_epoch(epoch, state.step, metrics)
            if m.early is not None and m.early.update(epoch, metrics, model):
                m.stopped = True
            if m.best is not None:
                save_best(m.best, model, epoch, metrics)
            done.append(metrics)
        return {key: sum(m[key] for m in done) / len(done) for key in done[0]} if done else None

    def after_epoch(self, state: TrainState, epoch: int, metrics: dict[str, float] | None) -> bool:
        """Early stopping, checkpoints, the caller's hook and stop requests; True when training is over."""
        opts = self.opts
        finished = epoch == opts.epochs or self.out_of_steps(state)
        if self.members is not None:
            finished = finished or not any(m.active for m in self.members)
        elif opts.early_stopping is not None and opts.early_stopping.update(epoch, metrics, self.model):
            state.stopped_early = finished = True
        ck = opts.checkpointing
        if ck is not None:
            if self.members is None:
                save_best(ck, self.model, epoch, metrics)  # type: ignore[arg-type]
            if finished or epoch % ck.every == 0 or opts.stop_requested:
                self.save(state, epoch)
        if opts.on_epoch_end is not None and metrics is not None:
            opts.on_epoch_end(epoch, metrics)
        if opts.stop_requested and not finished:
            raise self.interrupted()
        if opts.stop_requested and opts.stop.promised:  # type: ignore[union-attr]
            console.print("the stop request came with the last training step: the run tests and finishes instead "
                          "(Ctrl-C again to quit now)")  # fmt: skip
        return finished

    def out_of_steps(self, state: TrainState) -> bool:
        return self.opts.max_steps is not None and state.step >= self.opts.max_steps

    # --- checkpoints and the end ----------------------------------------------------------------------------
    def save(self, state: TrainState, epoch_done: int, partial_epoch: dict[str, Any] | None = None) -> None:
        ck = self.opts.checkpointing
        if ck is None:
            return
        if self.members is not None:
            net = self.model
            assert isinstance(net, StackedNet)
            save_checkpoint(ck.last, {
                "model": net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "generators": [g.get_state() for g in net.generators],
                "members": [m.state_dict(model) for m, model in zip(self.members, net.members, strict=True)],
                "epoch": epoch_done, "step": state.step, "seen": state.seen, "train_time": state.train_time,
                "partial": partial_epoch,
            } | ck.extra)  # fmt: skip
            return
        es = self.opts.early_stopping
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch_done,
            "step": state.step,
            "seen": state.seen,
            "train_time": state.train_time,
            "history": state.history,
            "rng": rng_state(state.order),
            "early_stopping": es.state_dict() if es is not None else None,
            "partial_epoch": partial_epoch,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }
        save_checkpoint(ck.last, payload | ck.extra)

    def trackers(self) -> list[Tracker]:
        return [self.tracker] if self.members is None else [m.tracker for m in self.members if m.active]

    def write_back(self) -> None:
        """A stack's active members' weights into their modules (to validate, probe or checkpoint them)."""
        if self.members is not None:
            self.model.write_back([k for k, m in enumerate(self.members) if m.active])  # type: ignore[union-attr]

    def interrupted(self) -> Interrupted:
        ck, stop = self.opts.checkpointing, self.opts.stop
        assert stop is not None and stop.signum is not None
        return Interrupted(ck.last if ck else None, stop.signum)

    def result(self, state: TrainState) -> FitResult | list[FitResult]:
        """The final epoch's metrics, or the best epoch's (and its weights) after early stopping; a stack's for
        each member."""
        if self.members is not None:
            assert isinstance(self.model, StackedNet)
            return [_member_result(m, model, self.opts.restore_best, state)
                    for m, model in zip(self.members, self.model.members, strict=True)]  # fmt: skip
        final = state.history[-1]
        es = self.opts.early_stopping
        if es is not None and self.opts.restore_best and es.best_state is not None:
            self.model.load_state_dict(es.best_state)
            final = state.history[es.best_epoch - 1]
        return FitResult(
            epochs=len(state.history),
            steps=state.step,
            train_loss=final["train/loss"],
            train_acc=final["train/acc"],
            val_loss=final["val/loss"],
            val_acc=final["val/acc"],
            train_time_s=state.train_time,
            train_samples=state.seen,
            weights_epoch=int(final["epoch"]),
            stopped_early=state.stopped_early,
            history=state.history,
            compile_time_s=self.compile_time,
        )


def _bad(value: float, max_loss: float | None) -> bool:
    return not math.isfinite(value) or (max_loss is not None and value > max_loss)


def _member_result(m: MemberState, model: nn.Module, restore_best: bool, state: TrainState) -> FitResult:
    """A stacked member's final epoch, or its best one (and those weights) after early stopping; a member that
    diverged before its first epoch ended has NaN metrics."""
    nan = float("nan")
    final = m.history[-1] if m.history else {"epoch": 0, "train/loss": nan, "train/acc": nan, "val/loss": nan,
                                              "val/acc": nan}  # fmt: skip
    last = None
    if m.early is not None and restore_best and m.early.best_state is not None:
        last = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(m.early.best_state)
        final = m.history[m.early.best_epoch - 1]
    return FitResult(epochs=len(m.history), steps=m.steps, train_loss=nan if m.diverged_at is not None else
                     final["train/loss"], train_acc=final["train/acc"], val_loss=final["val/loss"],
                     val_acc=final["val/acc"], train_time_s=state.train_time, train_samples=state.seen,
                     weights_epoch=int(final["epoch"]), stopped_early=m.stopped, history=m.history,
                     last_state=last)  # fmt: skip
