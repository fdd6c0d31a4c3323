"""Architectures by name and `build_model`, the one place that turns a model config into a module."""

from __future__ import annotations

import math
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from dlzoo.checks import Checks
from dlzoo.errors import DlzooError
from dlzoo.models.activations import ActArgs
from dlzoo.models.activations import problems as activation_problems
from dlzoo.models.init import DATA_DRIVEN, InitArgs, init_weights, lsuv_
from dlzoo.models.init import problems as init_problems
from dlzoo.models.mlp import MLP
from dlzoo.models.rnn import RowRNN
from dlzoo.models.sequential import Defaults, build_blocks
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
        dropout_kind=cfg.dropout_kind,
        act_args=_plain(ActArgs, cfg.act_args),
        head=cfg.head,
    )


@ARCHS.register("sequential", "any net written as model.blocks: conv, pools, linear, residual, branches, ...")
def _build_sequential(input_shape: tuple[int, ...], num_classes: int, cfg: DictConfig) -> nn.Module:
    defaults = Defaults(cfg.activation, _plain(ActArgs, cfg.act_args), float(cfg.dropout), cfg.dropout_kind)
    blocks = OmegaConf.to_container(cfg.blocks, resolve=True)
    model, out = build_blocks(blocks, tuple(input_shape), defaults)
    if out != (num_classes,):
        raise DlzooError(
            f"model.blocks ends with shape {out}, but the dataset has {num_classes} classes. Fix: end with "
            f"{{type: flatten}} (if needed) and {{type: linear, out: {num_classes}}}."
        )
    return model


@ARCHS.register("rnn", "rows as a sequence: model.cell (rnn|lstm|gru) layers of model.hidden widths + a linear head")
def _build_rnn(input_shape: tuple[int, ...], num_classes: int, cfg: DictConfig) -> nn.Module:
    if not cfg.hidden:
        raise DlzooError("arch=rnn needs at least one recurrent layer: model.hidden=[128].")
    return RowRNN(tuple(input_shape), num_classes, list(cfg.hidden), cfg.cell, float(cfg.dropout), cfg.dropout_kind)


def _plain(kind: type, node: DictConfig) -> object:
    """A config node as the plain dataclass the model code takes."""
    return kind(**OmegaConf.to_container(node, resolve=True))


def build_model(
    cfg: DictConfig, input_shape: tuple[int, ...], num_classes: int, init_batch: Tensor | None = None
) -> nn.Module:
    """Build `cfg.arch` for inputs of `input_shape` (C, H, W) and initialize it as `cfg.init` / `cfg.bias_init`.

    Args:
        init_batch: preprocessed training images for data-driven initializers (lsuv); ignored by the rest.
    """
    model = ARCHS.get(cfg.arch)(tuple(input_shape), num_classes, cfg)
    init_weights(model, cfg.init, cfg.bias_init, _plain(InitArgs, cfg.init_args), _plain(InitArgs, cfg.bias_init_args))
    if cfg.init in DATA_DRIVEN:
        if init_batch is None:
            raise DlzooError(f"model.init={cfg.init} needs a batch of training data to initialize from.")
        lsuv_(model, init_batch)
    return model


def problems(m: DictConfig) -> list[str]:
    """What is wrong with the model section's numbers (its names are checked against their registries)."""
    c = Checks(m, "model")
    c.check("hidden", all(h >= 1 for h in m.hidden), "a list of widths >= 1 (e.g. [256,256]; [] for softmax)")
    c.check("dropout", 0.0 <= m.dropout < 1.0, "in [0, 1) (a drop probability, not TF's keep_prob)")
    c.check("norm_position", m.norm_position in ("before", "after"), "'before' or 'after'")
    return c.problems + activation_problems(m.act_args) + init_problems(m)
