"""The vocabulary of layer pieces: activations, normalizations and dropouts, each a short name (timm's
create_act style). Activation parameters (slopes, alpha, maxout's k) arrive as one plain ActArgs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dlzoo.registry import Registry


@dataclass
class ActArgs:
    negative_slope: float = 0.01  # leaky_relu (Géron ch. 11: 0.2 often beat 0.01)
    alpha: float = 1.0  # elu
    rrelu_range: list[float] = field(default_factory=lambda: [1 / 8, 1 / 3])  # rrelu's random-slope range
    prelu_init: float = 0.25  # prelu's starting slope (He et al. 2015)
    maxout_k: int = 2  # maxout's pieces per unit (Goodfellow et al. 2013)


@dataclass(frozen=True)
class ActivationSpec:
    make: Callable[[int, ActArgs], nn.Module]  # (units, args) -> module
    pieces: Callable[[ActArgs], int] = lambda args: 1  # inputs per output unit: the layer before widens by this


class Maxout(nn.Module):
    """max over k linear pieces per unit (Goodfellow et al. 2013): (N, units*k) -> (N, units)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        return x.unflatten(1, (x.shape[1] // self.k, self.k)).amax(dim=2)

    def extra_repr(self) -> str:
        return f"k={self.k}"


ACTIVATIONS: Registry[ActivationSpec] = Registry("activation", "model.activation")
NORMS: Registry[Callable[[int], nn.Module | None]] = Registry("norm", "model.norm")
DROPOUTS: Registry[Callable[[float], nn.Module]] = Registry("dropout", "model.dropout_kind")


def _simple(module: Callable[[], nn.Module]) -> ActivationSpec:
    return ActivationSpec(lambda units, args: module())


for _name, _spec, _doc in [
    ("relu", _simple(nn.ReLU), "max(0, x); the lecture's fix for vanishing gradients"),
    ("sigmoid", _simple(nn.Sigmoid), "1 / (1 + e^-x); saturates, so deep sigmoid nets stall (lecture 10-1)"),
    ("tanh", _simple(nn.Tanh), "zero-centred sigmoid; saturates at ±1"),
    (
        "leaky_relu",
        ActivationSpec(lambda units, a: nn.LeakyReLU(a.negative_slope)),
        "max(slope*x, x), slope model.act_args.negative_slope (Maas et al. 2013)",
    ),
    (
        "rrelu",
        ActivationSpec(lambda units, a: nn.RReLU(a.rrelu_range[0], a.rrelu_range[1])),
        "leaky ReLU with a random slope in act_args.rrelu_range while training, its mean at test (Xu et al. 2015)",
    ),
    (
        "prelu",
        ActivationSpec(lambda units, a: nn.PReLU(units, init=a.prelu_init)),
        "leaky ReLU whose slope is learned, one per unit (He et al. 2015)",
    ),
    ("elu", ActivationSpec(lambda units, a: nn.ELU(a.alpha)), "x, or alpha*(e^x - 1) below 0 (Clevert et al. 2015)"),
    ("selu", _simple(nn.SELU), "scaled ELU; self-normalizing with lecun_normal init (Klambauer et al. 2017)"),
    ("gelu", _simple(nn.GELU), "x * Phi(x) (Hendrycks & Gimpel 2016)"),
    ("silu", _simple(nn.SiLU), "x * sigmoid(x), a.k.a. swish (Ramachandran et al. 2017)"),
    ("softplus", _simple(nn.Softplus), "log(1 + e^x), a smooth ReLU"),
    (
        "maxout",
        ActivationSpec(lambda units, a: Maxout(a.maxout_k), pieces=lambda a: a.maxout_k),
        "max over act_args.maxout_k linear pieces per unit (Goodfellow et al. 2013; lecture 10-1)",
    ),
    ("identity", _simple(nn.Identity), "no non-linearity: the net collapses to one linear map"),
]:
    ACTIVATIONS.register(_name, _doc)(_spec)

# Bounded activations: their statistics report saturation; the rest report dead units.
SATURATING = (nn.Sigmoid, nn.Tanh)
# What the activation probes hook: every module an ACTIVATIONS entry can build.
ACTIVATION_TYPES = (
    nn.ReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.RReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Softplus,
    Maxout,
    nn.Identity,
)


@NORMS.register("none", "no normalization layer")
def _no_norm(num_features: int) -> nn.Module | None:
    return None


@NORMS.register("batch", "batch normalization (Ioffe & Szegedy 2015)")
def _batch_norm(num_features: int) -> nn.Module | None:
    return nn.BatchNorm1d(num_features)


class Dropout(nn.Dropout):
    """nn.Dropout (Srivastava et al. 2014) with a cheaper mask on the CPU. There, torch's bernoulli_ draws
    ~9 ns per element against ~3 ns for rand (one thread either way), and it was 22% of the lab 10-5 MLP's step;
    `rand >= p` is the same Bernoulli(1 - p) mask. CUDA keeps torch's fused kernel."""

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


def activation_outputs_saturate(module: nn.Module) -> bool:
    return isinstance(module, SATURATING)
