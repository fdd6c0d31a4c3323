"""Summarize a dlzoo sweep folder as a markdown table: one row per experiment (or model) choice, test accuracy
as mean ± sample std over the seeds found, with the lecture's MNIST number beside it.

    python scripts/ladder_table.py outputs/ladder_fashion_mnist
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
}


def collect(sweep: Path) -> dict[str, list[dict]]:
    """Group the sweep's finished runs by experiment (or model) choice."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for metrics_path in sorted(sweep.glob("*/metrics.json")):
        hydra_cfg = OmegaConf.load(metrics_path.parent / ".hydra" / "hydra.yaml").hydra
        choices = hydra_cfg.runtime.choices
        key = choices.get("experiment") or f"model={choices.model}"
        config = OmegaConf.load(metrics_path.parent / ".hydra" / "config.yaml")
        runs[key].append(json.loads(metrics_path.read_text()) | {"seed": config.trainer.seed, "data": config.data.name})
    return {key: sorted(rows, key=lambda r: r["seed"]) for key, rows in runs.items()}


def fmt(values: list[float], scale: float = 1.0, digits: int = 4) -> str:
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else float("nan")
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def main(sweep: Path) -> None:
    runs = collect(sweep)
    order = [k for k in LECTURE if k in runs] + sorted(k for k in runs if k not in LECTURE)
    print("| rung | lecture (MNIST, TF) | ours: test acc, mean ± std | seeds | epochs | dataset | s / run |")
    print("|---|---|---|---|---|---|---|")
    for key in order:
        rows = runs[key]
        name, lecture = LECTURE.get(key, (key, None))
        print(
            f"| {name} (`{key}`) | {lecture if lecture is not None else '–'} | "
            f"{fmt([r['test_acc'] for r in rows])} | {len(rows)} ({', '.join(str(r['seed']) for r in rows)}) | "
            f"{rows[0]['epochs']} | {rows[0]['data']} | {statistics.fmean(r['wall_time_s'] for r in rows):.0f} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/multirun"))
