"""Lecture 10-1's vanishing gradients on XOR: the generated dataset, the sigmoid head (exactly binary
cross-entropy), and the two experiments: the deep sigmoid net stays at chance while the ReLU net learns XOR."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig

from dlzoo.cli import compose_and_validate
from dlzoo.data.build import build_splits
from dlzoo.engine.assembly.run import run
from dlzoo.engine.training.probes import layer_stats
from dlzoo.errors import DlzooError
from dlzoo.models import build_model
from dlzoo.models.heads import SigmoidHead
from tests.helpers import dlzoo

SEEDS = [777, 778, 779]  # the shipped default seed and the next two


def xor_cfg(*overrides: str) -> DictConfig:
    return compose_and_validate(["trainer.threads=1", "trainer.progress=false", *overrides])


def test_xor_data_is_the_four_point_table() -> None:
    data = build_splits(xor_cfg("data=xor").data)
    assert data.input_shape == (2,) and data.num_classes == 2 and data.x_train.dtype == torch.float32
    assert data.x_train.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]] and data.y_train.tolist() == [0, 1, 1, 0]
    assert torch.equal(data.x_test, data.x_train) and torch.equal(data.prep(data.x_train), data.x_train)


def test_noisy_xor_splits_are_seeded_balanced_and_distinct() -> None:
    cfg = xor_cfg("data=xor", "data.xor_samples=50", "data.xor_noise=0.2", "data.split_seed=3")
    data, again = build_splits(cfg.data), build_splits(cfg.data)
    assert len(data.y_train) == len(data.y_val) == len(data.y_test) == 200 and int(data.y_train.sum()) == 100
    assert torch.equal(data.x_train, again.x_train)  # fixed by data.split_seed
    assert not torch.equal(data.x_train, data.x_val) and not torch.equal(data.x_val, data.x_test)
    jitter = data.x_train - data.x_train.round()
    assert 0.15 < jitter.std().item() < 0.25  # the noise has the std asked for


@pytest.mark.parametrize(
    "overrides",
    [["data.xor_samples=0"], ["data.xor_noise=-1"], ["data.classes=[0,1]"], ["model.head=sigmoid", "data=mnist"]],
)
def test_bad_xor_settings_are_refused(overrides: list[str]) -> None:
    with pytest.raises(DlzooError, match="Invalid config"):
        xor_cfg("data=xor", *overrides)


@settings(max_examples=25, deadline=None)
@given(z=st.lists(st.floats(-30, 30), min_size=1, max_size=8), data=st.data())
def test_sigmoid_head_is_binary_cross_entropy_gradients_included(z: list[float], data: st.DataObject) -> None:
    """Softmax cross-entropy over SigmoidHead's logits [0, z] is BCE on sigmoid(z), and argmax is z > 0."""
    y = torch.tensor(data.draw(st.lists(st.integers(0, 1), min_size=len(z), max_size=len(z))))
    head = SigmoidHead(1)
    with torch.no_grad():
        head.weight.fill_(1.0)
        head.bias.zero_()
    x = torch.tensor(z).unsqueeze(1)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ce = F.cross_entropy(head(a), y)
    bce = F.binary_cross_entropy_with_logits(head.weight * b + head.bias, y.float().unsqueeze(1))
    ce.backward()
    bce.backward()
    assert ce.item() == pytest.approx(bce.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7)
    assert torch.equal(head(x).argmax(1), (x.squeeze(1) > 0).long())  # z > 0 is sigmoid(z) > 0.5, without rounding


@pytest.mark.parametrize(("experiment", "vanishing"), [("xor_deep_sigmoid", True), ("xor_deep_relu", False)])
def test_first_layer_gradient_vanishes_only_in_the_sigmoid_net(experiment: str, vanishing: bool) -> None:
    """At init, backprop through 9 sigmoid layers (each derivative <= 0.25) leaves the first layer a gradient
    orders of magnitude below the output layer's; ReLU passes it on at a comparable size."""
    ratios = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        cfg = xor_cfg(f"experiment={experiment}")
        data = build_splits(cfg.data)
        model = build_model(cfg.model, data.input_shape, data.num_classes)
        F.cross_entropy(model(data.x_train), data.y_train).backward()
        stats = layer_stats(model)
        ratios.append(stats["grad_norm/layers.fc1.linear"] / stats["grad_norm/layers.out"])
    assert all(r < 1e-3 for r in ratios) if vanishing else all(r > 1e-2 for r in ratios), ratios


@pytest.mark.parametrize("seed", SEEDS)
def test_deep_sigmoid_stays_at_chance_and_relu_learns_xor(seed: int, tmp_path: Path) -> None:
    stuck = run(xor_cfg("experiment=xor_deep_sigmoid", f"trainer.seed={seed}"), tmp_path / "sigmoid")
    assert stuck["test_loss"] == pytest.approx(math.log(2), abs=0.01)  # sigmoid(z) ~ 0.5 everywhere: no learning
    assert stuck["test_acc"] <= 0.75
    learned = run(xor_cfg("experiment=xor_deep_relu", f"trainer.seed={seed}"), tmp_path / "relu")
    assert learned["test_acc"] == 1.0 and learned["test_loss"] < 0.05


def test_relu_learns_noisy_xor_through_the_cli(tmp_path: Path) -> None:
    noisy = ["data.xor_samples=25", "data.xor_noise=0.1", "trainer.epochs=1000", "trainer.threads=1"]
    proc = dlzoo("train", "experiment=xor_deep_relu", *noisy, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_acc"] >= 0.95
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)  # every run keeps one
    assert state["epoch"] == 1000
