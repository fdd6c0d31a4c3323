"""The README's promise: a new activation or optimizer is one registry entry, and `dlzoo ls`, validation, the
model builder, the probes and the optimizer builder all pick it up with nothing else touched."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from dlzoo import cli
from dlzoo.config.compose import compose_and_validate
from dlzoo.engine.training.probes import activation_stats
from dlzoo.errors import DlzooError
from dlzoo.models import build_model
from dlzoo.models.activations import ACTIVATIONS, ActivationSpec
from dlzoo.optim import build_optimizer
from dlzoo.optim.optimizers import OPTIMIZERS, OptimizerSpec

OVERRIDES = ["model.hidden=[8]", "data.name=mnist"]


@pytest.fixture
def hardswish(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """One entry, as a contributor would add it to the list in models/activations.py, removed afterwards."""
    monkeypatch.setitem(ACTIVATIONS._entries, "hardswish", ActivationSpec(lambda units, args: nn.Hardswish()))
    monkeypatch.setitem(ACTIVATIONS._docs, "hardswish", "x * relu6(x + 3) / 6 (Howard et al. 2019)")
    yield "hardswish"


def test_a_new_activation_is_listed_validated_built_and_probed(
    hardswish: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["ls", "activation"]) == 0
    assert "Howard et al. 2019" in capsys.readouterr().out  # listed with its doc line
    cfg = compose_and_validate([*OVERRIDES, f"model.activation={hardswish}"])
    model = build_model(cfg.model, (1, 28, 28), 10)
    assert any(isinstance(m, nn.Hardswish) for m in model.modules())
    with activation_stats(model) as stats:
        model(torch.rand(4, 1, 28, 28))
    assert any(k.startswith("act_std/") for k in stats)  # the probes found it without a type list
    with pytest.raises(DlzooError, match="Did you mean 'hardswish'"):
        compose_and_validate([*OVERRIDES, "model.activation=hardswish_"])


def test_a_new_optimizer_is_validated_built_and_asked_for_its_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = OptimizerSpec(lambda params, cfg: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum), True)
    monkeypatch.setitem(OPTIMIZERS._entries, "heavy_ball", spec)
    monkeypatch.setitem(OPTIMIZERS._docs, "heavy_ball", "Polyak's heavy ball")
    cfg = compose_and_validate([*OVERRIDES, "optim.name=heavy_ball", "optim.momentum=0.9"])
    assert isinstance(build_optimizer(cfg.optim, nn.Linear(2, 2).parameters()), torch.optim.SGD)
    # has_momentum=True: validation asks the entry, so momentum=0 is refused for it as for `momentum`.
    refused = re.escape("optim.momentum=0.0 is out of range: it must be > 0 for optim.name=heavy_ball")
    with pytest.raises(DlzooError, match=refused):
        compose_and_validate([*OVERRIDES, "optim.name=heavy_ball", "optim.momentum=0.0"])
