"""Registry-driven tests: every registered name is exercised, so a new entry is tested the moment it exists."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from torch import nn

from dlzoo.config.validate import registries
from dlzoo.errors import DlzooError
from dlzoo.models.activations import ACTIVATIONS, ActArgs, activation_spec
from dlzoo.models.init import BIAS_INITIALIZERS, INITIALIZERS, InitArgs
from dlzoo.models.norm_dropout import DROPOUTS, NORMS, AlphaDropout, Dropout
from dlzoo.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler
from dlzoo.registry import Registry


def test_unknown_name_lists_choices_and_suggests() -> None:
    with pytest.raises(DlzooError) as info:
        ACTIVATIONS.get("rleu")
    message = str(info.value)
    assert "model.activation" in message and "'rleu'" in message
    assert "Did you mean 'relu'" in message and "dlzoo ls activation" in message
    for name in ACTIVATIONS.names():
        assert name in message


def test_register_rejects_duplicates_and_bad_names() -> None:
    reg: Registry[int] = Registry("thing", "x.thing")
    reg.register("one")(1)
    with pytest.raises(ValueError, match="twice"):
        reg.register("one")(2)
    with pytest.raises(ValueError, match="lower_snake"):
        reg.register("Two-Words")(3)
    assert reg.names() == ["one"] and "one" in reg and len(reg) == 1


@pytest.mark.parametrize("kind", list(registries()))
def test_every_registry_is_documented(kind: str) -> None:
    registry, keys = registries()[kind]
    assert len(registry) >= 1 and (keys or kind == "block")  # block types live inside model.blocks lists
    for name in registry:
        assert registry.doc(name), f"{kind} {name!r} has no one-line doc for `dlzoo ls`"


X = torch.linspace(-4, 4, 2 * 12).reshape(2, 12)
SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805
# Each activation's formula, in eval mode, with the given act_args (maxout sees pairs of inputs).
ACTIVATION_MATH = {
    "relu": ({}, lambda x: x.clamp_min(0)),
    "sigmoid": ({}, lambda x: 1 / (1 + torch.exp(-x))),
    "tanh": ({}, lambda x: (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x))),
    "leaky_relu": ({"negative_slope": 0.2}, lambda x: torch.where(x > 0, x, 0.2 * x)),
    "rrelu": ({"rrelu_range": [0.1, 0.3]}, lambda x: torch.where(x > 0, x, 0.2 * x)),  # mean slope at test
    "prelu": ({"prelu_init": 0.25}, lambda x: torch.where(x > 0, x, 0.25 * x)),
    "elu": ({"alpha": 0.5}, lambda x: torch.where(x > 0, x, 0.5 * (torch.exp(x) - 1))),
    "selu": ({}, lambda x: SELU_SCALE * torch.where(x > 0, x, SELU_ALPHA * (torch.exp(x) - 1))),
    "gelu": ({}, lambda x: x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))),
    "silu": ({}, lambda x: x / (1 + torch.exp(-x))),
    "softplus": ({}, lambda x: torch.log1p(torch.exp(x))),
    "maxout": ({"maxout_k": 3}, lambda x: x.reshape(2, 4, 3).amax(-1)),
    "identity": ({}, lambda x: x),
}


def test_every_activation_has_its_formula() -> None:
    assert set(ACTIVATION_MATH) == set(ACTIVATIONS.names())


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_activation_matches_its_formula(name: str) -> None:
    args, formula = ACTIVATION_MATH[name]
    spec = ACTIVATIONS.get(name)
    module = spec.build(12 // spec.pieces(ActArgs(**args)), ActArgs(**args)).eval()
    assert torch.allclose(module(X), formula(X), atol=1e-5)
    assert activation_spec(module) is spec  # the activation probes will see it


def test_rrelu_slopes_are_random_within_range_in_training() -> None:
    module = ACTIVATIONS.get("rrelu").make(1, ActArgs(rrelu_range=[0.1, 0.3])).train()
    x = -torch.ones(10000)
    slopes = -module(x)
    assert slopes.min() >= 0.1 and slopes.max() <= 0.3 and slopes.std() > 0.03


def test_prelu_slope_is_learned_per_unit() -> None:
    module = ACTIVATIONS.get("prelu").make(5, ActArgs())
    assert [p.shape for p in module.parameters()] == [torch.Size([5])]


@pytest.mark.parametrize("name", NORMS.names())
def test_norm_keeps_shape(name: str) -> None:
    layer = NORMS.get(name)(16)
    x = torch.randn(8, 16)
    assert (x if layer is None else layer(x)).shape == x.shape


@pytest.mark.parametrize("name", DROPOUTS.names())
def test_dropout_is_identity_at_eval_and_keeps_the_mean_in_training(name: str) -> None:
    torch.manual_seed(0)
    layer = DROPOUTS.get(name)(0.3)
    x = torch.randn(200000) if name == "alpha_dropout" else torch.ones(200000)
    assert torch.equal(layer.eval()(x), x)
    y = layer.train()(x)
    assert y.mean().item() == pytest.approx(x.mean().item(), abs=0.01)
    if name == "alpha_dropout":  # SELU's fixed point: mean 0, variance 1 survive
        assert y.std().item() == pytest.approx(1.0, abs=0.01)


@settings(max_examples=40, deadline=None)
@given(p=st.floats(0.05, 0.95), n=st.integers(1, 3000), seed=st.integers(0, 2**16))
def test_the_cpu_dropout_mask_is_bernoulli_and_scales_what_it_keeps(p: float, n: int, seed: int) -> None:
    # dlzoo's Dropout draws its CPU mask as rand >= p (cheaper than bernoulli_): each output is 0 or x / (1 - p),
    # the gradient is the same mask, and about a fraction p is dropped.
    torch.manual_seed(seed)
    x = (torch.rand(n) + 0.5).requires_grad_()
    y = Dropout(p).train()(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / (1 - p), rtol=1e-6)
    if n >= 1000:  # 5 standard deviations of a Binomial(n, p) fraction
        assert abs((~kept).float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)


@settings(max_examples=20, deadline=None)
@given(p=st.floats(0.05, 0.95), seed=st.integers(0, 2**16))
def test_the_cpu_alpha_dropout_is_torchs_map_with_a_cheaper_mask(p: float, seed: int) -> None:
    # torch's alpha_dropout sends a kept x to a*x + b and every dropped unit to one constant; read a, b and the
    # constant off torch's own output, then dlzoo's must map each unit to one of the two.
    torch.manual_seed(seed)
    x = torch.randn(4000)
    theirs = torch.nn.functional.alpha_dropout(x, p, training=True)
    dropped = theirs.mode().values
    i, j = torch.nonzero(~torch.isclose(theirs, dropped)).flatten()[:2]
    a = (theirs[i] - theirs[j]) / (x[i] - x[j])
    b = theirs[i] - a * x[i]
    ours = AlphaDropout(p).train()(x)
    is_kept = torch.isclose(ours, a * x + b, atol=1e-4)
    assert torch.isclose(ours[~is_kept], dropped, atol=1e-5).all()
    assert abs((~is_kept).float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / len(x))


def test_the_cpu_dropout_keeps_layout_and_autocast_dtype() -> None:
    x = torch.randn(8, 16, 6, 6).to(memory_format=torch.channels_last)
    y = Dropout(0.3).train()(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == torch.float32
    assert Dropout(0.3).train()(x.bfloat16()).dtype == torch.bfloat16
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    assert isinstance(Dropout(0.3), nn.Dropout)  # MC dropout and the probes find it as a dropout layer


# What each initializer promises for a (fan_out=400, fan_in=1000) weight: ("std", s) or ("bound", b) or special.
FAN_IN, FAN_OUT = 1000, 400
EXPECTED = {
    "default": ("unchanged", None),
    "zeros": ("value", 0.0),
    "constant": ("value", 0.0),
    "normal": ("std", 1.0),
    "uniform": ("bound", 0.05),
    "xavier_uniform": ("bound", math.sqrt(6 / (FAN_IN + FAN_OUT))),
    "glorot_uniform": ("bound", math.sqrt(6 / (FAN_IN + FAN_OUT))),
    "xavier_normal": ("std", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    "glorot_normal": ("std", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    "he_uniform": ("bound", math.sqrt(6 / FAN_IN)),
    "kaiming_uniform": ("bound", math.sqrt(6 / FAN_IN)),
    "he_normal": ("std", math.sqrt(2 / FAN_IN)),
    "kaiming_normal": ("std", math.sqrt(2 / FAN_IN)),
    "lecun_uniform": ("bound", math.sqrt(3 / FAN_IN)),
    "lecun_normal": ("std", math.sqrt(1 / FAN_IN)),
    "variance_scaling": ("std", math.sqrt(1 / FAN_IN)),  # Keras' default: scale 1, fan_in, truncated normal
    "orthogonal": ("orthogonal", 1.0),
    "lsuv": ("orthogonal", 1.0),  # the data-driven rescaling happens in build_model (tests/test_models.py)
}


def test_every_initializer_has_a_promise() -> None:
    assert set(INITIALIZERS.names()) == set(EXPECTED), "add the new initializer's formula to EXPECTED"


def check_promise(w: torch.Tensor, kind: str, value: float | None) -> None:
    if kind == "unchanged":
        assert (w == 7.0).all()
    elif kind == "value":
        assert (w == value).all()
    elif kind == "std":
        assert abs(w.mean().item()) < 0.01 * value + 1e-3
        assert w.std().item() == pytest.approx(value, rel=0.01)
    elif kind == "orthogonal":  # rows orthonormal (times the gain): W W^T = gain^2 I
        assert torch.allclose(w @ w.T, value**2 * torch.eye(w.shape[0]), atol=1e-4)
    else:  # uniform on [-bound, bound]: std = bound / sqrt(3), and nothing outside the bound
        assert w.abs().max().item() <= value
        assert w.abs().max().item() > 0.99 * value
        assert w.std().item() == pytest.approx(value / math.sqrt(3), rel=0.01)


@pytest.mark.parametrize("name", INITIALIZERS.names())
def test_initializer_matches_its_fan_based_formula(name: str) -> None:
    torch.manual_seed(0)
    w = torch.full((FAN_OUT, FAN_IN), 7.0)
    INITIALIZERS.get(name)(w, InitArgs())
    check_promise(w, *EXPECTED[name])


@pytest.mark.parametrize(
    ("name", "args", "promise"),
    [
        ("normal", {"std": 0.01}, ("std", 0.01)),
        ("uniform", {"range": 0.3}, ("bound", 0.3)),
        ("constant", {"value": 0.1}, ("value", 0.1)),
        ("orthogonal", {"gain": 2.0}, ("orthogonal", 2.0)),
    ],
)
def test_initializer_parameters(name: str, args: dict, promise: tuple) -> None:
    torch.manual_seed(0)
    w = torch.full((FAN_OUT, FAN_IN), 7.0)
    INITIALIZERS.get(name)(w, InitArgs(**args))
    check_promise(w, *promise)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("distribution", ["normal", "truncated_normal", "uniform"])
def test_variance_scaling_is_keras_formula(mode: str, distribution: str) -> None:
    torch.manual_seed(0)
    n = {"fan_in": FAN_IN, "fan_out": FAN_OUT, "fan_avg": (FAN_IN + FAN_OUT) / 2}[mode]
    std = math.sqrt(2.0 / n)  # Géron: VarianceScaling(scale=2., mode='fan_avg', distribution='uniform')
    w = torch.empty(FAN_OUT, FAN_IN)
    INITIALIZERS.get("variance_scaling")(w, InitArgs(scale=2.0, mode=mode, distribution=distribution))
    assert w.std().item() == pytest.approx(std, rel=0.015)
    if distribution == "uniform":
        assert w.abs().max().item() <= math.sqrt(3) * std
    if distribution == "truncated_normal":  # cut at 2 pre-correction stds, with the variance restored
        assert w.abs().max().item() <= 2 * std / 0.87962566103423978


@pytest.mark.parametrize("name", sorted(BIAS_INITIALIZERS))
def test_bias_initializers_accept_a_vector(name: str) -> None:
    b = torch.zeros(50)
    INITIALIZERS.get(name)(b, InitArgs())
    assert torch.isfinite(b).all()


def _optim_cfg(name: str) -> OmegaConf:
    """The optimizer's own YAML defaults (every registered optimizer must have one), with a toy-sized lr."""
    from dlzoo.config.validate import OptimConfig
    from dlzoo.paths import conf_dir

    path = conf_dir() / "optim" / f"{name}.yaml"
    assert path.is_file(), f"optimizer {name!r} has no conf/optim/{name}.yaml"
    cfg = OmegaConf.merge(OmegaConf.structured(OptimConfig), OmegaConf.load(path))
    cfg.lr = 0.05
    return cfg


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_lowers_a_toy_loss(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    x = torch.randn(64, 5)
    y = x @ torch.randn(5, 1) + 0.5  # a reachable target, so a working optimizer must get close
    optimizer = build_optimizer(_optim_cfg(name), model.parameters())
    first = None
    for _ in range(100):
        loss = nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first


# The CPU optimizers with a fused kernel in torch (measured 1.4-3.6x faster per step than the default; see _fused).
FUSED_ON_CPU = {"sgd", "momentum", "nesterov", "adagrad", "adam", "adamw"}


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizers_use_the_fused_kernel_where_torch_has_one(name: str) -> None:
    optimizer = build_optimizer(_optim_cfg(name), nn.Linear(5, 1).parameters())
    assert bool(optimizer.defaults.get("fused")) == (name in FUSED_ON_CPU)


def run_schedule(
    name: str,
    overrides: dict | None = None,
    optim: str = "sgd",
    spe: int = 10,
    total: int = 200,
    losses: list[float] | None = None,
) -> tuple[list[float], list[float]]:
    """lr (and momentum/beta1) at every step 0..total of `name` with its YAML defaults, lr0 = 0.1."""
    from dlzoo.config.validate import SchedConfig
    from dlzoo.paths import conf_dir

    path = conf_dir() / "sched" / f"{name}.yaml"
    assert path.is_file(), f"schedule {name!r} has no conf/sched/{name}.yaml"
    cfg = OmegaConf.merge(OmegaConf.structured(SchedConfig), OmegaConf.load(path), overrides or {})
    params = [nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9) if optim == "sgd" else torch.optim.Adam(params, lr=0.1)
    sched = build_scheduler(cfg, opt, steps_per_epoch=spe, total_steps=total)
    lrs, moms = [], []
    for step in range(total + 1):
        group = opt.param_groups[0]
        lrs.append(group["lr"])
        moms.append(group["momentum"] if optim == "sgd" else group["betas"][0])
        if losses is not None and step % spe == spe - 1:
            sched.epoch_end(losses[step // spe])
        sched.step()
    return lrs, moms


def _check_constant() -> None:
    lrs, moms = run_schedule("constant")
    assert set(lrs) == {0.1} and set(moms) == {0.9}


def _check_power() -> None:
    lrs, _ = run_schedule("power", {"decay_steps": 50, "power": 1.0})
    assert lrs[0] == pytest.approx(0.1) and lrs[50] == pytest.approx(0.05) and lrs[150] == pytest.approx(0.025)
    assert all(a > b for a, b in itertools.pairwise(lrs))


def _check_exponential() -> None:
    lrs, _ = run_schedule("exponential", {"decay_epochs": 10})
    assert lrs[0] == lrs[9] == pytest.approx(0.1)  # per epoch: flat inside one
    assert lrs[100] == pytest.approx(0.01) and lrs[200] == pytest.approx(0.001)


def _check_exponential_step() -> None:
    lrs, _ = run_schedule("exponential_step", {"decay_steps": 100, "decay_rate": 0.5})
    assert lrs[0] == pytest.approx(0.1) and lrs[100] == pytest.approx(0.05) and lrs[50] == pytest.approx(0.1 * 0.5**0.5)
    stair, _ = run_schedule("exponential_step", {"decay_steps": 100, "decay_rate": 0.5, "staircase": True})
    assert stair[99] == pytest.approx(0.1) and stair[100] == pytest.approx(0.05)


def _check_piecewise() -> None:
    lrs, _ = run_schedule("piecewise")  # Géron: [5, 15] epochs -> 0.01, 0.005, 0.001
    assert lrs[0] == lrs[49] == 0.01 and lrs[50] == lrs[149] == 0.005 and lrs[150] == lrs[200] == 0.001


def _check_plateau() -> None:
    losses = [1.0, 0.9, 0.8] + [0.85] * 17  # stalls after epoch 3 (index 2)
    lrs, _ = run_schedule("plateau", {"patience": 2, "factor": 0.5}, losses=losses)
    assert lrs[0] == lrs[50] == 0.1  # 3 bad epochs needed (patience 2): epochs 3, 4, 5 -> cut after epoch 5
    assert lrs[60] == pytest.approx(0.05) and lrs[90] == pytest.approx(0.025)


def _check_onecycle() -> None:
    cfg = {"max_lr": 1.0, "final_fraction": 0.1, "final_div": 1000.0}
    lrs, moms = run_schedule("onecycle", cfg)  # anneal from step 180, peak at step 90
    assert lrs[0] == pytest.approx(0.1) and lrs[90] == pytest.approx(1.0) and lrs[180] == pytest.approx(0.1)
    assert lrs[200] == pytest.approx(0.1 / 1000) and max(lrs) == pytest.approx(1.0)
    assert moms[0] == pytest.approx(0.95) and moms[90] == pytest.approx(0.85) and moms[180] == pytest.approx(0.95)
    _, betas = run_schedule("onecycle", cfg, optim="adam")  # Adam's beta1 plays momentum's part
    assert betas[90] == pytest.approx(0.85) and betas[200] == pytest.approx(0.95)


def _check_cosine() -> None:
    lrs, _ = run_schedule("cosine", {"warmup_steps": 20, "min_lr": 0.01})
    assert lrs[0] == pytest.approx(0.1 / 20) and lrs[19] == pytest.approx(0.1)
    assert lrs[110] == pytest.approx(0.055) and lrs[200] == pytest.approx(0.01)
    assert all(a >= b for a, b in itertools.pairwise(lrs[19:]))


SCHEDULE_CHECKS = {
    name.removeprefix("_check_"): fn for name, fn in dict(globals()).items() if name.startswith("_check_")
}


def test_every_schedule_has_a_check() -> None:
    assert set(SCHEDULE_CHECKS) == set(SCHEDULES.names())


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_follows_its_formula(name: str) -> None:
    SCHEDULE_CHECKS[name]()
    lrs, _ = run_schedule(name)
    assert all(lr > 0 for lr in lrs[:-1]) and lrs[-1] >= 0  # the last entry is after the final step
