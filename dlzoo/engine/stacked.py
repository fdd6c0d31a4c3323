"""The training loop of `trainer.stack=K`: K models (seeds, or an ensemble's members) trained as one batched model
(dlzoo.models.stacked.StackedNet), with the per-member semantics of K separate `engine.loop.fit` calls:
- each member starts from the weights its standalone run builds, draws its own batch order and dropout masks from
  the streams that run would use, and its gradient is its own: the loss is the sum of the members' mean losses
  (plus each member's own reg.l1/l2 penalty), and Adam, SGD and their kin update element by element, so one
  optimizer over the stacked tensors is K optimizers;
- gradient clipping by norm and the max-norm constraint are computed per member;
- a member that diverges (a NaN, infinite or above-max_loss loss) or stops early is frozen where it was and
  reported; the others train on, and training ends when none is left;
- a stop request writes checkpoints/stack.pt (mid-epoch included), from which `trainer.resume` continues exactly."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from dlzoo.data.splits import Splits
from dlzoo.engine.checkpoint import save_best, save_checkpoint
from dlzoo.engine.evaluation import evaluate
from dlzoo.engine.stacked_parts import Member, Probe, Regularizer, StackIO, Sums, bad
from dlzoo.engine.state import FitResult, histogram_every, step_counts
from dlzoo.engine.stopping import EarlyStopping, Interrupted
from dlzoo.engine.tracking import Tracker
from dlzoo.models.stacked import StackedNet
from dlzoo.optim import build_optimizer, build_scheduler


def fit_stacked(
    members: list[nn.Module],
    generators: list[torch.Generator],
    seeds: list[int],
    trackers: list[Tracker],
    data: Splits,
    cfg: DictConfig,
    io: StackIO | None = None,
) -> list[FitResult]:
    """Train the K `members` (each already built, seeded and initialized as its standalone run builds it;
    `generators[k]` holds the global random stream that run would continue with) in one batched pass."""
    loop = _StackLoop(members, generators, seeds, trackers, data, cfg, io or StackIO())
    for epoch in range(loop.first_epoch, cfg.trainer.epochs + 1):
        sums = loop.train_epoch(epoch)
        if loop.end_epoch(epoch, sums):
            break
    return loop.results()


class _StackLoop:
    """The parts of one fit_stacked call and the phases of its epochs, as dlzoo.engine.loop._Loop has them."""

    def __init__(
        self,
        members: list[nn.Module],
        generators: list[torch.Generator],
        seeds: list[int],
        trackers: list[Tracker],
        data: Splits,
        cfg: DictConfig,
        io: StackIO,
    ) -> None:
        t, es = cfg.trainer, cfg.trainer.early_stop
        self.members, self.generators, self.data, self.cfg, self.io, self.t = members, generators, data, cfg, io, t
        self.device, self.n = data.x_train.device, len(data.y_train)
        self.steps_per_epoch, total = step_counts(self.n, t.batch_size, t.epochs, t.max_steps)
        nhwc = t.channels_last and any(isinstance(m, nn.Conv2d) for m in members[0].modules())  # as setup_model
        self.net = StackedNet(members, generators, nhwc)
        self.optimizer = build_optimizer(cfg.optim, self.net.parameters())
        self.scheduler = build_scheduler(cfg.sched, self.optimizer, self.steps_per_epoch, total)
        self.reg = Regularizer(cfg.reg, self.net)
        # Read once: a DictConfig lookup costs microseconds, and the step of a small model is well under a ms.
        histograms = histogram_every(t.histogram_every_n_steps, total)
        self.probing = (bool(t.layer_stats), int(t.log_every_n_steps), histograms)
        self.state = [Member(torch.Generator(device=self.device).manual_seed(s), tr,
                              EarlyStopping(es.patience, es.monitor, es.min_delta) if es.patience > 0 else None)
                      for s, tr in zip(seeds, trackers, strict=True)]  # fmt: skip
        self.step, self.train_time, self.samples, self.first_epoch = 0, 0.0, 0, 1
        self.partial: dict[str, Any] | None = None
        if io.resume is not None:
            self.restore(io.resume)

    def restore(self, r: dict[str, Any]) -> None:
        """Continue from a stack.pt: weights, optimizer, schedule, every member's streams and state."""
        self.net.load_state_dict(r["model"])
        self.optimizer.load_state_dict(r["optimizer"])
        self.scheduler.load_state_dict(r["scheduler"])
        for g, s in zip(self.generators, r["generators"], strict=True):
            g.set_state(s)
        for m, model, s in zip(self.state, self.members, r["members"], strict=True):
            m.load_state_dict(s, model)
        self.step, self.train_time, self.samples = r["step"], r["train_time"], r["samples"]
        self.first_epoch, self.partial = r["epoch"] + 1, r["partial"]

    def save(self, epoch_done: int, partial: dict[str, Any] | None = None) -> None:
        if self.io.checkpoint is None:
            return
        save_checkpoint(self.io.checkpoint, {
            "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "generators": [g.get_state() for g in self.generators],
            "members": [m.state_dict(model) for m, model in zip(self.state, self.members, strict=True)],
            "epoch": epoch_done, "step": self.step, "train_time": self.train_time, "samples": self.samples,
            "partial": partial,
        } | self.io.extra)  # fmt: skip

    def active(self) -> list[int]:
        return [k for k, m in enumerate(self.state) if m.active]

    def start_epoch(self, epoch: int) -> Sums:
        """Fresh batch orders (one per member, from its own generator) and zero sums, or the interrupted epoch's."""
        for k in self.active():
            self.state[k].tracker.on_epoch_start(epoch, self.steps_per_epoch)
        device, k_all = self.device, len(self.members)
        if self.partial is not None:
            p, self.partial = self.partial, None
            return Sums(p["perm"].to(device), p["next_batch"], p["loss_sum"].to(device), p["correct"].to(device),
                         p["seen"])  # fmt: skip
        perms = torch.stack([torch.randperm(self.n, generator=m.order, device=device) for m in self.state])
        return Sums(perms, 0, torch.zeros(k_all, device=device), torch.zeros(k_all, device=device, dtype=torch.long))

    def train_epoch(self, epoch: int) -> Sums:
        """The steps of one epoch; a stop request mid-epoch writes stack.pt and raises Interrupted."""
        data, bs, every, max_steps = self.data, self.t.batch_size, self.t.log_every_n_steps, self.t.max_steps
        sums = self.start_epoch(epoch)
        t0, seen0 = time.perf_counter(), sums.seen
        bar = self.state[0].tracker  # the live bar follows the first seed (stacked_run)
        for i in range(sums.start, self.steps_per_epoch):
            idx = sums.perms[:, i * bs : (i + 1) * bs]
            x = data.prep(data.x_train[idx.flatten()]).unflatten(0, idx.shape)
            y = data.y_train[idx]
            logits, losses = self.train_step(x, y)
            sums.loss += losses.detach() * idx.shape[1]
            sums.correct += (logits.detach().argmax(2) == y).sum(1)
            sums.seen += idx.shape[1]
            if self.step % every == 0:
                self.log_step(losses, (sums.seen - seen0) / max(time.perf_counter() - t0, 1e-9))
            if bar.progress_due():  # by the host's clock: the sums are read (a device sync) twice a second
                speed = (sums.seen - seen0) / max(time.perf_counter() - t0, 1e-9)
                bar.show_progress(self.step, (sums.loss[0] / max(sums.seen, 1)).item(), speed)
            if self.io.stop_requested and i + 1 < self.steps_per_epoch:
                self.train_time += time.perf_counter() - t0
                self.net.write_back(self.active())
                self.save(epoch - 1, sums.state_dict(i + 1))
                raise _interrupted(self.io)
            if max_steps is not None and self.step >= max_steps:
                break
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_time += time.perf_counter() - t0
        self.samples += sums.seen
        return sums

    def train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """One optimizer step of every member: forward, penalties, backward, clipping, probes, update,
        constraints, schedule. Returns the (K, B, classes) logits and the K mean losses."""
        probe = Probe(self.probing, self.step, self.members, self.state)
        with probe.recording():
            logits = self.net(x, probe=probe.on)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
        penalty = self.reg.penalty()
        self.optimizer.zero_grad(set_to_none=True)
        (losses.sum() if penalty is None else losses.sum() + penalty).backward()  # each member's own gradient
        self.reg.clip_()
        probe.log(self.net, self.step + 1)
        self.optimizer.step()
        self.reg.constrain_()
        self.scheduler.step()
        self.step += 1
        for m in self.state:
            m.steps = self.step if m.active else m.steps
        return logits, losses

    def log_step(self, losses: Tensor, samples_per_s: float) -> None:
        """The one host sync per logging interval: each active member's loss, checked for divergence."""
        for m, value in zip(self.state, losses.tolist(), strict=True):
            if m.active and bad(value, self.t.max_loss):
                m.diverged_at = self.step  # the others train on: their gradients never see this loss
            elif m.active:
                m.last_finite_loss = value
                m.tracker.log_step(self.step, value, self.scheduler.get_last_lr()[0], samples_per_s)

    def end_epoch(self, epoch: int, sums: Sums) -> bool:
        """Each active member's epoch (means, validation, early stopping, best checkpoints), then stack.pt;
        True when training is over (the last epoch, max_steps, or no member left)."""
        t, active = self.t, self.active()
        self.net.write_back(active)
        loss, acc = (sums.loss / sums.seen).tolist(), (sums.correct.double() / sums.seen).tolist()
        lr = self.scheduler.get_last_lr()[0]
        epoch_metrics = []
        for k in active:
            metrics = _end_epoch(self.state[k], self.members[k], self.data, self.cfg, epoch, self.step, loss[k],
                                 acc[k], lr)  # fmt: skip
            if metrics is not None:
                epoch_metrics.append(metrics)
                if self.io.best is not None:
                    save_best(self.io.best[k], self.members[k], epoch, metrics)
        finished = epoch == t.epochs or (t.max_steps is not None and self.step >= t.max_steps)
        finished = finished or not self.active()
        if finished or epoch % t.checkpoint.every == 0 or self.io.stop_requested:
            self.save(epoch)
        if self.io.on_epoch_end is not None and epoch_metrics:
            self.io.on_epoch_end(epoch, {key: sum(m[key] for m in epoch_metrics) / len(epoch_metrics)
                                         for key in epoch_metrics[0]})  # fmt: skip
        if self.io.stop_requested and not finished:
            raise _interrupted(self.io)
        return finished

    def results(self) -> list[FitResult]:
        restore = self.t.early_stop.restore_best
        return [_result(m, model, restore, self.train_time, self.samples)
                for m, model in zip(self.state, self.members, strict=True)]  # fmt: skip


