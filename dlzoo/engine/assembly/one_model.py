"""The parts of training one model that surround `fit`: building it as its seed builds it (its summary on the
terminal), scoring it on the test set, and its run's text tab and test-time images. Shared by a single run, an
ensemble's members and the members of a stacked run."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from dlzoo.config.schema import TrainConfig
from dlzoo.console import format_value, print_warning
from dlzoo.data.build import class_names
from dlzoo.data.splits import Splits
from dlzoo.engine.assembly.transfer import build_reuse
from dlzoo.engine.recording.figures import confusion, confusion_figure, misclassified_figure
from dlzoo.engine.recording.hparams import chosen_columns
from dlzoo.engine.recording.tracking import print_summary, summary_markdown
from dlzoo.engine.training import distributed
from dlzoo.engine.training.checkpoint import Checkpointing, best_epoch
from dlzoo.engine.training.evaluation import mc_evaluate, predict_probs
from dlzoo.engine.training.loop import seed_everything
from dlzoo.engine.training.state import FitOptions, FitResult, histogram_every
from dlzoo.engine.training.stopping import EarlyStopping, StopFlag
from dlzoo.models import build_model
from dlzoo.models.summary import Summary, summarize
from dlzoo.optim.regularize import build_regularizer

OnEpochEnd = Callable[[int, dict[str, float]], None]


def setup_model(
    cfg: TrainConfig,
    hparams: dict[str, Any],
    data: Splits,
    device: torch.device,
    seed: int,
    resume: dict[str, Any] | None,
    quiet: bool = False,
) -> tuple[torch.nn.Module, Any, Summary]:
    """The member's model, seeded, initialized, with any transferred layers; its summary on the terminal (unless
    `quiet`: a stacked run prints its first member's only)."""
    seed_everything(seed)
    init_batch = data.prep(data.x_train[:1000]).cpu()  # for data-driven init (LSUV); built on the CPU as the rest
    model = build_model(cfg.model, data.input_shape, data.num_classes, init_batch).to(device)
    if cfg.trainer.channels_last and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    reused = build_reuse(cfg.transfer, model, fresh=resume is None)
    summary = summarize(model, data.input_shape, device)
    if quiet:
        return model, reused, summary
    print_summary(
        summary,
        title=f"{model_name(cfg, hparams)} on {cfg.data.name} ({len(data.y_train):,} train / "
        f"{len(data.y_val):,} val / {len(data.y_test):,} test from {data.source}), device {device}",
    )
    return model, reused, summary


def test_scores(
    cfg: TrainConfig, model: torch.nn.Module, data: Splits, result: FitResult, tracker: Any
) -> dict[str, Any]:
    """The test set's scores (and MC dropout's, when asked) beside the fit's final metrics."""
    t = cfg.trainer
    dist = distributed.current()
    test_loss, test_acc = dist.evaluate(model, data.x_test, data.y_test, t.eval_batch_size, data.prep)
    tracker.log_test(result.steps, {"acc": test_acc, "loss": test_loss})
    metrics: dict[str, Any] = {
        "train_loss": result.train_loss,
        "train_acc": result.train_acc,
        "val_loss": result.val_loss,
        "val_acc": result.val_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "epochs": result.epochs,
        "steps": result.steps,
        "train_samples_per_s": result.train_samples / max(result.train_time_s, 1e-9),
        "train_time_s": result.train_time_s,
        # The same epoch as best-epochNNN.pt: best by trainer.checkpoint.monitor (val/loss by default).
        "best_epoch": best_epoch(result.history, t.checkpoint.monitor),
        "weights_epoch": result.weights_epoch,
        "stopped_early": result.stopped_early,
    }
    if t.compile:
        metrics["compile_time_s"] = result.compile_time_s
    if cfg.eval.mc_samples > 0:
        mc_acc, mc_entropy = mc_evaluate(
            model, data.x_test, data.y_test, cfg.eval.mc_samples, t.eval_batch_size, data.prep
        )
        metrics |= {"test_mc_acc": mc_acc, "test_mc_entropy": mc_entropy}
        tracker.log_test(result.steps, {"mc_acc": mc_acc, "mc_entropy": mc_entropy})
    return metrics


