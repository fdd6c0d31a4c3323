"""What a run records: the live progress display and model summary on the terminal (through dlzoo.console) and
the TensorBoard event file (scalars, per-layer norms, HParams). The only module that imports TensorBoard."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from dlzoo.console import console, log
from dlzoo.models.summary import Summary


def print_summary(summary: Summary, title: str) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("output shape", justify="right")
    table.add_column("params", justify="right")
    for row in summary.rows:
        table.add_row(row.name, row.kind, "(N, " + ", ".join(map(str, row.output_shape)) + ")", f"{row.params:,}")
    table.caption = (
        f"total {summary.trainable + summary.non_trainable:,}  ·  trainable {summary.trainable:,}  ·  "
        f"non-trainable {summary.non_trainable:,}"
    )
    console.print(table)


# The config keys a reader compares runs by, in the HParams table's column order (after the config-group choices):
# the lessons' knobs, not all ~110 keys of the config.
HPARAM_KEYS = (
    "model.arch", "model.hidden", "model.activation", "model.init", "model.dropout", "model.norm", "optim.name",
    "optim.lr", "optim.weight_decay", "sched.name", "reg.l1", "reg.l2", "pretrain.method", "ensemble.size",
    "trainer.epochs", "trainer.batch_size", "trainer.seed", "trainer.precision", "data.name", "data.train_subset",
)  # fmt: skip
CHOICE_GROUPS = ("experiment", "model", "data", "optim", "sched")


def run_hparams(config: dict[str, Any], choices: dict[str, Any] | None = None) -> dict[str, bool | int | float | str]:
    """The run's HParams row: its config-group choices (`experiment` first: the lecture rung), then HPARAM_KEYS.
    Booleans stay booleans and numbers numbers; lists and null become text, which HParams accepts."""
    flat = flatten(config)
    row: dict[str, bool | int | float | str] = {}
    for group in CHOICE_GROUPS:
        value = (choices or {}).get(group)
        row[group] = str(value) if value is not None else "none"
    for key in HPARAM_KEYS:
        if key in flat:
            row[key] = flat[key]
    return row


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and None become strings so TensorBoard's HParams accepts them."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out |= flatten(value, f"{prefix}{key}.")
        return out
    value = tree if isinstance(tree, (bool, int, float, str)) else str(tree)
    return {prefix.rstrip("."): value}


class Tracker(Protocol):
    """What the loop, the run and pretraining report to: RunTracker writes it, SilentTracker (ranks > 0 of a DDP
    run) drops it; tests may pass a stub with the loop's four methods."""

    def on_epoch_start(self, epoch: int, steps: int) -> None: ...
    def log_step(self, step: int, loss: float, lr: float, samples_per_s: float) -> None: ...
    def log_layer_stats(self, step: int, stats: dict[str, float]) -> None: ...
    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None: ...
    def log_test(self, epoch: int, metrics: dict[str, float]) -> None: ...
    def log_text(self, tag: str, values: dict[str, Any]) -> None: ...
    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], experiment: bool = True) -> None: ...
    def log_pretrain_start(self, method: str, images: int, layers: int) -> None: ...
    def log_pretrain(self, layer: str, epoch: int, metrics: dict[str, float]) -> None: ...


