"""dlzoo against the tools a user would otherwise pick, on one recipe: lab 10-5 (784-512x4-10 ReLU, dropout 0.3,
Adam 1e-3, batch 100, one epoch of MNIST's 60,000 training images), each written the way its own docs and
examples write it. Run through `python scripts/bench.py --peers` (the one entry point); each tool runs in its own
fresh process, once per round, the rounds interleaved, so every tool meets the machine's drift alike.

Each worker prints one JSON line with three timestamps, all taken at the end of a training step and measured from
the start of the process (before any import): the first step (what a student waits for: imports, data, build,
first batch), step `warmup`, and the epoch's last step; samples/s is over the steps after the warm-up.

    pip install -e ".[peers]"      # lightning and keras (TensorFlow's backend: pip install tensorflow-cpu)
    python scripts/bench.py --peers --data ../shared/data --rounds 3
"""

from __future__ import annotations

import time

START = time.perf_counter()  # before the imports: they are part of a student's wait

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

HIDDEN, DROPOUT, LR, BATCH = [512, 512, 512, 512], 0.3, 1e-3, 100
TOOLS = ("dlzoo", "lightning", "keras_torch", "keras_tensorflow", "dataloader")
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class Clock:
    """Timestamps at the end of step 1, step `warmup` and the last step; `limit` cuts the epoch short (a smoke
    check, not a figure)."""

    def __init__(self, warmup: int, limit: int | None = None, device: str = "cpu") -> None:
        self.warmup, self.limit, self.steps, self.marks, self.device = warmup, limit, 0, {}, device

    def step_done(self) -> None:
        self.steps += 1
        if self.device == "cuda" and self.steps in (1, self.warmup):
            # The marks that start a timing wait for the GPU; the last step's may run ahead of it by the launch
            # queue (a few ms of an epoch), and syncing every step would slow every tool alike.
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter() - START
        if self.steps == 1:
            self.marks["first_step_s"] = now
        if self.steps == self.warmup:
            self.marks["warm_s"] = now
        self.marks["last_s"], self.marks["steps"] = now, self.steps

    def report(self, tool: str, threads: int) -> None:
        timed = self.marks["steps"] - self.warmup
        samples_per_s = timed * BATCH / (self.marks["last_s"] - self.marks["warm_s"])
        print(json.dumps({"tool": tool, "threads": threads, "samples_per_s": samples_per_s, **self.marks}))


def read_idx(folder: Path) -> tuple:
    """MNIST's training images (N, 28, 28) uint8 and labels, from the IDX files (gzipped or not)."""
    import numpy as np

    def load(name: str, offset: int) -> np.ndarray:
        path = folder / name if (folder / name).is_file() else folder / f"{name}.gz"
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return np.frombuffer(raw, np.uint8, offset=offset)

    return load(IDX[0], 16).reshape(-1, 28, 28), load(IDX[1], 8)


# --- the workers: one per tool, each as that tool's docs write it ------------------------------------------------


def run_dlzoo(data: Path, threads: int, clock: Clock) -> None:
    """`dlzoo train experiment=lab10_5_dropout trainer.epochs=1` as the CLI runs it (engine.assembly.run: validation,
    model summary, TensorBoard logging at its defaults, checkpoints), with the clock on the loop's step."""
    import tempfile

    from dlzoo.config.compose import compose_and_validate
    from dlzoo.engine.assembly import run
    from dlzoo.engine.training import loop

    step = loop._Loop.step

    def timed_step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = step(self, *args, **kwargs)
        clock.step_done()
        return out

    loop._Loop.step = timed_step
    cfg = compose_and_validate(["experiment=lab10_5_dropout", "data=mnist", f"data.root={data}",
                                "trainer.epochs=1", f"trainer.threads={threads}", "trainer.progress=false",
                                f"trainer.device={clock.device}",
                                f"trainer.max_steps={clock.limit or 'null'}"])  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        run.run(cfg, Path(out) / "run")


