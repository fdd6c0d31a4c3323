"""What a run records: the live progress display and model summary on the terminal (through dlzoo.console), and
its TensorBoard events in the layout of dlzoo.engine.recording.dashboards: curves, per-layer lessons (scalars,
histograms, the depth figure), test-time images, text and the HParams session."""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from dlzoo.console import console, log
from dlzoo.engine.recording import dashboards as tb
from dlzoo.engine.recording.figures import depth_figure
from dlzoo.models.summary import Summary


def print_summary(summary: Summary, title: str) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("output shape", justify="right")
    table.add_column("params", justify="right")
    for row in summary.rows:
        table.add_row(row.name, row.kind, "(N, " + ", ".join(map(str, row.output_shape)) + ")", f"{row.params:,}")
    console.print(table)
    # Under the table, not its caption: a caption wraps to the table's width, mid-number on a narrow terminal.
    console.print(
        f"total {summary.trainable + summary.non_trainable:,}  ·  trainable {summary.trainable:,}  ·  "
        f"non-trainable {summary.non_trainable:,}",
        style="dim",
        highlight=False,
    )


def summary_markdown(summary: Summary) -> str:
    """The model summary as a markdown table, for TensorBoard's text tab."""
    rows = "\n".join(
        f"| {r.name} | {r.kind} | (N, {', '.join(map(str, r.output_shape))}) | {r.params:,} |" for r in summary.rows
    )
    total = f"total {summary.trainable + summary.non_trainable:,}, trainable {summary.trainable:,}"
    return "| layer | type | output shape | params |\n|---|---|---|---:|\n" + rows + f"\n\n{total}"


def epoch_lines(epochs: int, most: int = 20) -> int:
    """Print every k-th epoch line (and the first and last) so a run prints at most about `most` of them; XOR's
    1,000 one-step epochs would otherwise scroll the terminal away. train.log keeps every line."""
    return max(1, math.ceil(epochs / most))


