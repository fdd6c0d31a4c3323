"""One run, assembled: config -> data, model, optimizer, schedule -> fit -> test -> metrics.json, checkpoints and
TensorBoard events in the run folder. `dlzoo train` (dlzoo.train) and the sweeps call `run`."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dlzoo.config import launch
from dlzoo.config.schema import TrainConfig, as_dict, settings
from dlzoo.config.validate import validate, warnings
from dlzoo.console import console, print_final, print_warning
from dlzoo.data.build import build_splits
from dlzoo.data.splits import Splits
from dlzoo.engine.assembly import one_model, resuming, stacked_run
from dlzoo.engine.assembly.folders import (
    check_writable,
    metadata,
    remove_stale_temporaries,
    run_lock,
    write_json,
)
from dlzoo.engine.assembly.pretraining import is_pretraining, pretrain
from dlzoo.engine.assembly.transfer import build_freeze_schedule
from dlzoo.engine.recording.hparams import chosen_columns, run_hparams
from dlzoo.engine.recording.tracking import (
    RunTracker,
    SilentTracker,
)
from dlzoo.engine.training import distributed
from dlzoo.engine.training.checkpoint import Checkpointing, restorable_problem
from dlzoo.engine.training.evaluation import evaluate_ensemble
from dlzoo.engine.training.loop import fit, resolve_device
from dlzoo.engine.training.state import step_counts
from dlzoo.engine.training.stopping import Interrupted, StopFlag, full_disk, resume_command
from dlzoo.errors import DlzooError
from dlzoo.models import build_model
from dlzoo.optim import build_optimizer, build_scheduler

OnEpochEnd = Callable[[int, dict[str, float]], None]


def run(
    composed: DictConfig,
    out_dir: Path,
    stop: StopFlag | None = None,
    on_epoch_end: OnEpochEnd | None = None,
    on_folder: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Train and test one configuration (or an ensemble of `ensemble.size` members), writing everything into
    `out_dir` (or into the run being resumed); returns the final metrics. Raises DlzooError for anything the
    user can fix, Interrupted on a stop request. `on_epoch_end(epoch, metrics)` runs after every validated epoch
    (see dlzoo.engine.training.loop.FitOptions); `on_folder(folder)` once the folder the run writes in is known (a
    resumed run's own, rather than `out_dir`).

    `composed` is Hydra's composed config: validated here, then turned into the typed settings every module below
    takes (dlzoo.config.schema.settings), so none of them reads OmegaConf."""
    started = time.perf_counter()
    validate(composed)
    for message in warnings(composed):
        print_warning(message)
    cfg = _stacking(settings(composed), out_dir)
    t = cfg.trainer
    dist = distributed.current()
    distributed.check_supported(dist.world, t.devices, cfg.ensemble.size, t.resume)
    resumed = resuming.plan(cfg, out_dir)
    if on_folder is not None:
        on_folder(resumed.folder)
    if resumed.done is not None:  # a resumed sweep's job that had finished: kept as it is
        print_final(resumed.done, out_dir)
        return resumed.done
    out_dir = resumed.folder
    if dist.main:
        check_writable(out_dir)
    # One process per run folder: a second would mix its files with this one's (metrics of one seed, last.pt
    # of another). Ranks > 0 of a DDP run write nothing.
    with run_lock(out_dir) if dist.main else nullcontext():
        if dist.main and (stale := remove_stale_temporaries(out_dir)):
            console.print(f"removed {len(stale)} half-written file(s) a stopped process left: "
                          f"{', '.join(p.name for p in stale[:3])}")  # fmt: skip
        try:
            return _run_in(cfg, out_dir, resumed.members, stop, on_epoch_end, started)
        except OSError as e:
            if (full := full_disk(e, out_dir)) is None:
                raise
            raise full from None


def _stacking(cfg: TrainConfig, out_dir: Path) -> TrainConfig:
    """The config with trainer.stack set to what the run stacks (an ensemble under ensemble.stack), said aloud."""
    k, line = stacked_run.stack_size(cfg, resolve_device(cfg.trainer.device), out_dir)
    if line is not None:
        console.print(line)
    if k == cfg.trainer.stack:
        return cfg
    return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, stack=k))


