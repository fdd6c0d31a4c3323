"""Summarize dlzoo sweep folders as a markdown table: runs are grouped by what the sweep varied (the experiment,
or the overrides that differ between runs, seeds aside), with test accuracy as mean ± sample std over the seeds.

    python scripts/sweep_table.py outputs/ladder_fashion_mnist
    python scripts/sweep_table.py outputs/ablation_optimizer outputs/ablation_optimizer_b
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

# hunkim/DeepLearningZeroToAll, TF versions, on MNIST (the table).
LECTURE = {
    "lab10_1_softmax": ("10-1 softmax", 0.9194),
    "lab10_2_mlp": ("10-2 3-layer ReLU, N(0,1) init", 0.9455),
    "lab10_3_xavier": ("10-3 + Xavier init", 0.9783),
    "lab10_4_deep": ("10-4 deep & wide 512x4", 0.9742),
    "lab10_5_dropout": ("10-5 + dropout 0.3", 0.9804),
    "lab10_7_bn": ("10-7 batch norm, Adam 0.01", 0.9826),
    "lab11_1_cnn": ("11-1 CNN 32-64", 0.9885),
    "lab11_2_cnn_deep": ("11-2 deep CNN 32-64-128 + dropout", 0.9938),
    "lab11_4_layers": ("11-4 deep CNN, tf.layers defaults", None),
    "lab11_5_ensemble": ("11-5 ensemble of 7 deep CNNs", 0.9952),
}


def load_runs(sweeps: list[Path]) -> list[dict]:
    runs = []
    for sweep in sweeps:
        # Job folders are <num>_<model>: in job order, not string order.
        for metrics_path in sorted(sweep.glob("*/metrics.json"), key=lambda p: int(p.parent.name.split("_")[0])):
            folder = metrics_path.parent
            overrides = [o for o in OmegaConf.load(folder / ".hydra" / "overrides.yaml") if not o.startswith("hydra.")]
            choices = OmegaConf.load(folder / ".hydra" / "hydra.yaml").hydra.runtime.choices
            config = OmegaConf.load(folder / ".hydra" / "config.yaml")
            runs.append(json.loads(metrics_path.read_text()) | {
                "seed": config.trainer.seed, "data": config.data.name, "experiment": choices.get("experiment"),
                # Seeds are what a row averages over; data.root is where the files were, not a setting.
                "overrides": [o for o in overrides if not o.startswith(("trainer.seed=", "data.root="))],
            })  # fmt: skip
    return runs


def group(runs: list[dict]) -> dict[str, list[dict]]:
    shared = set.intersection(*(set(r["overrides"]) for r in runs)) if runs else set()
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        key = r["experiment"] or " ".join(o for o in r["overrides"] if o not in shared) or "(defaults)"
        groups[key].append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


def fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{mean:.4f} ± {std:.4f}"


def main(sweeps: list[Path]) -> None:
    runs = load_runs(sweeps)
    groups = group(runs)
    ladder = all(k in LECTURE for k in groups)
    order = [k for k in LECTURE if k in groups] if ladder else list(groups)
    head = "| rung | lecture (MNIST, TF) |" if ladder else "| runs |"
    print(head + " test acc, mean ± std | seeds | epochs | dataset | s / run |")
    print("|---" * (head.count("|") - 1 + 5) + "|")
    for key in order:
        rows = groups[key]
        lecture = LECTURE[key][1] if ladder and LECTURE[key][1] is not None else "–"
        first = f"| {LECTURE[key][0]} (`{key}`) | {lecture} |" if ladder else f"| `{key}` |"
        print(
            f"{first} {fmt([r['test_acc'] for r in rows])} | {len(rows)} ({', '.join(str(r['seed']) for r in rows)})"
            f" | {rows[0]['epochs']} | {rows[0]['data']} | {statistics.fmean(r['wall_time_s'] for r in rows):.0f} |"
        )
    if runs and not ladder:
        shared = set.intersection(*(set(r["overrides"]) for r in runs))
        print(f"\nAll runs: {' '.join(sorted(shared)) or '(defaults)'}")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]] or [Path("outputs/multirun")])