def finish(
    tracker: Any,
    cfg: TrainConfig,
    config: dict[str, Any],
    hparams: dict[str, Any],
    data: Splits,
    model: torch.nn.Module,
    result: FitResult,
    summary: Summary,
    meta: dict[str, Any],
    folder: Path,
    chosen: list[str],
    main: bool = True,
) -> dict[str, Any]:
    """A trained model's end, the same for a single run, an ensemble's member and a stacked member: test scores,
    a collapse to chance noted, the text tab, test-time images and the HParams row (`chosen`: the overrides that
    pick its columns). Returns its metrics; `main`: this process writes (rank 0)."""
    metrics = test_scores(cfg, model, data, result, tracker)
    if (fell := collapse(result.history, data.num_classes)) is not None:
        kept = sorted(str(p) for p in (folder / "checkpoints").glob("best-epoch*.pt"))
        metrics["collapsed"] = fell | {"checkpoints": kept}
        if main and cfg.ensemble.size > 1:  # a single run says so under its final table
            print_warning(collapse_warning(fell, kept))
    metrics |= {k: v for k, v in meta.items() if k not in ("data_mean", "data_std")}
    title = f"{model_name(cfg, hparams)}, seed {meta['seed']}"
    if main:
        log_texts(tracker, cfg, config, metrics, summary_markdown(summary))
    if main and cfg.trainer.figures:
        log_pictures(tracker, cfg, [model], data, result.steps, title)
        for tag, image in tracker.depth_figures(title).items():
            tracker.log_image(tag, image, result.steps)
    tracker.log_hparams(hparams, cfg.trainer.hparams_experiment, chosen_columns(hparams, chosen))
    return metrics


def collapse(history: list[dict[str, float]], num_classes: int) -> dict[str, Any] | None:
    """How validation accuracy fell back to chance after it was far above it (a learning rate that climbed too
    high, say), or None when it did not: {best_epoch, best_val_acc, final_val_acc, chance}. Far above: more than
    half-way from chance to 1; back at chance: within a tenth of that rise."""
    accs = [(int(h["epoch"]), float(h["val/acc"])) for h in history if "val/acc" in h]
    if not accs or num_classes < 2:
        return None
    chance = 1 / num_classes
    epoch, best = max(accs, key=lambda a: a[1])
    final = accs[-1][1]
    if not (best - chance > 0.5 * (1 - chance) and final - chance <= 0.1 * (best - chance)):
        return None
    return {"best_epoch": epoch, "best_val_acc": best, "final_val_acc": final, "chance": chance}


def collapse_warning(fell: dict[str, Any], checkpoints: list[str]) -> str:
    """What a collapsed run says at its end: how far it fell, where the good weights are, and what to change."""
    where = (f"The best epoch's weights are kept in {', '.join(checkpoints)} (`dlzoo eval ckpt=<file>` scores them)."
             if checkpoints else "No best-epoch checkpoint was kept (trainer.checkpoint.top_k=0).")  # fmt: skip
    return (
        f"Training collapsed: validation accuracy reached {fell['best_val_acc']:.4f} at epoch {fell['best_epoch']} "
        f"and fell back to {fell['final_val_acc']:.4f} by the end, chance level ({fell['chance']:.2f}); the "
        f"model this run ends with is no better than guessing. {where} Fix: a lower learning rate (optim.lr, or "
        "sched.max_lr for sched=onecycle), gradient clipping (reg.clip_norm=1.0), or "
        "trainer.early_stop.patience=3, which keeps the best epoch's weights."
    )


