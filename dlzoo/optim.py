"""Optimizers and learning-rate schedules by name. Schedules are stepped once per training step."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from dlzoo.registry import Registry

OptimBuilder = Callable[[list[nn.Parameter], DictConfig], Optimizer]
OPTIMIZERS: Registry[OptimBuilder] = Registry("optimizer", "optim.name")
# A schedule maps (step, total_steps, lr, min_lr) to a multiplier of the base lr.
Schedule = Callable[[int, int, float, float], float]
SCHEDULES: Registry[Schedule] = Registry("schedule", "sched.name")


@OPTIMIZERS.register("sgd", "plain or momentum SGD (optim.momentum, optim.nesterov)")
def _sgd(params: list[nn.Parameter], cfg: DictConfig) -> Optimizer:
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )


@OPTIMIZERS.register("adam", "Kingma & Ba 2014; the lecture labs' optimizer (lr 0.001)")
def _adam(params: list[nn.Parameter], cfg: DictConfig) -> Optimizer:
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    # CPU Adam updates one tensor at a time by default; the fused kernel made the step 1.3-1.5x faster
    # on these machines (shared/PERF_NOTES.md) with the same math.
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, **kwargs)


@SCHEDULES.register("constant", "the base lr throughout (the lecture labs)")
def _constant(step: int, total: int, lr: float, min_lr: float) -> float:
    return 1.0


@SCHEDULES.register("cosine", "cosine decay from optim.lr to sched.min_lr over the run (Loshchilov & Hutter 2016)")
def _cosine(step: int, total: int, lr: float, min_lr: float) -> float:
    floor = min_lr / lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def build_optimizer(cfg: DictConfig, params: Iterable[nn.Parameter]) -> Optimizer:
    """The optimizer named `cfg.name` over the trainable `params`."""
    return OPTIMIZERS.get(cfg.name)([p for p in params if p.requires_grad], cfg)


def build_scheduler(cfg: DictConfig, optimizer: Optimizer, total_steps: int) -> LambdaLR:
    """The schedule named `cfg.name`, as a LambdaLR to be stepped after every optimizer step."""
    schedule = SCHEDULES.get(cfg.name)
    base_lr = optimizer.param_groups[0]["lr"]
    return LambdaLR(optimizer, lambda step: schedule(step, total_steps, base_lr, cfg.min_lr))
