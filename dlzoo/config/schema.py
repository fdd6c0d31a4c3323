"""Typed config schemas, stored in Hydra's ConfigStore so a wrong type fails at composition; `settings` turns a
composed config into them. Each section's dataclass lives with the code that builds from it (ModelConfig in
dlzoo.models, OptimConfig in dlzoo.optim, ...); this module assembles the run's. `dlzoo.config.validate.validate`
checks their values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from dlzoo.config.launch import register_resolvers
from dlzoo.data.build import DataConfig
from dlzoo.models import ModelConfig
from dlzoo.optim.optimizers import OptimConfig
from dlzoo.optim.regularize import RegConfig
from dlzoo.optim.schedules import SchedConfig
from dlzoo.pretrain.layerwise import PretrainConfig

# The closed sets some keys choose from, shared by the schema, validation and the engine.
PRECISIONS = ("fp32", "bf16", "fp16")  # the training step's autocast; weights, optimizer and evaluation stay fp32
# torch.compile's modes; reduce-overhead replays the step's kernels as CUDA graphs (fixed shapes, on GPUs).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
COMBINES = ("sum_logits", "mean_probs")  # how an ensemble's members vote (lab 11-5 sums logits)
MONITORS = ("val/loss", "val/acc")  # what checkpoints and early stopping rank epochs by


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
    # auto: train the members as one stacked model (trainer.stack=size) where that is faster (a GPU; an MLP of
    # at most 500k weights on a CPU); on: whenever the model can be stacked; off: one after another
    stack: str = "auto"


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
    stack: int = 1  # K > 1: seeds seed..seed+K-1 of an MLP trained as one batched model, one run folder each
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    log_every_n_steps: int = 50  # step-level logging is the only place the loop syncs with the device
    layer_stats: bool = True  # per-layer weight and gradient norms in TensorBoard
    # per-layer histograms of weights, gradients, activations every N steps (0: none; None: ~12 per run)
    histogram_every_n_steps: int | None = None
    figures: bool = True  # the model graph, depth figures and test images (about two seconds a run)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: str | None = None  # auto | <run folder> | <checkpoint.pt>: continue a stopped run exactly
    deterministic: bool = False  # torch's deterministic algorithms (slower on GPU; CPU runs are already repeatable)
    max_loss: float | None = 1e5  # a logged loss above this stops the run as diverged; null = NaN/Inf only
    detect_anomaly: bool = False  # autograd anomaly detection: names the op that produced a NaN (slow; debugging)
    progress: bool = True  # the rich progress bar (per-epoch lines are printed regardless)
    # This run's own HParams experiment (its columns). TensorBoard shows one experiment per logdir, picked
    # arbitrarily among those written: `dlzoo ladder` turns it off and writes one over all its runs.
    hparams_experiment: bool = True
    precision: str = "fp32"  # fp32 | bf16 (autocast, CPU or CUDA) | fp16 (autocast + loss scaling, CUDA only)
    channels_last: bool = True  # NHWC weights for conv nets: faster convolutions on CPU (oneDNN) and tensor cores
    compile: bool = False  # torch.compile the training forward (eager if compilation is unavailable)
    compile_mode: str = "default"  # default | reduce-overhead (CUDA graphs) | max-autotune
    devices: int = 1  # data-parallel processes (DDP); >1 runs torchrun; trainer.batch_size stays the global batch
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)


@dataclass
class ParamSpaceConfig:
    """One searched config key (dlzoo tune): a distribution from `dlzoo ls distribution` and its bounds."""

    type: str = "float"  # float | int | categorical
    low: float | None = None  # float, int: the smallest value
    high: float | None = None  # float, int: the largest value (inclusive)
    log: bool = False  # sample uniformly in log space (learning rates, weight decays span decades)
    step: float | None = None  # float, int: a grid spacing (int defaults to 1); not with log
    choices: list[Any] | None = None  # categorical: values, lists or config-group names (model: [mlp, mlp_bn])


@dataclass
class SamplerConfig:
    name: str = "tpe"  # registry: dlzoo ls sampler
    seed: int = 0  # the search is repeatable; a resumed search draws on from a seed it has not used
    n_startup_trials: int = 10  # tpe: random trials before the density model takes over (Optuna's default)


@dataclass
class PrunerConfig:
    name: str = "median"  # registry: dlzoo ls pruner
    n_startup_trials: int = 5  # median: trials that always run to the end, so the median means something
    n_warmup_steps: int = 1  # median: the first epoch at which a trial can be pruned (Optuna's steps are epochs)
    min_resource: int = 1  # successive_halving: epochs before the first rung (Jamieson & Talwalkar 2016)
    reduction_factor: int = 3  # successive_halving: keep the best 1/reduction_factor at each rung


@dataclass
class SearchConfig:
    """A `dlzoo tune` search (conf/search/*.yaml); `dlzoo train` ignores it."""

    metric: str = "val_acc"  # val_acc | val_loss: the search never looks at the test set
    direction: str = "maximize"  # maximize for val_acc, minimize for val_loss
    n_trials: int = 20  # `--trials N` overrides it
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    overrides: list[str] = field(default_factory=list)  # every trial's base: `dlzoo train` overrides
    space: dict[str, ParamSpaceConfig] = field(default_factory=dict)  # dotted key or config group -> distribution


@dataclass
class TransferConfig:
    # `from` is a Python keyword, so the source is `ckpt` (as in `dlzoo eval ckpt=`).
    ckpt: str | None = None  # a run folder or .pt whose weights seed this model's first layers; null = no transfer
    reuse_layers: int | None = None  # how many leading weight layers to copy; null = all but the output layer
    freeze_epochs: int = 0  # keep the copied layers frozen for this many epochs, then train them too
    unfreeze_lr: float | None = None  # the lr from the unfreezing on (Géron: 10x lower); null = keep optim.lr


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
    search: SearchConfig | None = None  # set only by `dlzoo tune search=<name>`
    transfer: TransferConfig = field(default_factory=TransferConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


def settings(cfg: DictConfig) -> TrainConfig:
    """The composed, validated config as the run's typed settings: the schema's dataclasses with every
    interpolation resolved. A run converts once, at its boundary (dlzoo.engine.assembly.run.run); the modules below
    read plain attributes of plain values and never see OmegaConf."""
    out = OmegaConf.to_object(cfg)
    assert isinstance(out, TrainConfig), f"not a composed train config: {type(out).__name__}"
    return out


def as_dict(s: TrainConfig) -> dict[str, Any]:
    """The settings as the plain nested dict a checkpoint's `config` holds (OmegaConf.to_container's shape)."""
    return dataclasses.asdict(s)


def register_configs() -> None:
    """Store the schema under `train_schema`; conf/train.yaml lists it first in its defaults."""
    register_resolvers()  # ${gpu_per_job:} must resolve wherever a config is composed
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
