"""Architectures by name and `build_model`, the one place that turns a model config into a module."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class ModelConfig:
    arch: str = "mlp"  # registry: dlzoo ls arch
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # mlp: hidden widths ([] = softmax); rnn: layers
    blocks: list[Any] = field(default_factory=list)  # arch=sequential: the block list (dlzoo ls block)
    cell: str = "lstm"  # arch=rnn: registry dlzoo ls cell
    activation: str = "relu"  # registry: dlzoo ls activation
    head: str = "softmax"  # registry: dlzoo ls head (sigmoid: one unit + binary cross-entropy, 2 classes)
    init: str = "xavier_uniform"  # weight initializer; registry: dlzoo ls init
    bias_init: str = "normal"  # bias initializer (lecture labs: tf.random_normal, i.e. N(0, 1))
    dropout: float = 0.0  # drop probability after each hidden activation (TF keep_prob = 1 - dropout)
    dropout_kind: str = "dropout"  # registry: dlzoo ls dropout (alpha_dropout for SELU)
    norm: str = "none"  # registry: dlzoo ls norm
    norm_position: str = "before"  # "before" or "after" the activation
    act_args: ActArgs = field(default_factory=ActArgs)  # slopes, alpha, maxout's k
    init_args: InitArgs = field(default_factory=InitArgs)  # std, range, scale/mode/distribution, gain
    bias_init_args: InitArgs = field(default_factory=InitArgs)  # the same for biases (std 1: TF random_normal)


ArchBuilder = Callable[[tuple[int, ...], int, ModelConfig], nn.Module]
ARCHS: Registry[ArchBuilder] = Registry("arch", "model.arch")


@ARCHS.register("mlp", "fully connected net: softmax regression when model.hidden=[], else an MLP")
def _build_mlp(input_shape: tuple[int, ...], num_classes: int, cfg: ModelConfig) -> nn.Module:
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
def _build_sequential(input_shape: tuple[int, ...], num_classes: int, cfg: ModelConfig) -> nn.Module:
    defaults = Defaults(cfg.activation, _plain(ActArgs, cfg.act_args), float(cfg.dropout), cfg.dropout_kind)
    blocks = _container(cfg.blocks)
    model, out = build_blocks(blocks, tuple(input_shape), defaults)
    if out != (num_classes,):
        raise DlzooError(
            f"model.blocks ends with shape {out}, but the dataset has {num_classes} classes. Fix: end with "
            f"{{type: flatten}} (if needed) and {{type: linear, out: {num_classes}}}."
        )
    return model


@ARCHS.register("rnn", "rows as a sequence: model.cell (rnn|lstm|gru) layers of model.hidden widths + a linear head")
def _build_rnn(input_shape: tuple[int, ...], num_classes: int, cfg: ModelConfig) -> nn.Module:
    if not cfg.hidden:
        raise DlzooError("arch=rnn needs at least one recurrent layer: model.hidden=[128].")
    return RowRNN(tuple(input_shape), num_classes, list(cfg.hidden), cfg.cell, float(cfg.dropout), cfg.dropout_kind)


def _container(node: Any) -> Any:
    """A section's value as plain lists and dicts (the run's settings hold them already; a composed config, as the
    tests and validation pass it, holds OmegaConf nodes)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _plain(kind: type, node: Any) -> Any:
    """A config node as the plain dataclass the model code takes."""
    return node if isinstance(node, kind) else kind(**_container(node))


def build_model(
    cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, init_batch: Tensor | None = None
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
