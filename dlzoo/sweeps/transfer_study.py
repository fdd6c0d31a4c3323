"""`dlzoo transfer`: Géron's transfer-learning experiment (ch. 11.2) over several seeds: model_A on 8 Fashion-MNIST
classes, then shirt-vs-sandal from 200 images from scratch (model_B) and on model_A's layers (model_B_on_A), with a
report of both test accuracies and the error-rate reduction as mean ± std over the seeds."""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dlzoo.config.compose import compose_and_validate
from dlzoo.console import console
from dlzoo.engine.assembly.folders import write_json
from dlzoo.engine.assembly.run import run
from dlzoo.engine.training.stopping import Interrupted, stop_on_signals
from dlzoo.errors import DlzooError

ARMS = {"model_A": "transfer_a", "model_B": "transfer_b", "model_B_on_A": "transfer_b_on_a"}  # name -> experiment


def parse_args(args: list[str]) -> tuple[int, Path | None, list[str]]:
    """`--seeds N` and `--out <folder>` are the command's own (as in `dlzoo ladder`); every other word is a
    config override for all arms."""
    parser = argparse.ArgumentParser(prog="dlzoo transfer", description="Géron's transfer-learning experiment.")
    parser.add_argument("--seeds", type=int, default=5, help="seeds trainer.seed, +1, ... (default 5)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/transfer/<time>)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every arm, e.g. data.root=<dir>")
    ns = parser.parse_intermixed_args(args)  # options may come after overrides
    if ns.seeds < 1:
        raise DlzooError(f"--seeds {ns.seeds} must be a count >= 1 (seeds trainer.seed, +1, ...).")
    return ns.seeds, ns.out and ns.out.expanduser(), ns.overrides


def transfer_command(args: list[str]) -> Path:
    """Run every arm for each seed (an arm whose folder already holds metrics.json is kept, so a rerun with the
    same --out carries on) and write report.md, report.csv and results.json into the output folder."""
    seeds, out, overrides = parse_args(args)
    first = compose_and_validate(["experiment=transfer_a", *overrides])
    compose_and_validate(["experiment=transfer_b", *overrides])
    on_a = compose_and_validate(["experiment=transfer_b_on_a", *overrides, "transfer.ckpt=A"])  # fail before training
    recipe = {"epochs": on_a.trainer.epochs, "batch_size": on_a.trainer.batch_size, "lr": on_a.optim.lr,
              "freeze_epochs": on_a.transfer.freeze_epochs, "unfreeze_lr": on_a.transfer.unfreeze_lr}  # fmt: skip
    out = out or Path("outputs") / "transfer" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["dlzoo", "transfer", *args])
    rows: list[dict[str, Any]] = []
    for seed in range(first.trainer.seed, first.trainer.seed + seeds):
        folder = out / f"seed{seed}"
        row: dict[str, Any] = {"seed": seed}
        for arm, experiment in ARMS.items():
            extra = [f"transfer.ckpt={folder / 'model_A'}"] if arm == "model_B_on_A" else []
            metrics = _run_arm([f"experiment={experiment}", *overrides, *extra, f"trainer.seed={seed}"], folder / arm)
            row[arm] = metrics["test_acc"]
            row["device"] = metrics.get("device_name") or metrics.get("device")
        rows.append(row)
        write_report(out, rows, command, recipe)
    return out


def _run_arm(overrides: list[str], folder: Path) -> dict[str, Any]:
    done = folder / "metrics.json"
    if done.is_file():
        console.print(f"{folder}: finished earlier, kept")
        return json.loads(done.read_text())
    console.print(f"{folder}: {' '.join(overrides)}")
    cfg = compose_and_validate(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    try:
        with stop_on_signals() as stop:
            return run(cfg, folder, stop)
    except Interrupted as e:
        hint = (f"Interrupted during {folder}. Rerun the same command with --out {folder.parent.parent}: finished "
                "arms are kept and the interrupted one starts again.")  # fmt: skip
        raise Interrupted(None, e.signum, hint) from None


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the std is nan for a single value."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def error_reduction(acc_b: float, acc_b_on_a: float) -> float:
    """(err_B - err_B_on_A) / err_B: the share of model_B's errors that transfer removes (nan if model_B made none)."""
    err_b, err_b_on_a = 1 - acc_b, 1 - acc_b_on_a
    return (err_b - err_b_on_a) / err_b if err_b > 0 else math.nan


def write_report(out: Path, rows: list[dict[str, Any]], command: str, recipe: dict[str, Any]) -> None:
    """report.csv (one row per seed), results.json and report.md (mean ± std over the seeds) in `out`; `recipe`
    holds model_B_on_A's epochs, batch_size, lr, freeze_epochs and unfreeze_lr for the text."""
    for row in rows:
        row["error_reduction"] = error_reduction(row["model_B"], row["model_B_on_A"])
    columns = ["seed", *ARMS, "error_reduction", "device"]
    with (out / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    summary = {key: mean_std([r[key] for r in rows]) for key in [*ARMS, "error_reduction"]}
    results = {"command": command, "recipe": recipe, "rows": rows, "summary": summary}
    write_json(out / "results.json", results)

    def cell(key: str, scale: float = 1.0) -> str:
        mean, std = summary[key]
        # One seed has no spread: show the value alone rather than "± nan".
        return f"{mean * scale:.4f}" + (f" ± {std * scale:.4f}" if math.isfinite(std) else " (1 seed)")

    seeds = ", ".join(str(r["seed"]) for r in rows)
    frozen = recipe["freeze_epochs"]
    schedule = (f"frozen for all {recipe['epochs']} epochs" if frozen >= recipe["epochs"] else
                f"frozen for {frozen} epochs, then lr {recipe['unfreeze_lr'] or recipe['lr']:g}")  # fmt: skip
    lines = [
        "# Transfer learning on Fashion-MNIST (Géron ch. 11.2)",
        "",
        f"{len(rows)} seeds ({seeds}), mean ± sample std; device {rows[0]['device']}. Every model: "
        f"{recipe['epochs']} epochs, batch {recipe['batch_size']}, SGD lr {recipe['lr']:g}; model_B_on_A's copied "
        f"layers {schedule}.",
        f"Command: `{command}`",
        "",
        "| model | task | test accuracy | per seed |",
        "|---|---|---|---|",
    ]
    tasks = {
        "model_A": "A: 8 classes (no sandal, no shirt)",
        "model_B": "B: shirt vs sandal, 200 images, from scratch",
        "model_B_on_A": "B on model_A's hidden layers",
    }
    for arm, task in tasks.items():
        lines.append(f"| {arm} | {task} | {cell(arm)} | {', '.join(f'{r[arm]:.4f}' for r in rows)} |")
    reductions = ", ".join(f"{r['error_reduction']:.3f}" for r in rows)
    err_b, err_b_on_a = 1 - summary["model_B"][0], 1 - summary["model_B_on_A"][0]
    lines += [
        "",
        f"Error-rate reduction (err_B - err_B_on_A) / err_B: {cell('error_reduction')} (per seed: {reductions}).",
        f"Mean test error: model_B {err_b:.4f}, model_B_on_A {err_b_on_a:.4f}"
        + (f" (divided by {err_b / err_b_on_a:.2f})." if err_b_on_a > 0 else "."),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
