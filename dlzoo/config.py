"""Typed config schemas (stored in Hydra's ConfigStore, so a wrong type fails at composition) and
`validate`, which checks every name against its registry and every number against its range before any work."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from dlzoo.errors import DlzooError
from dlzoo.models.blocks import ActArgs
from dlzoo.models.init import DISTRIBUTIONS, MODES, InitArgs
from dlzoo.registry import Registry


@dataclass
class DataConfig:
    name: str = "mnist"  # registry: dlzoo ls dataset
    root: str | None = None  # a folder with the four IDX files; else $DLZOO_DATA, then the cache
    download: bool = True  # fetch through torchvision when no local copy is found
    val_size: int = 5000  # held out of the 60k train images (TF input_data's 55k/5k split)
    split_seed: int = 0  # fixed apart from trainer.seed so every training seed sees the same split
    train_subset: int | None = None  # keep only N training images (smoke tests, quick looks)
    normalize: str = "none"  # none = pixels in [0, 1] (the labs); standardize = mean 0, std 1 (what SELU needs)


@dataclass
class ModelConfig:
    arch: str = "mlp"  # registry: dlzoo ls arch
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # mlp: hidden widths ([] = softmax); rnn: layers
    blocks: list[Any] = field(default_factory=list)  # arch=sequential: the block list (dlzoo ls block)
    cell: str = "lstm"  # arch=rnn: registry dlzoo ls cell
    activation: str = "relu"  # registry: dlzoo ls activation
    init: str = "xavier_uniform"  # weight initializer; registry: dlzoo ls init
    bias_init: str = "normal"  # bias initializer (lecture labs: tf.random_normal, i.e. N(0, 1))
    dropout: float = 0.0  # drop probability after each hidden activation (TF keep_prob = 1 - dropout)
    dropout_kind: str = "dropout"  # registry: dlzoo ls dropout (alpha_dropout for SELU)
    norm: str = "none"  # registry: dlzoo ls norm
    norm_position: str = "before"  # "before" or "after" the activation
    act_args: ActArgs = field(default_factory=ActArgs)  # slopes, alpha, maxout's k
    init_args: InitArgs = field(default_factory=InitArgs)  # std, range, scale/mode/distribution, gain
    bias_init_args: InitArgs = field(default_factory=InitArgs)  # the same for biases (std 1: TF random_normal)


@dataclass
class OptimConfig:
    name: str = "adam"  # registry: dlzoo ls optimizer
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # momentum, nesterov (and rmsprop's optional momentum)
    rho: float = 0.9  # rmsprop's decay of the squared-gradient average (Keras' rho)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamax, nadam, adamw
    eps: float = 1e-8


@dataclass
class SchedConfig:
    name: str = "constant"  # registry: dlzoo ls schedule; each schedule's YAML sets the keys it reads
    min_lr: float = 0.0  # cosine's end point; plateau's floor
    warmup_steps: int = 0  # cosine
    decay_steps: float = 1000.0  # power (s), exponential_step
    power: float = 1.0  # power (c)
    decay_epochs: float = 10.0  # exponential (s)
    decay_rate: float = 0.1  # exponential_step
    staircase: bool = False  # exponential_step
    boundaries: list[int] = field(default_factory=lambda: [5, 15])  # piecewise, in epochs
    lr_values: list[float] = field(default_factory=lambda: [0.01, 0.005, 0.001])  # piecewise lrs
    factor: float = 0.5  # plateau
    patience: int = 5  # plateau, in epochs
    max_lr: float = 0.01  # onecycle peak
    final_fraction: float = 0.1  # onecycle: share of the run spent in the final anneal
    final_div: float = 1000.0  # onecycle: the anneal ends at lr0 / final_div
    momentum_range: list[float] = field(default_factory=lambda: [0.85, 0.95])  # onecycle


@dataclass
class RegConfig:
    l1: float = 0.0  # lambda of the L1 penalty sum|W| added to the loss (weights only, not biases)
    l2: float = 0.0  # lambda of the L2 penalty sum W^2 added to the loss (lecture 10-5: cost + lambda sum W^2)
    max_norm: float | None = None  # cap each unit's incoming weight vector norm after every step (Srivastava 2014)
    clip_value: float | None = None  # clip each gradient component to [-v, v] (Keras clipvalue)
    clip_norm: float | None = None  # rescale the whole gradient to at most this global L2 norm (Keras clipnorm)


@dataclass
class EarlyStopConfig:
    patience: int = 0  # epochs without improvement before stopping; 0 = off
    monitor: str = "val/loss"  # val/loss (lower is better) or val/acc (higher is better)
    min_delta: float = 0.0  # smaller changes do not count as improvement
    restore_best: bool = True  # end with the best epoch's weights (Keras restore_best_weights)


@dataclass
class CheckpointConfig:
    enabled: bool = True
    every: int = 1  # write checkpoints/last.pt (everything needed to resume) every N epochs
    top_k: int = 1  # keep the k best epochs' weights as checkpoints/best-epochNNN.pt; 0 = none
    monitor: str = "val/loss"  # what "best" means: val/loss (lower) or val/acc (higher)


@dataclass
class EnsembleConfig:
    size: int = 1  # train this many members (seeds trainer.seed, +1, ...) and combine them; 1 = a single model
    combine: str = "sum_logits"  # sum_logits (lab 11-5's rule) or mean_probs


@dataclass
class EvalConfig:
    mc_samples: int = 0  # MC dropout (Gal & Ghahramani 2016): average N stochastic test passes; 0 = off


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
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: str | None = None  # auto | <run folder> | <checkpoint.pt>: continue a stopped run exactly
    deterministic: bool = False  # torch's deterministic algorithms (slower on GPU; CPU runs are already repeatable)
    max_loss: float | None = 1e5  # a logged loss above this stops the run as diverged; null = NaN/Inf only
    detect_anomaly: bool = False  # autograd anomaly detection: names the op that produced a NaN (slow; debugging)
    progress: bool = True  # the rich progress bar (per-epoch lines are printed regardless)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)


def register_configs() -> None:
    """Store the schema under `train_schema`; conf/train.yaml lists it first in its defaults."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def registries() -> dict[str, tuple[Registry[Any], list[str]]]:
    """Every registry, keyed by the name `dlzoo ls` uses, with the config keys it validates."""
    from dlzoo.data import DATASETS
    from dlzoo.models import ARCHS
    from dlzoo.models.blocks import ACTIVATIONS, DROPOUTS, NORMS
    from dlzoo.models.init import INITIALIZERS
    from dlzoo.models.layers import BLOCKS
    from dlzoo.models.rnn import CELLS
    from dlzoo.optim import OPTIMIZERS, SCHEDULES

    return {
        "activation": (ACTIVATIONS, ["model.activation"]),
        "init": (INITIALIZERS, ["model.init", "model.bias_init"]),
        "norm": (NORMS, ["model.norm"]),
        "block": (BLOCKS, []),
        "cell": (CELLS, ["model.cell"]),
        "dropout": (DROPOUTS, ["model.dropout_kind"]),
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
    a = m.act_args
    check("model.act_args.negative_slope", a.negative_slope >= 0, ">= 0 (Géron: 0.2 often beats 0.01)")
    check("model.act_args.alpha", a.alpha > 0, "> 0")
    check(
        "model.act_args.rrelu_range",
        len(a.rrelu_range) == 2 and 0 <= a.rrelu_range[0] <= a.rrelu_range[1] < 1,
        "[lower, upper] with 0 <= lower <= upper < 1",
    )
    check("model.act_args.maxout_k", a.maxout_k >= 2, ">= 2 (one piece is just a linear unit)")
    for key in ("init_args", "bias_init_args"):
        i = m[key]
        check(f"model.{key}.std", i.std > 0, "> 0")
        check(f"model.{key}.range", i.range > 0, "> 0")
        check(f"model.{key}.scale", i.scale > 0, "> 0")
        check(f"model.{key}.gain", i.gain > 0, "> 0")
        check(f"model.{key}.mode", i.mode in MODES, " or ".join(MODES))
        check(f"model.{key}.distribution", i.distribution in DISTRIBUTIONS, " or ".join(DISTRIBUTIONS))
    r = cfg.reg
    check("reg.l1", r.l1 >= 0, ">= 0")
    check("reg.l2", r.l2 >= 0, ">= 0")
    for key in ("max_norm", "clip_value", "clip_norm"):
        check(f"reg.{key}", r[key] is None or r[key] > 0, "> 0 or null (off)")
    ck = cfg.trainer.checkpoint
    check("trainer.checkpoint.every", ck.every >= 1, ">= 1")
    check("trainer.checkpoint.top_k", ck.top_k >= 0, ">= 0")
    check("trainer.checkpoint.monitor", ck.monitor in ("val/loss", "val/acc"), "val/loss or val/acc")
    es = cfg.trainer.early_stop
    check("trainer.early_stop.patience", es.patience >= 0, ">= 0 (0 = off)")
    check("trainer.early_stop.monitor", es.monitor in ("val/loss", "val/acc"), "val/loss or val/acc")
    check("trainer.early_stop.min_delta", es.min_delta >= 0, ">= 0")
    check("eval.mc_samples", cfg.eval.mc_samples >= 0, ">= 0 (0 = off)")
    check("ensemble.size", cfg.ensemble.size >= 1, ">= 1")
    check("ensemble.combine", cfg.ensemble.combine in ("sum_logits", "mean_probs"), "sum_logits or mean_probs")
    check(
        "trainer.resume",
        cfg.ensemble.size == 1 or cfg.trainer.resume is None,
        "null when ensemble.size > 1 "
        "(resuming ensembles is not supported yet; resume a member's folder as a single run)",
    )
    check("data.normalize", cfg.data.normalize in ("none", "standardize"), "none or standardize")
    check("optim.lr", o.lr > 0, "> 0")
    check("optim.weight_decay", o.weight_decay >= 0, ">= 0")
    check("optim.momentum", 0 <= o.momentum < 1, "in [0, 1)")
    check("optim.momentum", o.name not in ("momentum", "nesterov") or o.momentum > 0, f"> 0 for optim.name={o.name}")
    check("optim.rho", 0 <= o.rho < 1, "in [0, 1)")
    check("optim.betas", len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "two numbers in [0, 1)")
    check("optim.eps", o.eps > 0, "> 0")
    sc = cfg.sched
    check("sched.min_lr", 0 <= sc.min_lr <= o.lr, "in [0, optim.lr]")
    check("sched.warmup_steps", sc.warmup_steps >= 0, ">= 0")
    check("sched.decay_steps", sc.decay_steps > 0, "> 0")
    check("sched.decay_epochs", sc.decay_epochs > 0, "> 0")
    check("sched.decay_rate", 0 < sc.decay_rate <= 1, "in (0, 1]")
    check("sched.power", sc.power > 0, "> 0")
    check(
        "sched.lr_values",
        len(sc.lr_values) == len(sc.boundaries) + 1 and all(v > 0 for v in sc.lr_values),
        f"{len(sc.boundaries) + 1} positive lrs (one more than sched.boundaries={list(sc.boundaries)})",
    )
    check("sched.boundaries", list(sc.boundaries) == sorted(sc.boundaries), "increasing epochs")
    check("sched.factor", 0 < sc.factor < 1, "in (0, 1)")
    check("sched.patience", sc.patience >= 0, ">= 0")
    check("sched.max_lr", sc.max_lr > 0, "> 0")
    check("sched.final_fraction", 0 <= sc.final_fraction < 1, "in [0, 1)")
    check("sched.final_div", sc.final_div >= 1, ">= 1")
    check(
        "sched.momentum_range",
        len(sc.momentum_range) == 2 and 0 <= sc.momentum_range[0] <= sc.momentum_range[1] < 1,
        "[low, high] with 0 <= low <= high < 1",
    )
    check("trainer.epochs", t.epochs >= 1, ">= 1")
    check("trainer.batch_size", t.batch_size >= 1, ">= 1")
    check("trainer.eval_batch_size", t.eval_batch_size >= 1, ">= 1")
    check("trainer.max_steps", t.max_steps is None or t.max_steps >= 1, ">= 1 or null")
    check("trainer.threads", t.threads is None or t.threads >= 1, ">= 1 or null")
    check("trainer.log_every_n_steps", t.log_every_n_steps >= 1, ">= 1")
    check("trainer.max_loss", t.max_loss is None or t.max_loss > 0, "> 0 or null")
    check("trainer.device", bool(_DEVICE.match(t.device)), "auto, cpu, cuda, cuda:N or mps")
    check("data.val_size", d.val_size >= 0, ">= 0")
    check("data.train_subset", d.train_subset is None or d.train_subset >= 1, ">= 1 or null")

    if not problems and m.arch != "mlp":
        problems += _dry_build(cfg)
    if problems:
        fix = "Fix it on the command line or in your YAML; `dlzoo validate <overrides>` checks without training."
        raise DlzooError("Invalid config: " + " ".join(problems) + " " + fix)


def _dry_build(cfg: DictConfig) -> list[str]:
    """Build the model once against the dataset's input shape, so a block list that cannot work is refused
    before any data is read (its error names the block and both shapes)."""
    from dlzoo.data import DATASETS
    from dlzoo.models import build_model

    spec = DATASETS.get(cfg.data.name)
    try:
        build_model(cfg.model, spec.shape, spec.num_classes, init_batch=torch.zeros(2, *spec.shape))
    except DlzooError as e:
        return [str(e)]
    return []


def _get(cfg: DictConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def warnings(cfg: DictConfig) -> list[str]:
    """Combinations that run but undo what a technique is for; printed before training, never fatal."""
    m, out = cfg.model, []
    if m.activation == "selu":
        if m.norm != "none":
            out.append("SELU with batch norm: SELU normalizes itself, and batch norm breaks its fixed point.")
        if m.dropout > 0 and m.dropout_kind == "dropout":
            out.append("SELU with plain dropout breaks self-normalization; use model.dropout_kind=alpha_dropout.")
        if m.init != "lecun_normal":
            out.append(f"SELU is self-normalizing only with model.init=lecun_normal (got {m.init}).")
        if cfg.data.normalize != "standardize":
            out.append("SELU expects standardized inputs; set data.normalize=standardize.")
    if cfg.eval.mc_samples > 0 and m.dropout == 0:
        out.append("eval.mc_samples is set but the model has no dropout: every MC pass is the same.")
    return out
