"""The TensorBoard layout every dlzoo run shares, and the HParams records built on it.

A run folder is one TensorBoard run for its hyperparameters, per-layer lessons, images and text, with three
sub-runs `train/`, `val/` and `test/` that log the same headline tags, so TensorBoard draws train, validation and
test of one quantity on one chart (Keras' layout). Every value is logged at the global step; `progress/epoch`
maps steps to epochs (Lightning's choice), so per-step and per-epoch curves share an axis. Tag groups are named for
TensorBoard, which sorts them by name and opens the first two: `accuracy_and_loss`, then `layers_by_depth` (the
per-layer lesson in one figure); the per-layer details (`per_layer_*`), the schedule, and the test images follow,
collapsed."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams.api_pb2 import DataType, Experiment, HParamInfo, MetricInfo, MetricName, Status
from tensorboard.plugins.hparams.metadata import (
    EXPERIMENT_TAG,
    PLUGIN_DATA_VERSION,
    PLUGIN_NAME,
    SESSION_END_INFO_TAG,
    SESSION_START_INFO_TAG,
)
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo, SessionStartInfo
from torch.utils.tensorboard import SummaryWriter

# The headline group: it sorts first, so TensorBoard opens it, and the depth figure's group second.
ACCURACY, LOSS = "accuracy_and_loss/accuracy", "accuracy_and_loss/loss"
LOSS_STEP = "optim/loss_per_step"  # the optimizer's view beside its lr: dense, noisy, train only
DEPTH = "layers_by_depth/"  # the per-layer statistics against depth, one image each
LR, EPOCH = "optim/lr", "progress/epoch"
# The HParams metrics of a run: (sub-run, tag, column title). TensorBoard reads each from that sub-run, so the
# metrics need no copies of their own (no `hparam/*` tags among the curves).
RUN_METRICS = (
    ("test", ACCURACY, "test acc"),
    ("val", ACCURACY, "val acc"),
    ("test", LOSS, "test loss"),
    ("val", LOSS, "val loss"),
)


def per_layer_tag(stat: str) -> str:
    """`grad_norm/layers.fc1.linear` (the probes' name) -> `per_layer_grad_norm/layers.fc1.linear`: the per-layer
    groups sort after accuracy and loss, together."""
    kind, _, layer = stat.partition("/")
    return f"per_layer_{kind}/{layer}"


# Which field of HParamsPluginData holds each kind of record.
_FIELDS = {"Experiment": "experiment", "SessionStartInfo": "session_start_info", "SessionEndInfo": "session_end_info"}


def _plugin_summary(tag: str, data: Any) -> Any:
    """An HParams record as the Summary TensorBoard's plugin reads."""
    content = HParamsPluginData(version=PLUGIN_DATA_VERSION, **{_FIELDS[type(data).__name__]: data})
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata)])


def _value(v: bool | int | float | str) -> Any:
    if isinstance(v, bool):  # before int: True is an int to Python, and TensorBoard would show 1.0000
        return struct_pb2.Value(bool_value=v)
    if isinstance(v, (int, float)):
        return struct_pb2.Value(number_value=float(v))
    return struct_pb2.Value(string_value=str(v))


def session_summaries(hparams: dict[str, bool | int | float | str]) -> list[Any]:
    """A finished session's start (its hyperparameters, types kept) and end records, for its run's event file."""
    start = SessionStartInfo()
    for key, value in hparams.items():
        start.hparams[key].CopyFrom(_value(value))
    end = SessionEndInfo(status=Status.Value("STATUS_SUCCESS"))
    return [_plugin_summary(SESSION_START_INFO_TAG, start), _plugin_summary(SESSION_END_INFO_TAG, end)]


def experiment_summary(
    columns: dict[str, list[Any] | None],
    first: Iterable[str] = (),
    metrics: Iterable[tuple[str, str, str]] = RUN_METRICS,
) -> Any:
    """An HParams experiment: `columns` maps each hyperparameter to its values (a list: booleans and text are
    offered as filters) or to None (numbers); `metrics` are (sub-run, tag, title). The columns in `first` are
    marked as differing between runs: TensorBoard sorts those first and shows the first few by default."""
    infos, first = [], set(first)
    for name, values in columns.items():
        differs = name in first
        if values is None:
            infos.append(HParamInfo(name=name, type=DataType.Value("DATA_TYPE_FLOAT64"), differs=differs))
            continue
        kind = "DATA_TYPE_BOOL" if all(isinstance(v, bool) for v in values) else "DATA_TYPE_STRING"
        listed = struct_pb2.ListValue(values=[_value(v if kind == "DATA_TYPE_BOOL" else str(v)) for v in values])
        infos.append(HParamInfo(name=name, type=DataType.Value(kind), domain_discrete=listed, differs=differs))
    metric_infos = [MetricInfo(name=MetricName(group=g, tag=t), display_name=title) for g, t, title in metrics]
    return _plugin_summary(EXPERIMENT_TAG, Experiment(hparam_infos=infos, metric_infos=metric_infos))