def run_lightning(data: Path, threads: int, clock: Clock) -> None:
    """A LightningModule, torchvision's MNIST through a DataLoader and Trainer(max_epochs=1), as
    lightning-hydra-template's MNIST example has them (progress bar off, logger and checkpointing as default)."""
    import tempfile

    import lightning as L
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.set_num_threads(threads)

    class LitMLP(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [nn.Flatten()]
            for n_in, n_out in zip([784, *HIDDEN], HIDDEN, strict=False):
                layers += [nn.Linear(n_in, n_out), nn.ReLU(), nn.Dropout(DROPOUT)]
            self.net = nn.Sequential(*layers, nn.Linear(HIDDEN[-1], 10))

        def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=LR)

    class Clocked(L.Callback):
        def on_train_batch_end(self, *args: object) -> None:
            clock.step_done()

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = datasets.MNIST(str(data), train=True, download=False, transform=transform)
    with tempfile.TemporaryDirectory() as out:
        accelerator = "gpu" if clock.device == "cuda" else "cpu"
        trainer = L.Trainer(max_epochs=1, accelerator=accelerator, devices=1, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=out, callbacks=[Clocked()],
                            limit_train_batches=clock.limit or 1.0)  # fmt: skip
        trainer.fit(LitMLP(), DataLoader(train, batch_size=BATCH, shuffle=True))


