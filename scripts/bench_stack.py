"""What `trainer.stack=K` buys: K seeds of lab 10-5 (784-512x4-10 ReLU, dropout 0.3, Adam 1e-3, batch 100) on
MNIST trained one after another (K engine.fit calls) against the same K trained as one stacked model
(engine.assembly.stacked_run.fit_stack, through the same engine.training.loop.fit), in interleaved rounds. Both time
the training steps only (FitResult.train_time_s: no validation, no logging), so the ratio is the step's. Run through
`python scripts/bench.py --stack K`.

    python scripts/bench.py --stack 5 --data ../shared/data --steps 200 --repeats 5

`--arm stacked` times the stacked run only, so two versions of dlzoo can be compared in alternating processes
(the machine's speed drifts too much between processes for one run's figure to stand for its version). The
imports fall back to the layout of the hand-written stack (commit 4f8464b), so this script runs on both:

    PYTHONPATH=. python scripts/bench_stack.py --arm stacked --experiment lab10_3_xavier --steps 150 --repeats 3
    git worktree add ../old 4f8464b
    (cd ../old && PYTHONPATH=. python ../main/scripts/bench_stack.py --arm stacked ...)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from dlzoo.config.compose import compose_and_validate
from dlzoo.data.datasets import load_splits
from dlzoo.models import build_model
from dlzoo.optim import build_optimizer, build_scheduler

try:
    from dlzoo.config.schema import settings
    from dlzoo.engine.assembly.stacked_run import fit_stack
    from dlzoo.engine.training.loop import FitOptions, fit, seed_everything
except ImportError:  # the hand-written stack's layout, to compare against it
    from dlzoo.engine.loop import FitOptions, fit, seed_everything  # type: ignore[no-redef]
    from dlzoo.engine.stacked import fit_stacked as fit_stack  # type: ignore[no-redef]

    def settings(cfg: Any) -> Any:  # that layout's stack read the composed config itself
        return cfg


class Quiet:
    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="folder holding mnist/ with the four IDX files")
    parser.add_argument("--stack", type=int, default=5)
    parser.add_argument("--experiment", default="lab10_5_dropout", help="the rung to time (conf/experiment)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per member per round")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--arm", choices=("both", "stacked", "one_after_another"), default="both")
    parser.add_argument("--out", default="outputs/bench_stack.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = compose_and_validate([f"experiment={args.experiment}", "data=mnist", f"data.root={Path(args.data) / 'mnist'}",
                                "trainer.epochs=1", f"trainer.max_steps={args.steps}", "trainer.layer_stats=false",
                                f"trainer.stack={args.stack}"])  # fmt: skip
    data = load_splits("mnist", str(Path(args.data) / "mnist"), download=False, val_size=1000)
    seeds = [cfg.trainer.seed + k for k in range(args.stack)]

    def build(seed: int) -> torch.nn.Module:
        seed_everything(seed)
        model = build_model(cfg.model, data.input_shape, data.num_classes, data.prep(data.x_train[:1000]))
        if cfg.trainer.channels_last and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
            # as a run builds it (engine.assembly.one_model.setup_model)
            model = model.to(memory_format=torch.channels_last)
        return model

    def one_after_another() -> float:
        total = 0.0
        for seed in seeds:
            model = build(seed)
            optimizer = build_optimizer(cfg.optim, model.parameters())
            scheduler = build_scheduler(cfg.sched, optimizer, 600, args.steps)
            opts = FitOptions(epochs=1, batch_size=100, seed=seed, max_steps=args.steps, layer_stats=False)
            total += fit(model, data, optimizer, scheduler, Quiet(), opts).train_time_s  # type: ignore[arg-type]
        return total

    def stacked() -> float:
        models, generators = [], []
        for seed in seeds:
            models.append(build(seed).train())
            generators.append(torch.Generator().manual_seed(seed))
        return fit_stack(models, generators, seeds, [Quiet()] * len(seeds), data, settings(cfg))[0].train_time_s  # type: ignore[list-item]

    arms = {"one_after_another": one_after_another, "stacked": stacked}
    arms = {name: fn for name, fn in arms.items() if args.arm in ("both", name)}
    for fn in arms.values():  # warm-up: allocator, kernels
        fn()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, fn in arms.items():
            times[name].append(fn())
    samples = args.stack * args.steps * 100
    rows = {k: {"seconds_median": statistics.median(v), "samples_per_s_median": samples / statistics.median(v),
                "ms_per_step": [1000 * t / args.steps / (1 if k == "stacked" else args.stack) for t in v]}
            for k, v in times.items()}  # fmt: skip
    print(f"{args.stack} x {args.experiment}, {args.steps} steps each, {args.repeats} rounds, {args.threads} threads")
    for name, row in rows.items():
        ms = row["ms_per_step"]
        print(f"{name:<20}{row['seconds_median']:>8.2f} s{row['samples_per_s_median']:>10,.0f} samples/s   "
              f"ms per step (one member's, or the stack's): min {min(ms):.3f} median {statistics.median(ms):.3f} "
              f"max {max(ms):.3f}")  # fmt: skip
    ratios = []
    if len(times) == 2:
        ratios = [a / b for a, b in zip(times["one_after_another"], times["stacked"], strict=True)]
        spread = f"min {min(ratios):.2f}, max {max(ratios):.2f}"
        print(f"stacked speed-up: median {statistics.median(ratios):.2f}x ({spread})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    report = {"experiment": args.experiment, "stack": args.stack, "steps": args.steps, "threads": args.threads,
              "times": times, "ratios": ratios,
              "rows": rows}  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
