"""Registry-driven tests: every registered name is exercised, so a new entry is tested the moment it exists."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from dlzoo.config import registries
from dlzoo.errors import DlzooError
from dlzoo.models.blocks import ACTIVATIONS, NORMS
from dlzoo.models.init import BIAS_INITIALIZERS, INITIALIZERS
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
    assert len(registry) >= 1 and keys
    for name in registry:
        assert registry.doc(name), f"{kind} {name!r} has no one-line doc for `dlzoo ls`"


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_activation_keeps_shape_and_is_finite(name: str) -> None:
    x = torch.randn(7, 13)
    y = ACTIVATIONS.get(name)()(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("name", NORMS.names())
def test_norm_keeps_shape(name: str) -> None:
    layer = NORMS.get(name)(16)
    x = torch.randn(8, 16)
    assert (x if layer is None else layer(x)).shape == x.shape


# What each initializer promises for a (fan_out=400, fan_in=1000) weight: ("std", s) or ("bound", b) or special.
FAN_IN, FAN_OUT = 1000, 400
EXPECTED = {
    "default": ("unchanged", None),
    "zeros": ("zeros", None),
    "normal": ("std", 1.0),
    "xavier_uniform": ("bound", math.sqrt(6 / (FAN_IN + FAN_OUT))),
    "xavier_normal": ("std", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    "he_uniform": ("bound", math.sqrt(6 / FAN_IN)),
    "he_normal": ("std", math.sqrt(2 / FAN_IN)),
    "lecun_uniform": ("bound", math.sqrt(3 / FAN_IN)),
    "lecun_normal": ("std", math.sqrt(1 / FAN_IN)),
}


def test_every_initializer_has_a_promise() -> None:
    assert set(INITIALIZERS.names()) == set(EXPECTED), "add the new initializer's formula to EXPECTED"


@pytest.mark.parametrize("name", INITIALIZERS.names())
def test_initializer_matches_its_fan_based_formula(name: str) -> None:
    torch.manual_seed(0)
    w = torch.full((FAN_OUT, FAN_IN), 7.0)
    INITIALIZERS.get(name)(w)
    kind, value = EXPECTED[name]
    if kind == "unchanged":
        assert (w == 7.0).all()
    elif kind == "zeros":
        assert (w == 0).all()
    elif kind == "std":
        assert abs(w.mean().item()) < 0.01 * value + 1e-3
        assert w.std().item() == pytest.approx(value, rel=0.01)
    else:  # uniform on [-bound, bound]: std = bound / sqrt(3), and nothing outside the bound
        assert w.abs().max().item() <= value
        assert w.abs().max().item() > 0.99 * value
        assert w.std().item() == pytest.approx(value / math.sqrt(3), rel=0.01)


@pytest.mark.parametrize("name", sorted(BIAS_INITIALIZERS))
def test_bias_initializers_accept_a_vector(name: str) -> None:
    b = torch.zeros(50)
    INITIALIZERS.get(name)(b)
    assert torch.isfinite(b).all()


def _optim_cfg(name: str) -> OmegaConf:
    from dlzoo.config import OptimConfig

    cfg = OmegaConf.structured(OptimConfig(name=name))
    cfg.lr = 0.1 if name == "sgd" else 0.05
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


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_hits_its_endpoints_and_stays_positive(name: str) -> None:
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = build_scheduler(OmegaConf.create({"name": name, "min_lr": 0.05}), optimizer, total_steps=100)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(100):
        optimizer.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[0] == pytest.approx(0.5)
    assert all(lr > 0 for lr in lrs)
    assert lrs[-1] == pytest.approx({"constant": 0.5, "cosine": 0.05}[name])
