"""Typed config schemas (stored in Hydra's ConfigStore, so a wrong type fails at composition) and
`validate`, which checks every name against its registry and every number against its range before any work."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from dlzoo.errors import DlzooError
from dlzoo.registry import Registry


@dataclass
class DataConfig:
    name: str = "mnist"  # registry: dlzoo ls dataset
    root: str | None = None  # a folder with the four IDX files; else $DLZOO_DATA, then the cache
    download: bool = True  # fetch through torchvision when no local copy is found
    val_size: int = 5000  # held out of the 60k train images (TF input_data's 55k/5k split)
    split_seed: int = 0  # fixed apart from trainer.seed so every training seed sees the same split
    train_subset: int | None = None  # keep only N training images (smoke tests, quick looks)


@dataclass
class ModelConfig:
    arch: str = "mlp"  # registry: dlzoo ls arch
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # width of each hidden layer; [] = softmax
    activation: str = "relu"  # registry: dlzoo ls activation
    init: str = "xavier_uniform"  # weight initializer; registry: dlzoo ls init
    bias_init: str = "normal"  # bias initializer (lecture labs: tf.random_normal, i.e. N(0, 1))
    dropout: float = 0.0  # drop probability after each hidden activation (TF keep_prob = 1 - dropout)
    norm: str = "none"  # registry: dlzoo ls norm
    norm_position: str = "before"  # "before" or "after" the activation


@dataclass
class OptimConfig:
    name: str = "adam"  # registry: dlzoo ls optimizer
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only
    nesterov: bool = False  # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam only
    eps: float = 1e-8  # adam only


@dataclass
class SchedConfig:
    name: str = "constant"  # registry: dlzoo ls schedule
    min_lr: float = 0.0  # floor of decaying schedules (cosine)


@dataclass
class TrainerConfig:
    epochs: int = 15
    batch_size: int = 100
    eval_batch_size: int = 10000  # evaluation runs in a few large batches, never per sample
    seed: int = 777
    device: str = "auto"  # auto = cuda when available, else cpu
    max_steps: int | None = None  # caps the run (smoke tests, benchmarks)
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    log_every_n_steps: int = 50  # step-level logging is the only place the loop syncs with the device
    layer_stats: bool = True  # per-layer weight and gradient norms in TensorBoard
    checkpoint: bool = True  # write checkpoints/last.pt after every epoch
    progress: bool = True  # the rich progress bar (per-epoch lines are printed regardless)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register_configs() -> None:
    """Store the schema under `train_schema`; conf/train.yaml lists it first in its defaults."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def registries() -> dict[str, tuple[Registry[Any], list[str]]]:
    """Every registry, keyed by the name `dlzoo ls` uses, with the config keys it validates."""
    from dlzoo.data import DATASETS
    from dlzoo.models import ARCHS
    from dlzoo.models.blocks import ACTIVATIONS, NORMS
    from dlzoo.models.init import INITIALIZERS
    from dlzoo.optim import OPTIMIZERS, SCHEDULES

    return {
        "activation": (ACTIVATIONS, ["model.activation"]),
        "init": (INITIALIZERS, ["model.init", "model.bias_init"]),
        "norm": (NORMS, ["model.norm"]),
        "arch": (ARCHS, ["model.arch"]),
        "optimizer": (OPTIMIZERS, ["optim.name"]),
        "schedule": (SCHEDULES, ["sched.name"]),
        "dataset": (DATASETS, ["data.name"]),
    }


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def validate(cfg: DictConfig) -> None:
    """Check names and ranges before any work; raise one DlzooError that lists every problem found."""
    problems: list[str] = []

    for kind, (registry, keys) in registries().items():
        for key in keys:
            value = _get(cfg, key)
            if value not in registry:
                problems.append(registry.unknown_message(value))
            elif kind == "init" and key.endswith("bias_init"):
                from dlzoo.models.init import BIAS_INITIALIZERS

                if value not in BIAS_INITIALIZERS:
                    problems.append(
                        f"model.bias_init={value!r} needs a weight matrix's fans and cannot initialize a bias; "
                        f"choices for biases: {', '.join(sorted(BIAS_INITIALIZERS))}."
                    )

    def check(key: str, ok: bool, rule: str) -> None:
        if not ok:
            problems.append(f"{key}={_get(cfg, key)!r} is out of range: it must be {rule}.")

    m, o, t, d = cfg.model, cfg.optim, cfg.trainer, cfg.data
    check("model.hidden", all(h >= 1 for h in m.hidden), "a list of widths >= 1 (e.g. [256,256]; [] for softmax)")
    check("model.dropout", 0.0 <= m.dropout < 1.0, "in [0, 1) (a drop probability, not TF's keep_prob)")
    check("model.norm_position", m.norm_position in ("before", "after"), "'before' or 'after'")
    check("optim.lr", o.lr > 0, "> 0")
    check("optim.weight_decay", o.weight_decay >= 0, ">= 0")
    check("optim.momentum", 0 <= o.momentum < 1, "in [0, 1)")
    check("optim.betas", len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "two numbers in [0, 1)")
    check("optim.eps", o.eps > 0, "> 0")
    check("sched.min_lr", 0 <= cfg.sched.min_lr <= o.lr, "in [0, optim.lr]")
    check("trainer.epochs", t.epochs >= 1, ">= 1")
    check("trainer.batch_size", t.batch_size >= 1, ">= 1")
    check("trainer.eval_batch_size", t.eval_batch_size >= 1, ">= 1")
    check("trainer.max_steps", t.max_steps is None or t.max_steps >= 1, ">= 1 or null")
    check("trainer.threads", t.threads is None or t.threads >= 1, ">= 1 or null")
    check("trainer.log_every_n_steps", t.log_every_n_steps >= 1, ">= 1")
    check("trainer.device", bool(_DEVICE.match(t.device)), "auto, cpu, cuda, cuda:N or mps")
    check("data.val_size", d.val_size >= 0, ">= 0")
    check("data.train_subset", d.train_subset is None or d.train_subset >= 1, ">= 1 or null")

    if problems:
        fix = "Fix the value on the command line (e.g. `dlzoo train optim.lr=0.001`) or in your YAML."
        raise DlzooError("Invalid config: " + " ".join(problems) + " " + fix)


def _get(cfg: DictConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node
