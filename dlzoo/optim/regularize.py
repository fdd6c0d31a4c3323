"""Weight penalties, gradient clipping and the max-norm constraint: what the loop applies around each step.
They act on weight matrices and kernels only (dim > 1), never on biases or normalization parameters. The same rules
serve one model and a stack of K (dlzoo.models.stacked.StackedNet), whose tensors carry the members along dim 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from dlzoo.checks import Checks


@dataclass
class RegConfig:
    l1: float = 0.0  # lambda of the L1 penalty sum|W| added to the loss (weights only, not biases)
    l2: float = 0.0  # lambda of the L2 penalty sum W^2 added to the loss (lecture 10-5: cost + lambda sum W^2)
    max_norm: float | None = None  # cap each unit's incoming weight vector norm after every step (Srivastava 2014)
    clip_value: float | None = None  # clip each gradient component to [-v, v] (Keras clipvalue)
    clip_norm: float | None = None  # rescale the whole gradient to at most this global L2 norm (Keras clipnorm)


@dataclass
class Regularizer:
    l1: float = 0.0
    l2: float = 0.0
    max_norm: float | None = None
    clip_value: float | None = None
    clip_norm: float | None = None

    def penalty(self, model: nn.Module | Any) -> Tensor | None:
        """l1 * sum|W| + l2 * sum W^2 over the weights, or None when both are off (no cost in the step). Over a
        stack's tensors that is the sum of the members' penalties, so each member's gradient gets its own."""
        if not (self.l1 or self.l2):
            return None
        weights = [w for w, _ in _units(model)]
        total = torch.zeros((), device=weights[0].device)
        if self.l1:
            total = total + self.l1 * sum(w.abs().sum() for w in weights)
        if self.l2:
            total = total + self.l2 * sum(w.pow(2).sum() for w in weights)
        return total

    @torch.no_grad()
    def clip_(self, model: nn.Module | Any) -> None:
        """Between backward and step: clip by value, then by global norm (Keras clipvalue / clipnorm); a stack's
        norm is each member's own, over its slice of every gradient."""
        if self.clip_value is None and self.clip_norm is None:
            return
        params = list(model.parameters())
        if self.clip_value is not None:
            nn.utils.clip_grad_value_(params, self.clip_value)
        if self.clip_norm is None:
            return
        if isinstance(model, nn.Module):
            nn.utils.clip_grad_norm_(params, self.clip_norm)
            return
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
        coef = (self.clip_norm / (norm + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s rule
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))

    @torch.no_grad()
    def constrain_(self, model: nn.Module | Any) -> None:
        """After step: rescale each unit's incoming weight vector to norm <= max_norm (Keras max_norm)."""
        if self.max_norm is None:
            return
        for w, unit in _units(model):
            norms = w.norm(dim=unit, keepdim=True).clamp_min(1e-12)
            w.mul_((self.max_norm / norms).clamp(max=1.0))


def _units(model: nn.Module | Any) -> list[tuple[Tensor, tuple[int, ...]]]:
    """The weights, each with the dims that hold one unit's incoming weights (a stack says its own)."""
    if not isinstance(model, nn.Module):
        return model.weights()
    return [(p, tuple(range(1, p.dim()))) for name, p in model.named_parameters()
            if p.dim() > 1 and name.endswith("weight")]  # fmt: skip


def build_regularizer(cfg: RegConfig) -> Regularizer:
    return Regularizer(cfg.l1, cfg.l2, cfg.max_norm, cfg.clip_value, cfg.clip_norm)


def problems(r: DictConfig) -> list[str]:
    """What is wrong with the reg section."""
    c = Checks(r, "reg")
    c.check("l1", r.l1 >= 0, ">= 0")
    c.check("l2", r.l2 >= 0, ">= 0")
    for key in ("max_norm", "clip_value", "clip_norm"):
        c.check(key, r[key] is None or r[key] > 0, "> 0 or null (off)")
    return c.problems
