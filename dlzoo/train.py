"""`dlzoo train`: the @hydra.main entry point. Config -> build data, model, optimizer, schedule -> fit ->
evaluate on the test set -> metrics.json, checkpoint, TensorBoard events in the run's Hydra output folder."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dlzoo.config import register_configs, validate, warnings
from dlzoo.data import load_splits
from dlzoo.engine import EarlyStopping, evaluate, fit, mc_evaluate, resolve_device, seed_everything
from dlzoo.errors import DlzooError
from dlzoo.models import build_model
from dlzoo.models.summary import summarize
from dlzoo.optim import build_optimizer, build_scheduler
from dlzoo.paths import conf_dir
from dlzoo.regularize import build_regularizer
from dlzoo.tracking import RunTracker, print_error, print_final, print_summary, print_warning

register_configs()


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    """Train and test one configuration, writing everything into `out_dir`; returns the final metrics."""
    started = time.perf_counter()
    validate(cfg)
    for message in warnings(cfg):
        print_warning(message)
    t = cfg.trainer
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    seed_everything(t.seed)
    d = cfg.data
    data = load_splits(d.name, d.root, d.download, d.val_size, d.split_seed, d.train_subset, device, d.normalize)
    init_batch = data.prep(data.x_train[:1000]).cpu()  # for data-driven init (LSUV); built on the CPU as the rest
    model = build_model(cfg.model, data.input_shape, data.num_classes, init_batch).to(device)
    print_summary(
        summarize(model, data.input_shape, device),
        title=f"{cfg.model.arch} on {d.name} ({len(data.y_train):,} train / {len(data.y_val):,} val / "
        f"{len(data.y_test):,} test from {data.source}), device {device}",
    )

    steps_per_epoch = math.ceil(len(data.y_train) / t.batch_size)
    total_steps = steps_per_epoch * t.epochs if t.max_steps is None else min(steps_per_epoch * t.epochs, t.max_steps)
    optimizer = build_optimizer(cfg.optim, model.parameters())
    scheduler = build_scheduler(cfg.sched, optimizer, steps_per_epoch, total_steps)
    config = OmegaConf.to_container(cfg, resolve=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = RunTracker(out_dir, t.epochs, t.progress)
    es = t.early_stop
    try:
        result = fit(
            model,
            data,
            optimizer,
            scheduler,
            tracker,
            epochs=t.epochs,
            batch_size=t.batch_size,
            seed=t.seed,
            max_steps=t.max_steps,
            eval_batch_size=t.eval_batch_size,
            log_every_n_steps=t.log_every_n_steps,
            layer_stats_enabled=t.layer_stats,
            regularizer=build_regularizer(cfg.reg),
            early_stopping=EarlyStopping(es.patience, es.monitor, es.min_delta) if es.patience > 0 else None,
            restore_best=es.restore_best,
            checkpoint_path=out_dir / "checkpoints" / "last.pt" if t.checkpoint else None,
            checkpoint_extra={"config": config},
        )
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test, t.eval_batch_size, data.prep)
        tracker.log_test(result.epochs, {"test/loss": test_loss, "test/acc": test_acc})
        metrics = {
            "train_loss": result.train_loss,
            "train_acc": result.train_acc,
            "val_loss": result.val_loss,
            "val_acc": result.val_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "epochs": result.epochs,
            "steps": result.steps,
            "wall_time_s": time.perf_counter() - started,
            "train_samples_per_s": result.train_samples / max(result.train_time_s, 1e-9),
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
        }
        if cfg.eval.mc_samples > 0:
            mc_acc, mc_entropy = mc_evaluate(
                model, data.x_test, data.y_test, cfg.eval.mc_samples, t.eval_batch_size, data.prep
            )
            metrics |= {"test_mc_acc": mc_acc, "test_mc_entropy": mc_entropy}
            tracker.log_test(result.epochs, {"test/mc_acc": mc_acc, "test/mc_entropy": mc_entropy})
        tracker.log_hparams(config, {k: metrics[k] for k in ("val_acc", "val_loss", "test_acc", "test_loss")})
    finally:
        tracker.close()
    _write_json(out_dir / "metrics.json", metrics)
    print_final(metrics, out_dir)
    return metrics


def _write_json(path: Path, payload: dict[str, float | int | bool]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra's entry: composes conf/train.yaml with the command line, one call per job of a multirun."""
    try:
        return run(cfg, Path(HydraConfig.get().runtime.output_dir))["test_acc"]
    except DlzooError as e:
        print_error(str(e))
        sys.exit(2)


if __name__ == "__main__":
    main()
