"""A `trainer.stack=K` run, assembled: K members built as their standalone runs build them, trained in one pass
(engine.training.loop.fit on a models.stacked.StackedNet), each written to its own folder as its standalone run
writes it.
Seeds seed..seed+K-1 go to <run>/seed<s>/ (metrics.json, checkpoints/last.pt, TensorBoard, .hydra/ with the seed's
own config, so `dlzoo report` and `dlzoo ladder` read them as seeds); the K members of `ensemble.size=K` go to
<run>/member<i>/ as an ensemble's members do, and run.py combines them. The stack's own state is
<run>/checkpoints/stack.pt."""

from __future__ import annotations

import copy
import math
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from dlzoo.config.schema import TrainConfig
from dlzoo.config.validate import stack_problems
from dlzoo.console import console, print_warning
from dlzoo.data.build import num_classes
from dlzoo.data.datasets import DATASETS
from dlzoo.data.splits import Splits
from dlzoo.engine.assembly import one_model
from dlzoo.engine.assembly.folders import metadata, write_json
from dlzoo.engine.assembly.resuming import STACK_FILE, member_folder
from dlzoo.engine.recording.tracking import RunTracker, Tracker
from dlzoo.engine.training.checkpoint import Checkpointing, save_checkpoint
from dlzoo.engine.training.loop import fit
from dlzoo.engine.training.state import FitResult, MemberState, step_counts
from dlzoo.engine.training.stopping import EarlyStopping, StopFlag
from dlzoo.errors import DlzooError
from dlzoo.models import build_model
from dlzoo.models.stacked import StackedNet
from dlzoo.models.summary import Summary
from dlzoo.optim import build_optimizer, build_scheduler

# On a CPU, K models trained as one stack measured faster than one after another only for small MLPs (lab 10-3's
# 269k weights, not lab 10-5's 1.2M, nor any CNN): beyond that the K-fold weights and activations no longer fit the
# cache. The README's speed section has the figures and the command.
CPU_STACK_MAX_WEIGHTS = 500_000


def faster_stacked(cfg: TrainConfig, k: int, device: torch.device) -> tuple[bool, str]:
    """Whether `k` models of this config train faster as one stack on `device`, and why (for the user)."""
    problems = stack_problems(cfg, k)
    if problems:
        return False, "cannot take this config: " + problems[0]
    if device.type == "cuda":
        return True, "on a GPU, where one small model leaves the device idle"
    if cfg.model.arch != "mlp":
        return False, "measured slower for convolutional nets on a CPU"
    weights = sum(p.numel() for p in build_model(cfg.model, DATASETS.get(cfg.data.name).shape,
                                                  num_classes(cfg.data)).parameters())  # fmt: skip
    if weights > CPU_STACK_MAX_WEIGHTS:
        return False, f"measured no faster on a CPU for an MLP of {weights:,} weights (only up to 500,000)"
    return True, f"measured faster on a CPU for an MLP of {weights:,} weights"


def stack_size(cfg: TrainConfig, device: torch.device, out_dir: Path) -> tuple[int, str | None]:
    """How many models the run trains as one stack: trainer.stack, or an ensemble's size where ensemble.stack
    says so (auto: where faster_stacked; an ensemble begun member by member continues that way); and the line
    that tells the user which and why (None when there is nothing to say)."""
    t, e = cfg.trainer, cfg.ensemble
    if t.stack > 1 or e.size == 1 or e.stack == "off":
        return t.stack, None
    if t.resume is not None:
        folder = out_dir if t.resume == "auto" else Path(t.resume).expanduser()
        if not (folder / "checkpoints" / STACK_FILE).is_file():
            return 1, None
    if e.stack == "on":
        return e.size, f"ensemble.stack=on: the {e.size} members train as one stacked model"
    faster, why = faster_stacked(cfg, e.size, device)
    how = "as one stacked model" if faster else "one after another"
    return (e.size if faster else 1), f"ensemble.stack=auto: the {e.size} members train {how} (stacking: {why})"


def folders(cfg: TrainConfig, out_dir: Path) -> list[tuple[int, Path]]:
    """(seed, folder) of each member: seed<s>/ for seeds, member<i>/ for an ensemble's members."""
    t, size = cfg.trainer, cfg.ensemble.size
    if size > 1:
        return [(t.seed + i, member_folder(out_dir, i, size)) for i in range(size)]
    return [(t.seed + k, out_dir / f"seed{t.seed + k}") for k in range(t.stack)]


