"""Optimizers by name. Each entry is data: how to build it and what it can do (`has_momentum`: its update uses
optim.momentum, which 1cycle then cycles), so validation and the schedules ask the entry, not a list of names."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer

from dlzoo.checks import Checks
from dlzoo.registry import Registry


@dataclass
class OptimConfig:
    name: str = "adam"  # registry: dlzoo ls optimizer
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # momentum, nesterov (and rmsprop's optional momentum)
    rho: float = 0.9  # rmsprop's decay of the squared-gradient average (Keras' rho)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamax, nadam, adamw
    eps: float = 1e-8


OptimBuilder = Callable[[list[nn.Parameter], OptimConfig], Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    build: OptimBuilder
    has_momentum: bool = False  # the update uses optim.momentum (so it must be > 0)


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer", "optim.name")


def optimizer(name: str, doc: str, has_momentum: bool = False) -> Callable[[OptimBuilder], OptimBuilder]:
    """Register the decorated builder as optimizer `name`."""

    def add(build: OptimBuilder) -> OptimBuilder:
        OPTIMIZERS.register(name, doc)(OptimizerSpec(build, has_momentum))
        return build

    return add


def _fused(cls: type[Optimizer], params: list[nn.Parameter], **kwargs: Any) -> Optimizer:
    """`cls(..., fused=True)` where torch has that kernel for these parameters, else the default implementation.
    The plain CPU implementations update one tensor at a time, which is slower on every optimizer here (the
    README's speed section has the measured step times and the command).
    The math is the same up to float rounding (fused kernels use FMAs); SGD without momentum is bit-identical.
    (foreach=True was slower than the default on the CPU, so it is not used.)"""
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # no fused kernel for this device, dtype or option
        return cls(params, **kwargs)


@optimizer("sgd", "plain SGD: w -= lr * g")
def _sgd(params: list[nn.Parameter], cfg: OptimConfig) -> Optimizer:
    return _fused(torch.optim.SGD, params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@optimizer("momentum", "SGD with momentum (Polyak 1964): v = beta*v + g; w -= lr * v", has_momentum=True)
def _momentum(params: list[nn.Parameter], cfg: OptimConfig) -> Optimizer:
    return _fused(torch.optim.SGD, params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@optimizer(
    "nesterov", "Nesterov accelerated gradient (1983): the gradient taken one momentum step ahead", has_momentum=True
)
def _nesterov(params: list[nn.Parameter], cfg: OptimConfig) -> Optimizer:
    return _fused(
        torch.optim.SGD, params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
    )


@optimizer("adagrad", "Duchi et al. 2011: per-weight lr shrinks with the sum of squared gradients")
def _adagrad(params: list[nn.Parameter], cfg: OptimConfig) -> Optimizer:
    return _fused(torch.optim.Adagrad, params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)


@optimizer("rmsprop", "Hinton 2012: Adagrad with an exponential average (optim.rho) of squared gradients")
def _rmsprop(params: list[nn.Parameter], cfg: OptimConfig) -> Optimizer:
    return torch.optim.RMSprop(
        params, lr=cfg.lr, alpha=cfg.rho, eps=cfg.eps, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def _adam_kwargs(cfg: OptimConfig) -> dict:
    return dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


@optimizer("adam", "Kingma & Ba 2014: momentum + RMSProp with bias correction; the lecture labs' optimizer")
def _adam(params: list[nn.Parameter], cfg: OptimConfig) -> Optimizer:
    return _fused(torch.optim.Adam, params, **_adam_kwargs(cfg))


@optimizer("adamax", "Kingma & Ba 2014: Adam with the infinity norm of past gradients")
def _adamax(params: list[nn.Parameter], cfg: OptimConfig) -> Optimizer:
    return torch.optim.Adamax(params, **_adam_kwargs(cfg))


@optimizer("nadam", "Dozat 2016: Adam with Nesterov momentum")
def _nadam(params: list[nn.Parameter], cfg: OptimConfig) -> Optimizer:
    return torch.optim.NAdam(params, **_adam_kwargs(cfg))


@optimizer("adamw", "Loshchilov & Hutter 2019: Adam with decoupled weight decay (optim.weight_decay)")
def _adamw(params: list[nn.Parameter], cfg: OptimConfig) -> Optimizer:
    return _fused(torch.optim.AdamW, params, **_adam_kwargs(cfg))


def problems(o: DictConfig) -> list[str]:
    """What is wrong with the optim section's numbers (its name is checked against OPTIMIZERS elsewhere)."""
    c = Checks(o, "optim")
    c.check("lr", 0 < o.lr < float("inf"), "> 0 and finite")
    c.check("weight_decay", o.weight_decay >= 0, ">= 0")
    c.check("momentum", 0 <= o.momentum < 1, "in [0, 1)")
    if o.name in OPTIMIZERS and OPTIMIZERS.get(o.name).has_momentum:
        c.check("momentum", o.momentum > 0, f"> 0 for optim.name={o.name}")
    c.check("rho", 0 <= o.rho < 1, "in [0, 1)")
    c.check("betas", len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "two numbers in [0, 1)")
    c.check("eps", o.eps > 0, "> 0")
    return c.problems


def build_optimizer(cfg: OptimConfig, params: Iterable[nn.Parameter]) -> Optimizer:
    """The optimizer named `cfg.name` over the trainable `params`."""
    return OPTIMIZERS.get(cfg.name).build([p for p in params if p.requires_grad], cfg)