class RunTracker:
    """Writes one run's TensorBoard events into `log_dir` and drives the terminal display.

    Args:
        log_dir: the run's output folder.
        epochs: planned epochs, for the progress display.
        progress: show the live progress bar (per-epoch lines are printed regardless).
        purge_step: when resuming, the first step to (re)write.
    """

    def __init__(self, log_dir: Path, epochs: int, progress: bool = True, purge_step: int | None = None) -> None:
        # purge_step drops events a crashed run logged after its checkpoint, so a resumed run's curves join up.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        self.epochs = epochs
        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  ·  {task.fields[speed]:,.0f} samples/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            # A live bar only on a terminal; logs and CI get the per-epoch lines alone.
            disable=not (progress and console.is_terminal),
        )
        self._task = self._progress.add_task("train", total=1, **self._fields(0))
        self._epoch_first_step = 0
        self._progress.start()

    def _fields(self, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "epochs": self.epochs, "loss": float("nan"), "speed": 0.0}

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        # rich's reset() replaces a task's fields rather than merging them: pass every field the columns read.
        self._progress.reset(self._task, total=steps, **self._fields(epoch))

    def log_step(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        self.writer.add_scalar("train/loss_step", loss, step)
        self.writer.add_scalar("lr_step", lr, step)  # per-step schedules (power, 1cycle, cosine) seen as they run
        self._progress.update(self._task, completed=step - self._epoch_first_step, loss=loss, speed=samples_per_s)

    def log_layer_stats(self, step: int, stats: dict[str, float]) -> None:
        for tag, value in stats.items():
            self.writer.add_scalar(tag, value, step)

    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, epoch)
        self._epoch_first_step = step
        line = (
            f"epoch {epoch:>3}/{self.epochs}  step {step:>6}  "
            f"train loss {metrics['train/loss']:.4f} acc {metrics['train/acc']:.4f}  "
            f"val loss {metrics['val/loss']:.4f} acc {metrics['val/acc']:.4f}  lr {metrics['lr']:.3g}"
        )
        console.print(line, highlight=False, soft_wrap=True)
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

    def log_test(self, epoch: int, metrics: dict[str, float]) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, epoch)

    def log_text(self, tag: str, values: dict[str, Any]) -> None:
        """A two-column markdown table in TensorBoard's text tab."""
        rows = "\n".join(f"| {k} | {v} |" for k, v in values.items())
        self.writer.add_text(tag, "| key | value |\n|---|---|\n" + rows, 0)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], experiment: bool = True) -> None:
        """Write the run's headline hyperparameters (see `run_hparams`) and final metrics into its own event file,
        so every run of a multirun lines up as one row of a single HParams table (add_hparams would make a
        sub-run instead). Without `experiment` only the session is written: a ladder writes the experiment."""
        tagged = {f"hparam/{k}": v for k, v in metrics.items()}
        exp, ssi, sei = hparams_summary(hparams, tagged)
        for summary in (exp, ssi, sei) if experiment else (ssi, sei):
            self.writer.file_writer.add_summary(summary)  # type: ignore[union-attr]
        for tag, value in tagged.items():
            self.writer.add_scalar(tag, value, 0)

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._progress.stop()
        self.writer.flush()
        self.writer.close()
        sys.stdout.flush()


def write_hparams_experiment(log_dir: Path, sessions: list[tuple[str, dict[str, Any], dict[str, float]]]) -> None:
    """One TensorBoard HParams experiment over many finished runs, so they line up in one table: the experiment
    (every column and metric) in `log_dir` itself, and one session per run in `log_dir/<name>` holding its
    hyperparameters (a column whose values are not all numbers becomes text) and, as step-0 scalars, its final
    metrics."""
    keys = list(dict.fromkeys(k for _, hparams, _ in sessions for k in hparams))
    metric_tags = list(dict.fromkeys(f"hparam/{m}" for _, _, metrics in sessions for m in metrics))
    numeric = {k for k in keys if all(isinstance(h.get(k), (int, float)) for _, h, _ in sessions)}

    def typed(key: str, value: object) -> float | str:
        # One type per column: TensorBoard drops a session whose value does not fit the column's type.
        return float(value) if key in numeric else str(value)  # type: ignore[arg-type]

    domains = {k: sorted({typed(k, h.get(k)) for _, h, _ in sessions}) for k in keys}  # type: ignore[type-var]
    exp, _, _ = hparams_summary({k: domains[k][0] for k in keys}, dict.fromkeys(metric_tags, 0.0), domains)
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        writer.file_writer.add_summary(exp)  # type: ignore[union-attr]
    for name, hparams, metrics in sessions:
        tagged = {f"hparam/{m}": v for m, v in metrics.items()}
        _, ssi, sei = hparams_summary({k: typed(k, hparams.get(k)) for k in keys}, tagged)
        with SummaryWriter(log_dir=str(log_dir / name)) as writer:
            for summary in (ssi, sei):
                writer.file_writer.add_summary(summary)  # type: ignore[union-attr]
            for tag, value in tagged.items():
                writer.add_scalar(tag, value, 0)


def read_scalars(run_dir: Path, tags: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) pairs of `tags` from the TensorBoard events in `run_dir` (its own files, not sub-runs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    found = set(events.Tags().get("scalars", []))
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in tags if t in found}


LADDER_CURVES = ("val/acc", "val/loss", "train/loss")


