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

from dlzoo.config import register_configs, validate
from dlzoo.data import load_splits
from dlzoo.engine import evaluate, fit, resolve_device, seed_everything
from dlzoo.errors import DlzooError
from dlzoo.models import build_model
from dlzoo.models.summary import summarize
from dlzoo.optim import build_optimizer, build_scheduler
from dlzoo.paths import conf_dir
from dlzoo.tracking import RunTracker, print_error, print_final, print_summary

register_configs()


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    """Train and test one configuration, writing everything into `out_dir`; returns the final metrics."""
    started = time.perf_counter()
    validate(cfg)
    t = cfg.trainer
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    seed_everything(t.seed)
    d = cfg.data
    data = load_splits(d.name, d.root, d.download, d.val_size, d.split_seed, d.train_subset, device)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(device)
    print_summary(
        summarize(model, data.input_shape, device),
        title=f"{cfg.model.arch} on {d.name} ({len(data.y_train):,} train / {len(data.y_val):,} val / "
        f"{len(data.y_test):,} test from {data.source}), device {device}",
    )

    steps = math.ceil(len(data.y_train) / t.batch_size) * t.epochs
    total_steps = min(steps, t.max_steps) if t.max_steps is not None else steps
    optimizer = build_optimizer(cfg.optim, model.parameters())
    scheduler = build_scheduler(cfg.sched, optimizer, total_steps)
    config = OmegaConf.to_container(cfg, resolve=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = RunTracker(out_dir, t.epochs, t.progress)
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
            checkpoint_path=out_dir / "checkpoints" / "last.pt" if t.checkpoint else None,
            checkpoint_extra={"config": config},
        )
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test, t.eval_batch_size)
        tracker.log_test(result.epochs, test_loss, test_acc)
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
        }
        tracker.log_hparams(config, {k: metrics[k] for k in ("val_acc", "val_loss", "test_acc", "test_loss")})
    finally:
        tracker.close()
    _write_json(out_dir / "metrics.json", metrics)
    print_final(metrics, out_dir)
    return metrics


def _write_json(path: Path, payload: dict[str, float]) -> None:
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
