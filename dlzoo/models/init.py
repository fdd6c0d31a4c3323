"""Weight and bias initializers by name, `init_weights`, which applies them to a model's layers, and LSUV,
the data-driven one (Mishkin & Matas 2015). Initializer parameters arrive as one plain InitArgs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dlzoo.checks import Checks
from dlzoo.registry import Registry


@dataclass
class InitArgs:
    std: float = 1.0  # normal: 1.0 is TF's random_normal, the lecture labs' baseline
    range: float = 0.05  # uniform: U(-range, range) (Keras' RandomUniform default)
    value: float = 0.0  # constant
    scale: float = 1.0  # variance_scaling: variance = scale / n
    mode: str = "fan_in"  # variance_scaling: n = fan_in | fan_out | fan_avg
    distribution: str = "truncated_normal"  # variance_scaling: normal | truncated_normal | uniform (Keras' default)
    gain: float = 1.0  # orthogonal


Initializer = Callable[[Tensor, InitArgs], None]
INITIALIZERS: Registry[Initializer] = Registry("init", "model.init")
# Biases are 1-D: only initializers that need no fan_in/fan_out can fill them.
BIAS_INITIALIZERS = {"default", "zeros", "constant", "normal", "uniform"}
# Initializers that also need a batch of training data (see lsuv_).
DATA_DRIVEN = {"lsuv"}
MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("normal", "truncated_normal", "uniform")
# std of a standard normal truncated at ±2, Keras' correction so truncated_normal keeps the asked-for variance.
_TRUNC_STD = 0.87962566103423978


def fans(t: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear (out, in) or Conv (out, in, *kernel) weight."""
    return nn.init._calculate_fan_in_and_fan_out(t)


def variance_scaling_(t: Tensor, scale: float, mode: str, distribution: str) -> None:
    """Keras' VarianceScaling: std = sqrt(scale / n) with n the fan that `mode` names."""
    fan_in, fan_out = fans(t)
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    std = math.sqrt(scale / n)
    if distribution == "uniform":
        nn.init.uniform_(t, -math.sqrt(3) * std, math.sqrt(3) * std)
    elif distribution == "normal":
        nn.init.normal_(t, 0.0, std)
    else:
        s = std / _TRUNC_STD
        nn.init.trunc_normal_(t, 0.0, s, -2 * s, 2 * s)


def _register(name: str, doc: str) -> Callable[[Initializer], Initializer]:
    return INITIALIZERS.register(name, doc)


_register("default", "keep PyTorch's own init (Kaiming-uniform a=sqrt(5); U(±1/sqrt(fan_in)) biases)")(
    lambda t, a: None
)
_register("zeros", "all zeros: every unit computes the same thing (the symmetry problem)")(
    lambda t, a: nn.init.zeros_(t)
)
_register("constant", "every value init_args.value")(lambda t, a: nn.init.constant_(t, a.value))
_register("normal", "N(0, init_args.std^2); std 1 is TF's random_normal, the lecture labs' baseline")(
    lambda t, a: nn.init.normal_(t, 0.0, a.std)
)
_register("uniform", "U(-init_args.range, init_args.range)")(lambda t, a: nn.init.uniform_(t, -a.range, a.range))
for _prefix, _who in (("xavier", "Glorot & Bengio 2010"), ("glorot", "same as xavier")):
    _register(f"{_prefix}_uniform", f"{_who}: U(±sqrt(6 / (fan_in + fan_out))); TF's xavier_initializer")(
        lambda t, a: variance_scaling_(t, 1.0, "fan_avg", "uniform")
    )
    _register(f"{_prefix}_normal", f"{_who}: N(0, 2 / (fan_in + fan_out))")(
        lambda t, a: variance_scaling_(t, 1.0, "fan_avg", "normal")
    )
for _prefix, _who in (("he", "He et al. 2015"), ("kaiming", "same as he")):
    _register(f"{_prefix}_uniform", f"{_who}: U(±sqrt(6 / fan_in)), for ReLU nets")(
        lambda t, a: variance_scaling_(t, 2.0, "fan_in", "uniform")
    )
    _register(f"{_prefix}_normal", f"{_who}: N(0, 2 / fan_in), for ReLU nets")(
        lambda t, a: variance_scaling_(t, 2.0, "fan_in", "normal")
    )
