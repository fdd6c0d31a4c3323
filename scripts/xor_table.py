"""Lecture 10-1 over seeds: the deep sigmoid and deep ReLU XOR nets, with test accuracy and loss as mean ± sample
std, and the first and output layers' gradient norms logged to TensorBoard at step 50 (the vanishing gradient).

    python scripts/xor_table.py [seeds=5] [out=outputs/xor_table] [overrides...]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dlzoo.config.compose import compose_and_validate
from dlzoo.engine.assembly.run import run

EXPERIMENTS = ("xor_deep_sigmoid", "xor_deep_relu")
FIRST, LAST = "per_layer_grad_norm/layers.fc1.linear", "per_layer_grad_norm/layers.out"
STEP = 50  # a logged step (trainer.log_every_n_steps), while both nets are still far from a solution


def grad_norms(run_dir: Path, step: int) -> tuple[float, float]:
    """The first and output layers' gradient norms logged at `step`."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    value = {tag: next(e.value for e in events.Scalars(tag) if e.step == step) for tag in (FIRST, LAST)}
    return value[FIRST], value[LAST]


def cell(values: list[float], fmt: str = ".4f") -> str:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):{fmt}} ± {std:{fmt}}"


def main(args: list[str]) -> None:
    own = dict(a.split("=", 1) for a in args if a.startswith(("seeds=", "out=")))
    overrides = ["trainer.progress=false", *(a for a in args if not a.startswith(("seeds=", "out=")))]
    out = Path(own.get("out", "outputs/xor_table"))
    lines = [
        "| net | seeds | test acc | test loss | first layer's grad norm | output layer's | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for experiment in EXPERIMENTS:
        cfg = compose_and_validate([f"experiment={experiment}", *overrides])
        seeds = list(range(cfg.trainer.seed, cfg.trainer.seed + int(own.get("seeds", 5))))
        rows = []
        for seed in seeds:
            folder = out / experiment / f"seed{seed}"
            metrics = run(
                compose_and_validate([f"experiment={experiment}", *overrides, f"trainer.seed={seed}"]), folder
            )
            rows.append((metrics["test_acc"], metrics["test_loss"], *grad_norms(folder, STEP)))
        accs, losses = cell([r[0] for r in rows]), cell([r[1] for r in rows])
        first, last = cell([r[2] for r in rows], ".2e"), cell([r[3] for r in rows], ".2e")
        ratio = cell([r[2] / r[3] for r in rows], ".2e")
        where = f"{len(seeds)} ({seeds[0]}-{seeds[-1]})"
        lines.append(f"| {experiment} | {where} | {accs} | {losses} | {first} | {last} | {ratio} |")
    (out / "xor_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
