"""Training throughput, side by side in one process: (a) the pipeline most tutorials write (pytorch/examples
mnist: a Dataset that turns each uint8 image into PIL -> ToTensor -> Normalize, through a DataLoader, and the net
and optimizer from stock torch.nn / torch.optim), (b) dlzoo's own loop (engine.fit on whole device tensors, with
dlzoo's layers and optimizers), (c) the compute-only bound of (b)'s step (repeated on one fixed device-resident
batch). Same architecture, initial weights, optimizer algorithm and batch size for all three; warm-up excluded;
the median of several timed repeats. Prints a table and writes JSON.

    python scripts/bench.py --data ../shared/data --models mlp_dropout,cnn_deep --precision fp32,bf16
    python scripts/bench.py --quick   # a seconds-long smoke check (the test suite runs it)
    python scripts/bench.py --peers --data ../shared/data   # against Lightning, Keras, the DataLoader loop
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from dlzoo.config.validate import register_configs
from dlzoo.data.datasets import load_splits
from dlzoo.data.splits import Splits
from dlzoo.engine.training.evaluation import evaluate
from dlzoo.engine.training.loop import _AUTOCAST, FitOptions, fit
from dlzoo.engine.training.state import histogram_every
from dlzoo.models import build_model
from dlzoo.optim import build_optimizer, build_scheduler
from dlzoo.paths import conf_dir


class PerSample(Dataset):
    """The usual pipeline: one uint8 image at a time through PIL and torchvision's transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.0,), (1.0,))])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


def as_users_write_it(model: nn.Module) -> nn.Module:
    """The same net and weights built from stock torch.nn: dlzoo's dropouts (a cheaper CPU mask) become
    nn.Dropout / nn.AlphaDropout, as a tutorial's model has them."""
    from dlzoo.models.norm_dropout import AlphaDropout, Dropout

    stock_class = {Dropout: nn.Dropout, AlphaDropout: nn.AlphaDropout}
    stock = copy.deepcopy(model)
    for module in list(stock.modules()):
        for name, child in module.named_children():
            if type(child) in stock_class:
                setattr(module, name, stock_class[type(child)](child.p))
    return stock


class Quiet:
    """A tracker that records nothing, so the benchmark measures the loop, not TensorBoard writes."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def setup(model_name: str, data_root: str, device: torch.device) -> tuple[DictConfig, Splits, nn.Module, Optimizer]:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model_name}", "data=fashion_mnist"])
    torch.manual_seed(0)
    data = load_splits("fashion_mnist", data_root, download=False, device=device)
    model = build_model(cfg.model, data.input_shape, data.num_classes, data.prep(data.x_train[:256]).cpu()).to(device)
    optimizer = build_optimizer(cfg.optim, model.parameters())
    return cfg, data, model, optimizer


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """The median seconds of each function, timed in interleaved rounds (every function once per round, after
    one warm-up call each: allocator, kernels, compilation). This machine's speed drifts by up to 1.6x within an
    hour on these machines; interleaving puts every variant under the same drift, so their ratios hold even
    where the absolute figures move."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def dashboards(model_name: str, data_root: str, steps: int, repeats: int, device: torch.device) -> list[dict]:
    """What the dashboards cost: dlzoo's loop over `steps` steps writing real TensorBoard events (RunTracker)
    with no per-layer logging, with the per-layer scalars (trainer.layer_stats, every log_every_n_steps), and
    with those plus the histograms (trainer.histogram_every_n_steps=null: about a dozen per run, the defaults),
    in interleaved rounds;
    min / median / max seconds over the rounds. On a noisy machine the rounds spread more than the logging costs,
    so each round also times the tracker's own per-layer calls (the part of the cost that is the logging)."""
    import tempfile

    from dlzoo.engine.recording.tracking import RunTracker

    class Timed(RunTracker):
        spent = 0.0

        def log_layer_stats(self, step: int, stats: dict[str, float]) -> None:
            t0 = time.perf_counter()
            super().log_layer_stats(step, stats)
            Timed.spent += time.perf_counter() - t0

        def log_histograms(self, step: int, tensors: dict[str, torch.Tensor]) -> None:
            t0 = time.perf_counter()
            super().log_histograms(step, tensors)
            Timed.spent += time.perf_counter() - t0

    cfg, data, model, optimizer = setup(model_name, data_root, device)
    bs, n = cfg.trainer.batch_size, steps * cfg.trainer.batch_size
    sub = type(data)(**{**data.__dict__, "x_train": data.x_train[:n], "y_train": data.y_train[:n],
                        "x_val": data.x_val[:0], "y_val": data.y_val[:0]})  # fmt: skip
    scheduler = build_scheduler(cfg.sched, optimizer, steps, 10**9)
    every = histogram_every(None, steps)  # the default interval for a run of `steps` steps
    settings = {"none": (False, 0), "per-layer scalars": (True, 0), "scalars + histograms (default)": (True, every)}
    folder = Path(tempfile.mkdtemp(prefix="dlzoo-bench-"))

    def run(stats: bool, every: int) -> Callable[[], float]:
        opts = FitOptions(epochs=1, batch_size=bs, seed=0, log_every_n_steps=cfg.trainer.log_every_n_steps,
                          layer_stats=stats, histogram_every_n_steps=every)  # fmt: skip

        def go() -> float:
            Timed.spent = 0.0
            with Timed(folder / f"{stats}-{every}", 1, progress=False) as tracker:
                fit(model, sub, optimizer, scheduler, tracker, opts)
            return Timed.spent

        return go

    fns = {name: run(*v) for name, v in settings.items()}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    logging: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            logging[name].append(fn())
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["none"])
    return [{"model": model_name, "logging": name, "steps": steps, "seconds_min": min(t),
             "seconds_median": statistics.median(t), "seconds_max": max(t),
             "overhead_vs_none": statistics.median(t) / base - 1,
             "in_logging_calls_share": statistics.median(x / y for x, y in zip(logging[name], t, strict=True))}
            for name, t in times.items()]  # fmt: skip