def log_pictures(
    tracker: Any, cfg: TrainConfig, models: list[torch.nn.Module], data: Splits, step: int, title: str
) -> None:
    """The test set's confusion matrix and its most confidently misclassified images (an ensemble's: its vote)."""
    if len(data.y_test) == 0:
        return
    probs = predict_probs(models, data.x_test, cfg.ensemble.combine, cfg.trainer.eval_batch_size, data.prep).cpu()
    labels = data.y_test.cpu()
    names = class_names(cfg.data)
    counts = confusion(probs.argmax(1), labels, len(names))
    accuracy = counts.diag().sum().item() / max(len(labels), 1)
    tracker.log_image("test_images/confusion_matrix", confusion_figure(counts, names, f"{title}: test accuracy "
                      f"{accuracy:.4f}"), step)  # fmt: skip
    worst = misclassified_figure(data.x_test.cpu(), labels, probs, names, f"{title}: most confident mistakes")
    tracker.log_image("test_images/misclassified", worst, step)


def log_texts(tracker: Any, cfg: TrainConfig, config: dict[str, Any], metrics: dict[str, Any], summary_md: str) -> None:
    """The text tab: how the run was started, the composed config, the model, the final metrics."""
    tracker.log_markdown("run/command", "    " + " ".join(["dlzoo train", *overrides()]))
    tracker.log_markdown("run/config", "    " + OmegaConf.to_yaml(config).replace("\n", "\n    "))
    tracker.log_markdown("run/model", summary_md)
    rows = "\n".join(f"| {k} | {format_value(k, v)} |" for k, v in metrics.items())
    tracker.log_markdown("run/final_metrics", "| metric | value |\n|---|---:|\n" + rows)


def overrides() -> list[str]:
    """The command line's overrides (Hydra's, inside a run it launched; else this process's arguments)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]


def model_name(cfg: TrainConfig, hparams: dict[str, Any]) -> str:
    """`mlp_dropout (mlp)`: the experiment or preset the user chose, then its architecture (the title said only
    `mlp`)."""
    experiment, preset = str(hparams.get("experiment", "none")), str(hparams.get("model", "none"))
    chosen = experiment if experiment != "none" else preset
    return cfg.model.arch if chosen in ("none", cfg.model.arch) else f"{chosen} ({cfg.model.arch})"


def fit_options(
    cfg: TrainConfig,
    seed: int,
    checkpointing: Checkpointing | None,
    stop: StopFlag | None,
    on_epoch_end: OnEpochEnd | None,
    total_steps: int,
) -> FitOptions:
    """The trainer section as the loop's options (`total_steps`: the run's, which sets the histograms' interval).

    Args:
        cfg: the run's typed settings (dlzoo.config.schema.settings).
        seed: the model's seed (its batch order's).
        checkpointing: where last.pt (a stack's: stack.pt) and the best epochs go, or None.
        stop: the run's stop flag.
        on_epoch_end: the caller's hook after each epoch.
        total_steps: the run's optimizer steps.

    Returns:
        The FitOptions for engine.training.loop.fit (a stack adds its members)."""
    t, es = cfg.trainer, cfg.trainer.early_stop
    dist = distributed.current()
    return FitOptions(
        epochs=t.epochs,
        batch_size=t.batch_size,
        seed=seed,
        max_steps=t.max_steps,
        eval_batch_size=t.eval_batch_size,
        log_every_n_steps=t.log_every_n_steps,
        layer_stats=t.layer_stats and dist.main,
        histogram_every_n_steps=histogram_every(t.histogram_every_n_steps, total_steps),
        regularizer=build_regularizer(cfg.reg),
        early_stopping=EarlyStopping(es.patience, es.monitor, es.min_delta) if es.patience > 0 else None,
        restore_best=es.restore_best,
        checkpointing=checkpointing,
        stop=stop,
        max_loss=t.max_loss,
        on_epoch_end=on_epoch_end,
        precision=t.precision,
        dist=dist,
        compile_mode=t.compile_mode if t.compile else None,
        warn=print_warning,
    )
