"""Learning-rate schedules by name. A schedule sets the lr (and, for 1cycle, the momentum) of every parameter
group before each training step; `plateau` also listens to the validation loss each epoch."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig
from torch.optim import Optimizer

from dlzoo.checks import Checks
from dlzoo.registry import Registry


@dataclass
class SchedConfig:
    name: str = "constant"  # registry: dlzoo ls schedule; each schedule's YAML sets the keys it reads
    min_lr: float = 0.0  # cosine's end point; plateau's floor
    warmup_steps: int = 0  # cosine
    decay_steps: float = 1000.0  # power (s), exponential_step
    power: float = 1.0  # power (c)
    decay_epochs: float = 10.0  # exponential (s)
    decay_rate: float = 0.1  # exponential_step
    staircase: bool = False  # exponential_step
    boundaries: list[int] = field(default_factory=lambda: [5, 15])  # piecewise, in epochs
    lr_values: list[float] = field(default_factory=lambda: [0.01, 0.005, 0.001])  # piecewise lrs
    factor: float = 0.5  # plateau
    patience: int = 5  # plateau, in epochs
    max_lr: float = 0.01  # onecycle peak
    final_fraction: float = 0.1  # onecycle: share of the run spent in the final anneal
    final_div: float = 1000.0  # onecycle: the anneal ends at lr0 / final_div
    momentum_range: list[float] = field(default_factory=lambda: [0.85, 0.95])  # onecycle


@dataclass(frozen=True)
class Clock:
    """Where training is: the step about to run (0-based) and the run's shape."""

    step: int
    steps_per_epoch: int
    total_steps: int

    @property
    def epoch(self) -> int:  # the 0-based epoch this step belongs to (Keras' per-epoch schedules)
        return self.step // self.steps_per_epoch


@dataclass(frozen=True)
class Schedule:
    lr: Callable[[Clock, float, SchedConfig], float]  # (clock, base lr, sched config) -> lr for this step
    momentum: Callable[[Clock, SchedConfig], float] | None = None  # 1cycle's momentum, where one is set
    plateau: bool = False  # the lr is also cut when the validation loss stalls


SCHEDULES: Registry[Schedule] = Registry("schedule", "sched.name")