def _run_in(
    cfg: TrainConfig,
    out_dir: Path,
    starts: list[resuming.Start],
    stop: StopFlag | None,
    on_epoch_end: OnEpochEnd | None,
    started: float,
) -> dict[str, Any]:
    """The body of `run` once the run folder is known and locked: each member, then the ensemble's vote."""
    t = cfg.trainer
    dist = distributed.current()
    _setup_process(cfg)
    device = dist.device(resolve_device(t.device))
    data = build_splits(cfg.data, device)
    config = as_dict(cfg)
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    hparams = run_hparams(config, choices, one_model.overrides())

    if t.stack > 1:
        members = stacked_run.train_stacked(
            cfg, config, hparams, data, device, out_dir, starts[0].checkpoint, stop, started, on_epoch_end
        )
        metrics = _stacked_ensemble(cfg, hparams, data, out_dir, members) if cfg.ensemble.size > 1 else \
            stacked_run.summary(cfg, members)  # fmt: skip
    else:
        metrics = _members(cfg, config, hparams, data, device, out_dir, starts, stop, on_epoch_end)
    metrics["wall_time_s"] = time.perf_counter() - started
    if dist.world > 1:
        metrics["world_size"] = dist.world
    if dist.main:
        write_json(out_dir / "metrics.json", metrics)
    print_final(
        metrics,
        out_dir,
        ", ".join(
            what
            for what in ("metrics.json", "checkpoints/", "TensorBoard events")
            if what != "checkpoints/" or (out_dir / "checkpoints").is_dir()
        ),
    )
    if isinstance(fell := metrics.get("collapsed"), dict):
        print_warning(one_model.collapse_warning(fell, fell["checkpoints"]))
    return metrics


def _members(
    cfg: TrainConfig,
    config: dict[str, Any],
    hparams: dict[str, Any],
    data: Splits,
    device: torch.device,
    out_dir: Path,
    starts: list[resuming.Start],
    stop: StopFlag | None,
    on_epoch_end: OnEpochEnd | None,
) -> dict[str, Any]:
    """The run's one model, or each member of its ensemble (kept, resumed or new) and then their vote."""
    t, size = cfg.trainer, cfg.ensemble.size
    members = []
    for i, start in enumerate(starts):
        folder = resuming.member_folder(out_dir, i, size)
        if start.finished is not None:
            console.print(f"ensemble member {i + 1}/{size} (seed {t.seed + i}) finished before: kept ({folder})")
            members.append((_finished_member(cfg, data, device, start), start.finished))
            continue
        if size > 1:
            console.print(f"ensemble member {i + 1}/{size} (seed {t.seed + i}) -> {folder}")
        try:
            members.append(_train_member(cfg, config, hparams, data, device, folder, t.seed + i, start.checkpoint,
                                         stop, on_epoch_end))  # fmt: skip
        except Interrupted as e:
            if size > 1 and e.hint is None:
                e.hint = f"Resume the ensemble with: {resume_command(out_dir)} (the {i} finished member(s) are kept)"
            raise
    return members[0][1] if size == 1 else _ensemble(cfg, hparams, data, out_dir, members)


def _stacked_ensemble(
    cfg: TrainConfig,
    hparams: dict[str, Any],
    data: Splits,
    out_dir: Path,
    members: list[tuple[torch.nn.Module, dict[str, Any] | None]],
) -> dict[str, Any]:
    """An ensemble whose members trained as one stack: combined as any ensemble, unless one diverged."""
    bad = [i for i, (_, m) in enumerate(members) if m is None]
    if bad:
        raise DlzooError(f"ensemble member(s) {bad} diverged, so the ensemble is not combined (the other members' "
                         f"folders under {out_dir} are complete). Fix: lower optim.lr or add reg.clip_norm=1.0, "
                         "then train the ensemble again.")  # fmt: skip
    return _ensemble(cfg, hparams, data, out_dir, [(model, m) for model, m in members if m is not None])


def _setup_process(cfg: TrainConfig) -> None:
    """Threads, determinism and anomaly detection: process-wide torch settings, before any tensor is made."""
    t = cfg.trainer
    threads = t.threads if t.threads is not None else launch.default_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    if t.deterministic:
        # cuBLAS needs this workspace setting for deterministic matmuls (PyTorch's reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    torch.autograd.set_detect_anomaly(t.detect_anomaly)