def columns_of(sessions: list[dict[str, Any]], keys: Iterable[str]) -> dict[str, list[Any] | None]:
    """Each key's column: None for numbers, else its values (as the sessions wrote them: booleans or text)."""
    out: dict[str, list[Any] | None] = {}
    for k in keys:
        values = [s.get(k) for s in sessions]
        if all(isinstance(v, bool) for v in values):
            out[k] = sorted(set(values))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[k] = None
        else:
            out[k] = sorted({str(v) for v in values})
    return out


def typed_session(hparams: dict[str, Any], columns: dict[str, list[Any] | None]) -> dict[str, Any]:
    """A session's values in its columns' types: TensorBoard drops a session whose value does not fit."""
    out: dict[str, Any] = {}
    for k, values in columns.items():
        v = hparams.get(k)
        if values is None:
            out[k] = float(v)  # type: ignore[arg-type]
        elif all(isinstance(x, bool) for x in values):
            out[k] = bool(v)
        else:
            out[k] = str(v)
    return out


def write_hparams_experiment(log_dir: Path, sessions: list[tuple[str, dict[str, Any], dict[str, float]]]) -> None:
    """One TensorBoard HParams experiment over many finished runs, so they line up in one table: the experiment
    in `log_dir` itself, and one session per run in `log_dir/<name>` holding its hyperparameters, with its final
    metrics (val_acc, test_acc, val_loss, test_loss) at step 0 in the sub-runs the experiment reads them from."""
    keys = list(dict.fromkeys(k for _, hparams, _ in sessions for k in hparams))
    columns = columns_of([h for _, h, _ in sessions], keys)
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        summary = experiment_summary(columns, differing([h for _, h, _ in sessions], keys))
        writer.file_writer.add_summary(summary)  # type: ignore[union-attr]
    for name, hparams, metrics in sessions:
        with SummaryWriter(log_dir=str(log_dir / name)) as writer:
            for summary in session_summaries(typed_session(hparams, columns)):
                writer.file_writer.add_summary(summary)  # type: ignore[union-attr]
        for split in ("val", "test"):
            values = {tag: metrics.get(f"{split}_{key}") for key, tag in (("acc", ACCURACY), ("loss", LOSS))}
            if any(isinstance(v, (int, float)) for v in values.values()):
                with SummaryWriter(log_dir=str(log_dir / name / split)) as writer:
                    for tag, value in values.items():
                        if isinstance(value, (int, float)):
                            writer.add_scalar(tag, value, 0)


def read_scalars(run_dir: Path, tags: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) pairs of `tags` from the TensorBoard events in `run_dir` (its own files, not sub-runs)."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    found = set(events.Tags().get("scalars", []))
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in tags if t in found}


# What the ladder view averages over seeds: (sub-run, tag) -> its own tag.
LADDER_CURVES = {
    ("val", ACCURACY): "Ladder/val_acc",
    ("val", LOSS): "Ladder/val_loss",
    ("train", LOSS): "Ladder/train_loss",
}


def read_epoch_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """A run's LADDER_CURVES per epoch (the k-th point of a per-epoch tag is epoch k), keyed by ladder tag."""
    out: dict[str, list[tuple[int, float]]] = {}
    for (split, tag), name in LADDER_CURVES.items():
        points = read_scalars(run_dir / split, [tag]).get(tag, [])
        out[name] = [(k, value) for k, (_, value) in enumerate(points, 1)]
    return out


# How wide each rung is drawn on the Ladder's accuracy charts (steps): a flat segment, which TensorBoard's smoothing
# cannot move (the mean of equal values) and its "ignore outliers" cannot clip (each rung is an equal share of the
# points, well above the 5% it trims).
RUNG_WIDTH = 9
# The lesson's knobs lead the ladder's HParams columns: what the lecture changes from one rung to the next.
LESSON_KEYS = ("model.arch", "model.hidden", "model.activation", "model.init", "model.dropout", "model.norm",
               "optim.name", "optim.lr", "ensemble.size", "trainer.epochs")  # fmt: skip


# Our mean ∓ its std over seeds, the band of the Custom Scalars page's Margin chart: a group of their own, so the
# Ladder group shows the accuracies themselves.
BAND = ("Ladder_band/test_acc_minus_std", "Ladder_band/test_acc_plus_std")


def rung_run(k: int, label: str) -> str:
    """The TensorBoard run of rung `k` under `_ladder/`, named for the lecture's lab: `rung 3 (10-3 Xavier)`."""
    return f"rung {k} ({label})"


def rung_steps(k: int) -> range:
    """The steps rung `k` is drawn at on the accuracy charts: 1-9 for rung 1, 11-19 for rung 2, and so on."""
    return range(10 * (k - 1) + 1, 10 * (k - 1) + 1 + RUNG_WIDTH)