def train_step(
    net: Callable[[torch.Tensor], torch.Tensor], opt: Optimizer, x: torch.Tensor, y: torch.Tensor, precision: str
) -> None:
    with torch.autocast(x.device.type, _AUTOCAST.get(precision), enabled=precision != "fp32"):
        loss = F.cross_entropy(net(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def ablate(model_name: str, data_root: str, steps: int, repeats: int, device: torch.device) -> list[dict]:
    """The compute-only step's samples/s as dlzoo's means are switched on one at a time, each on top of the ones
    before: what each mean is worth on this machine, measured in one process on the same weights and batch."""
    cfg, data, model, _ = setup(model_name, data_root, device)
    xb, yb = data.prep(data.x_train[: cfg.trainer.batch_size]), data.y_train[: cfg.trainer.batch_size]
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())

    def stock_adam(net: nn.Module) -> Optimizer:
        return torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))

    def dlzoo_adam(net: nn.Module) -> Optimizer:
        return build_optimizer(cfg.optim, net.parameters())

    def stock_net() -> nn.Module:
        return as_users_write_it(model)

    def dlzoo_net() -> nn.Module:
        return copy.deepcopy(model)

    def dlzoo_net_nhwc() -> nn.Module:
        return copy.deepcopy(model).to(memory_format=torch.channels_last)

    # (name, the net, its optimizer, precision); each row adds one mean to the row before.
    variants: list[tuple[str, Callable[[], nn.Module], Callable[[nn.Module], Optimizer], str]] = [
        ("stock step: nn.Dropout, torch's default Adam, NCHW, fp32", stock_net, stock_adam, "fp32"),
        ("+ fused Adam", stock_net, dlzoo_adam, "fp32"),
        ("+ dlzoo's dropout mask (rand >= p)", dlzoo_net, dlzoo_adam, "fp32"),
    ]  # fmt: skip
    if conv:
        variants.append(("+ channels_last", dlzoo_net_nhwc, dlzoo_adam, "fp32"))
    variants.append(("+ bf16 autocast", variants[-1][1], dlzoo_adam, "bf16"))

    def runner(net: nn.Module, opt: Optimizer, precision: str) -> Callable[[], None]:
        def run() -> None:
            for _ in range(steps):
                train_step(net, opt, xb, yb, precision)
            if device.type == "cuda":
                torch.cuda.synchronize()

        return run

    fns = {}
    for name, make_net, make_optimizer, precision in variants:
        net = make_net()
        fns[name] = runner(net, make_optimizer(net), precision)
    seconds = timed(fns, repeats)
    stock = steps * len(yb) / seconds[variants[0][0]]
    return [{"model": model_name, "mean": name, "compute_only_samples_per_s": steps * len(yb) / t,
             "vs_stock": steps * len(yb) / t / stock} for name, t in seconds.items()]  # fmt: skip


