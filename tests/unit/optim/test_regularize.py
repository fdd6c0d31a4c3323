"""Weight penalties, clipping and max-norm against their formulas (Géron ch. 11's clipping example included)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dlzoo.optim.regularize import Regularizer


def two_layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def test_penalties_sum_weights_only() -> None:
    model = two_layer()
    w1, w2 = model[0].weight, model[2].weight
    l1 = Regularizer(l1=0.1).penalty(model)
    l2 = Regularizer(l2=0.01).penalty(model)
    both = Regularizer(l1=0.1, l2=0.01).penalty(model)
    assert l1.item() == pytest.approx(0.1 * (w1.abs().sum() + w2.abs().sum()).item())  # no biases, no BN
    assert l2.item() == pytest.approx(0.01 * (w1.pow(2).sum() + w2.pow(2).sum()).item())
    assert both.item() == pytest.approx(l1.item() + l2.item())
    assert Regularizer().penalty(model) is None


def test_l2_penalty_gradient_is_two_lambda_w() -> None:
    model = two_layer()
    Regularizer(l2=0.5).penalty(model).backward()
    assert torch.allclose(model[0].weight.grad, model[0].weight.detach())  # d/dW 0.5 W^2 = W
    assert model[0].bias.grad is None


def gradient_of(values: list[float]) -> nn.Module:
    layer = nn.Linear(2, 1, bias=False)
    layer.weight.grad = torch.tensor([values])
    return layer


def test_clip_value_geron_example() -> None:
    layer = gradient_of([0.9, 100.0])
    Regularizer(clip_value=1.0).clip_(layer)
    assert layer.weight.grad.tolist() == [[pytest.approx(0.9), 1.0]]  # the direction changes


def test_clip_norm_geron_example() -> None:
    layer = gradient_of([0.9, 100.0])
    Regularizer(clip_norm=1.0).clip_(layer)
    assert layer.weight.grad.flatten().tolist() == pytest.approx([0.00899964, 0.9999595], abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(c=st.floats(0.1, 5.0), scale=st.floats(0.01, 10.0))
def test_max_norm_caps_every_unit_and_leaves_small_ones(c: float, scale: float) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(20, 8)
    with torch.no_grad():
        layer.weight.mul_(scale * torch.linspace(0.1, 10, 8).unsqueeze(1))
    before = layer.weight.detach().clone()
    Regularizer(max_norm=c).constrain_(layer)
    norms, old = layer.weight.norm(dim=1), before.norm(dim=1)
    assert (norms <= c * (1 + 1e-5)).all()
    small = old <= c
    assert torch.allclose(layer.weight[small], before[small])
    assert torch.allclose(norms[~small], torch.full_like(norms[~small], c), rtol=1e-5)