_register("lecun_uniform", "LeCun 1998: U(±sqrt(3 / fan_in))")(
    lambda t, a: variance_scaling_(t, 1.0, "fan_in", "uniform")
)
_register("lecun_normal", "LeCun 1998: N(0, 1 / fan_in); what SELU needs")(
    lambda t, a: variance_scaling_(t, 1.0, "fan_in", "normal")
)
_register(
    "variance_scaling",
    "Keras VarianceScaling: std sqrt(init_args.scale / n), n by init_args.mode, drawn by init_args.distribution",
)(lambda t, a: variance_scaling_(t, a.scale, a.mode, a.distribution))
_register("orthogonal", "a (semi-)orthogonal matrix times init_args.gain (Saxe et al. 2014)")(
    lambda t, a: nn.init.orthogonal_(t, a.gain)
)
_register("lsuv", "orthogonal, then rescaled layer by layer to unit output variance on data (Mishkin & Matas 2015)")(
    lambda t, a: nn.init.orthogonal_(t)
)

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


@torch.no_grad()
def init_weights(model: nn.Module, init: str, bias_init: str, init_args: InitArgs, bias_args: InitArgs) -> None:
    """Apply the named initializers to every Linear/Conv layer's weight and bias (norm layers keep 1 and 0)."""
    weight_fn, bias_fn = INITIALIZERS.get(init), INITIALIZERS.get(bias_init)
    for module in model.modules():
        if isinstance(module, WEIGHTED):
            # A block may carry its own weight initializer (the labs' conv W ~ N(0, 0.01)); see models/layers.py.
            name, args = getattr(module, "dlzoo_init", (None, init_args))
            (INITIALIZERS.get(name) if name else weight_fn)(module.weight, args)
            if module.bias is not None:
                bias_fn(module.bias, bias_args)


@torch.no_grad()
def lsuv_(model: nn.Module, batch: Tensor, tol: float = 0.1, max_iter: int = 10) -> list[float]:
    """Layer-sequential unit variance: walking the layers input to output, divide each weight by the std of
    its layer's output on `batch` until the variance is within `tol` of 1. Returns the final variances."""
    layers = [m for m in model.modules() if isinstance(m, WEIGHTED)]
    was_training = model.training
    model.eval()
    variances = []
    captured: list[Tensor] = []
    for layer in layers:
        hook = layer.register_forward_hook(lambda mod, inp, out: captured.append(out))
        try:
            for _ in range(max_iter):
                captured.clear()
                model(batch)
                var = captured[0].var().item()
                if abs(var - 1.0) < tol or var == 0.0:
                    break
                layer.weight.div_(math.sqrt(var))
            captured.clear()
            model(batch)
            variances.append(captured[0].var().item())
        finally:
            hook.remove()
    model.train(was_training)
    return variances


def problems(m: Any) -> list[str]:
    """What is wrong with the model section's initializer settings (init_args, bias_init_args, bias_init)."""
    c = Checks(m, "model")
    for key in ("init_args", "bias_init_args"):
        c.check(f"{key}.std", m[key].std > 0, "> 0")
        c.check(f"{key}.range", m[key].range > 0, "> 0")
        c.check(f"{key}.scale", m[key].scale > 0, "> 0")
        c.check(f"{key}.gain", m[key].gain > 0, "> 0")
        c.check(f"{key}.mode", m[key].mode in MODES, " or ".join(MODES))
        c.check(f"{key}.distribution", m[key].distribution in DISTRIBUTIONS, " or ".join(DISTRIBUTIONS))
    if m.bias_init in INITIALIZERS and m.bias_init not in BIAS_INITIALIZERS:
        c.problems.append(
            f"model.bias_init={m.bias_init!r} needs a weight matrix's fans and cannot initialize a bias; "
            f"choices for biases: {', '.join(sorted(BIAS_INITIALIZERS))}."
        )
    return c.problems