class Tracker(Protocol):
    """What the loop, the run and pretraining report to: RunTracker writes it, SilentTracker (ranks > 0 of a DDP
    run) drops it; tests may pass a stub with the loop's methods."""

    def on_epoch_start(self, epoch: int, steps: int) -> None: ...
    def progress_due(self) -> bool: ...
    def show_progress(self, step: int, mean_loss: float, samples_per_s: float) -> None: ...
    def log_step(self, step: int, loss: float, lr: float, samples_per_s: float) -> None: ...
    def log_layer_stats(self, step: int, stats: dict[str, float]) -> None: ...
    def log_histograms(self, step: int, tensors: dict[str, Tensor]) -> None: ...
    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None: ...
    def log_test(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_graph(self, model: nn.Module, example: Tensor) -> None: ...
    def log_image(self, tag: str, image: np.ndarray | None, step: int) -> None: ...
    def log_text(self, tag: str, values: dict[str, Any]) -> None: ...
    def log_markdown(self, tag: str, text: str) -> None: ...
    def log_hparams(self, hparams: dict[str, Any], experiment: bool = True, first: list[str] | None = None) -> None: ...
    def log_pretrain_start(self, method: str, images: int, layers: int) -> None: ...
    def log_pretrain(self, layer: str, epoch: int, metrics: dict[str, float]) -> None: ...


HISTOGRAM_SAMPLES = 1 << 15
# Seconds between two readings the live bar takes of the epoch's running loss: on a GPU each reading waits for the
# device, so it is bounded by the clock, never paid per step. Rich redraws the bar (elapsed, eta) ten times a second.
BAR_INTERVAL = 0.5
# Per-layer statistics drawn against depth, one figure each: probe name -> (image tag, y label).
DEPTH_PANELS = {
    "grad_norm": (tb.DEPTH + "1_gradient_norm", "weight gradient norm"),
    "act_std": (tb.DEPTH + "2_activation_std", "activation std"),
    "act_slope": (tb.DEPTH + "3_activation_slope", "mean activation slope"),
}
# The test metrics' tags in the test sub-run (and the ensemble's).
TEST_TAGS = {"acc": tb.ACCURACY, "loss": tb.LOSS, "mc_acc": tb.ACCURACY + "_mc_dropout",
             "mc_entropy": "test/mc_dropout_entropy", "member_mean_acc": tb.ACCURACY + "_member_mean"}  # fmt: skip


def bar_columns(width: int) -> list[ProgressColumn]:
    """The live bar: `epoch 2/15 ━━━━ 1,234/8,250 · running mean loss 0.2345 · 12,345 samples/s · 0:00:12 ·
    run eta 0:01:40`. The steps and the eta are the whole run's; the loss is the epoch's mean so far, what its
    epoch line prints as `train loss`. On a narrower terminal the elapsed time (under 115 columns), then the speed
    (under 100) give way, so the eta is never cut short."""
    speed = [TextColumn("· {task.fields[speed]:,.0f} samples/s")] if width >= 100 else []
    elapsed = [TextColumn("·"), TimeElapsedColumn()] if width >= 115 else []
    return [
        TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(bar_width=20 if width >= 115 else 10),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
        TextColumn("· running mean loss {task.fields[loss]}"),
        *speed,
        *elapsed,
        TextColumn("· run eta"),
        TimeRemainingColumn(),
    ]


def histogram_bins(values: Tensor, bins: int = 64) -> dict[str, Any] | None:
    """The finite `values` as TensorBoard's histogram record (add_histogram_raw's arguments) in `bins` equal
    buckets (TensorBoard redraws them in 30), computed by torch: TensorBoard's own make_histogram spends most of
    its time in a numpy dot product over the values. None when no value is finite."""
    v = values.double()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return None
    low, high = v.min().item(), v.max().item()
    if high <= low:  # one value (a zero-initialized layer): one bucket holds them all
        limits, counts = [high], [float(v.numel())]
    else:
        counts = torch.histc(v, bins, low, high).tolist()
        limits = torch.linspace(low, high, bins + 1, dtype=torch.float64)[1:].tolist()
    return {"min": low, "max": high, "num": v.numel(), "sum": v.sum().item(), "sum_squares": v.dot(v).item(),
            "bucket_limits": limits, "bucket_counts": counts}  # fmt: skip


class RunTracker:
    """Writes one run's TensorBoard events into `log_dir` (and its train/val/test sub-runs) and drives the
    terminal display.

    Args:
        log_dir: the run's output folder.
        epochs: planned epochs, for the progress display.
        progress: show the live progress bar (per-epoch lines are printed regardless).
        purge_step: when resuming, the first step to (re)write.
    """

    def __init__(
        self,
        log_dir: Path,
        epochs: int,
        progress: bool = True,
        purge_step: int | None = None,
        label: str = "",
        total_steps: int | None = None,
    ) -> None:
        # purge_step drops events a crashed run logged after its checkpoint, so a resumed run's curves join up.
        # label leads each epoch line ("seed 778  "), where several runs share one terminal (trainer.stack).
        self.label = label
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        self._log_dir, self._purge_step = log_dir, purge_step
        self._splits: dict[str, SummaryWriter] = {}
        self.epochs, self._total = epochs, total_steps
        self.every = epoch_lines(epochs)
        # A live bar only on a terminal; logs and CI get the per-epoch lines alone.
        self._live = progress and console.is_terminal
        # One bar for the whole run, so its eta is the run's: the epoch is a field, the steps are the run's.
        self._progress = Progress(
            *bar_columns(console.width),
            console=console,
            transient=True,
            disable=not self._live,
        )
        self._task = self._progress.add_task("train", total=1, visible=False, **self._fields(0))
        self._epoch_first_step, self._steps, self._epoch, self._last_step = 0, 1, 0, 0
        self._next_bar, self._bar_started = 0.0, False
        self._depth: dict[str, list[tuple[int, dict[str, float]]]] = {k: [] for k in DEPTH_PANELS}
        self._progress.start()

    def split(self, name: str) -> SummaryWriter:
        """The writer of sub-run `name` (train, val or test), made at its first value: an ensemble's folder,
        which trains nothing itself, gets no empty train run."""
        if name not in self._splits:
            self._splits[name] = SummaryWriter(log_dir=str(self._log_dir / name), purge_step=self._purge_step)
        return self._splits[name]

    def _fields(self, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "epochs": self.epochs, "loss": "–", "speed": 0.0}

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        # Every epoch has `steps` steps, so its first is known here, after a resume mid-epoch too.
        self._epoch, self._steps = epoch, max(steps, 1)
        self._epoch_first_step = (epoch - 1) * steps
        total = self._total if self._total is not None else steps * self.epochs
        if not self._bar_started:
            # The bar starts where this process starts (a resumed run's step), so its speed and eta are of the
            # steps it times; rich's reset() replaces a task's fields: every field the columns read is passed.
            start = max(self._epoch_first_step, (self._purge_step or 1) - 1)
            self._progress.reset(self._task, total=total, completed=start, visible=True, **self._fields(epoch))
            self._bar_started = True
        else:
            self._progress.update(self._task, total=total, epoch=epoch, loss="–")
        self._next_bar = 0.0  # the epoch's first step is shown at once

    def progress_due(self) -> bool:
        """Whether the live bar wants a reading now. The host's clock only: a hidden bar (no terminal, a log)
        never has the loop read the device's loss."""
        return self._live and time.monotonic() >= self._next_bar

    def show_progress(self, step: int, mean_loss: float, samples_per_s: float) -> None:
        """The live bar at global `step`: the epoch's mean training loss so far (its epoch line's `train loss`
        once the epoch ends) and the epoch's speed."""
        self._next_bar = time.monotonic() + BAR_INTERVAL
        self._progress.update(self._task, completed=step, loss=f"{mean_loss:.4f}", speed=samples_per_s)

    def log_step(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        self.split("train").add_scalar(tb.LOSS_STEP, loss, step)
        self.writer.add_scalar(tb.LR, lr, step)  # per-step schedules (power, 1cycle, cosine) seen as they run
        done = step - self._epoch_first_step
        self.writer.add_scalar(tb.EPOCH, self._epoch - 1 + done / self._steps, step)
        self._last_step = step

    def log_layer_stats(self, step: int, stats: dict[str, float]) -> None:
        for name, value in stats.items():
            self.writer.add_scalar(tb.per_layer_tag(name), value, step)
        for kind, snaps in self._depth.items():
            values = {n.partition("/")[2]: v for n, v in stats.items() if n.startswith(kind + "/")}
            if values:
                snaps.append((step, values))

    def log_histograms(self, step: int, tensors: dict[str, Tensor]) -> None:
        """One histogram per tensor. A big tensor is drawn from an even stride of at most HISTOGRAM_SAMPLES of its
        values: the shape of the distribution is the same, and binning every value of a 784x512 matrix would
        cost more than the training steps between two histograms."""
        for name, tensor in tensors.items():
            flat = tensor.detach().flatten()
            if not torch.isfinite(flat).all():  # a diverging layer: its finite values, or no histogram at all
                flat = flat[torch.isfinite(flat)]
                if flat.numel() == 0:
                    continue
            stride = -(-flat.numel() // HISTOGRAM_SAMPLES)
            bins = histogram_bins(flat[::stride].cpu())
            if bins is not None:
                self.writer.add_histogram_raw(tb.per_layer_tag(name), **bins, global_step=step)

    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        for split in ("train", "val"):
            self.split(split).add_scalar(tb.ACCURACY, metrics[f"{split}/acc"], step)
            self.split(split).add_scalar(tb.LOSS, metrics[f"{split}/loss"], step)
        self.writer.add_scalar(tb.EPOCH, epoch, step)
        self._last_step = step
        self._progress.update(self._task, completed=step, loss=f"{metrics['train/loss']:.4f}")
        scores = (
            f"train loss {metrics['train/loss']:.4f} acc {metrics['train/acc']:.4f}  "
            f"val loss {metrics['val/loss']:.4f} acc {metrics['val/acc']:.4f}  lr {metrics['lr']:.3g}"
        )
        line = f"{self.label}epoch {epoch:>3}/{self.epochs}  step {step:>6}  {scores}"
        if epoch == 1 or epoch == self.epochs or epoch % self.every == 0:
            # On a narrow terminal the step (TensorBoard's x axis, also in train.log) gives way to the scores.
            shown = line if len(line) <= console.width else f"{self.label}epoch {epoch:>3}/{self.epochs}  {scores}"
            console.print(shown, highlight=False, soft_wrap=True)
        log.info(line)

    def log_pretrain_start(self, method: str, images: int, layers: int) -> None:
        line = f"pretraining {layers} hidden layer(s) with {method} on {images:,} images (labels unused)"
        console.print(line, highlight=False, soft_wrap=True)
        log.info(line)

    def log_pretrain(self, layer: str, epoch: int, metrics: dict[str, float]) -> None:
        """One pretraining layer-epoch: scalars `pretrain/<layer>/<name>` at step `epoch`, and a console line."""
        for name, value in metrics.items():
            self.writer.add_scalar(f"pretrain/{layer}/{name}", value, epoch)
        line = f"pretrain {layer:<5} epoch {epoch:>3}  " + "  ".join(f"{k} {v:.5f}" for k, v in metrics.items())
        console.print(line, highlight=False, soft_wrap=True)
        log.info(line)

    def log_test(self, step: int, metrics: dict[str, float]) -> None:
        """Test-set scores (keys of TEST_TAGS) in the test sub-run at `step`: the point ends the val curve."""
        for key, value in metrics.items():
            self.split("test").add_scalar(TEST_TAGS[key], value, step)
        self._last_step = max(self._last_step, step)

    def log_val(self, step: int, acc: float, loss: float | None = None) -> None:
        """A validation score outside the loop (an ensemble's members' mean), for its HParams column."""
        self.split("val").add_scalar(tb.ACCURACY, acc, step)
        if loss is not None:
            self.split("val").add_scalar(tb.LOSS, loss, step)

    def log_graph(self, model: nn.Module, example: Tensor) -> None:
        """The model's graph for TensorBoard's Graphs tab, traced in eval mode without gradients (no random draws,
        no batch-norm updates: training goes on as without it). A model the tracer cannot follow gets none."""
        was = model.training
        model.eval()
        try:
            # add_graph traces with torch.jit, which torch now marks deprecated and chatty (tracer warnings):
            # the user did not ask for either message.
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.writer.add_graph(model, example)
        except Exception as e:  # torch.jit.trace refuses some modules (data-dependent control flow)
            log.info("no graph in TensorBoard: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        finally:
            model.train(was)

    def log_image(self, tag: str, image: np.ndarray | None, step: int) -> None:
        if image is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def log_text(self, tag: str, values: dict[str, Any]) -> None:
        """A two-column markdown table in TensorBoard's text tab."""
        rows = "\n".join(f"| {k} | {v} |" for k, v in values.items())
        self.writer.add_text(tag, "| key | value |\n|---|---|\n" + rows, 0)

    def log_markdown(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, 0)

    def log_hparams(self, hparams: dict[str, Any], experiment: bool = True, first: list[str] | None = None) -> None:
        """The run's HParams session (its headline hyperparameters, `run_hparams`), whose metrics TensorBoard
        reads from the val and test sub-runs. With `experiment`, also the experiment (the table's columns, those
        in `first` leading), so a run or a sweep opened alone has its table; a ladder writes one experiment for
        all its runs instead."""
        summaries = tb.session_summaries(hparams)
        if experiment:
            summaries.insert(0, tb.experiment_summary(tb.columns_of([hparams], hparams), first or []))
        for summary in summaries:
            self.writer.file_writer.add_summary(summary)  # type: ignore[union-attr]

    def depth_figures(self, title: str) -> dict[str, np.ndarray]:
        """Each per-layer statistic against depth at the recorded steps (dlzoo.engine.recording.figures.depth_figure),
        keyed by its tag; none for a net of one layer."""
        return {
            tag: depth_figure(snaps, what, title, log=kind != "act_slope")
            for kind, (tag, what) in DEPTH_PANELS.items()
            if (snaps := self._depth[kind]) and len(snaps[-1][1]) > 1
        }

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._progress.stop()
        for writer in (self.writer, *self._splits.values()):
            writer.flush()
            writer.close()
        sys.stdout.flush()


class SilentTracker:
    """The tracker of ranks > 0: the loop reports to it and nothing is written or shown."""

    def on_epoch_start(self, epoch: int, steps: int) -> None: ...
    def progress_due(self) -> bool:
        return False

    def show_progress(self, step: int, mean_loss: float, samples_per_s: float) -> None: ...
    def log_step(self, step: int, loss: float, lr: float, samples_per_s: float) -> None: ...
    def log_layer_stats(self, step: int, stats: dict[str, float]) -> None: ...
    def log_histograms(self, step: int, tensors: dict[str, Tensor]) -> None: ...
    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None: ...
    def log_test(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_val(self, step: int, acc: float, loss: float | None = None) -> None: ...
    def log_graph(self, model: nn.Module, example: Tensor) -> None: ...
    def log_image(self, tag: str, image: np.ndarray | None, step: int) -> None: ...
    def log_text(self, tag: str, values: dict[str, Any]) -> None: ...
    def log_markdown(self, tag: str, text: str) -> None: ...
    def log_hparams(self, hparams: dict[str, Any], experiment: bool = True, first: list[str] | None = None) -> None: ...
    def log_pretrain_start(self, method: str, images: int, layers: int) -> None: ...
    def log_pretrain(self, layer: str, epoch: int, metrics: dict[str, float]) -> None: ...
    def depth_figures(self, title: str) -> dict[str, np.ndarray]: ...

    def __enter__(self) -> SilentTracker:
        return self

    def __exit__(self, *exc: object) -> None: ...
