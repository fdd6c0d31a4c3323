"""What `trainer.stack=K` buys: K seeds of lab 10-5 (784-512x4-10 ReLU, dropout 0.3, Adam 1e-3, batch 100) on
MNIST trained one after another (K engine.fit calls) against the same K trained as one stacked model
(engine.assembly.stacked_run.fit_stack, through the same engine.training.loop.fit), in interleaved rounds. Both time
the training steps only (FitResult.train_time_s: no validation, no logging), so the ratio is the step's. Run through
`python scripts/bench.py --stack K`.

    python scripts/bench.py --stack 5 --data ../shared/data --steps 200 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from dlzoo.config.compose import compose_and_validate
from dlzoo.data.datasets import load_splits
from dlzoo.engine.assembly.stacked_run import fit_stack
from dlzoo.engine.training.loop import FitOptions, fit, seed_everything
from dlzoo.models import build_model
from dlzoo.optim import build_optimizer, build_scheduler


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
        return fit_stack(models, generators, seeds, [Quiet()] * len(seeds), data, cfg)[0].train_time_s  # type: ignore[list-item]

    one_after_another(), stacked()  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {"one_after_another": [], "stacked": []}
    for _ in range(args.repeats):
        times["one_after_another"].append(one_after_another())
        times["stacked"].append(stacked())
    ratios = [a / b for a, b in zip(times["one_after_another"], times["stacked"], strict=True)]
    samples = args.stack * args.steps * 100
    rows = {k: {"seconds_median": statistics.median(v), "samples_per_s_median": samples / statistics.median(v)}
            for k, v in times.items()}  # fmt: skip
    print(f"{args.stack} x {args.experiment}, {args.steps} steps each, {args.repeats} rounds, {args.threads} threads")
    for name, row in rows.items():
        print(f"{name:<20}{row['seconds_median']:>8.2f} s{row['samples_per_s_median']:>10,.0f} samples/s")
    print(f"stacked speed-up: median {statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    report = {"experiment": args.experiment, "stack": args.stack, "steps": args.steps, "threads": args.threads,
              "times": times, "ratios": ratios,
              "rows": rows}  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
