"""The ladder's TensorBoard view as TensorBoard reads it back: one run per rung named for its lab, the test accuracy
as flat segments that smoothing cannot move and outlier trimming cannot clip, the Custom Scalars page, and the
HParams columns led by the lesson's keys; and the histograms' interval and buckets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from dlzoo.engine.recording.dashboards import RUNG_WIDTH, rung_run, write_ladder_view
from dlzoo.engine.recording.tracking import histogram_bins
from dlzoo.engine.training.state import HISTOGRAM_SLICES, histogram_every

RUNGS = [("10-1 softmax", 0.9012, 0.0021, 0.9035), ("10-3 Xavier", 0.9781, 0.0008, 0.9783),
         ("10-5 dropout", 0.9815, None, 0.9804)]  # fmt: skip
LABS = ["lab10_1_softmax", "lab10_3_xavier", "lab10_5_dropout"]


def _events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _smoothed(values: list[float], weight: float = 0.6) -> list[float]:
    """TensorBoard's debiased exponential moving average (its Scalars tab's default smoothing of 0.6)."""
    out, last = [], 0.0
    for n, v in enumerate(values, 1):
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight**n))
    return out


@pytest.fixture(scope="module")
def ladder_view(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ladder")
    accs = [acc for _, acc, _, _ in RUNGS]
    curves = {lab: [{"Ladder/val_acc": [(1, acc - 0.02), (2, acc)]}] * 2 for lab, acc in zip(LABS, accs, strict=True)}
    lessons = zip(LABS, ["normal", "xavier", "xavier"], [0.0, 0.0, 0.3], strict=True)
    sessions = [{"experiment": lab, "model": "mlp", "trainer.seed": seed, "model.init": init, "optim.lr": 0.001,
                 "model.dropout": dropout, "data.name": "mnist"}
                for lab, init, dropout in lessons for seed in (1, 2)]  # fmt: skip
    write_ladder_view(out, RUNGS, curves, sessions, "| rung |\n|---|\n| 10-1 |")
    return out


def test_each_rung_is_a_named_run_whose_accuracy_smoothing_cannot_move(ladder_view: Path) -> None:
    runs = sorted(p.name for p in (ladder_view / "_ladder").iterdir() if p.is_dir())
    assert runs == [rung_run(k, label) for k, (label, *_) in enumerate(RUNGS, 1)]
    assert runs[0] == "rung 1 (10-1 softmax)"
    everything = []
    for k, (label, mean, std, lecture) in enumerate(RUNGS, 1):
        events = _events(ladder_view / "_ladder" / rung_run(k, label))
        ours = [e.value for e in events.Scalars("Ladder/test_acc")]
        assert ours == pytest.approx([mean] * RUNG_WIDTH) and _smoothed(ours) == pytest.approx(ours)
        assert [e.value for e in events.Scalars("Ladder/test_acc_lecture")] == pytest.approx([lecture] * RUNG_WIDTH)
        low, high = (events.Scalars(f"Ladder_band/test_acc_{end}_std")[0].value for end in ("minus", "plus"))
        assert (low, high) == pytest.approx((mean - (std or 0), mean + (std or 0)))
        assert [e.step for e in events.Scalars("Ladder/val_acc")] == [1, 2]  # per epoch, the mean over seeds
        everything += ours
    # TensorBoard's "ignore outliers" keeps the 5th-95th percentile: every rung holds a third of the points here.
    assert np.quantile(everything, 0.05) == pytest.approx(RUNGS[0][1])


def test_the_custom_scalars_page_and_the_table(ladder_view: Path) -> None:
    events = _events(ladder_view / "_ladder")
    (layout_event,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(layout_event.tensor_proto.string_val[0])
    (category,) = layout.category
    charts = {c.title: c for c in category.chart}
    margin = charts["test accuracy per rung: our mean ± std over seeds"].margin.series[0]
    band = ("Ladder/test_acc", "Ladder_band/test_acc_minus_std", "Ladder_band/test_acc_plus_std")
    assert (margin.value, margin.lower, margin.upper) == band
    text = events.Tensors("Ladder/table/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| 10-1 |" in text and "rung 2 (10-3 Xavier): steps 11-19" in text


def test_the_hparams_columns_are_the_rung_then_the_lessons_keys_that_vary(ladder_view: Path) -> None:
    events = _events(ladder_view)
    (metadata,) = [m for m in events.summary_metadata.values() if m.plugin_data.plugin_name == "hparams"]
    experiment = HParamsPluginData.FromString(metadata.plugin_data.content).experiment
    shown = [h.name for h in experiment.hparam_infos if h.differs]  # what TensorBoard shows unasked
    assert shown == ["experiment", "model.init", "model.dropout", "trainer.seed"]
    hidden = {h.name for h in experiment.hparam_infos if not h.differs}
    assert hidden == {"model", "optim.lr", "data.name"}  # the same in every run: offered, not shown


@given(total=st.integers(1, 10**6))
def test_histograms_scale_with_the_run(total: int) -> None:
    every = histogram_every(None, total)
    slices = 1 + total // every  # step 1, then every `every` steps
    assert slices <= 2 * HISTOGRAM_SLICES + 1 and (total < 100 or slices >= 10)
    assert histogram_every(500, total) == 500 and histogram_every(0, total) == 0  # an explicit setting is kept


@given(values=st.lists(st.floats(-1e6, 1e6) | st.just(float("nan")) | st.just(float("inf")), min_size=1, max_size=300))
def test_a_histogram_counts_every_finite_value_once(values: list[float]) -> None:
    finite = [v for v in values if np.isfinite(v)]
    bins = histogram_bins(torch.tensor(values, dtype=torch.float64))
    if not finite:
        assert bins is None
        return
    assert bins is not None and bins["num"] == len(finite) == pytest.approx(sum(bins["bucket_counts"]))
    assert (bins["min"], bins["max"]) == (min(finite), max(finite)) and bins["bucket_limits"][-1] == max(finite)
    assert bins["bucket_limits"] == sorted(bins["bucket_limits"])
    assert bins["sum"] == pytest.approx(sum(finite))
    assert bins["sum_squares"] == pytest.approx(sum(v * v for v in finite))
