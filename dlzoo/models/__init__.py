"""Architectures by name and `build_model`, the one place that turns a model config into a module."""

from __future__ import annotations

import math
from collections.abc import Callable

from omegaconf import DictConfig
from torch import nn

from dlzoo.models.init import init_weights
from dlzoo.models.mlp import MLP
from dlzoo.registry import Registry

ArchBuilder = Callable[[tuple[int, ...], int, DictConfig], nn.Module]
ARCHS: Registry[ArchBuilder] = Registry("arch", "model.arch")


@ARCHS.register("mlp", "fully connected net: softmax regression when model.hidden=[], else an MLP")
def _build_mlp(input_shape: tuple[int, ...], num_classes: int, cfg: DictConfig) -> nn.Module:
    return MLP(
        in_features=math.prod(input_shape),
        num_classes=num_classes,
        hidden=list(cfg.hidden),
        activation=cfg.activation,
        dropout=float(cfg.dropout),
        norm=cfg.norm,
        norm_position=cfg.norm_position,
    )


def build_model(cfg: DictConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build `cfg.arch` for inputs of `input_shape` (C, H, W) and initialize it as `cfg.init` / `cfg.bias_init`."""
    model = ARCHS.get(cfg.arch)(tuple(input_shape), num_classes, cfg)
    init_weights(model, cfg.init, cfg.bias_init)
    return model
