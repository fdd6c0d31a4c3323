"""Weight penalties, gradient clipping and the max-norm constraint: what the loop applies around each step.
They act on weight matrices and kernels only (dim > 1), never on biases or normalization parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from dlzoo.checks import Checks


@dataclass
class Regularizer:
    l1: float = 0.0
    l2: float = 0.0
    max_norm: float | None = None
    clip_value: float | None = None
    clip_norm: float | None = None

    def penalty(self, model: nn.Module) -> Tensor | None:
        """l1 * sum|W| + l2 * sum W^2 over the weights, or None when both are off (no cost in the step)."""
        if not (self.l1 or self.l2):
            return None
        weights = _weights(model)
        total = torch.zeros((), device=weights[0].device)
        if self.l1:
            total = total + self.l1 * sum(w.abs().sum() for w in weights)
        if self.l2:
            total = total + self.l2 * sum(w.pow(2).sum() for w in weights)
        return total

    def clip_(self, model: nn.Module) -> None:
        """Between backward and step: clip by value, then by global norm (Keras clipvalue / clipnorm)."""
        if self.clip_value is not None:
            nn.utils.clip_grad_value_(model.parameters(), self.clip_value)
        if self.clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), self.clip_norm)

    @torch.no_grad()
    def constrain_(self, model: nn.Module) -> None:
        """After step: rescale each unit's incoming weight vector to norm <= max_norm (Keras max_norm)."""
        if self.max_norm is None:
            return
        for w in _weights(model):
            norms = w.flatten(1).norm(dim=1).clamp_min(1e-12)
            w.mul_((self.max_norm / norms).clamp(max=1.0).view(-1, *([1] * (w.dim() - 1))))


def _weights(model: nn.Module) -> list[Tensor]:
    return [p for name, p in model.named_parameters() if p.dim() > 1 and name.endswith("weight")]


def build_regularizer(cfg: DictConfig) -> Regularizer:
    return Regularizer(cfg.l1, cfg.l2, cfg.max_norm, cfg.clip_value, cfg.clip_norm)


def problems(r: DictConfig) -> list[str]:
    """What is wrong with the reg section."""
    c = Checks(r, "reg")
    c.check("l1", r.l1 >= 0, ">= 0")
    c.check("l2", r.l2 >= 0, ">= 0")
    for key in ("max_norm", "clip_value", "clip_norm"):
        c.check(key, r[key] is None or r[key] > 0, "> 0 or null (off)")
    return c.problems
