"""Optimizers and learning-rate schedules by name. A schedule sets the lr (and, for 1cycle, the momentum) of
every parameter group before each training step; `plateau` also listens to the validation loss each epoch."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer

from dlzoo.registry import Registry

OptimBuilder = Callable[[list[nn.Parameter], DictConfig], Optimizer]
OPTIMIZERS: Registry[OptimBuilder] = Registry("optimizer", "optim.name")


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
    lr: Callable[[Clock, float, DictConfig], float]  # (clock, base lr, sched config) -> lr for this step
    momentum: Callable[[Clock, DictConfig], float] | None = None  # 1cycle's momentum, where one is set
    plateau: bool = False  # the lr is also cut when the validation loss stalls


SCHEDULES: Registry[Schedule] = Registry("schedule", "sched.name")


def _fused(cls: type[Optimizer], params: list[nn.Parameter], **kwargs: Any) -> Optimizer:
    """`cls(..., fused=True)` where torch has that kernel for these parameters, else the default implementation.
    The plain CPU implementations update one tensor at a time; on the lab 10-5 MLP's parameters one step took
    (default -> fused) Adam 1.27 -> 0.38 ms, Adagrad 1.02 -> 0.28, momentum 0.32 -> 0.15, SGD 0.13 -> 0.10.
    The math is the same up to float rounding (fused kernels use FMAs); SGD without momentum is bit-identical.
    (foreach=True was slower than the default on the CPU, so it is not used.)"""
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # no fused kernel for this device, dtype or option
        return cls(params, **kwargs)


@OPTIMIZERS.register("sgd", "plain SGD: w -= lr * g")
def _sgd(params: list[nn.Parameter], cfg: DictConfig) -> Optimizer:
    return _fused(torch.optim.SGD, params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("momentum", "SGD with momentum (Polyak 1964): v = beta*v + g; w -= lr * v")
def _momentum(params: list[nn.Parameter], cfg: DictConfig) -> Optimizer:
    return _fused(torch.optim.SGD, params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("nesterov", "Nesterov accelerated gradient (1983): the gradient taken one momentum step ahead")
def _nesterov(params: list[nn.Parameter], cfg: DictConfig) -> Optimizer:
    return _fused(
        torch.optim.SGD, params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
    )


@OPTIMIZERS.register("adagrad", "Duchi et al. 2011: per-weight lr shrinks with the sum of squared gradients")
def _adagrad(params: list[nn.Parameter], cfg: DictConfig) -> Optimizer:
    return _fused(torch.optim.Adagrad, params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("rmsprop", "Hinton 2012: Adagrad with an exponential average (optim.rho) of squared gradients")
def _rmsprop(params: list[nn.Parameter], cfg: DictConfig) -> Optimizer:
    return torch.optim.RMSprop(
        params, lr=cfg.lr, alpha=cfg.rho, eps=cfg.eps, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def _adam_kwargs(cfg: DictConfig) -> dict:
    return dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam", "Kingma & Ba 2014: momentum + RMSProp with bias correction; the lecture labs' optimizer")
def _adam(params: list[nn.Parameter], cfg: DictConfig) -> Optimizer:
    return _fused(torch.optim.Adam, params, **_adam_kwargs(cfg))


@OPTIMIZERS.register("adamax", "Kingma & Ba 2014: Adam with the infinity norm of past gradients")
def _adamax(params: list[nn.Parameter], cfg: DictConfig) -> Optimizer:
    return torch.optim.Adamax(params, **_adam_kwargs(cfg))


@OPTIMIZERS.register("nadam", "Dozat 2016: Adam with Nesterov momentum")
def _nadam(params: list[nn.Parameter], cfg: DictConfig) -> Optimizer:
    return torch.optim.NAdam(params, **_adam_kwargs(cfg))


@OPTIMIZERS.register("adamw", "Loshchilov & Hutter 2019: Adam with decoupled weight decay (optim.weight_decay)")
def _adamw(params: list[nn.Parameter], cfg: DictConfig) -> Optimizer:
    return _fused(torch.optim.AdamW, params, **_adam_kwargs(cfg))


# Optimizers whose update uses optim.momentum; 1cycle cycles that value (or Adam's beta1) where it exists.
MOMENTUM_OPTIMIZERS = {"momentum", "nesterov"}


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


def _onecycle_phases(c: Clock, cfg: DictConfig) -> tuple[int, float]:
    """(phase 0/1/2, fraction through it): up over the first half of the cycle, down over the second, then
    the final anneal over the last sched.final_fraction of the run (Smith 2018; Géron ch. 11)."""
    anneal_start = round(c.total_steps * (1 - cfg.final_fraction))
    half = max(anneal_start // 2, 1)
    if c.step < half:
        return 0, c.step / half
    if c.step < anneal_start:
        return 1, (c.step - half) / max(anneal_start - half, 1)
    return 2, (c.step - anneal_start) / max(c.total_steps - anneal_start, 1)


def _onecycle_lr(c: Clock, lr0: float, cfg: DictConfig) -> float:
    phase, f = _onecycle_phases(c, cfg)
    if phase == 0:
        return lr0 + f * (cfg.max_lr - lr0)
    if phase == 1:
        return cfg.max_lr - f * (cfg.max_lr - lr0)
    return lr0 - f * (lr0 - lr0 / cfg.final_div)


def _onecycle_momentum(c: Clock, cfg: DictConfig) -> float:
    low, high = cfg.momentum_range
    phase, f = _onecycle_phases(c, cfg)
    return high - f * (high - low) if phase == 0 else low + f * (high - low) if phase == 1 else high


SCHEDULES.register("onecycle", "1cycle (Smith 2018): lr0 -> sched.max_lr -> lr0, then anneal; momentum 0.95-0.85-0.95")(
    Schedule(_onecycle_lr, momentum=_onecycle_momentum)
)


def _cosine(c: Clock, lr0: float, cfg: DictConfig) -> float:
    if c.step < cfg.warmup_steps:
        return lr0 * (c.step + 1) / cfg.warmup_steps
    span = max(c.total_steps - cfg.warmup_steps, 1)
    progress = min(c.step - cfg.warmup_steps, span) / span
    return cfg.min_lr + (lr0 - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES.register("cosine", "linear warmup over sched.warmup_steps, then cosine decay to sched.min_lr")(
    Schedule(_cosine)
)


def build_optimizer(cfg: DictConfig, params: Iterable[nn.Parameter]) -> Optimizer:
    """The optimizer named `cfg.name` over the trainable `params`."""
    return OPTIMIZERS.get(cfg.name)([p for p in params if p.requires_grad], cfg)


class Scheduler:
    """Drives one Schedule: sets every group's lr (and momentum or Adam's beta1 for 1cycle) for the next step.

    Args:
        optimizer: whose groups are set; their initial lr is the schedule's lr0.
        schedule: the registry entry.
        cfg: the sched config (the schedule's own parameters).
        steps_per_epoch, total_steps: the run's shape, for per-epoch and whole-run schedules.
    """

    def __init__(
        self, optimizer: Optimizer, schedule: Schedule, cfg: DictConfig, steps_per_epoch: int, total_steps: int
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


def build_scheduler(cfg: DictConfig, optimizer: Optimizer, steps_per_epoch: int, total_steps: int) -> Scheduler:
    """The schedule named `cfg.name` driving `optimizer` over a run of `total_steps` steps."""
    return Scheduler(optimizer, SCHEDULES.get(cfg.name), cfg, steps_per_epoch, total_steps)
