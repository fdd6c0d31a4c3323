"""The end of a -m sweep: it fails when a job failed, naming the job and what happened, and only then."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlzoo.sweeps.sweep_end import fail_if_jobs_failed


def _job(folder: Path, finished: bool, log: str = "") -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("trainer:\n  seed: 1\n")
    if finished:
        (folder / "metrics.json").write_text('{"test_acc": 0.9}')
    if log:
        (folder / "train.log").write_text(log)
    return folder


def test_a_sweep_of_finished_jobs_ends_quietly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _job(tmp_path / "0_mlp", True)
    # A stacked job's seed that diverged wrote no metrics.json: the job itself finished (as a single run, exit 0).
    _job(tmp_path / "1_mlp", True)
    _job(tmp_path / "1_mlp" / "seed778", False, "error: Training diverged at step 5. Fix: lower optim.lr.\n")
    fail_if_jobs_failed(tmp_path)
    assert capsys.readouterr().err == ""


def test_a_failed_job_fails_the_sweep_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _job(tmp_path / "0_softmax", False, "[2026-12-04][dlzoo][ERROR] - Training diverged: the loss exploded to 13.3 "
         "at step 5. Fix: lower optim.lr (e.g. by 10x).\n")  # fmt: skip
    _job(tmp_path / "1_softmax", True)
    with pytest.raises(SystemExit) as exit_:
        fail_if_jobs_failed(tmp_path)
    assert exit_.value.code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "1 of 2 jobs of the sweep failed (0_softmax: Training diverged: the loss exploded to 13.3 at step 5)" in err
    assert "1_softmax" not in err.split("failed (")[1].split(")")[0]
