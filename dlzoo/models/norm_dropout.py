"""Normalization and dropout layers by short name: the per-layer pieces besides the activation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dlzoo.registry import Registry

NORMS: Registry[Callable[[int], nn.Module | None]] = Registry("norm", "model.norm")
DROPOUTS: Registry[Callable[[float], nn.Module]] = Registry("dropout", "model.dropout_kind")


@NORMS.register("none", "no normalization layer")
def _no_norm(num_features: int) -> nn.Module | None:
    return None


@NORMS.register("batch", "batch normalization (Ioffe & Szegedy 2015)")
def _batch_norm(num_features: int) -> nn.Module | None:
    return nn.BatchNorm1d(num_features)


class Dropout(nn.Dropout):
    """nn.Dropout (Srivastava et al. 2014) with a cheaper mask on the CPU, where torch's bernoulli_ costs several
    times what rand does per element and was a large share of the lab 10-5 MLP's step (the README's speed section
    has the figures and the command). `rand >= p` is the same Bernoulli(1 - p) mask. CUDA keeps torch's fused
    kernel."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        if self.p == 1:
            return x * 0
        # float32 uniforms even under bf16 autocast, whose 8-bit mantissa would round p to a multiple of 1/256.
        keep = torch.rand_like(x, dtype=torch.float32) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


# SELU's negative saturation value -lambda * alpha (Klambauer et al. 2017), where alpha dropout sets dropped units.
_SELU_SATURATION = -1.0507009873554804934193349852946 * 1.6732632423543772848170429916717


class AlphaDropout(nn.AlphaDropout):
    """nn.AlphaDropout with the same cheaper CPU mask as Dropout: dropped units are set to SELU's saturation
    value and the result is mapped by a*x + b so that mean 0 and variance 1 survive (Klambauer et al. 2017)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.rand_like(x, dtype=torch.float32) >= self.p
        a = ((1 - self.p) * (1 + self.p * _SELU_SATURATION**2)) ** -0.5
        return torch.where(keep, x, _SELU_SATURATION) * a - a * _SELU_SATURATION * self.p


DROPOUTS.register("dropout", "zero units with probability p in training, scale the rest by 1/(1-p)")(Dropout)
DROPOUTS.register("alpha_dropout", "dropout that keeps SELU's mean and variance (Klambauer et al. 2017)")(AlphaDropout)

DROPOUT_TYPES = (nn.Dropout, nn.AlphaDropout)


def is_dropout(module: nn.Module) -> bool:
    return isinstance(module, DROPOUT_TYPES)
