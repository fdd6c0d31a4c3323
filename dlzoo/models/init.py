"""Weight and bias initializers by name, and `init_weights`, which applies them to a model's layers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dlzoo.registry import Registry

Initializer = Callable[[Tensor], None]
INITIALIZERS: Registry[Initializer] = Registry("init", "model.init")
# Biases are 1-D: only initializers that need no fan_in/fan_out can fill them.
BIAS_INITIALIZERS = {"default", "zeros", "normal"}


@INITIALIZERS.register("default", "keep PyTorch's own init (Kaiming-uniform a=sqrt(5); U(±1/sqrt(fan_in)) biases)")
def _default(t: Tensor) -> None:
    pass


@INITIALIZERS.register("zeros", "all zeros: every unit learns the same thing (the symmetry lecture 10-2 warns of)")
def _zeros(t: Tensor) -> None:
    nn.init.zeros_(t)


@INITIALIZERS.register("normal", "N(0, 1): TF's random_normal, the lecture labs' baseline")
def _normal(t: Tensor) -> None:
    nn.init.normal_(t, 0.0, 1.0)


@INITIALIZERS.register("xavier_uniform", "Glorot & Bengio 2010: U(±sqrt(6 / (fan_in + fan_out))); TF's xavier")
def _xavier_uniform(t: Tensor) -> None:
    nn.init.xavier_uniform_(t)


@INITIALIZERS.register("xavier_normal", "Glorot & Bengio 2010: N(0, 2 / (fan_in + fan_out))")
def _xavier_normal(t: Tensor) -> None:
    nn.init.xavier_normal_(t)


@INITIALIZERS.register("he_uniform", "He et al. 2015: U(±sqrt(6 / fan_in)), for ReLU nets")
def _he_uniform(t: Tensor) -> None:
    nn.init.kaiming_uniform_(t, mode="fan_in", nonlinearity="relu")


@INITIALIZERS.register("he_normal", "He et al. 2015: N(0, 2 / fan_in), for ReLU nets")
def _he_normal(t: Tensor) -> None:
    nn.init.kaiming_normal_(t, mode="fan_in", nonlinearity="relu")


@INITIALIZERS.register("lecun_normal", "LeCun 1998: N(0, 1 / fan_in); what SELU needs")
def _lecun_normal(t: Tensor) -> None:
    nn.init.kaiming_normal_(t, mode="fan_in", nonlinearity="linear")


@INITIALIZERS.register("lecun_uniform", "LeCun 1998: U(±sqrt(3 / fan_in))")
def _lecun_uniform(t: Tensor) -> None:
    nn.init.kaiming_uniform_(t, mode="fan_in", nonlinearity="linear")


@torch.no_grad()
def init_weights(model: nn.Module, init: str, bias_init: str) -> None:
    """Apply the named initializers to every Linear/Conv layer's weight and bias (norm layers keep 1 and 0)."""
    weight_fn, bias_fn = INITIALIZERS.get(init), INITIALIZERS.get(bias_init)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            weight_fn(module.weight)
            if module.bias is not None:
                bias_fn(module.bias)