SCHEDULES.register("constant", "the base lr throughout (the lecture labs)")(Schedule(lambda c, lr0, cfg: lr0))
SCHEDULES.register("power", "lr0 / (1 + t/s)^c per step (Keras' decay): s = sched.decay_steps, c = sched.power")(
    Schedule(lambda c, lr0, cfg: lr0 / (1 + c.step / cfg.decay_steps) ** cfg.power)
)
SCHEDULES.register("exponential", "lr0 * 0.1^(epoch/s) per epoch (Géron ch. 11): s = sched.decay_epochs")(
    Schedule(lambda c, lr0, cfg: lr0 * 0.1 ** (c.epoch / cfg.decay_epochs))
)
SCHEDULES.register(
    "exponential_step", "lr0 * rate^(t/decay_steps) per step (Keras ExponentialDecay; sched.staircase floors t/s)"
)(
    Schedule(
        lambda c, lr0, cfg: (
            lr0 * cfg.decay_rate ** ((c.step // cfg.decay_steps) if cfg.staircase else c.step / cfg.decay_steps)
        )
    )
)
SCHEDULES.register("piecewise", "sched.lr_values[i] from epoch sched.boundaries[i-1] on (absolute lrs)")(
    Schedule(lambda c, lr0, cfg: cfg.lr_values[sum(c.epoch >= b for b in cfg.boundaries)])
)
SCHEDULES.register("plateau", "lr *= sched.factor after sched.patience epochs without a lower val loss")(
    Schedule(lambda c, lr0, cfg: lr0, plateau=True)
)


def _onecycle_phases(c: Clock, cfg: SchedConfig) -> tuple[int, float]:
    """(phase 0/1/2, fraction through it): up over the first half of the cycle, down over the second, then
    the final anneal over the last sched.final_fraction of the run (Smith 2018; Géron ch. 11)."""
    anneal_start = round(c.total_steps * (1 - cfg.final_fraction))
    half = max(anneal_start // 2, 1)
    if c.step < half:
        return 0, c.step / half
    if c.step < anneal_start:
        return 1, (c.step - half) / max(anneal_start - half, 1)
    return 2, (c.step - anneal_start) / max(c.total_steps - anneal_start, 1)


def _onecycle_lr(c: Clock, lr0: float, cfg: SchedConfig) -> float:
    phase, f = _onecycle_phases(c, cfg)
    if phase == 0:
        return lr0 + f * (cfg.max_lr - lr0)
    if phase == 1:
        return cfg.max_lr - f * (cfg.max_lr - lr0)
    return lr0 - f * (lr0 - lr0 / cfg.final_div)


def _onecycle_momentum(c: Clock, cfg: SchedConfig) -> float:
    low, high = cfg.momentum_range
    phase, f = _onecycle_phases(c, cfg)
    return high - f * (high - low) if phase == 0 else low + f * (high - low) if phase == 1 else high


SCHEDULES.register("onecycle", "1cycle (Smith 2018): lr0 -> sched.max_lr -> lr0, then anneal; momentum 0.95-0.85-0.95")(
    Schedule(_onecycle_lr, momentum=_onecycle_momentum)
)


def _cosine(c: Clock, lr0: float, cfg: SchedConfig) -> float:
    if c.step < cfg.warmup_steps:
        return lr0 * (c.step + 1) / cfg.warmup_steps
    span = max(c.total_steps - cfg.warmup_steps, 1)
    progress = min(c.step - cfg.warmup_steps, span) / span
    return cfg.min_lr + (lr0 - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES.register("cosine", "linear warmup over sched.warmup_steps, then cosine decay to sched.min_lr")(
    Schedule(_cosine)
)


def problems(sc: DictConfig, lr: float) -> list[str]:
    """What is wrong with the sched section's numbers; `lr` is optim.lr, which bounds sched.min_lr."""
    c = Checks(sc, "sched")
    # Against a bad optim.lr the bound means nothing: that lr has its own message.
    c.check("min_lr", sc.min_lr >= 0 and (lr <= 0 or sc.min_lr <= lr), "in [0, optim.lr]")
    c.check("warmup_steps", sc.warmup_steps >= 0, ">= 0")
    c.check("decay_steps", sc.decay_steps > 0, "> 0")
    c.check("decay_epochs", sc.decay_epochs > 0, "> 0")
    c.check("decay_rate", 0 < sc.decay_rate <= 1, "in (0, 1]")
    c.check("power", sc.power > 0, "> 0")
    c.check(
        "lr_values",
        len(sc.lr_values) == len(sc.boundaries) + 1 and all(v > 0 for v in sc.lr_values),
        f"{len(sc.boundaries) + 1} positive lrs (one more than sched.boundaries={list(sc.boundaries)})",
    )
    c.check("boundaries", list(sc.boundaries) == sorted(sc.boundaries), "increasing epochs")
    c.check("factor", 0 < sc.factor < 1, "in (0, 1)")
    c.check("patience", sc.patience >= 0, ">= 0")
    c.check("max_lr", sc.max_lr > 0, "> 0")
    c.check("final_fraction", 0 <= sc.final_fraction < 1, "in [0, 1)")
    c.check("final_div", sc.final_div >= 1, ">= 1")
    c.check(
        "momentum_range",
        len(sc.momentum_range) == 2 and 0 <= sc.momentum_range[0] <= sc.momentum_range[1] < 1,
        "[low, high] with 0 <= low <= high < 1",
    )
    return c.problems


class Scheduler:
    """Drives one Schedule: sets every group's lr (and momentum or Adam's beta1 for 1cycle) for the next step.

    Args:
        optimizer: whose groups are set; their initial lr is the schedule's lr0.
        schedule: the registry entry.
        cfg: the sched config (the schedule's own parameters).
        steps_per_epoch, total_steps: the run's shape, for per-epoch and whole-run schedules.
    """

    def __init__(
        self, optimizer: Optimizer, schedule: Schedule, cfg: SchedConfig, steps_per_epoch: int, total_steps: int
    ) -> None:
        self.optimizer, self.schedule, self.cfg = optimizer, schedule, cfg
        self.steps_per_epoch, self.total_steps = max(steps_per_epoch, 1), max(total_steps, 1)
        self.base_lr = optimizer.param_groups[0]["lr"]
        self.step_count = 0
        self.plateau_scale, self.best_loss, self.bad_epochs = 1.0, math.inf, 0
        self._apply()

    def _apply(self) -> None:
        clock = Clock(self.step_count, self.steps_per_epoch, self.total_steps)
        lr = self.schedule.lr(clock, self.base_lr, self.cfg) * self.plateau_scale
        lr = max(lr, self.cfg.min_lr) if self.schedule.plateau else lr
        momentum = self.schedule.momentum(clock, self.cfg) if self.schedule.momentum else None
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if momentum is not None:
                if group.get("momentum", 0) > 0:
                    group["momentum"] = momentum
                elif "betas" in group:
                    group["betas"] = (momentum, group["betas"][1])

    def step(self) -> None:
        """Call after every optimizer step."""
        self.step_count += 1
        self._apply()

    def epoch_end(self, val_loss: float) -> None:
        """Call after each validation; `plateau` cuts the lr when the loss has stalled for `patience` epochs."""
        if not self.schedule.plateau or math.isnan(val_loss):
            return
        if val_loss < self.best_loss:
            self.best_loss, self.bad_epochs = val_loss, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.cfg.patience:
            self.plateau_scale *= self.cfg.factor
            self.bad_epochs = 0
            self._apply()

    def set_base_lr(self, lr: float) -> None:
        """Continue the schedule from a new initial lr (transfer learning's lower lr after unfreezing)."""
        self.base_lr = lr
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("step_count", "plateau_scale", "best_loss", "bad_epochs")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
        self._apply()


def build_scheduler(cfg: SchedConfig, optimizer: Optimizer, steps_per_epoch: int, total_steps: int) -> Scheduler:
    """The schedule named `cfg.name` driving `optimizer` over a run of `total_steps` steps."""
    return Scheduler(optimizer, SCHEDULES.get(cfg.name), cfg, steps_per_epoch, total_steps)