def run_keras(data: Path, threads: int, clock: Clock) -> None:
    """keras.Sequential, compile and fit on NumPy arrays, as the Keras MNIST examples write it; the backend is
    KERAS_BACKEND (set by the driver)."""
    if os.environ["KERAS_BACKEND"] == "torch":
        import torch

        torch.set_num_threads(threads)
    else:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    images, labels = read_idx(data / "MNIST" / "raw")
    x = images.reshape(-1, 784).astype("float32") / 255
    layers = [keras.Input(shape=(784,))]
    for width in HIDDEN:
        layers += [keras.layers.Dense(width, activation="relu"), keras.layers.Dropout(DROPOUT)]
    model = keras.Sequential([*layers, keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(LR), loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    class Clocked(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            clock.step_done()

    n = len(x) if clock.limit is None else clock.limit * BATCH
    model.fit(x[:n], labels[:n].astype("int64"), batch_size=BATCH, epochs=1, verbose=0, callbacks=[Clocked()])


def run_dataloader(data: Path, threads: int, clock: Clock) -> None:
    """pytorch/examples' mnist: torchvision's MNIST (PIL -> ToTensor -> Normalize per sample) through a DataLoader,
    a stock nn.Module and torch.optim.Adam, in a plain loop."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.set_num_threads(threads)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    loader = DataLoader(datasets.MNIST(str(data), train=True, download=False, transform=transform),
                        batch_size=BATCH, shuffle=True)  # fmt: skip
    layers: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in zip([784, *HIDDEN], HIDDEN, strict=False):
        layers += [nn.Linear(n_in, n_out), nn.ReLU(), nn.Dropout(DROPOUT)]
    device = torch.device(clock.device)
    model = nn.Sequential(*layers, nn.Linear(HIDDEN[-1], 10)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        clock.step_done()
        if clock.steps == clock.limit:
            break


WORKERS = {"dlzoo": run_dlzoo, "lightning": run_lightning, "keras_torch": run_keras,
           "keras_tensorflow": run_keras, "dataloader": run_dataloader}  # fmt: skip


# --- the driver ----------------------------------------------------------------------------------------------------


def torchvision_layout(mnist: Path, into: Path) -> Path:
    """The folder torchvision's MNIST(download=False) reads: <root>/MNIST/raw/ with the four IDX files unzipped
    (what its download leaves). Built once, outside the timing."""
    raw = into / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX:
        if not (raw / name).is_file():
            source = mnist / f"{name}.gz"
            with (
                gzip.open(source) if source.is_file() else (mnist / name).open("rb") as f,
                (raw / name).open("wb") as g,
            ):
                shutil.copyfileobj(f, g)
    return into


def available(tool: str, python: str) -> str | None:
    """None when `tool` can run with the interpreter `python`, else why not."""
    module = {"lightning": "lightning", "keras_torch": "keras", "keras_tensorflow": "tensorflow"}.get(tool)
    if module is None:
        return None
    probe = f"import importlib.util as u, sys; sys.exit(u.find_spec({module!r}) is None)"
    if subprocess.run([python, "-c", probe], capture_output=True).returncode != 0:
        return f"{module} is not installed for {python} (pip install -e '.[peers]'; --tf-python: see --help)"
    return None


def drive(
    data: Path,
    tools: list[str],
    rounds: int,
    threads: int,
    warmup: int,
    out: Path,
    limit: int | None,
    tf_python: str,
    device: str = "cpu",
) -> dict:
    """Every tool once per round, in a fresh process, rounds interleaved; the table as a dict (and JSON)."""
    import tempfile

    work = torchvision_layout(data / "mnist", Path(tempfile.mkdtemp(prefix="dlzoo-peers-")))
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    python = {t: tf_python if t == "keras_tensorflow" else sys.executable for t in tools}
    skipped = {t: why for t in tools if (why := available(t, python[t]))}
    for r in range(rounds):
        for tool in (t for t in tools if t not in skipped):
            env = os.environ | ({"KERAS_BACKEND": tool.removeprefix("keras_")} if tool.startswith("keras") else {})
            if device == "cpu":
                env |= {"CUDA_VISIBLE_DEVICES": ""}  # Keras takes a visible GPU by itself
            root = data / "mnist" if tool == "dlzoo" else work
            command = [python[tool], __file__, "--worker", tool, "--data", str(root), "--threads", str(threads),
                       "--warmup", str(warmup), "--device", device,
                       *(["--limit", str(limit)] if limit else [])]  # fmt: skip
            proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
            lines = [line for line in proc.stdout.splitlines() if line.startswith('{"tool"')]
            if proc.returncode != 0 or not lines:  # reported at once, and left out of the later rounds
                skipped[tool] = f"failed with exit {proc.returncode}: {proc.stderr.strip()[-600:]}"
                print(f"round {r + 1}/{rounds} {tool}: {skipped[tool]}", flush=True)
                continue
            runs[tool].append(json.loads(lines[-1]))
            print(f"round {r + 1}/{rounds} {tool:<17} {runs[tool][-1]['samples_per_s']:>9,.0f} samples/s  "
                  f"first step at {runs[tool][-1]['first_step_s']:.1f} s", flush=True)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    table = summarize(runs, skipped)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "threads": threads, "rounds": rounds, "warmup": warmup, "table": table,
                               "runs": runs, "skipped": skipped}, indent=2) + "\n")  # fmt: skip
    return table


def summarize(runs: dict[str, list[dict]], skipped: dict[str, str]) -> dict:
    ours = statistics.median(r["samples_per_s"] for r in runs["dlzoo"]) if runs.get("dlzoo") else None
    table = {}
    for tool, rs in runs.items():
        if not rs:
            continue
        speeds = [r["samples_per_s"] for r in rs]
        med = statistics.median(speeds)
        table[tool] = {"median": med, "min": min(speeds), "max": max(speeds),
                       "dlzoo_over_tool": ours / med if ours else None,
                       "first_step_s": statistics.median(r["first_step_s"] for r in rs)}  # fmt: skip
    print(f"\n{'tool':<18}{'samples/s median':>17}{'min':>9}{'max':>9}{'dlzoo/tool':>12}{'first step':>12}")
    for tool, row in table.items():
        print(f"{tool:<18}{row['median']:>17,.0f}{row['min']:>9,.0f}{row['max']:>9,.0f}"
              f"{row['dlzoo_over_tool']:>11.2f}x{row['first_step_s']:>11.1f}s")  # fmt: skip
    for tool, why in skipped.items():
        print(f"{tool:<18}not run: {why}")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="folder holding mnist/ with the four IDX files")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--warmup", type=int, default=50, help="steps before the timing starts")
    parser.add_argument("--limit", type=int, default=None, help="stop each epoch after this many steps (a smoke check)")
    parser.add_argument("--tf-python", default=sys.executable, help="the Python of a virtual environment with "
                        "tensorflow-cpu and keras, for keras_tensorflow (so dlzoo's own stays as its install made "
                        "it)")  # fmt: skip
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where every tool trains")
    parser.add_argument("--out", default="outputs/bench_peers.json")
    parser.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        clock = Clock(args.warmup, args.limit, args.device)
        WORKERS[args.worker](Path(args.data), args.threads, clock)
        clock.report(args.worker, args.threads)
        return
    tools = args.tools.split(",")
    drive(
        Path(args.data),
        tools,
        args.rounds,
        args.threads,
        args.warmup,
        Path(args.out),
        args.limit,
        args.tf_python,
        args.device,
    )


if __name__ == "__main__":
    main()
