"""`validate`, which checks every name against its registry and every number against its range before any work,
`warnings` for legal but doubtful combinations, and `registries` for `dlzoo ls`. The schemas live in schema.py."""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig

from dlzoo.compiled import COMPILE_MODES
from dlzoo.engine import PRECISIONS
from dlzoo.errors import DlzooError
from dlzoo.models.init import DISTRIBUTIONS, MODES
from dlzoo.registry import Registry
from dlzoo.schema import (  # noqa: F401  (re-exported: the schemas are part of dlzoo.config's interface)
    CheckpointConfig,
    DataConfig,
    EarlyStopConfig,
    EnsembleConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    RegConfig,
    SchedConfig,
    TrainConfig,
    TrainerConfig,
    register_configs,
)
from dlzoo.splits import data_problems, num_classes


def registries() -> dict[str, tuple[Registry[Any], list[str]]]:
    """Every registry, keyed by the name `dlzoo ls` uses, with the config keys it validates."""
    from dlzoo.data import DATASETS
    from dlzoo.models import ARCHS
    from dlzoo.models.blocks import ACTIVATIONS, DROPOUTS, NORMS
    from dlzoo.models.heads import HEADS
    from dlzoo.models.init import INITIALIZERS
    from dlzoo.models.layers import BLOCKS
    from dlzoo.models.rnn import CELLS
    from dlzoo.optim import OPTIMIZERS, SCHEDULES
    from dlzoo.pretrain import PRETRAINERS

    return {
        "activation": (ACTIVATIONS, ["model.activation"]),
        "head": (HEADS, ["model.head"]),
        "init": (INITIALIZERS, ["model.init", "model.bias_init"]),
        "norm": (NORMS, ["model.norm"]),
        "block": (BLOCKS, []),
        "cell": (CELLS, ["model.cell"]),
        "dropout": (DROPOUTS, ["model.dropout_kind"]),
        "arch": (ARCHS, ["model.arch"]),
        "optimizer": (OPTIMIZERS, ["optim.name"]),
        "schedule": (SCHEDULES, ["sched.name"]),
        "dataset": (DATASETS, ["data.name"]),
        "pretrain": (PRETRAINERS, ["pretrain.method"]),
    }


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def validate(cfg: DictConfig) -> None:
    """Check names and ranges before any work; raise one DlzooError that lists every problem found."""
    problems = _interpolation_problems(cfg)
    if problems:  # the range checks below would trip over a list that resolved to a number
        raise DlzooError("Invalid config: " + " ".join(problems) + " Fix: give the key a value of its own kind.")

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
    check("optim.lr", 0 < o.lr < math.inf, "> 0 and finite")
    check("optim.weight_decay", o.weight_decay >= 0, ">= 0")
    check("optim.momentum", 0 <= o.momentum < 1, "in [0, 1)")
    check("optim.momentum", o.name not in ("momentum", "nesterov") or o.momentum > 0, f"> 0 for optim.name={o.name}")
    check("optim.rho", 0 <= o.rho < 1, "in [0, 1)")
    check("optim.betas", len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "two numbers in [0, 1)")
    check("optim.eps", o.eps > 0, "> 0")
    sc = cfg.sched
    # Against a bad optim.lr the bound means nothing: that lr has its own message.
    check("sched.min_lr", sc.min_lr >= 0 and (o.lr <= 0 or sc.min_lr <= o.lr), "in [0, optim.lr]")
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
    check("trainer.precision", t.precision in PRECISIONS, " | ".join(PRECISIONS))
    check("trainer.compile_mode", t.compile_mode in COMPILE_MODES, " | ".join(COMPILE_MODES))
    if t.precision == "fp16" and not (
        t.device.startswith("cuda") or (t.device == "auto" and torch.cuda.is_available())
    ):
        problems.append(
            "trainer.precision=fp16 needs a CUDA device (loss scaling is a GPU technique); use trainer.precision=bf16 "
            "on the CPU."
        )
    check("trainer.devices", t.devices >= 1, ">= 1 (the number of data-parallel processes)")
    one_new = cfg.ensemble.size == 1 and t.resume is None
    rule = "1 with ensemble.size > 1 or trainer.resume (DDP trains one new model)"
    check("trainer.devices", t.devices == 1 or one_new, rule)
    # 0 would leave validation empty: val/loss, early stopping and best-epoch checkpoints need at least one image.
    check("data.val_size", d.val_size >= 1, ">= 1")
    check("data.train_subset", d.train_subset is None or d.train_subset >= 1, ">= 1 or null")
    check("data.test_subset", d.test_subset is None or d.test_subset >= 1, ">= 1 or null")
    problems += data_problems(d)
    if not problems and m.head == "sigmoid":
        check("model.head", m.arch == "mlp", "softmax for arch=" + m.arch + " (the sigmoid head is built by arch=mlp)")
        check("model.head", num_classes(d) == 2, f"softmax: {d.name} has {num_classes(d)} classes here, and a "
              "sigmoid unit scores 2 (data.binary_positive=<class> makes any dataset binary)")  # fmt: skip
    tr = cfg.transfer
    check("transfer.reuse_layers", tr.reuse_layers is None or tr.reuse_layers >= 1, ">= 1 or null (all but the output)")
    check("transfer.freeze_epochs", tr.freeze_epochs >= 0, ">= 0 (0 = train the copied layers from the start)")
    check("transfer.unfreeze_lr", tr.unfreeze_lr is None or tr.unfreeze_lr > 0, "> 0 or null (keep optim.lr)")

    from dlzoo.pretrain import problems as pretrain_problems

    problems += pretrain_problems(cfg)
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
        build_model(cfg.model, spec.shape, num_classes(cfg.data), init_batch=torch.zeros(2, *spec.shape))
    except DlzooError as e:
        return [str(e)]
    return []


