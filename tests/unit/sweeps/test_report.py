"""`dlzoo report` end to end: a real 2-model × 2-seed multirun on Fashion-MNIST plus a job that fails at run time,
read back as grouped mean ± std rows, report.md / report.csv and one TensorBoard HParams experiment."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from dlzoo.errors import DlzooError
from dlzoo.sweeps.report import build_report, last_error
from tests.helpers import FAST, dlzoo


@pytest.fixture(scope="module")
def sweep(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    data = ["data=fashion_mnist", f"data.root={fmnist_root}"]
    proc = dlzoo(
        "train",
        "-m",
        *FAST,
        *data,
        "model=softmax,mlp_xavier",
        "trainer.seed=1,2",
        f"hydra.sweep.dir={folder}",
        cwd=folder,
    )
    assert proc.returncode == 0, proc.stderr
    # A job that fails at run time (its data folder is gone), in the mlp_xavier group: Hydra ends a multirun at
    # its first failed job, so this one runs as a sweep of its own into the same sweep folder. A sweep keeps a
    # failed job's folder and log (a failed single run leaves none), which is where report finds the error.
    proc = dlzoo(
        "train",
        "-m",
        *FAST,
        "data=fashion_mnist",
        f"data.root={folder / 'gone'}",
        "model=mlp_xavier",
        "trainer.seed=3",
        f"hydra.sweep.dir={folder}",
        "hydra.sweep.subdir=4_mlp_xavier",
        cwd=folder,
    )
    assert proc.returncode == 2 and not (folder / "4_mlp_xavier" / "metrics.json").exists()
    return folder


@pytest.fixture(scope="module")
def reported(sweep: Path) -> str:
    proc = dlzoo("report", str(sweep), cwd=sweep)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _metrics(sweep: Path, job: str) -> dict:
    return json.loads((sweep / job / "metrics.json").read_text())


def test_rows_group_seeds_with_mean_and_sample_std(sweep: Path, reported: str) -> None:
    jobs = {"softmax": ["0_softmax", "1_softmax"], "mlp_xavier": ["2_mlp_xavier", "3_mlp_xavier"]}
    with (sweep / "report" / "report.csv").open() as f:
        rows = {row["model"]: row for row in csv.DictReader(f)}
    assert rows.keys() == jobs.keys()  # seeds and data.root are not swept: one row per model
    md = (sweep / "report" / "report.md").read_text()
    for model, folders in jobs.items():
        row = rows[model]
        assert row["n"] == "2" and row["seeds"] == "1 2"
        for metric in ("val_acc", "test_acc", "test_loss"):
            values = [_metrics(sweep, job)[metric] for job in folders]
            mean, std = statistics.fmean(values), statistics.stdev(values)
            assert float(row[f"{metric}_mean"]) == pytest.approx(mean, rel=1e-5)
            assert float(row[f"{metric}_std"]) == pytest.approx(std, rel=1e-4)
            assert f"{mean:.4f} ± {std:.4f}" in md and f"{mean:.4f} ± {std:.4f}" in reported
    assert rows["mlp_xavier"]["failed"] == "1" and rows["softmax"]["failed"] == "0"
    best_first = sorted(jobs, key=lambda m: -float(rows[m]["test_acc_mean"]))
    assert md.index(f"| {best_first[0]} |") < md.index(f"| {best_first[1]} |")  # sorted by test_acc


def test_failed_run_is_listed_with_its_error(sweep: Path, reported: str) -> None:
    md = (sweep / "report" / "report.md").read_text()
    assert "## Failed or unfinished runs (1)" in md
    line = next(line for line in md.splitlines() if line.startswith("- `4_mlp_xavier"))
    assert "seed 3" in line and "does not exist" in line and "[ERROR]" not in line
    assert "4_mlp_xavier" in reported and "does not exist" in reported


def test_one_hparams_experiment_lines_up_every_run(sweep: Path, reported: str, tmp_path: Path) -> None:
    # Written beside the runs, the report adds nothing to their dashboards: no event files, no sessions.
    assert not list((sweep / "report").rglob("events.out.tfevents.*"))
    proc = dlzoo("report", str(sweep), "--out", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "elsewhere" / "hparams_report"
    experiment = _hparams(root)["experiment"].experiment
    assert [h.name for h in experiment.hparam_infos] == ["model", "trainer.seed"]
    assert sorted(v.string_value for v in experiment.hparam_infos[0].domain_discrete.values) == [
        "mlp_xavier",
        "softmax",
    ]
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    assert metrics == {
        (g, t) for g in ("val", "test") for t in ("accuracy_and_loss/accuracy", "accuracy_and_loss/loss")
    }
    sessions = sorted(p.name for p in root.iterdir() if p.is_dir())  # each with its val/ and test/ sub-runs
    assert sessions == ["0_softmax", "1_softmax", "2_mlp_xavier", "3_mlp_xavier"]  # the failed run has no metrics
    for job in sessions:
        start = _hparams(root / job)["session_start_info"].session_start_info.hparams
        config = _metrics(sweep, job)
        assert start["model"].string_value == job.split("_", 1)[1]
        assert start["trainer.seed"].number_value == config["seed"]
        events = EventAccumulator(str(root / job / "test"))
        events.Reload()
        assert events.Scalars("accuracy_and_loss/accuracy")[0].value == pytest.approx(config["test_acc"])


def _hparams(folder: Path) -> dict[str, HParamsPluginData]:
    events = EventAccumulator(str(folder))
    events.Reload()
    out = {}
    for metadata in events.summary_metadata.values():
        if metadata.plugin_data.plugin_name == "hparams":
            data = HParamsPluginData.FromString(metadata.plugin_data.content)
            out[data.WhichOneof("data")] = data
    return out


def test_sort_by_a_loss_and_write_elsewhere(sweep: Path, reported: str, tmp_path: Path) -> None:
    report = build_report(sweep, "test_loss")
    means = [g.mean("test_loss") for g in report.groups if g.runs]
    assert means == sorted(means)  # lower is better for a loss
    proc = dlzoo("report", str(sweep), "--metric", "train_acc", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "train_acc" in (tmp_path / "out" / "report.md").read_text().splitlines()[4]  # its own column
    assert (tmp_path / "out" / "report.csv").is_file() and (tmp_path / "out" / "hparams_report").is_dir()


def test_missing_or_empty_folder_and_unknown_metric_are_clear_errors(sweep: Path, tmp_path: Path) -> None:
    proc = dlzoo("report", str(tmp_path / "nope"), cwd=tmp_path)
    assert proc.returncode == 2 and "No folder" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(DlzooError, match="holds no runs"):
        build_report(tmp_path)
    with pytest.raises(DlzooError, match=r"choices: .*test_acc"):
        build_report(sweep, "test_accuracy")


def test_last_error_finds_a_traceback_and_an_unfinished_run(tmp_path: Path) -> None:
    (tmp_path / "train.log").write_text("[2024-01-01 00:00:00,000][dlzoo][INFO] - epoch   1/15\n")
    assert "still running, or killed" in last_error(tmp_path)
    (tmp_path / "ladder.log").write_text("Traceback (most recent call last):\n  File x\nRuntimeError: out of memory\n")
    assert last_error(tmp_path) == "RuntimeError: out of memory"
