"""trainer.compile: torch.compile for the training forward, eager when compilation is unavailable. The probe step
that tries the compiler must not change the run: a fallback run is bit-identical to an eager one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dlzoo.config.validate import OptimConfig, SchedConfig
from dlzoo.data.datasets import load_splits
from dlzoo.data.splits import Splits
from dlzoo.engine.training.loop import FitOptions, fit, seed_everything
from dlzoo.models.mlp import MLP
from dlzoo.optim import build_optimizer, build_scheduler
from tests.helpers import Recorder


@pytest.fixture
def toy(toy_root: Path) -> Splits:
    return load_splits("mnist", str(toy_root), download=False, val_size=100)


def train(data: Splits, **kwargs: object) -> tuple[torch.nn.Module, object]:
    seed_everything(0)
    # Dropout and batch norm: the probe step must restore the RNG and the running statistics.
    model = MLP(784, 10, [64, 64], dropout=0.2, norm="batch")
    optimizer = build_optimizer(OmegaConf.structured(OptimConfig(name="adam", lr=1e-3)), model.parameters())
    scheduler = build_scheduler(OmegaConf.structured(SchedConfig()), optimizer, 16, 1000)
    params = dict(epochs=2, batch_size=32, seed=0, log_every_n_steps=5) | kwargs
    result = fit(model, data, optimizer, scheduler, Recorder(), FitOptions(**params))  # type: ignore[arg-type]
    return model, result


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_failing_compiler_falls_back_to_eager_with_a_warning_and_the_same_run(
    toy: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager, _ = train(toy)

    def broken_compile(module: torch.nn.Module, mode: str) -> object:
        def call(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("InductorError: no working C++ compiler found")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    warned: list[str] = []
    fallback, result = train(toy, compile_mode="default", warn=warned.append)
    assert len(warned) == 1 and "eager" in warned[0] and "no working C++ compiler" in warned[0]
    assert "trainer.compile=false" in warned[0]
    assert same_weights(eager, fallback) and result.compile_time_s >= 0


def test_torch_compile_refusing_at_once_also_falls_back(toy: Splits, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(module: torch.nn.Module, mode: str) -> object:
        raise RuntimeError("Dynamo is not supported on Python 3.99+")

    monkeypatch.setattr(torch, "compile", refuse)
    warned: list[str] = []
    train(toy, compile_mode="default", warn=warned.append)
    assert len(warned) == 1 and "Dynamo is not supported" in warned[0]


def test_the_probe_step_leaves_no_trace(toy: Splits, monkeypatch: pytest.MonkeyPatch) -> None:
    # A "compiler" that returns the module itself: the probe's forward/backward really run (dropout draws masks,
    # batch norm updates its statistics, gradients accumulate), so only a full restore keeps the run identical.
    eager, _ = train(toy)
    monkeypatch.setattr(torch, "compile", lambda module, mode: module)
    warned: list[str] = []
    probed, _ = train(toy, compile_mode="default", warn=warned.append)
    assert warned == [] and same_weights(eager, probed)


def test_torch_compile_really_compiles_and_the_run_learns(toy: Splits) -> None:
    warned: list[str] = []
    _, result = train(toy, epochs=3, compile_mode="default", warn=warned.append)
    assert warned == [], warned
    assert result.val_acc > 0.9 and result.compile_time_s > 0
