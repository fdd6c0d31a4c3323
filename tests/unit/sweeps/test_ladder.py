"""`dlzoo ladder` end to end on Fashion-MNIST: two rungs × two seeds as real runs, a rung that fails, --resume
rerunning only what is missing, the table files against each run's metrics.json, and bad input refused up front."""

from __future__ import annotations

import csv
import json
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pytest
from scipy.stats import ttest_ind

from dlzoo.errors import DlzooError
from dlzoo.paths import conf_dir
from dlzoo.sweeps.ladder import RUNGS, ladder_command
from tests.helpers import DLZOO, FAST, dlzoo


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "ladder.csv").open() as f:
        return {row["rung"]: row for row in csv.DictReader(f)}


def _test_accs(out: Path, rung: str) -> list[float]:
    return [json.loads((out / rung / f"seed{k}" / "metrics.json").read_text())["test_acc"] for k in (1, 2)]


def test_ladder_runs_reports_a_failed_rung_and_resumes(mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ladder"
    args = [
        "ladder",
        "--rungs",
        "lab10_1_softmax,lab10_3_xavier",
        "--epochs",
        "1",
        "--out",
        str(out),
        *FAST,
        f"data.root={mnist_root}",
    ]
    # The N(0,1)-initialized softmax logs losses of 9-16 in its first steps, the Xavier net under 2: a cap of 5
    # makes one rung fail while the other still runs.
    proc = dlzoo(*args, "--seeds", "1", "trainer.max_loss=5", cwd=tmp_path)
    assert proc.returncode == 1 and "1 run(s) failed" in proc.stderr, proc.stdout + proc.stderr
    assert "Training diverged" in proc.stdout  # the failed run's own error line
    rows = _rows(out)
    assert rows["lab10_1_softmax"]["n"] == "0" and rows["lab10_1_softmax"]["failed"] == "1"
    assert rows["lab10_3_xavier"]["n"] == "1" and rows["lab10_3_xavier"]["failed"] == "0"
    md = (out / "ladder.md").read_text()
    assert next(line for line in md.splitlines() if "(lab10_1_softmax)" in line).count("– (1 failed)") == 1
    assert "## Failed runs (1)" in md and "- lab10_1_softmax seed 1" in md and "Training diverged" in md
    kept = {p: p.stat().st_mtime_ns for p in out.glob("lab10_3_xavier/seed1/metrics.json")}

    # Without the cap and with a second seed, --resume reruns the failed run and keeps the finished one; two
    # runs at a time, each on one of the two cores.
    args += ["--seeds", "2"]
    proc = dlzoo(*args, "--resume", "--jobs", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Seeds begun on their own go on on their own: nothing here is stacked.
    assert "4 runs in 4 jobs (1 already done)" in proc.stdout and "2 at a time" in proc.stdout
    assert "stacked (" not in proc.stdout
    assert len(re.findall(r"\[\d/3\] lab10_\w+ seed \d: test acc 0\.\d{4} \(\d+ s\) .* elapsed, about \S+ left",
                          proc.stdout)) == 3  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    rows, md = _rows(out), (out / "ladder.md").read_text()
    means = {}
    for rung in ("lab10_1_softmax", "lab10_3_xavier"):
        accs = _test_accs(out, rung)
        means[rung] = statistics.fmean(accs)
        assert float(rows[rung]["test_acc_mean"]) == pytest.approx(means[rung], rel=1e-5)
        assert float(rows[rung]["test_acc_std"]) == pytest.approx(statistics.stdev(accs), rel=1e-4)
        assert rows[rung]["n"] == "2" and rows[rung]["epochs"] == "1"
        assert float(rows[rung]["lecture_mnist"]) == RUNGS[rung][2]
        assert f"{means[rung]:.4f} ± {statistics.stdev(accs):.4f}" in md
        for k in (1, 2):
            run = out / rung / f"seed{k}"
            assert (run / ".hydra" / "config.yaml").is_file() and (run / "checkpoints" / "last.pt").is_file()
            assert any(run.glob("events.out.tfevents.*"))
    assert "| 0.9035 |" in md and "| 0.9783 |" in md and "on mnist" in md
    # The step between rungs: the difference in points, and the verdict scipy's Welch test gives on these seeds.
    step = 100 * (means["lab10_3_xavier"] - means["lab10_1_softmax"])
    assert f"| {step:+.2f} pts [" in md
    welch = ttest_ind(_test_accs(out, "lab10_3_xavier"), _test_accs(out, "lab10_1_softmax"), equal_var=False)
    assert float(rows["lab10_3_xavier"]["p_welch"]) == pytest.approx(welch.pvalue, rel=1e-4)
    p_cell = "p < 0.001" if welch.pvalue < 0.001 else f"p = {welch.pvalue:.3f}"
    assert re.search(rf"\| (yes|no) \({re.escape(p_cell)}\) \|", md), md  # the verdict's cell reads as a sentence
    assert float(rows["lab10_3_xavier"]["diff_vs_above"]) == pytest.approx(step / 100, rel=1e-5)
    assert rows["lab10_1_softmax"]["diff_vs_above"] == ""  # the first rung has none above it
    assert (out / "ladder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_tensorboard_view(out, rows)

    # A finished ladder: --resume has nothing left to run.
    logs = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/ladder.log")}
    proc = dlzoo(*args, "--resume", cwd=tmp_path)
    assert proc.returncode == 0 and "4 runs in 4 jobs (4 already done)" in proc.stdout, proc.stderr
    assert {p: p.stat().st_mtime_ns for p in logs} == logs


def check_tensorboard_view(out: Path, rows: dict[str, dict[str, str]]) -> None:
    """The Ladder group's scalars are ladder.csv's numbers, one run per rung named for its lab; the one HParams
    experiment in the folder is the ladder's: the rung first, then only the keys that differ between its runs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    from dlzoo.engine.recording.dashboards import rung_run, rung_steps

    def scalars(run: Path, tag: str) -> list[tuple[int, float]]:
        events = EventAccumulator(str(run))
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars(tag)]

    for k, rung in enumerate(rows, 1):
        run = out / "_ladder" / rung_run(k, RUNGS[rung][0])
        mean = float(rows[rung]["test_acc_mean"])
        assert scalars(run, "Ladder/test_acc") == [(s, pytest.approx(mean, abs=1e-6)) for s in rung_steps(k)]
        lecture = scalars(run, "Ladder/test_acc_lecture")
        assert lecture == [(s, pytest.approx(RUNGS[rung][2], abs=1e-6)) for s in rung_steps(k)]
        assert [step for step, _ in scalars(run, "Ladder/val_acc")] == [1]  # one epoch: the mean of the seeds'
    experiments = []
    for events_file in out.rglob("events.out.tfevents.*"):
        events = EventAccumulator(str(events_file))
        events.Reload()
        for metadata in events.summary_metadata.values():
            if metadata.plugin_data.plugin_name == "hparams":
                data = HParamsPluginData.FromString(metadata.plugin_data.content)
                if data.WhichOneof("data") == "experiment":
                    differs = [h.name for h in data.experiment.hparam_infos if h.differs]
                    experiments.append((events_file.parent, differs))
    assert len(experiments) == 1 and experiments[0][0] == out, experiments
    shown = experiments[0][1]  # the columns TensorBoard shows unasked: those marked as differing between runs
    assert shown[0] == "experiment" and {"model", "model.init", "trainer.seed"} <= set(shown)
    assert "trainer.batch_size" not in shown and "data.name" not in shown  # the same in every run


def test_ladder_stacks_the_seeds_of_small_mlps_on_the_cpu(mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ladder"
    rungs = "lab10_1_softmax,lab10_3_xavier,lab10_5_dropout"
    proc = dlzoo("ladder", "--rungs", rungs, "--seeds", "2", "--out", str(out), *FAST,
                 f"data.root={mnist_root}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 10-1 and 10-3 are stacked (7.9k and 269k weights); 10-5's 1.2M weights measured no faster stacked on a CPU.
    assert "6 runs in 4 jobs" in proc.stdout and "stacked (trainer.stack, --stack auto): lab10_1_softmax, " \
        "lab10_3_xavier:" in proc.stdout  # fmt: skip
    assert re.search(r"lab10_3_xavier seeds 1\.\.2 \(stacked\): test acc 0\.\d{4} \(their mean\)", proc.stdout)
    rows = _rows(out)
    for rung in ("lab10_1_softmax", "lab10_3_xavier", "lab10_5_dropout"):
        accs = _test_accs(out, rung)
        assert rows[rung]["n"] == "2" and float(rows[rung]["test_acc_mean"]) == pytest.approx(statistics.fmean(accs))
        assert json.loads((out / rung / "seed2" / "metrics.json").read_text())["seed"] == 2
    assert (out / "lab10_3_xavier" / "checkpoints" / "stack.pt").is_file()
    assert not (out / "lab10_5_dropout" / "checkpoints").exists()  # trained seed by seed
    off = dlzoo("ladder", "--rungs", "lab10_1_softmax", "--seeds", "2", "--stack", "off", "--out",
                str(tmp_path / "off"), *FAST, f"data.root={mnist_root}", cwd=tmp_path)  # fmt: skip
    assert off.returncode == 0 and "2 runs in 2 jobs" in off.stdout, off.stdout + off.stderr
    assert _test_accs(tmp_path / "off", "lab10_1_softmax") == pytest.approx(_test_accs(out, "lab10_1_softmax"),
                                                                              abs=1e-3)  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--rungs", "lab10_1_softmax,lab99_magic"], "unknown rung"),
        (["trainer.seed=5"], "sets trainer.seed=5 itself"),
        (["--seeds", "0"], "at least 1"),
        (["--rungs", "lab10_1_softmax", "--rung-seeds", "lab11_5_ensemble=1"], "does not run"),
        (["--rung-seeds", "lab11_5_ensemble"], "write rung=N pairs"),
        (["--rungs", "lab10_3_xavier", "model.activation=rleu"], "rung lab10_3_xavier, seed 1: .*rleu"),
        (["data=fashion_mnist", "data.root=missing_folder"], "missing_folder' does not exist"),
    ],
)
def test_bad_input_fails_before_any_run(argv: list[str], expected: str, tmp_path: Path) -> None:
    out = tmp_path / "ladder"
    with pytest.raises(DlzooError, match=expected):
        ladder_command(["--out", str(out), *argv])
    assert not out.exists()


def test_rung_seeds_give_some_rungs_their_own_seed_count(tmp_path: Path) -> None:
    from dlzoo.sweeps.ladder import parse_rung_seeds, plan

    jobs = plan(["lab10_1_softmax", "lab11_5_ensemble"], 5, None, [], tmp_path, parse_rung_seeds("lab11_5_ensemble=1"))
    assert [(j.rung, j.seed) for j in jobs] == [("lab10_1_softmax", k) for k in range(1, 6)] + [("lab11_5_ensemble", 1)]


def test_resume_needs_out_and_a_used_folder_needs_resume(tmp_path: Path) -> None:
    with pytest.raises(DlzooError, match="--resume needs --out"):
        ladder_command(["--resume"])
    (tmp_path / "lab10_1_softmax" / "seed1" / ".hydra").mkdir(parents=True)
    with pytest.raises(DlzooError, match="already holds ladder runs"):
        ladder_command(["--out", str(tmp_path)])
    proc = dlzoo("ladder", "--rungs", "nope", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown rung(s) nope; choices: lab10_1_softmax" in proc.stderr


def test_lecture_figures_are_the_ones_quoted_in_the_experiment_configs() -> None:
    for rung, (_, _, figure) in RUNGS.items():
        text = (conf_dir() / "experiment" / f"{rung}.yaml").read_text()
        quoted = re.search(r"Lecture accuracy ([0-9.]+)", text)
        assert quoted is not None and float(quoted.group(1).rstrip(".")) == figure, rung


@pytest.mark.slow  # a ladder and its run started and stopped: too long for the fast tier
def test_a_sigterm_to_the_ladder_stops_its_runs_too(mnist_root: Path, tmp_path: Path) -> None:
    """A job scheduler's SIGTERM reaches only the ladder's own process: its running run gets it forwarded,
    checkpoints and exits (no orphan trains on), and the ladder exits 143 with the command that continues it."""
    out = tmp_path / "ladder"
    proc = subprocess.Popen([*DLZOO, "ladder", "--rungs", "lab10_1_softmax", "--seeds", "1", "--epochs", "1000",
                             "--out", str(out), f"data.root={mnist_root}", "data.train_subset=500",
                             "trainer.threads=1", "trainer.checkpoint.every=1", "trainer.figures=false"],
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    last = out / "lab10_1_softmax" / "seed1" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    orphans = [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).count(str(out / "lab10_1_softmax"))]
    assert orphans == [], [_cmdline(p) for p in orphans]
    flat = " ".join(stderr.split())
    assert f"--out {out}" in flat and flat.endswith("--resume"), flat
    assert "stopping" in (out / "lab10_1_softmax" / "seed1" / "ladder.log").read_text()


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # the process ended while the listing was read
        return ""