def write_ladder_view(
    log_dir: Path,
    rungs: list[tuple[str, float | None, float | None]],
    curves: dict[str, list[dict[str, list[tuple[int, float]]]]],
    sessions: list[dict[str, Any]],
    table_md: str,
    chart: Path | None = None,
) -> None:
    """The ladder's own TensorBoard group "Ladder", which sorts first and opens by default: runs `_ladder/ours`
    and `_ladder/lecture` whose `Ladder/test_acc` puts rung k at step k, so one chart sets our means against the
    lecture's figures; one run per rung, `_ladder/<k>_<rung>`, whose `Ladder/val_acc`, `Ladder/val_loss` and
    `Ladder/train_loss` per epoch (the mean over its seeds) overlay the rungs' learning curves; the table in the
    text tab; and, in `log_dir` itself, one HParams experiment whose columns are the rung (experiment) first,
    then only the hyperparameters that differ between the ladder's runs.

    Args:
        log_dir: the ladder's output folder (TensorBoard's --logdir).
        rungs: (label, our mean test accuracy, the lecture's) per rung, in ladder order.
        curves: per rung name, each seed's LADDER_CURVES as read_scalars returns them.
        sessions: each run's HParams row (`run_hparams`), to find the columns that differ.
        table_md: the ladder table as markdown.
        chart: ladder.png, shown as the group's first card (`Ladder/chart`): TensorBoard smooths and clips
            scalar charts, so the honest picture is the drawn one.
    """
    import shutil

    # Written anew each time (a --resume rewrites the view): old event files would double every point.
    shutil.rmtree(log_dir / "_ladder", ignore_errors=True)
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()
    steps = "\n".join(f"{i}. {label}" for i, (label, _, _) in enumerate(rungs, 1))
    for run, column in (("ours", 1), ("lecture", 2)):
        with SummaryWriter(log_dir=str(log_dir / "_ladder" / run)) as writer:
            for step, row in enumerate(rungs, 1):
                if row[column] is not None:
                    writer.add_scalar("Ladder/test_acc", row[column], step)
            if run == "ours" and chart is not None and chart.is_file():
                import matplotlib.image

                writer.add_image("Ladder/chart", matplotlib.image.imread(chart)[..., :3], 0, dataformats="HWC")
            if run == "ours":
                note = "\n\nSteps of Ladder/test_acc (rung k at step k):\n\n"
                writer.add_text("Ladder/table", table_md + note + steps)
    for k, (name, seeds) in enumerate(curves.items(), 1):
        with SummaryWriter(log_dir=str(log_dir / "_ladder" / f"{k}_{name}")) as writer:
            for tag in LADDER_CURVES:
                by_step: dict[int, list[float]] = {}
                for seed in seeds:
                    for step, value in seed.get(tag, []):
                        by_step.setdefault(step, []).append(value)
                for step, values in sorted(by_step.items()):
                    writer.add_scalar("Ladder/" + tag.replace("/", "_"), sum(values) / len(values), step)
    keys = list(dict.fromkeys(k for s in sessions for k in s))
    differing = [k for k in keys if k != "experiment" and len({str(s.get(k)) for s in sessions}) > 1]
    columns = ["experiment", *differing]
    # One type per column, as the runs wrote it: numbers need no domain, booleans and text list their values.
    domains: dict[str, list[Any]] = {}
    for k in columns:
        if all(isinstance(s.get(k), bool) for s in sessions):
            domains[k] = sorted({s.get(k) for s in sessions})
        elif not _numeric(k, sessions):
            domains[k] = sorted({str(s.get(k)) for s in sessions})
    defaults = {k: (sessions[0].get(k) if k not in domains else domains[k][0]) for k in columns} if sessions else {}
    metrics = dict.fromkeys(("hparam/test_acc", "hparam/val_acc", "hparam/test_loss", "hparam/val_loss"), 0.0)
    exp, _, _ = hparams_summary(defaults, metrics, domains)
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        writer.file_writer.add_summary(exp)  # type: ignore[union-attr]


def _numeric(key: str, sessions: list[dict[str, Any]]) -> bool:
    return all(isinstance(s.get(key), (int, float)) and not isinstance(s.get(key), bool) for s in sessions)


class SilentTracker:
    """The tracker of ranks > 0: the loop reports to it and nothing is written or shown."""

    def on_epoch_start(self, epoch: int, steps: int) -> None: ...
    def log_step(self, step: int, loss: float, lr: float, samples_per_s: float) -> None: ...
    def log_layer_stats(self, step: int, stats: dict[str, float]) -> None: ...
    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None: ...
    def log_test(self, epoch: int, metrics: dict[str, float]) -> None: ...
    def log_text(self, tag: str, values: dict[str, Any]) -> None: ...
    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], experiment: bool = True) -> None: ...
    def log_pretrain_start(self, method: str, images: int, layers: int) -> None: ...
    def log_pretrain(self, layer: str, epoch: int, metrics: dict[str, float]) -> None: ...

    def __enter__(self) -> SilentTracker:
        return self

    def __exit__(self, *exc: object) -> None: ...
