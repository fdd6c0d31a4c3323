"""`dlzoo tune` workers sharing one study on a real PostgreSQL server (started by the tests themselves): three
workers finish a 12-trial study with no duplicate and no lost trial, a SIGKILLed worker's trial is retried by
another, --resume continues after every worker stopped, and SQLite refuses --workers with the fix named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dlzoo.cli import main
from dlzoo.sweeps.tune.study import counted, finished, retry_of
from tests.helpers import DLZOO

# Trials of about a second: 200 images, 2 epochs, one thread each (the machine's cores go to the workers).
TINY = """\
metric: val_acc
direction: maximize
n_trials: 12
sampler: {name: random, seed: 0}
pruner: {name: none}
overrides: [data=fashion_mnist, model=mlp_xavier, "model.hidden=[16]", data.train_subset=200, data.val_size=100,
            data.test_subset=200, trainer.epochs=2, trainer.batch_size=50, trainer.layer_stats=false,
            trainer.progress=false, trainer.figures=false, trainer.threads=1]
space:
  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  model.activation: {type: categorical, choices: [relu, tanh]}
"""


@pytest.fixture
def tiny(tmp_path: Path, fmnist_slice: Path) -> list[str]:
    (tmp_path / "conf" / "search").mkdir(parents=True)
    (tmp_path / "conf" / "search" / "tiny.yaml").write_text(TINY)
    return ["search=tiny", "--config-dir", str(tmp_path / "conf"), f"data.root={fmnist_slice}"]


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=url)


def status(out: Path, number: int) -> dict:
    return json.loads((out / f"trial_{number}" / "trial.json").read_text())


def test_three_workers_share_a_12_trial_study_then_resume_adds_to_it(
    tiny: list[str], postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "search"
    monkeypatch.chdir(tmp_path)  # the parent in-process (its CLI path is the same); its 3 workers are processes
    assert main(["tune", *tiny, "--storage", postgres_url, "--workers", "3", "--out", str(out)]) == 0

    trials = load(postgres_url).get_trials()
    assert [t.number for t in trials] == list(range(12)) and {t.state for t in trials} == {TrialState.COMPLETE}
    folders = sorted(int(p.name.split("_")[1]) for p in out.glob("trial_*"))
    assert folders == list(range(12))  # one normal run folder per trial, none run twice, none lost
    workers = {status(out, t.number)["pid"] for t in trials}
    for t in trials:
        info = status(out, t.number)
        assert info["state"] == "complete" and info["value"] == pytest.approx(t.value)
        assert (out / f"trial_{t.number}" / "metrics.json").is_file()
    assert len(workers) >= 2, workers  # the trials really were shared out
    spans = [(t.datetime_start, t.datetime_complete) for t in trials]
    assert any(a0 < b1 and b0 < a1 for i, (a0, a1) in enumerate(spans) for b0, b1 in spans[i + 1 :]), "none overlap"
    best = max(trials, key=lambda t: t.value)
    assert f"(trial {best.number}, val_acc {best.value:.4f}" in (out / "best.yaml").read_text()
    assert not list(out.glob(".best.yaml.*"))  # the atomic writes left no temporary file behind
    for i in range(3):
        assert "Traceback" not in (out / "workers" / f"worker_{i}.log").read_text()

    # Every worker has stopped: --resume with only the storage finds the study, its folder and its arguments.
    assert main(["tune", "--resume", "--storage", postgres_url, "--trials", "14"]) == 0
    again = load(postgres_url).get_trials()
    assert len(again) == 14 and [(t.params, t.value) for t in again[:12]] == [(t.params, t.value) for t in trials]
    assert {t.state for t in again} == {TrialState.COMPLETE} and (out / "trial_13" / "metrics.json").is_file()


def test_a_killed_workers_trial_is_retried_by_another(
    tiny: list[str],
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "search"
    args = [*DLZOO, "tune", *tiny, "--storage", postgres_url, "--out", str(out), "--trials", "3", "--heartbeat", "1"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    first = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while not (out / "trial_0" / "trial.json").is_file() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    # trial.json is written as the trial starts, before its data is even loaded: the worker dies mid-trial, and
    # no handler runs on SIGKILL, so only its missing heartbeat tells the study.
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert load(postgres_url).get_trials()[0].state == TrialState.RUNNING
    monkeypatch.chdir(tmp_path)  # the second worker in-process: it claims the two new trials, then waits for
    assert main(args[len(DLZOO) :]) == 0  # trial 0's heartbeat to go stale and runs its retry
    stdout = capsys.readouterr().out

    trials = load(postgres_url).get_trials()
    assert trials[0].state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.params == trials[0].params and retry.state == TrialState.COMPLETE
    assert len(trials) == 4 and sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert status(out, 0)["state"] == "interrupted" and f"trial {retry.number} runs" in status(out, 0)["error"]
    assert status(out, retry.number)["state"] == "complete"
    assert "retried" in stdout  # the table says which trial was replaced


def test_sqlite_refuses_several_workers_and_names_the_fix(
    tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tune", *tiny, "--workers", "2", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "--storage postgresql://" in err and "Traceback" not in err and not (tmp_path / "s").exists()
    assert main(["tune", *tiny, "--storage", "postgresql+psycopg2://nobody@/nowhere?host=/nonexistent"]) == 2
    assert "Cannot open the study database" in capsys.readouterr().err


def test_a_chain_of_retries_takes_one_place_in_the_budget() -> None:
    """Trial 1 reran trial 0 after a Ctrl-C; trial 2 reran trial 1 after its worker died (Optuna's retry copies
    trial 1's user attrs, so its `retry_of` still says 0): only trial 2 counts, and trial 1 is its parent."""
    study = optuna.create_study()
    fail, done = TrialState.FAIL, TrialState.COMPLETE
    study.add_trial(optuna.trial.create_trial(state=fail))
    study.add_trial(optuna.trial.create_trial(state=fail, user_attrs={"retry_of": 0}))
    study.add_trial(optuna.trial.create_trial(state=done, value=0.5, user_attrs={"retry_of": 0},
                                              system_attrs={"failed_trial": 1, "retry_history": [1]}))  # fmt: skip
    study.add_trial(optuna.trial.create_trial(state=done, value=0.6))
    trials = study.get_trials()
    assert [retry_of(t) for t in trials] == [None, 0, 1, None]
    assert [t.number for t in counted(trials)] == [2, 3] and finished(trials) == 2
