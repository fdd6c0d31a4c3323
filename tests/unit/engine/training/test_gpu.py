"""The CUDA path, opt-in with `pytest -m gpu` (skipped where no CUDA device is visible): data resident on the
GPU, every precision, fused Adam, and torch.compile with CUDA graphs (reduce-overhead)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dlzoo.config.validate import OptimConfig, SchedConfig
from dlzoo.data.datasets import load_splits
from dlzoo.data.splits import Splits
from dlzoo.engine.training.evaluation import evaluate
from dlzoo.engine.training.loop import FitOptions, fit, seed_everything
from dlzoo.models.mlp import MLP
from dlzoo.optim import build_optimizer, build_scheduler
from tests.helpers import Recorder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def toy(toy_root: Path) -> Splits:
    return load_splits("mnist", str(toy_root), download=False, val_size=100, device="cuda")


def train(data: Splits, **kwargs: object) -> tuple[torch.nn.Module, object, torch.optim.Optimizer]:
    seed_everything(0)
    model = MLP(784, 10, [64, 64], dropout=0.2).cuda()
    optimizer = build_optimizer(OmegaConf.structured(OptimConfig(name="adam", lr=1e-3)), model.parameters())
    scheduler = build_scheduler(OmegaConf.structured(SchedConfig()), optimizer, 16, 1000)
    params = dict(epochs=3, batch_size=32, seed=0, log_every_n_steps=5) | kwargs
    return model, fit(model, data, optimizer, scheduler, Recorder(), FitOptions(**params)), optimizer  # type: ignore[arg-type]


def test_the_dataset_lives_on_the_gpu(toy: Splits) -> None:
    assert toy.x_train.is_cuda and toy.x_train.dtype == torch.uint8 and toy.y_test.is_cuda


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_every_precision_learns_the_toy_task_on_the_gpu(toy: Splits, precision: str) -> None:
    model, result, optimizer = train(toy, precision=precision)
    assert result.val_acc > 0.9 and evaluate(model, toy.x_test, toy.y_test)[1] > 0.9
    assert optimizer.defaults.get("fused") is True
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights fp32


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_on_the_gpu_needs_no_fallback(toy: Splits, mode: str) -> None:
    warned: list[str] = []
    _, result, _ = train(toy, compile_mode=mode, warn=warned.append)
    assert warned == [] and result.val_acc > 0.9
