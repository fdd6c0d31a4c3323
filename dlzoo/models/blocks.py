"""The vocabulary of layer pieces: activations and normalizations, each a short name (timm's create_act style)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dlzoo.registry import Registry

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation", "model.activation")
NORMS: Registry[Callable[[int], nn.Module | None]] = Registry("norm", "model.norm")

for _name, _factory, _doc in [
    ("relu", nn.ReLU, "max(0, x); the lecture's fix for vanishing gradients"),
    ("sigmoid", nn.Sigmoid, "1 / (1 + e^-x); saturates, so deep sigmoid nets stall (lecture 10-1)"),
    ("tanh", nn.Tanh, "zero-centred sigmoid"),
    ("leaky_relu", lambda: nn.LeakyReLU(0.01), "max(0.01x, x)"),
    ("elu", nn.ELU, "Clevert et al. 2015, alpha=1"),
    ("selu", nn.SELU, "Klambauer et al. 2017; self-normalizing with LeCun-normal init"),
    ("gelu", nn.GELU, "Hendrycks & Gimpel 2016"),
    ("silu", nn.SiLU, "x * sigmoid(x) (swish)"),
    ("identity", nn.Identity, "no non-linearity: the net collapses to one linear map"),
]:
    ACTIVATIONS.register(_name, _doc)(_factory)


@NORMS.register("none", "no normalization layer")
def _no_norm(num_features: int) -> nn.Module | None:
    return None


@NORMS.register("batch", "batch normalization (Ioffe & Szegedy 2015)")
def _batch_norm(num_features: int) -> nn.Module | None:
    return nn.BatchNorm1d(num_features)