def _ensemble(
    cfg: TrainConfig,
    hparams: dict[str, Any],
    data: Splits,
    out_dir: Path,
    members: list[tuple[torch.nn.Module, dict[str, Any]]],
) -> dict[str, Any]:
    """The members' combined test accuracy (ensemble.combine) and their mean metrics, logged in the ensemble's
    own TensorBoard run at the folder's root."""
    t, size = cfg.trainer, len(members)
    tests = [m["test_acc"] for _, m in members]
    ensemble_acc = evaluate_ensemble(
        [m for m, _ in members], data.x_test, data.y_test, cfg.ensemble.combine, t.eval_batch_size, data.prep
    )
    first = members[0][1]
    metrics = {
        "test_acc": ensemble_acc,
        "ensemble_size": size,
        "member_test_acc": tests,
        "member_test_acc_mean": sum(tests) / size,
        **{k: sum(m[k] for _, m in members) / size for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
        "test_loss": None,  # the ensemble's rule combines scores, not a calibrated distribution
        "epochs": first["epochs"],
        "steps": sum(m["steps"] for _, m in members),
        "train_samples_per_s": sum(m["train_samples_per_s"] for _, m in members) / size,
    }
    step = max(m["steps"] for _, m in members)  # each member's last step: the ensemble's points end the curves
    with RunTracker(out_dir, t.epochs, progress=False) as tracker:
        tracker.log_test(step, {"acc": ensemble_acc, "member_mean_acc": metrics["member_test_acc_mean"]})
        tracker.log_val(step, metrics["val_acc"], metrics["val_loss"])
        if t.figures:
            one_model.log_pictures(tracker, cfg, [m for m, _ in members], data, step, f"ensemble of {size}")
        tracker.log_hparams(hparams, t.hparams_experiment, chosen_columns(hparams, one_model.overrides()))
    return metrics | {k: v for k, v in first.items() if k in ("seed", "device", "torch", "git_commit")}


def _train_member(
    cfg: TrainConfig,
    config: dict[str, Any],
    hparams: dict[str, Any],
    data: Splits,
    device: torch.device,
    out_dir: Path,
    seed: int,
    resume: dict[str, Any] | None,
    stop: StopFlag | None,
    on_epoch_end: OnEpochEnd | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """One model: build, fit, test. Writes its checkpoints and TensorBoard events into `out_dir`."""
    t = cfg.trainer
    dist = distributed.current()
    pretrained = resume if resume is not None and is_pretraining(resume) else None
    resume = None if pretrained is not None else resume  # what fine-tuning continues from
    model, reused, summary = one_model.setup_model(cfg, hparams, data, device, seed, resume)
    if resume is not None and (problem := restorable_problem(resume, model)) is not None:
        version = resume.get("meta", {}).get("dlzoo", "an unknown version")
        raise DlzooError(
            f"Cannot resume from {t.resume}: {problem}. The checkpoint was written by dlzoo {version} or edited since. "
            "Fix: resume with the overrides and dlzoo version it was trained with, or start a new run (drop "
            "trainer.resume)."
        )
    steps_per_epoch, total_steps = step_counts(len(data.y_train), t.batch_size, t.epochs, t.max_steps)
    if dist.rank > 0:  # independent dropout masks per rank; the weights themselves come from rank 0 (DDP)
        torch.manual_seed(seed + dist.rank)
    optimizer = build_optimizer(cfg.optim, model.parameters())
    scheduler = build_scheduler(cfg.sched, optimizer, steps_per_epoch, total_steps)
    epochs_done = resume["epoch"] if resume is not None else 0
    on_epoch_end = build_freeze_schedule(cfg.transfer, model, reused, scheduler, epochs_done, then=on_epoch_end)
    meta = metadata(seed, device)
    meta["data_mean"], meta["data_std"] = data.mean, data.std  # what `dlzoo predict` must apply to new images
    opts = one_model.fit_options(
        cfg, seed, _setup_checkpointing(cfg, config, meta, out_dir, resume), stop, on_epoch_end, total_steps
    )
    purge_step = resume["step"] + 1 if resume else None
    tracker_cm = (
        RunTracker(out_dir, t.epochs, t.progress, purge_step, total_steps=total_steps) if dist.main else SilentTracker()
    )
    with tracker_cm as tracker:
        tracker.log_text("run/meta", meta)
        if dist.main and resume is None and t.figures:
            tracker.log_graph(model, data.prep(data.x_train[:2]))
        if resume is None:  # a resumed run's checkpoint already holds the pretrained, fine-tuned weights
            pretrain(cfg, model, data, tracker, seed, opts.checkpointing, stop, pretrained)
        result = fit(model, data, optimizer, scheduler, tracker, opts, resume)
        metrics = one_model.finish(tracker, cfg, config, hparams, data, model, result, summary, meta, out_dir,
                                   one_model.overrides(), dist.main)  # fmt: skip
    if cfg.ensemble.size > 1:
        write_json(out_dir / "metrics.json", metrics)
    return model, metrics


def _finished_member(cfg: TrainConfig, data: Splits, device: torch.device, start: resuming.Start) -> torch.nn.Module:
    """A member that finished before the ensemble was interrupted, with the weights it ended with (its best
    epoch's, when early stopping restored them)."""
    assert start.checkpoint is not None
    init_batch = data.prep(data.x_train[:1000]).cpu()  # lsuv needs one, though the saved weights then replace it
    model = build_model(cfg.model, data.input_shape, data.num_classes, init_batch).to(device)
    es = start.checkpoint.get("early_stopping")
    best = es.get("best_state") if es and cfg.trainer.early_stop.restore_best else None
    model.load_state_dict(best if best is not None else start.checkpoint["model"])
    return model.eval()


def _setup_checkpointing(
    cfg: TrainConfig, config: dict[str, Any], meta: dict[str, Any], out_dir: Path, resume: dict[str, Any] | None
) -> Checkpointing | None:
    """Where last.pt and the best epochs go (rank 0 only); a resumed run keeps counting the best it kept."""
    ck = cfg.trainer.checkpoint
    if not ck.enabled or not distributed.current().main:
        return None
    checkpointing = Checkpointing(
        out_dir / "checkpoints", ck.every, ck.top_k, ck.monitor, {"config": config, "meta": meta}
    )
    if resume is not None:
        checkpointing.adopt_best(resume["history"])
    return checkpointing
