"""`validate`, which checks every name against its registry and every number against its range before any work,
`warnings` for legal but doubtful combinations, and `registries` for `dlzoo ls`. The schemas live in schema.py."""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig

from dlzoo.checks import Checks
from dlzoo.config.schema import (  # noqa: F401  (re-exported: the schemas are part of dlzoo.config.validate's interface)
    COMBINES,
    COMPILE_MODES,
    MONITORS,
    PRECISIONS,
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
from dlzoo.data.build import data_problems, num_classes
from dlzoo.data.datasets import DATASETS
from dlzoo.errors import DlzooError
from dlzoo.models import ARCHS, build_model, stacked
from dlzoo.models import problems as model_problems
from dlzoo.models.activations import ACTIVATIONS
from dlzoo.models.heads import HEADS
from dlzoo.models.init import INITIALIZERS
from dlzoo.models.norm_dropout import DROPOUTS, NORMS
from dlzoo.models.rnn import CELLS
from dlzoo.models.sequential import BLOCKS
from dlzoo.optim import OPTIMIZERS, SCHEDULES
from dlzoo.optim.optimizers import problems as optim_problems
from dlzoo.optim.regularize import problems as regularize_problems
from dlzoo.optim.schedules import problems as sched_problems
from dlzoo.pretrain.layerwise import PRETRAINERS
from dlzoo.pretrain.layerwise import doubts as pretrain_doubts
from dlzoo.pretrain.layerwise import problems as pretrain_problems
from dlzoo.registry import Registry


def registries() -> dict[str, tuple[Registry[Any], list[str]]]:
    """Every registry, keyed by the name `dlzoo ls` uses, with the config keys it validates."""
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
    """Check names and ranges before any work; raise one DlzooError that lists every problem found.

    Each section's numbers are checked beside their registry (models, optim, sched, reg, data, pretrain); what
    is left here are the trainer's own keys and the rules that span sections."""
    problems = _interpolation_problems(cfg)
    if problems:  # the range checks below would trip over a list that resolved to a number
        raise DlzooError("Invalid config: " + " ".join(problems) + " Fix: give the key a value of its own kind.")

    for registry, keys in registries().values():
        problems += [registry.unknown_message(_get(cfg, key)) for key in keys if _get(cfg, key) not in registry]
    problems += model_problems(cfg.model) + regularize_problems(cfg.reg) + _trainer_problems(cfg)
    problems += optim_problems(cfg.optim) + sched_problems(cfg.sched, cfg.optim.lr) + data_problems(cfg.data)
    problems += _cross_problems(cfg)
    problems += stack_problems(cfg) if not problems else []
    problems += _head_problems(cfg) if not problems else []
    problems += pretrain_problems(cfg)
    if not problems and (big := _too_big(cfg.model, math.prod(DATASETS.get(cfg.data.name).shape),
                                         num_classes(cfg.data), cfg.trainer.stack)):  # fmt: skip
        problems.append(big)
    if not problems and cfg.model.arch != "mlp":
        problems += _dry_build(cfg)
    if problems:
        fix = "Fix it on the command line or in your YAML; `dlzoo validate <overrides>` checks without training."
        raise DlzooError("Invalid config: " + " ".join(problems) + " " + fix)


def _trainer_problems(cfg: DictConfig) -> list[str]:
    """The trainer, checkpoint, early-stopping, ensemble, eval and transfer keys."""
    c = Checks(cfg.trainer, "trainer")
    t = cfg.trainer
    c.check("checkpoint.every", t.checkpoint.every >= 1, ">= 1")
    c.check("checkpoint.top_k", t.checkpoint.top_k >= 0, ">= 0")
    c.check("checkpoint.monitor", t.checkpoint.monitor in MONITORS, " or ".join(MONITORS))
    c.check("early_stop.patience", t.early_stop.patience >= 0, ">= 0 (0 = off)")
    c.check("early_stop.monitor", t.early_stop.monitor in MONITORS, " or ".join(MONITORS))
    c.check("early_stop.min_delta", t.early_stop.min_delta >= 0, ">= 0")
    c.check("epochs", t.epochs >= 1, ">= 1")
    c.check("batch_size", t.batch_size >= 1, ">= 1")
    c.check("eval_batch_size", t.eval_batch_size >= 1, ">= 1")
    c.check("max_steps", t.max_steps is None or t.max_steps >= 1, ">= 1 or null")
    c.check(
        "stack",
        1 <= t.stack <= MAX_STACK,
        f"between 1 and {MAX_STACK} (the seeds trained as one batched model, "
        "each writing its own run folder and TensorBoard log; run more seeds as a sweep: -m trainer.seed=...)",
    )
    c.check("threads", t.threads is None or t.threads >= 1, ">= 1 or null")
    c.check("log_every_n_steps", t.log_every_n_steps >= 1, ">= 1")
    c.check(
        "histogram_every_n_steps",
        t.histogram_every_n_steps is None or t.histogram_every_n_steps >= 0,
        ">= 0 (0 = no histograms) or null (about a dozen per run)",
    )
    c.check("max_loss", t.max_loss is None or t.max_loss > 0, "> 0 or null")
    c.check("device", bool(_DEVICE.match(t.device)), "auto, cpu, cuda, cuda:N or mps")
    c.check("precision", t.precision in PRECISIONS, " | ".join(PRECISIONS))
    c.check("compile_mode", t.compile_mode in COMPILE_MODES, " | ".join(COMPILE_MODES))
    c.check("devices", t.devices >= 1, ">= 1 (the number of data-parallel processes)")
    e = Checks(cfg.ensemble, "ensemble")
    e.check("size", cfg.ensemble.size >= 1, ">= 1")
    e.check("combine", cfg.ensemble.combine in COMBINES, " or ".join(COMBINES))
    e.check("stack", cfg.ensemble.stack in ("auto", "on", "off"), "auto, on or off")
    v = Checks(cfg.eval, "eval")
    v.check("mc_samples", cfg.eval.mc_samples >= 0, ">= 0 (0 = off)")
    tr, x = cfg.transfer, Checks(cfg.transfer, "transfer")
    x.check("reuse_layers", tr.reuse_layers is None or tr.reuse_layers >= 1, ">= 1 or null (all but the output)")
    x.check("freeze_epochs", tr.freeze_epochs >= 0, ">= 0 (0 = train the copied layers from the start)")
    x.check("unfreeze_lr", tr.unfreeze_lr is None or tr.unfreeze_lr > 0, "> 0 or null (keep optim.lr)")
    return c.problems + e.problems + v.problems + x.problems


def stack_problems(cfg: DictConfig, k: int | None = None) -> list[str]:
    """What `k` (default trainer.stack; ensemble.stack=on asks for the ensemble's size) models stacked as one
    (dlzoo.models.stacked, trained by dlzoo.engine.training.loop) cannot train as k separate runs would, each with
    the fix."""
    t, size = cfg.trainer, cfg.ensemble.size
    k = k or (size if t.stack == 1 and size > 1 and cfg.ensemble.stack == "on" else t.stack)
    if k == 1:
        return []
    why = (f"trainer.stack={k} trains {k} models as one batched model" if t.stack > 1 else
           f"ensemble.stack=on trains the {k} members as one batched model")  # fmt: skip
    rules = [
        (size in (1, k), f"ensemble.size={size}: stack the whole ensemble, trainer.stack={size}"),
        (t.devices == 1, "one process only; trainer.devices=1"),
        (t.precision != "fp16", "fp16's loss scaler skips every member's step when one member's gradients "
         "overflow; trainer.precision=bf16 (no scaler) or fp32"),
        (not t.compile, "torch.compile is not wired into the stack's vmapped forward (and on a CPU a compiled "
         "forward measured no faster); trainer.compile=false"),
        (cfg.sched.name != "plateau", "one optimizer steps every member with one learning rate, and sched=plateau "
         "would lower it on a mean of the members' val losses instead of each member's own; a step or epoch "
         "schedule"),
        (cfg.pretrain.method == "none" and cfg.transfer.ckpt is None, "no pretraining or transfer with it yet"),
    ]  # fmt: skip
    problems = [f"{why}; {rule}." for ok, rule in rules if not ok]
    if not problems and cfg.model.arch in ARCHS:
        fix = "train the seeds one by one (dlzoo train -m trainer.seed=1,2,3)" if t.stack > 1 else \
            "ensemble.stack=auto (members one after another where stacking cannot work)"  # fmt: skip
        problems += [f"{why}; {p} Fix: {fix}." for p in _stackable(cfg)]
    return problems


def _stackable(cfg: DictConfig) -> list[str]:
    """The model's layers, checked against what dlzoo.models.stacked can batch (a dry build)."""
    spec = DATASETS.get(cfg.data.name)
    try:
        model = build_model(cfg.model, spec.shape, num_classes(cfg.data), init_batch=torch.randn(8, *spec.shape))
    except DlzooError:
        return []  # the model's own problem is reported on its own
    problem = stacked.why_not(model)
    return [] if problem is None else [f"its model has {problem}, which cannot be stacked."]


def _cross_problems(cfg: DictConfig) -> list[str]:
    """Rules that span sections."""
    t = cfg.trainer
    c = Checks(cfg.trainer, "trainer")
    one_new = cfg.ensemble.size == 1 and t.resume is None
    c.check(
        "devices", t.devices == 1 or one_new, "1 with ensemble.size > 1 or trainer.resume (DDP trains one new model)"
    )
    problems = c.problems
    if t.precision == "fp16" and not (
        t.device.startswith("cuda") or (t.device == "auto" and torch.cuda.is_available())
    ):
        problems.append(
            "trainer.precision=fp16 needs a CUDA device (loss scaling is a GPU technique); use trainer.precision=bf16 "
            "on the CPU."
        )
    return problems


def _head_problems(cfg: DictConfig) -> list[str]:
    """A sigmoid head needs the MLP and two classes (checked once the data settings are known to be fine)."""
    m, d, h = cfg.model, cfg.data, Checks(cfg.model, "model")
    if m.head == "sigmoid":
        h.check("head", m.arch == "mlp", "softmax for arch=" + m.arch + " (the sigmoid head is built by arch=mlp)")
        h.check("head", num_classes(d) == 2, f"softmax: {d.name} has {num_classes(d)} classes here, and a "
                "sigmoid unit scores 2 (data.binary_positive=<class> makes any dataset binary)")  # fmt: skip
    return h.problems


def _dry_build(cfg: DictConfig) -> list[str]:
    """Build the model once against the dataset's input shape, so a block list that cannot work is refused
    before any data is read (its error names the block and both shapes)."""
    spec = DATASETS.get(cfg.data.name)
    try:
        build_model(cfg.model, spec.shape, num_classes(cfg.data), init_batch=torch.zeros(2, *spec.shape))
    except DlzooError as e:
        return [str(e)]
    return []


MAX_PARAMS = 1_000_000_000  # 4 GB of float32 weights, before gradients and optimizer state: no lesson comes near
MAX_WIDTH = 1_000_000  # units or channels of one layer
MAX_STACK = 256  # each stacked seed has its own run folder, TensorBoard writer thread and open event file


def _too_big(m: DictConfig, inputs: int, classes: int, stack: int = 1) -> str | None:
    """A model too big to allocate, said before its weights would be (an MLP counted exactly, a block list by
    its widths, times trainer.stack copies), rather than a process that swaps or is killed."""
    if m.arch == "mlp" and all(isinstance(h, int) for h in m.hidden):
        widths = [inputs, *m.hidden, classes]
        pieces = m.act_args.maxout_k if m.activation == "maxout" and isinstance(m.act_args.maxout_k, int) else 1
        params = sum(a * b for a, b in itertools.pairwise(widths)) * max(pieces, 1) * stack
        if params > MAX_PARAMS:
            times = f" x trainer.stack={stack}" if stack > 1 else ""
            return (f"model.hidden={list(m.hidden)} (activation {m.activation}){times} makes {params:,} weights, more "
                    f"than {MAX_PARAMS:,} ({MAX_PARAMS * 4 / 1e9:.0f} GB as float32). Fix: narrower layers"
                    f"{' or fewer stacked seeds' if stack > 1 else ''}.")  # fmt: skip
    sizes = [b.get(k) for b in (m.get("blocks") or []) if isinstance(b, DictConfig) for k in ("out", "kernel")]
    if any(isinstance(v, int) and v > MAX_WIDTH for v in sizes):
        return f"model.blocks: a layer of {max(v for v in sizes if isinstance(v, int)):,} units or channels (the " \
               f"limit is {MAX_WIDTH:,}). Fix: a smaller `out` or `kernel`."  # fmt: skip
    return None


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

    out += pretrain_doubts(cfg)
    if cfg.eval.mc_samples > 0 and m.dropout == 0:
        out.append("eval.mc_samples is set but the model has no dropout: every MC pass is the same.")
    return out
