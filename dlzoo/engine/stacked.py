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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from dlzoo.data.splits import Splits
from dlzoo.engine.checkpoint import Checkpointing, save_best, save_checkpoint
from dlzoo.engine.evaluation import evaluate
from dlzoo.engine.probes import activation_stats, layer_stats, layer_tensors
from dlzoo.engine.state import FitResult, step_counts
from dlzoo.engine.stopping import EarlyStopping, Interrupted, StopFlag
from dlzoo.engine.tracking import Tracker
from dlzoo.models.stacked import StackedNet
from dlzoo.optim import build_optimizer, build_scheduler


@dataclass
class _Member:
    order: torch.Generator  # the batch order, seeded as the standalone run's
    tracker: Tracker
    early: EarlyStopping | None
    history: list[dict[str, float]] = field(default_factory=list)
    diverged_at: int | None = None  # the step its loss went bad: from there on it is frozen and not plotted
    stopped: bool = False  # early stopping ended its training
    steps: int = 0  # its own last step (a frozen member's is earlier than the others')
    last_finite_loss: float = float("nan")

    @property
    def active(self) -> bool:
        return self.diverged_at is None and not self.stopped

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        return {"order": self.order.get_state(), "history": self.history, "diverged_at": self.diverged_at,
                "stopped": self.stopped, "steps": self.steps, "last_finite_loss": self.last_finite_loss,
                "early": self.early.state_dict() if self.early is not None else None,
                "frozen": None if self.active else model.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.order.set_state(state["order"])
        self.history = list(state["history"])
        self.diverged_at, self.stopped, self.steps = state["diverged_at"], state["stopped"], state["steps"]
        self.last_finite_loss = state["last_finite_loss"]
        if self.early is not None and state["early"] is not None:
            self.early.load_state_dict(state["early"])
        if state["frozen"] is not None:
            model.load_state_dict(state["frozen"])


@dataclass
class StackIO:
    """Where a stacked fit checkpoints, what it resumes from, and the stop flag it watches."""

    checkpoint: Path | None = None  # checkpoints/stack.pt
    resume: dict[str, Any] | None = None  # a stack.pt's contents
    stop: StopFlag | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # saved beside the state (the config)
    best: list[Checkpointing] | None = None  # each member's best-epoch checkpoints (trainer.checkpoint.top_k)

    @property
    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.signum is not None


class _Regularizer:
    """reg.* on the stacked tensors, member by member (dlzoo.optim.regularize's rules on each member's slice)."""

    def __init__(self, reg: DictConfig, net: StackedNet) -> None:
        self.reg, self.net = reg, net

    def penalty(self) -> Tensor | None:
        r = self.reg
        if not (r.l1 or r.l2):
            return None
        weights = [w for w, _ in self.net.weights()]
        total = sum(w.abs().sum() for w in weights) * r.l1 if r.l1 else 0.0
        return total + (sum(w.pow(2).sum() for w in weights) * r.l2 if r.l2 else 0.0)  # type: ignore[return-value]

    @torch.no_grad()
    def clip_(self) -> None:
        r, params = self.reg, [p for p in self.net.parameters() if p.grad is not None]
        if r.clip_value is not None:
            for p in params:
                p.grad.clamp_(-r.clip_value, r.clip_value)  # type: ignore[union-attr]
        if r.clip_norm is not None:  # each member's global norm over its own gradients (clip_grad_norm_)
            norm = torch.stack([p.grad.flatten(1).pow(2).sum(1) for p in params]).sum(0).sqrt()  # type: ignore[union-attr]
            coef = (r.clip_norm / (norm + 1e-6)).clamp(max=1.0)
            for p in params:
                p.grad.mul_(coef.view(-1, *[1] * (p.dim() - 1)))  # type: ignore[union-attr]

    @torch.no_grad()
    def constrain_(self) -> None:
        if self.reg.max_norm is None:
            return
        for w, unit_dims in self.net.weights():
            norms = w.norm(dim=unit_dims, keepdim=True).clamp_min(1e-12)
            w.mul_((self.reg.max_norm / norms).clamp(max=1.0))


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
    io = io or StackIO()
    t, es = cfg.trainer, cfg.trainer.early_stop
    device, n, bs = data.x_train.device, len(data.y_train), t.batch_size
    steps_per_epoch, total = step_counts(n, bs, t.epochs, t.max_steps)
    nhwc = t.channels_last and any(isinstance(m, nn.Conv2d) for m in members[0].modules())  # as setup_model
    net = StackedNet(members, generators, nhwc)
    optimizer = build_optimizer(cfg.optim, net.parameters())
    scheduler = build_scheduler(cfg.sched, optimizer, steps_per_epoch, total)
    reg = _Regularizer(cfg.reg, net)
    state = [_Member(torch.Generator(device=device).manual_seed(s), tr,
                     EarlyStopping(es.patience, es.monitor, es.min_delta) if es.patience > 0 else None)
             for s, tr in zip(seeds, trackers, strict=True)]  # fmt: skip
    k_all, step, train_time, samples, first_epoch, partial = len(members), 0, 0.0, 0, 1, None
    if io.resume is not None:
        r = io.resume
        net.load_state_dict(r["model"])
        optimizer.load_state_dict(r["optimizer"])
        scheduler.load_state_dict(r["scheduler"])
        for g, s in zip(generators, r["generators"], strict=True):
            g.set_state(s)
        for m, model, s in zip(state, members, r["members"], strict=True):
            m.load_state_dict(s, model)
        step, train_time, samples, first_epoch, partial = r["step"], r["train_time"], r["samples"], r["epoch"] + 1, \
            r["partial"]  # fmt: skip

    def save(epoch_done: int, partial: dict[str, Any] | None = None) -> None:
        if io.checkpoint is None:
            return
        save_checkpoint(io.checkpoint, {
            "model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "generators": [g.get_state() for g in generators],
            "members": [m.state_dict(model) for m, model in zip(state, members, strict=True)],
            "epoch": epoch_done, "step": step, "train_time": train_time, "samples": samples, "partial": partial,
        } | io.extra)  # fmt: skip

    for epoch in range(first_epoch, t.epochs + 1):
        for m in state:
            if m.active:
                m.tracker.on_epoch_start(epoch, steps_per_epoch)
        if partial is not None:
            perms, start = partial["perm"].to(device), partial["next_batch"]
            loss_sum, correct, seen = partial["loss_sum"].to(device), partial["correct"].to(device), partial["seen"]
            partial = None
        else:
            perms = torch.stack([torch.randperm(n, generator=m.order, device=device) for m in state])
            loss_sum = torch.zeros(k_all, device=device)
            correct = torch.zeros(k_all, device=device, dtype=torch.long)
            start, seen = 0, 0
        t0 = time.perf_counter()
        for i in range(start, steps_per_epoch):
            idx = perms[:, i * bs : (i + 1) * bs]
            x = data.prep(data.x_train[idx.flatten()]).unflatten(0, idx.shape)
            y = data.y_train[idx]
            probe = _Probe(t, step, members, state)
            with probe.recording():
                logits = net(x, probe=probe.on)
            losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(idx.shape).mean(1)
            penalty = reg.penalty()
            optimizer.zero_grad(set_to_none=True)
            (losses.sum() if penalty is None else losses.sum() + penalty).backward()
            reg.clip_()
            probe.log(net, step + 1)
            optimizer.step()
            reg.constrain_()
            scheduler.step()
            step += 1
            loss_sum += losses.detach() * idx.shape[1]
            correct += (logits.detach().argmax(2) == y).sum(1)
            seen += idx.shape[1]
            if step % t.log_every_n_steps == 0:
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                for m, value in zip(state, losses.tolist(), strict=True):
                    if m.active and _bad(value, t.max_loss):
                        m.diverged_at = step  # the others train on: their gradients never see this loss
                    elif m.active:
                        m.last_finite_loss = value
                        m.tracker.log_step(step, value, scheduler.get_last_lr()[0], rate)
            for m in state:
                m.steps = step if m.active else m.steps
            if io.stop_requested and i + 1 < steps_per_epoch:
                train_time += time.perf_counter() - t0
                net.write_back([k for k, m in enumerate(state) if m.active])
                save(epoch - 1, {"perm": perms.cpu(), "next_batch": i + 1, "loss_sum": loss_sum.cpu(),
                                 "correct": correct.cpu(), "seen": seen})  # fmt: skip
                raise _interrupted(io)
            if t.max_steps is not None and step >= t.max_steps:
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time += time.perf_counter() - t0
        samples += seen
        active = [k for k, m in enumerate(state) if m.active]
        net.write_back(active)
        sums = (loss_sum / seen).tolist(), (correct.double() / seen).tolist()
        for k in active:
            metrics = _end_epoch(state[k], members[k], data, cfg, epoch, step, sums[0][k], sums[1][k],
                                 scheduler.get_last_lr()[0])  # fmt: skip
            if metrics is not None and io.best is not None:
                save_best(io.best[k], members[k], epoch, metrics)
        finished = epoch == t.epochs or (t.max_steps is not None and step >= t.max_steps)
        finished = finished or not any(m.active for m in state)
        if io.checkpoint is not None and (finished or epoch % t.checkpoint.every == 0 or io.stop_requested):
            save(epoch)
        if io.stop_requested and not finished:
            raise _interrupted(io)
        if finished:
            break
    return [_result(m, model, t.early_stop.restore_best, train_time, samples) for m, model in
            zip(state, members, strict=True)]  # fmt: skip


class _Probe:
    """The per-layer diagnostics of one step, for each active member as its standalone loop records them
    (dlzoo.engine.loop._Loop.probes): weight and gradient norms and activation statistics from the first step and
    at every logged step, histograms from the first step and every trainer.histogram_every_n_steps."""

    def __init__(self, t: DictConfig, step: int, members: list[nn.Module], state: list[_Member]) -> None:
        first, every = step == 0, t.histogram_every_n_steps
        self.histograms = t.layer_stats and every > 0 and (first or (step + 1) % every == 0)
        self.on = t.layer_stats and (first or (step + 1) % t.log_every_n_steps == 0 or self.histograms)
        self.members, self.state = members, state
        self.outputs: list[dict[str, Tensor] | None] = [{} if self.histograms else None for _ in members]
        self.acts: list[dict[str, float]] = []

    @contextmanager
    def recording(self) -> Iterator[None]:
        if not self.on:
            yield
            return
        with ExitStack() as stack:
            self.acts = [stack.enter_context(activation_stats(m, out))
                         for m, out in zip(self.members, self.outputs, strict=True)]  # fmt: skip
            yield

    def log(self, net: StackedNet, step: int) -> None:
        """After backward and clipping, before the update: each active member's weights and gradients."""
        if not self.on:
            return
        for k, (m, model) in enumerate(zip(self.state, self.members, strict=True)):
            if not m.active:
                continue
            net.write_back([k])
            net.write_grads(k)
            m.tracker.log_layer_stats(step, layer_stats(model) | self.acts[k])
            if self.outputs[k] is not None:
                m.tracker.log_histograms(step, layer_tensors(model, self.outputs[k]))  # type: ignore[arg-type]
            model.zero_grad(set_to_none=True)


def _bad(value: float, max_loss: float | None) -> bool:
    return not math.isfinite(value) or (max_loss is not None and value > max_loss)


def _interrupted(io: StackIO) -> Interrupted:
    assert io.stop is not None and io.stop.signum is not None
    return Interrupted(io.checkpoint, io.stop.signum)


def _end_epoch(
    m: _Member, model: nn.Module, data: Splits, cfg: DictConfig, epoch: int, step: int, loss: float, acc: float,
    lr: float,
) -> dict[str, float] | None:  # fmt: skip
    """One active member's epoch: its train means (checked, as the standalone loop checks them), its validation,
    logged to its own run, and its early stopping."""
    if _bad(loss, cfg.trainer.max_loss):
        m.diverged_at = step  # between logged steps a loss can explode unseen by the step check
        return None
    val_loss, val_acc = evaluate(model, data.x_val, data.y_val, cfg.trainer.eval_batch_size, data.prep)
    metrics = {"train/loss": loss, "train/acc": acc, "val/loss": val_loss, "val/acc": val_acc, "lr": lr}
    m.history.append({"epoch": epoch, **metrics})
    m.tracker.log_epoch(epoch, step, metrics)
    if m.early is not None and m.early.update(epoch, metrics, model):
        m.stopped = True
    return metrics


def _result(m: _Member, model: nn.Module, restore_best: bool, train_time: float, seen: int) -> FitResult:
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
