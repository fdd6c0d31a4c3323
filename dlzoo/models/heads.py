"""Output heads by name: `softmax` (one logit per class) and `sigmoid` (one unit, as the lecture's XOR net and
Géron's binary task B), both seen by the loop as class logits so one softmax cross-entropy trains either."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dlzoo.registry import Registry

HeadBuilder = Callable[[int, int], nn.Module]
HEADS: Registry[HeadBuilder] = Registry("head", "model.head")


class SigmoidHead(nn.Linear):
    """One output unit z, returned as the two logits [0, z]. Softmax over them gives p(class 1) = e^z / (1 + e^z)
    = sigmoid(z), so softmax cross-entropy on these logits IS binary cross-entropy on sigmoid(z), gradients
    included, and argmax picks class 1 exactly when z > 0 (sigmoid(z) > 0.5)."""

    summary_shape = (1,)  # what the user built: one unit (the summary would show the two logits)

    def __init__(self, in_features: int) -> None:
        super().__init__(in_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        z = super().forward(x)
        return torch.cat([torch.zeros_like(z), z], dim=1)


@HEADS.register("softmax", "a linear layer with one logit per class, trained with softmax cross-entropy")
def _softmax(in_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(in_features, num_classes)


@HEADS.register("sigmoid", "one sigmoid unit with binary cross-entropy (2 classes only; class 1 is positive)")
def _sigmoid(in_features: int, num_classes: int) -> nn.Module:
    if num_classes != 2:
        raise ValueError(f"a sigmoid head scores 2 classes, not {num_classes}")
    return SigmoidHead(in_features)