def train_stacked(
    cfg: TrainConfig,
    config: dict[str, Any],
    hparams: dict[str, Any],
    data: Splits,
    device: torch.device,
    out_dir: Path,
    resume: dict[str, Any] | None = None,
    stop: StopFlag | None = None,
    started: float | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> list[tuple[torch.nn.Module, dict[str, Any] | None]]:
    """Train the stack; returns each member's model and metrics (None for a member that diverged). Each member's
    wall_time_s is its share of the stack's (from `started`, the run's start, to the end of training, over K).
    `on_epoch_end(epoch, metrics)` gets each epoch metric's mean over the members still training."""
    started = time.perf_counter() if started is None else started
    t, k_all, where = cfg.trainer, cfg.trainer.stack, folders(cfg, out_dir)
    seeds = [s for s, _ in where]
    what = f"the {k_all} ensemble members" if cfg.ensemble.size > 1 else f"{k_all} seeds"
    layout = "member<i>" if cfg.ensemble.size > 1 else "seed<s>"
    console.print(f"training {what} ({seeds[0]}..{seeds[-1]}) as one stacked model -> {out_dir}/{layout} "
                  f"(the progress bar follows seed {seeds[0]})")  # fmt: skip
    models, generators, trackers, summaries, metas = [], [], [], [], []
    purge = resume["step"] + 1 if resume is not None else None
    total = step_counts(len(data.y_train), t.batch_size, t.epochs, t.max_steps)[1]
    with ExitStack() as stack:
        for k, (seed, folder) in enumerate(where):
            # Each member's setup is its standalone run's, in the same order, so its random stream is too.
            model, _, summary = one_model.setup_model(cfg, hparams, data, device, seed, None, quiet=k > 0)
            tracker = stack.enter_context(
                RunTracker(folder, t.epochs, t.progress and k == 0, purge, label=f"seed {seed}  ", total_steps=total)
            )
            meta = metadata(seed, device) | {"data_mean": data.mean, "data_std": data.std, "stacked": k_all}
            tracker.log_text("run/meta", meta)
            if t.figures and resume is None:
                tracker.log_graph(model, data.prep(data.x_train[:2]))
            generator = torch.Generator(device=device)
            generator.set_state(torch.get_rng_state() if device.type == "cpu" else torch.cuda.get_rng_state(device))
            models.append(model.train())
            generators.append(generator)
            trackers.append(tracker)
            summaries.append(summary)
            metas.append(meta)
        checkpoint = out_dir / "checkpoints" / STACK_FILE if t.checkpoint.enabled else None
        best = [_best(cfg, config, meta, folder, resume, k) for k, ((_, folder), meta) in
                enumerate(zip(where, metas, strict=True))] if checkpoint is not None else None  # fmt: skip
        results = fit_stack(models, generators, seeds, trackers, data, cfg, checkpoint, resume, stop,
                            {"config": config}, best, on_epoch_end)  # fmt: skip
        share = {"wall_time_s": (time.perf_counter() - started) / k_all}
        bad = [k for k, r in enumerate(results) if not math.isfinite(r.train_loss)]
        members = [
            (model, None if k in bad else _finish_member(cfg, config, hparams, data, folder, model, *parts, share))
            for k, ((_, folder), model, *parts) in enumerate(zip(where, models, results, trackers, summaries, metas,
                                                                  strict=True))
        ]  # fmt: skip
    if bad:
        print_warning(f"seed(s) {[seeds[k] for k in bad]} diverged (their loss became NaN, infinite or exceeded "
                      "trainer.max_loss; they are frozen where it happened and write no metrics.json); the other "
                      "members' results stand. Fix for them: a lower optim.lr or reg.clip_norm.")  # fmt: skip
    return members


def fit_stack(
    models: list[torch.nn.Module],
    generators: list[torch.Generator],
    seeds: list[int],
    trackers: list[Tracker],
    data: Splits,
    cfg: TrainConfig,
    checkpoint: Path | None = None,
    resume: dict[str, Any] | None = None,
    stop: StopFlag | None = None,
    extra: dict[str, Any] | None = None,
    best: list[Checkpointing] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> list[FitResult]:
    """Train the K `models` (each built, seeded and initialized as its standalone run builds it; `generators[k]`
    holds the global random stream that run would continue with) as one StackedNet through
    engine.training.loop.fit, with stack.pt at `checkpoint` (`extra` saved in it), each member's `best`
    checkpoints, and `on_epoch_end` given the mean over the members still training. Returns each member's
    FitResult (NaN losses for one that diverged)."""
    t, es = cfg.trainer, cfg.trainer.early_stop
    per_epoch, total = step_counts(len(data.y_train), t.batch_size, t.epochs, t.max_steps)
    nhwc = t.channels_last and any(isinstance(m, torch.nn.Conv2d) for m in models[0].modules())  # as setup_model
    net = StackedNet(models, generators, nhwc)
    optimizer = build_optimizer(cfg.optim, net.parameters())
    scheduler = build_scheduler(cfg.sched, optimizer, per_epoch, total)
    device = data.x_train.device
    members = [MemberState(torch.Generator(device=device).manual_seed(s), tracker,
                           EarlyStopping(es.patience, es.monitor, es.min_delta) if es.patience > 0 else None,
                           best[k] if best is not None else None)
               for k, (s, tracker) in enumerate(zip(seeds, trackers, strict=True))]  # fmt: skip
    ck = None if checkpoint is None else Checkpointing(checkpoint.parent, t.checkpoint.every, 0, extra=extra or {},
                                                        file=checkpoint.name)  # fmt: skip
    opts = one_model.fit_options(cfg, seeds[0], ck, stop, on_epoch_end, total)
    opts.early_stopping, opts.members = None, members
    return fit(net, data, optimizer, scheduler, trackers[0], opts, resume)


def _best(
    cfg: TrainConfig, config: dict[str, Any], meta: dict[str, Any], folder: Path, resume: dict[str, Any] | None, k: int
) -> Checkpointing:
    """Member k's best-epoch checkpoints, as its standalone run keeps them; a resumed one keeps counting."""
    ck = cfg.trainer.checkpoint
    best = Checkpointing(folder / "checkpoints", ck.every, ck.top_k, ck.monitor, {"config": config, "meta": meta})
    if resume is not None:
        best.adopt_best(resume["members"][k]["history"])
    return best


SCORES = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


def summary(cfg: TrainConfig, members: list[tuple[torch.nn.Module, dict[str, Any] | None]]) -> dict[str, Any]:
    """The stack's own metrics.json for seeds: the test accuracy's mean and sample std over the healthy seeds."""
    seeds = [cfg.trainer.seed + k for k in range(len(members))]
    good = [(s, m) for s, (_, m) in zip(seeds, members, strict=True) if m is not None]
    if not good:
        raise DlzooError(
            "Every seed of the stacked run diverged. Fix: lower optim.lr (e.g. by 10x), clip gradients "
            "(reg.clip_norm=1.0), or use an initializer scaled to the layer (model.init=xavier_uniform)."
        )
    accs = [m["test_acc"] for _, m in good]
    mean = sum(accs) / len(accs)
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else None
    first = good[0][1]
    # Each score as a standalone run names it (the mean over the healthy seeds: what `dlzoo tune --seeds` optimizes),
    # and every seed's own value beside it.
    scores = {key: sum(m[key] for _, m in good) / len(good) for key in SCORES}
    each = {f"member_{key}": [m[key] if m else None for _, m in members] for key in SCORES}
    return scores | each | {"test_acc_std": std, "stack": len(members), "seeds": seeds,
            "diverged_seeds": [s for s, (_, m) in zip(seeds, members, strict=True) if m is None],
            "steps": first["steps"], "epochs": first["epochs"], "train_time_s": first["train_time_s"],
            "train_samples_per_s": first["train_samples_per_s"] * len(members)}  # fmt: skip


def _finish_member(
    cfg: TrainConfig,
    config: dict[str, Any],
    hparams: dict[str, Any],
    data: Splits,
    folder: Path,
    model: torch.nn.Module,
    result: FitResult,
    tracker: RunTracker,
    summary: Summary,
    meta: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """A stacked member's end, as its standalone run's: test scores, text tab, images, HParams, checkpoint,
    metrics.json, and (for seeds) the .hydra/ config of a standalone run with its seed."""
    seed, ensemble = meta["seed"], cfg.ensemble.size > 1
    own = copy.deepcopy(config)
    if not ensemble:
        own["trainer"] |= {"seed": seed, "stack": 1}
    seeded = [o for o in one_model.overrides() if not o.startswith(("trainer.stack=", "trainer.seed="))]
    metrics = one_model.finish(tracker, cfg, own, hparams | {"trainer.seed": seed}, data, model, result, summary,
                               meta, folder, seeded) | extra  # fmt: skip
    if cfg.trainer.checkpoint.enabled:
        weights = result.last_state or model.state_dict()  # last.pt holds the last epoch, as a standalone run's
        save_checkpoint(folder / "checkpoints" / "last.pt", {"model": weights, "epoch": result.epochs,
                        "step": result.steps, "history": result.history, "config": own, "meta": meta})  # fmt: skip
    if not ensemble:
        hydra = folder / ".hydra"
        hydra.mkdir(parents=True, exist_ok=True)
        (hydra / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(own)))
        (hydra / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create([*seeded, f"trainer.seed={seed}"])))
        parent = folder.parent / ".hydra" / "hydra.yaml"  # the config group choices, which are the stack's
        if parent.is_file():
            shutil.copyfile(parent, hydra / "hydra.yaml")
    write_json(folder / "metrics.json", metrics)
    return metrics