def ladder_layout() -> dict[str, dict[str, list[Any]]]:
    """TensorBoard's Custom Scalars page for a ladder (torch's add_custom_scalars layout): our mean ± std per rung
    as a band (a Margin chart), ours against the lecture's, and the validation curves; one series per rung run."""
    return {
        "Ladder": {
            "test accuracy per rung: our mean ± std over seeds": [
                "Margin", ["Ladder/test_acc", *BAND]],
            "test accuracy per rung: ours and the lecture's": [
                "Multiline", [r"Ladder/test_acc$", r"Ladder/test_acc_lecture$"]],
            "validation accuracy per epoch, mean over seeds": ["Multiline", [r"Ladder/val_acc$"]],
        }
    }  # fmt: skip


def write_ladder_view(
    log_dir: Path,
    rungs: list[tuple[str, float | None, float | None, float | None]],
    curves: dict[str, list[dict[str, list[tuple[int, float]]]]],
    sessions: list[dict[str, Any]],
    table_md: str,
) -> None:
    """The ladder's own TensorBoard group "Ladder", which sorts first and opens by default. One run per rung,
    `_ladder/rung k (<lab>)`, so every series is named for its rung: `Ladder/test_acc` (our mean over seeds) and
    `Ladder/test_acc_lecture` (the lecture's figure) as flat segments at rung_steps(k), and `Ladder/val_acc`,
    `Ladder/val_loss`, `Ladder/train_loss` per epoch (the mean over its seeds), overlaying the rungs' learning
    curves; mean ∓ std in a group of their own (`Ladder_band/`), for the Custom Scalars page (ladder_layout).
    Beside them: the table in the text tab (ladder.png is not a card: TensorBoard shrinks an image to the card's
    width, where its labels cannot be read), and in `log_dir` itself one HParams experiment whose
    columns are the rung (experiment) first, then the lesson's keys that differ between the ladder's runs, then
    the others that differ.

    Args:
        log_dir: the ladder's output folder (TensorBoard's --logdir).
        rungs: (label, our mean test accuracy, its std over seeds, the lecture's) per rung, in ladder order.
        curves: per rung name (every rung, in ladder order), each seed's curves as read_epoch_curves returns them.
        sessions: each run's HParams row (`run_hparams`), to find the columns that differ.
        table_md: the ladder table as markdown.
    """
    # Written anew each time (a --resume rewrites the view): old event files would double every point.
    shutil.rmtree(log_dir / "_ladder", ignore_errors=True)
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()
    named = [rung_run(k, label) for k, (label, *_) in enumerate(rungs, 1)]
    for k, ((_, mean, std, lecture), seeds) in enumerate(zip(rungs, curves.values(), strict=True), 1):
        with SummaryWriter(log_dir=str(log_dir / "_ladder" / named[k - 1])) as writer:
            values = {"Ladder/test_acc": mean, "Ladder/test_acc_lecture": lecture}
            if mean is not None:
                spread = std or 0.0
                values |= {BAND[0]: mean - spread, BAND[1]: mean + spread}
            for tag, value in values.items():
                if value is not None:
                    for step in rung_steps(k):
                        writer.add_scalar(tag, value, step)
            for tag in LADDER_CURVES.values():
                by_step: dict[int, list[float]] = {}
                for seed in seeds:
                    for step, value in seed.get(tag, []):
                        by_step.setdefault(step, []).append(value)
                for step, v in sorted(by_step.items()):
                    writer.add_scalar(tag, sum(v) / len(v), step)
    with SummaryWriter(log_dir=str(log_dir / "_ladder")) as writer:
        writer.add_custom_scalars(ladder_layout())
        steps = "\n".join(f"- {n}: steps {rung_steps(k)[0]}-{rung_steps(k)[-1]}" for k, n in enumerate(named, 1))
        note = ("\n\nOn the `Ladder/test_acc*` charts each rung is a flat segment, one run per rung (hover a "
                "segment for its name):\n\n")  # fmt: skip
        writer.add_text("Ladder/table", table_md + note + steps + "\n\nEach seed against the lecture: ladder.png.")
    keys = list(dict.fromkeys(k for s in sessions for k in s))
    varied = [k for k in differing(sessions, keys) if k != "experiment"]
    shown = ["experiment", *(k for k in LESSON_KEYS if k in varied), *(k for k in varied if k not in LESSON_KEYS)]
    # The keys every run shares follow, unmarked: TensorBoard hides them until asked, and can still filter by them.
    columns = columns_of(sessions, [*shown, *(k for k in keys if k not in shown)])
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        summary = experiment_summary(columns, shown)
        writer.file_writer.add_summary(summary)  # type: ignore[union-attr]


def differing(sessions: list[dict[str, Any]], keys: Iterable[str]) -> list[str]:
    """The keys whose value is not the same in every session."""
    return [k for k in keys if len({str(s.get(k)) for s in sessions}) > 1]
