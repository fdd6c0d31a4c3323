"""Activations by short name (timm's create_act style). Each entry says how to build its module and, for bounded
ones, the bounds its outputs saturate at; the modules it builds are tagged with the entry, so the activation
probes find them whatever their class. Parameters (slopes, alpha, maxout's k) arrive as one plain ActArgs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn

from dlzoo.checks import Checks
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
    bounds: tuple[float, float] | None = None  # a bounded activation's range: its probes report saturation

    def build(self, units: int, args: ActArgs) -> nn.Module:
        """The module for a layer of `units` outputs, tagged with this entry for the activation probes."""
        module = self.make(units, args)
        module.dlzoo_activation = self
        return module


def activation_spec(module: nn.Module) -> ActivationSpec | None:
    """The ACTIVATIONS entry that built `module`, or None for any other module."""
    spec = getattr(module, "dlzoo_activation", None)
    return spec if isinstance(spec, ActivationSpec) else None


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


def _simple(module: Callable[[], nn.Module], bounds: tuple[float, float] | None = None) -> ActivationSpec:
    return ActivationSpec(lambda units, args: module(), bounds=bounds)


for _name, _spec, _doc in [
    ("relu", _simple(nn.ReLU), "max(0, x); the lecture's fix for vanishing gradients"),
    (
        "sigmoid",
        _simple(nn.Sigmoid, (0.0, 1.0)),
        "1 / (1 + e^-x); saturates, so deep sigmoid nets stall (lecture 10-1)",
    ),
    ("tanh", _simple(nn.Tanh, (-1.0, 1.0)), "zero-centred sigmoid; saturates at ±1"),
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


def problems(a: ActArgs) -> list[str]:
    """What is wrong with model.act_args."""
    c = Checks(a, "model.act_args")
    c.check("negative_slope", a.negative_slope >= 0, ">= 0 (Géron: 0.2 often beats 0.01)")
    c.check("alpha", a.alpha > 0, "> 0")
    c.check(
        "rrelu_range",
        len(a.rrelu_range) == 2 and 0 <= a.rrelu_range[0] <= a.rrelu_range[1] < 1,
        "[lower, upper] with 0 <= lower <= upper < 1",
    )
    c.check("maxout_k", a.maxout_k >= 2, ">= 2 (one piece is just a linear unit)")
    return c.problems
