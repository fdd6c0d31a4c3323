"""What `fit` takes and keeps: its options (FitOptions), the state a checkpoint saves (TrainState, and each stacked
member's MemberState), one epoch's running sums (EpochSums) and what it returns (FitResult)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dlzoo.engine.recording.tracking import Tracker
from dlzoo.engine.training.checkpoint import Checkpointing
from dlzoo.engine.training.distributed import Dist
from dlzoo.engine.training.stopping import EarlyStopping, StopFlag
from dlzoo.optim.regularize import Regularizer


@dataclass
class FitOptions:
    """How `fit` trains, one object instead of two dozen keyword arguments.

    Args:
        seed: seeds the generator that orders each epoch's batches (on the data's device).
        max_steps: stop after this many optimizer steps in total (the epoch in progress is still validated).
        layer_stats: record per-layer norms and activation statistics at the first step and at logging steps.
        histogram_every_n_steps: with layer_stats, histograms of every layer's weights, gradients and activations
            at the first step and then every this many steps (0: none).
        regularizer: weight penalty, gradient clipping and max-norm around each step.
        early_stopping: stops on a stalled validation metric; with `restore_best`, the model ends with the best
            epoch's weights and the returned metrics are that epoch's.
        checkpointing: writes last.pt (everything needed to resume) and the top-k best weights. Files are
            replaced atomically, so a crash or divergence leaves the last good checkpoint on disk.
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
        members: for a stack of K members (the model a dlzoo.models.stacked.StackedNet), each member's own state:
            its batch order, run folder's tracker, early stopping and best-epoch checkpoints. `seed`, the tracker
            and `early_stopping` given to fit then go unused: each member has its own.
    """

    epochs: int
    batch_size: int
    seed: int
    max_steps: int | None = None
    eval_batch_size: int = 10000
    log_every_n_steps: int = 50
    layer_stats: bool = True
    histogram_every_n_steps: int = 0
    regularizer: Regularizer = field(default_factory=Regularizer)
    early_stopping: EarlyStopping | None = None
    restore_best: bool = True
    checkpointing: Checkpointing | None = None
    stop: StopFlag | None = None
    max_loss: float | None = None
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None
    precision: str = "fp32"
    dist: Dist = field(default_factory=Dist)
    compile_mode: str | None = None
    warn: Callable[[str], None] = print
    members: list[MemberState] | None = None

    @property
    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.signum is not None


@dataclass
class TrainState:
    """Everything that moves during training besides the weights, optimizer and schedule: what last.pt holds
    beside them, so a resumed run continues exactly (mid-epoch included)."""

    order: torch.Generator  # draws each epoch's batch order
    step: int = 0
    seen: int = 0  # samples of finished epochs
    train_time: float = 0.0
    first_epoch: int = 1
    history: list[dict[str, float]] = field(default_factory=list)
    partial: dict[str, Any] | None = None  # the epoch a stop request interrupted
    last_finite_loss: float = float("nan")
    stopped_early: bool = False


@dataclass
class MemberState:
    """One member of a stack: what its standalone run's TrainState and options hold for it alone. A member that
    diverges (a NaN, infinite or above-max_loss loss) or stops early is frozen where it was; the others train on."""

    order: torch.Generator  # the batch order, seeded as the standalone run's
    tracker: Tracker
    early: EarlyStopping | None = None
    best: Checkpointing | None = None  # its best-epoch checkpoints (trainer.checkpoint.top_k)
    history: list[dict[str, float]] = field(default_factory=list)
    diverged_at: int | None = None  # the step its loss went bad: from there on it is frozen and not plotted
    stopped: bool = False  # early stopping ended its training
    steps: int = 0  # its own last step (a frozen member's is earlier than the others')
    last_finite_loss: float = float("nan")

    @property
    def active(self) -> bool:
        return self.diverged_at is None and not self.stopped

    def state_dict(self, model: torch.nn.Module) -> dict[str, Any]:
        return {"order": self.order.get_state(), "history": self.history, "diverged_at": self.diverged_at,
                "stopped": self.stopped, "steps": self.steps, "last_finite_loss": self.last_finite_loss,
                "early": self.early.state_dict() if self.early is not None else None,
                "frozen": None if self.active else model.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any], model: torch.nn.Module) -> None:
        self.order.set_state(state["order"])
        self.history = list(state["history"])
        self.diverged_at, self.stopped, self.steps = state["diverged_at"], state["stopped"], state["steps"]
        self.last_finite_loss = state["last_finite_loss"]
        if self.early is not None and state["early"] is not None:
            self.early.load_state_dict(state["early"])
        if state["frozen"] is not None:
            model.load_state_dict(state["frozen"])


@dataclass
class EpochSums:
    """One epoch's batch order and running sums, kept on the device until the epoch ends (a stack's: one row,
    or one entry, per member)."""

    perm: Tensor
    start: int
    loss_sum: Tensor
    correct: Tensor
    seen: int = 0


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
    last_state: dict[str, Tensor] | None = None  # the last epoch's weights, where the model holds the best epoch's


def step_counts(samples: int, batch_size: int, epochs: int, max_steps: int | None) -> tuple[int, int]:
    """(steps per epoch, steps in the whole run): what a schedule is built for."""
    per_epoch = math.ceil(samples / batch_size)
    return per_epoch, per_epoch * epochs if max_steps is None else min(per_epoch * epochs, max_steps)


# TensorBoard's Histograms and Distributions tabs show a trend from about ten slices; each costs a sampled binning
# of every layer's tensors, so a long run keeps to the same count.
HISTOGRAM_SLICES = 12


def histogram_every(every: int | None, total_steps: int) -> int:
    """trainer.histogram_every_n_steps when set, else the interval that gives the run about HISTOGRAM_SLICES
    histograms after the first step's (step 1 always has one)."""
    return every if every is not None else max(1, total_steps // HISTOGRAM_SLICES)
