"""The per-member pieces of a stacked fit (dlzoo.engine.stacked): each member's state, what the fit reads and
writes (StackIO), one epoch's sums, the reg.* rules on the stacked tensors member by member, and the per-layer
probes recorded for each member as its standalone loop records them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from dlzoo.engine.checkpoint import Checkpointing
from dlzoo.engine.probes import activation_stats, layer_stats, layer_tensors
from dlzoo.engine.stopping import EarlyStopping, StopFlag
from dlzoo.engine.tracking import Tracker
from dlzoo.models.stacked import StackedNet
from dlzoo.optim.regularize import build_regularizer


@dataclass
class Member:
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
    # After each epoch, with the mean over the members still training of each epoch metric (what tune reports).
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None

    @property
    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.signum is not None


class Regularizer:
    """reg.* on the stacked tensors, member by member (dlzoo.optim.regularize's rules on each member's slice)."""

    def __init__(self, reg: DictConfig, net: StackedNet) -> None:
        # The standalone loop's settings as plain numbers: read on every step, where a DictConfig lookup costs.
        self.reg, self.net = build_regularizer(reg), net

    def penalty(self) -> Tensor | None:
        r = self.reg
        if not (r.l1 or r.l2):
            return None
        weights = [w for w, _ in self.net.weights()]
        total = sum(w.abs().sum() for w in weights) * r.l1 if r.l1 else 0.0
        return total + (sum(w.pow(2).sum() for w in weights) * r.l2 if r.l2 else 0.0)  # type: ignore[return-value]

    @torch.no_grad()
    def clip_(self) -> None:
        r = self.reg
        if r.clip_value is None and r.clip_norm is None:
            return
        params = [p for p in self.net.parameters() if p.grad is not None]
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


@dataclass
class Sums:
    """One epoch's batch orders (K, n) and running per-member sums; `start`: the batch to go on from."""

    perms: Tensor
    start: int
    loss: Tensor
    correct: Tensor
    seen: int = 0

    def state_dict(self, next_batch: int) -> dict[str, Any]:
        return {"perm": self.perms.cpu(), "next_batch": next_batch, "loss_sum": self.loss.cpu(),
                "correct": self.correct.cpu(), "seen": self.seen}  # fmt: skip


class Probe:
    """The per-layer diagnostics of one step, for each active member as its standalone loop records them
    (dlzoo.engine.loop._Loop.probes): weight and gradient norms and activation statistics from the first step and
    at every logged step, histograms from the first step and every trainer.histogram_every_n_steps."""

    def __init__(
        self, probing: tuple[bool, int, int], step: int, members: list[nn.Module], state: list[Member]
    ) -> None:
        """`probing`: (trainer.layer_stats, log_every_n_steps, histogram_every_n_steps)."""
        stats, log_every, every = probing
        first = step == 0
        self.histograms = stats and every > 0 and (first or (step + 1) % every == 0)
        self.on = stats and (first or (step + 1) % log_every == 0 or self.histograms)
        self.members, self.state = members, state
        self.outputs: list[dict[str, Tensor] | None] = []
        self.acts: list[dict[str, float]] = []
        if self.on:
            self.outputs = [{} if self.histograms else None for _ in members]

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


def bad(value: float, max_loss: float | None) -> bool:
    return not math.isfinite(value) or (max_loss is not None and value > max_loss)