def bench(
    model_name: str,
    data_root: str,
    steps: int,
    repeats: int,
    device: torch.device,
    precisions: list[str],
    compiles: list[bool],
    eval_images: int = 10000,
) -> list[dict]:
    """One row per precision and compile setting: (a) is always the fp32, eager per-sample pipeline; (b) and (c)
    run in that precision, compiled (trainer.compile=true) or not; the eval figure scores the first `eval_images`
    test images."""
    cfg, data, model, optimizer = setup(model_name, data_root, device)
    bs = cfg.trainer.batch_size
    n = steps * bs
    images, labels = data.x_train[:n, 0].cpu().numpy(), data.y_train[:n].cpu().numpy()
    loader = DataLoader(PerSample(images, labels), batch_size=bs, shuffle=True, num_workers=0)
    # The tutorial's net in the default memory layout, with pytorch/examples' optimizer line: torch's default
    # Adam implementation at the recipe's settings.
    stock = as_users_write_it(model)
    stock_optimizer = torch.optim.Adam(stock.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    if cfg.trainer.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)  # as `dlzoo train` does for conv nets
    compiled_model = torch.compile(model)  # compiles lazily, on the first call of a compiled variant

    def per_sample() -> None:
        for x, y in loader:
            train_step(stock, stock_optimizer, x.to(device), y.to(device), "fp32")

    # No validation split: fit's end-of-epoch validation would otherwise sit inside the timed training epoch.
    sub = type(data)(**{**data.__dict__, "x_train": data.x_train[:n], "y_train": data.y_train[:n],
                        "x_val": data.x_val[:0], "y_val": data.y_val[:0]})  # fmt: skip
    scheduler = build_scheduler(cfg.sched, optimizer, steps, 10**9)
    xb, yb = data.prep(data.x_train[:bs]), data.y_train[:bs]

    def engine(precision: str, compiled: bool) -> Callable[[], None]:
        opts = FitOptions(
            epochs=1,
            batch_size=bs,
            seed=0,
            log_every_n_steps=50,
            layer_stats=True,
            eval_batch_size=10000,
            precision=precision,
            compile_mode="default" if compiled else None,
        )
        return lambda: fit(model, sub, optimizer, scheduler, Quiet(), opts)

    def compute_only(precision: str, compiled: bool) -> Callable[[], None]:
        def run() -> None:
            for _ in range(steps):
                train_step(compiled_model if compiled else model, optimizer, xb, yb, precision)
            if device.type == "cuda":
                torch.cuda.synchronize()

        return run

    variants = list(itertools.product(precisions, compiles))
    fns: dict[str, Callable[[], object]] = {"a": per_sample}
    for v in variants:
        fns[f"b{v}"], fns[f"c{v}"] = engine(*v), compute_only(*v)
    x_test, y_test = data.x_test[:eval_images], data.y_test[:eval_images]
    fns["eval"] = lambda: evaluate(model, x_test, y_test, 10000, data.prep)
    seconds = timed(fns, repeats)
    a = n / seconds["a"]
    rows = []
    for precision, compiled in variants:
        b, c = n / seconds[f"b{(precision, compiled)}"], n / seconds[f"c{(precision, compiled)}"]
        rows.append({"model": model_name, "precision": precision, "compile": compiled, "batch_size": bs, "steps": steps,
                     "per_sample_samples_per_s": a, "dlzoo_samples_per_s": b, "compute_only_samples_per_s": c,
                     "dlzoo_over_per_sample": b / a, "dlzoo_over_compute_only": b / c,
                     "eval_samples_per_s": len(y_test) / seconds["eval"]})  # fmt: skip
    return rows


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({len(os.sched_getaffinity(0))} cores)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def main() -> None:
    if "--peers" in sys.argv[1:]:  # each peer runs in a fresh process of its own: scripts/peers.py
        import peers

        peers.main([a for a in sys.argv[1:] if a != "--peers"])
        return
    if "--stack" in sys.argv[1:]:  # K seeds one after another vs stacked: scripts/bench_stack.py
        import bench_stack

        bench_stack.main(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", action="store_true", help="dlzoo vs Lightning vs Keras vs the DataLoader loop "
                        "on lab 10-5 (scripts/peers.py, with its own --rounds --tools --threads)")  # fmt: skip
    parser.add_argument("--stack", type=int, help="K seeds of lab 10-5 one after another vs trainer.stack=K "
                        "(scripts/bench_stack.py)")  # fmt: skip
    parser.add_argument("--data", default="../shared/data", help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--models", default="mlp_dropout,cnn_deep")
    parser.add_argument("--steps", type=int, default=100, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", default="fp32", help="comma list of fp32, bf16, fp16 for (b) and (c)")
    parser.add_argument("--compile", action="store_true", help="add rows with trainer.compile=true for (b) and (c)")
    parser.add_argument("--ablate", action="store_true", help="also time the step with each of dlzoo's means added")
    parser.add_argument("--dashboards", action="store_true", help="only time the loop with and without per-layer "
                        "logging (use --steps 550: one MNIST epoch, so histograms fall as in a real run)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="5 steps, 1 repeat, fp32, eval on 1,000 test images: "
                        "a smoke check, not a figure")  # fmt: skip
    parser.add_argument("--out", default="outputs/bench.json")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats, args.precision = 5, 1, "fp32"
    if args.threads:
        torch.set_num_threads(args.threads)
    register_configs()
    device = torch.device(args.device)
    precisions = args.precision.split(",")
    models = args.models.split(",")
    compiles = [False, True] if args.compile else [False]
    if args.dashboards:
        rows = [r for m in models for r in dashboards(m, args.data, args.steps, args.repeats, device)]
        print(f"{'model':<14}{'per-layer logging':<34}{'s min':>8}{'median':>8}{'max':>8}{'overhead':>10}"
              f"{'in logging':>12}")  # fmt: skip
        for r in rows:
            share = r["in_logging_calls_share"]
            print(f"{r['model']:<14}{r['logging']:<34}{r['seconds_min']:>8.3f}{r['seconds_median']:>8.3f}"
                  f"{r['seconds_max']:>8.3f}{r['overhead_vs_none']:>9.1%}{share:>11.1%}")  # fmt: skip
        print(f"{args.steps} steps per round, {args.repeats} rounds, {torch.get_num_threads()} threads, {cpu_name()}")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"dashboards": rows}, indent=2) + "\n")
        return
    eval_images = 1000 if args.quick else 10000
    rows = [
        r
        for m in models
        for r in bench(m, args.data, args.steps, args.repeats, device, precisions, compiles, eval_images)
    ]
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip
    print(f"{'model':<14}{'step':<14}{'per-sample':>12}{'dlzoo':>10}{'compute':>10}{'dlzoo/per-sample':>18}"
          f"{'dlzoo/compute':>15}{'eval':>10}")  # fmt: skip
    for r in rows:
        variant = r["precision"] + (" compiled" if r["compile"] else "")
        print(f"{r['model']:<14}{variant:<14}{r['per_sample_samples_per_s']:>12,.0f}"
              f"{r['dlzoo_samples_per_s']:>10,.0f}"
              f"{r['compute_only_samples_per_s']:>10,.0f}{r['dlzoo_over_per_sample']:>17.2f}x"
              f"{r['dlzoo_over_compute_only']:>14.2f}x{r['eval_samples_per_s']:>10,.0f}")  # fmt: skip
    print(f"samples/s, batch {rows[0]['batch_size']}, {env['threads']} threads, torch {env['torch']}, {env['device']}")
    report = {"env": env, "results": rows}
    if args.ablate:
        report["ablation"] = [r for m in models for r in ablate(m, args.data, args.steps, args.repeats, device)]
        print(f"\n{'model':<14}{'compute-only step, means added one at a time':<60}{'samples/s':>11}{'vs stock':>10}")
        for r in report["ablation"]:
            print(f"{r['model']:<14}{r['mean']:<60}{r['compute_only_samples_per_s']:>11,.0f}{r['vs_stock']:>9.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