def _interpolation_problems(node: DictConfig | ListConfig, prefix: str = "") -> list[str]:
    """OmegaConf type-checks an interpolation's result only for scalar keys: `optim.betas=${optim.lr}` would
    hand a float to code that expects a list. Check every list- or dict-typed key resolves to its own kind."""
    problems: list[str] = []
    keys = range(len(node)) if isinstance(node, ListConfig) else [k for k in node if k != "hydra"]
    for key in keys:
        child = node._get_node(key)
        dotted = f"{prefix}{key}"
        if isinstance(child, (DictConfig, ListConfig)) and child._is_interpolation():
            kind, want = (ListConfig, "a list") if isinstance(child, ListConfig) else (DictConfig, "a mapping")
            try:
                value = node[key]
            except Exception as e:  # an interpolation that cannot resolve; OmegaConf's message names the key
                problems.append(f"{dotted} could not be resolved: {' '.join(str(e).split())}.")
                continue
            if not isinstance(value, kind):
                problems.append(f"{dotted}={child._value()!r} resolves to {value!r}, but {dotted} must be {want}.")
        elif isinstance(child, (DictConfig, ListConfig)) and not child._is_missing() and not child._is_none():
            problems += _interpolation_problems(child, dotted + ".")
    return problems


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
    tr = cfg.transfer
    if tr.ckpt is None and (tr.freeze_epochs > 0 or tr.reuse_layers is not None):
        out.append("transfer.freeze_epochs / reuse_layers are set but transfer.ckpt is null: nothing is reused.")
    elif tr.ckpt is not None and tr.freeze_epochs >= cfg.trainer.epochs:
        out.append(f"transfer.freeze_epochs={tr.freeze_epochs} >= trainer.epochs: the copied layers never unfreeze.")
    from dlzoo.pretrain import doubts

    out += doubts(cfg)
    if cfg.eval.mc_samples > 0 and m.dropout == 0:
        out.append("eval.mc_samples is set but the model has no dropout: every MC pass is the same.")
    return out