def _interrupted(io: StackIO) -> Interrupted:
    assert io.stop is not None and io.stop.signum is not None
    return Interrupted(io.checkpoint, io.stop.signum)


def _end_epoch(
    m: Member, model: nn.Module, data: Splits, cfg: DictConfig, epoch: int, step: int, loss: float, acc: float,
    lr: float,
) -> dict[str, float] | None:  # fmt: skip
    """One active member's epoch: its train means (checked, as the standalone loop checks them), its validation,
    logged to its own run, and its early stopping."""
    if bad(loss, cfg.trainer.max_loss):
        m.diverged_at = step  # between logged steps a loss can explode unseen by the step check
        return None
    val_loss, val_acc = evaluate(model, data.x_val, data.y_val, cfg.trainer.eval_batch_size, data.prep)
    metrics = {"train/loss": loss, "train/acc": acc, "val/loss": val_loss, "val/acc": val_acc, "lr": lr}
    m.history.append({"epoch": epoch, **metrics})
    m.tracker.log_epoch(epoch, step, metrics)
    if m.early is not None and m.early.update(epoch, metrics, model):
        m.stopped = True
    return metrics


def _result(m: Member, model: nn.Module, restore_best: bool, train_time: float, seen: int) -> FitResult:
    """The member's final epoch, or its best one (and those weights) after early stopping; a member that diverged
    before its first epoch ended has NaN metrics."""
    nan = float("nan")
    final = m.history[-1] if m.history else {"epoch": 0, "train/loss": nan, "train/acc": nan, "val/loss": nan,
                                              "val/acc": nan}  # fmt: skip
    last = None
    if m.early is not None and restore_best and m.early.best_state is not None:
        last = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(m.early.best_state)
        final = m.history[m.early.best_epoch - 1]
    loss = nan if m.diverged_at is not None else final["train/loss"]
    return FitResult(epochs=len(m.history), steps=m.steps, train_loss=loss, train_acc=final["train/acc"],
                     val_loss=final["val/loss"], val_acc=final["val/acc"], train_time_s=train_time, train_samples=seen,
                     weights_epoch=int(final["epoch"]), stopped_early=m.stopped, history=m.history,
                     last_state=last)  # fmt: skip


def diverged(results: list[FitResult]) -> list[int]:
    """The members whose loss became NaN, infinite or exceeded trainer.max_loss (reported; the others stand)."""
    return [k for k, r in enumerate(results) if not math.isfinite(r.train_loss)]
