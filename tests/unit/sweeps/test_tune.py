"""`dlzoo tune` end to end on a real Fashion-MNIST slice: pruning, the SQLite study, best.yaml that really trains,
resuming after an interruption (a trial left RUNNING, a Ctrl-C), and bad search files refused before any trial."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import torch
from omegaconf import OmegaConf

from dlzoo.cli import compose_and_validate, config_groups, main
from dlzoo.errors import DlzooError
from dlzoo.sweeps.tune.search import check_search, override_value
from tests.helpers import DLZOO, dlzoo

FAST = ["trainer.threads=1"]  # conf/search/smoke.yaml already makes each trial a 1,000-image, 4-epoch run


def study_in(out: Path) -> optuna.Study:
    """The one study of a search folder's SQLite file (named after the search)."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def trials_in(out: Path) -> list[optuna.trial.FrozenTrial]:
    return study_in(out).get_trials()


def status(out: Path, number: int) -> dict:
    return json.loads((out / f"trial_{number}" / "trial.json").read_text())


def test_search_prunes_bad_trials_and_best_yaml_reproduces_the_best(fmnist_slice: Path, tmp_path: Path) -> None:
    out = tmp_path / "search"
    proc = dlzoo("tune", "search=smoke", f"data.root={fmnist_slice}", *FAST, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "val_acc per trial" in proc.stdout and "best: trial" in proc.stdout

    trials = trials_in(out)
    states = [t.state for t in trials]
    assert len(trials) == 6 and optuna.trial.TrialState.PRUNED in states, states
    for t in trials:
        info = status(out, t.number)
        assert info["state"] == t.state.name.lower() and info["epochs"] == len(t.intermediate_values)
        last = torch.load(out / f"trial_{t.number}" / "checkpoints" / "last.pt", weights_only=False)
        assert last["epoch"] == info["epochs"]  # each trial is a normal run: its checkpoint stops where it did
        if t.state == optuna.trial.TrialState.PRUNED:
            assert info["epochs"] < 4 and not (out / f"trial_{t.number}" / "metrics.json").exists()
        else:
            assert info["epochs"] == 4 and (out / f"trial_{t.number}" / "metrics.json").is_file()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    assert best.value > 0.5  # the good learning rates reach well past chance (0.1) on 40 steps

    # best.yaml trains as it stands, and the same seed gives back the best trial's validation accuracy.
    run_dir = tmp_path / "best_run"
    proc = dlzoo("train", "--config-dir", str(out), "--config-name", "best", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["val_acc"] == pytest.approx(best.value)


def test_resume_keeps_finished_trials_and_reruns_an_interrupted_one(
    fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # in-process (the CLI path is covered above): saves an interpreter start per call
    out = tmp_path / "search"
    args = ["search=smoke", f"data.root={fmnist_slice}", "trainer.epochs=2", *FAST, "--out", str(out)]
    assert main(["tune", *args, "--trials", "3"]) == 0
    before = {t.number: (t.state, t.params, t.value) for t in trials_in(out)}
    assert len(before) == 3
    # A search killed mid-trial leaves that trial RUNNING in the database.
    killed = study_in(out).ask()
    killed.suggest_float("optim.lr", 1e-6, 1e-1, log=True)
    killed.suggest_categorical("model.activation", ["relu", "tanh"])

    assert main(["tune", "--resume", "--out", str(out), "--trials", "5"]) == 0  # reuses the saved arguments
    trials = trials_in(out)
    assert {t.number: (t.state, t.params, t.value) for t in trials[:3]} == before
    assert trials[3].state == optuna.trial.TrialState.FAIL
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 3)
    assert retry.params == trials[3].params and retry.state.is_finished()
    counted = [t for t in trials if t.state.is_finished() and t.number != 3]
    assert len(counted) == 5 and len(trials) == 6
    assert "trial 3 was interrupted" in capsys.readouterr().out

    assert main(["tune", "search=smoke", "--out", str(out)]) == 2
    assert "--resume to continue it" in capsys.readouterr().err
    assert main(["tune", *args, "trainer.epochs=3", "--resume"]) == 2
    assert "differs from this one in: overrides" in capsys.readouterr().err


def test_ctrl_c_stops_cleanly_and_the_search_resumes(
    fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "search"
    cmd = [*DLZOO, "tune", "search=smoke", f"data.root={fmnist_slice}", "trainer.epochs=12", *FAST, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "trial_0" / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert "Traceback" not in stderr and "--resume --out" in stderr
    assert status(out, 0)["state"] == "interrupted"
    assert {t.state for t in trials_in(out)} <= {optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING}

    monkeypatch.chdir(tmp_path)
    assert main(["tune", "--resume", "--out", str(out), "--trials", "1"]) == 0
    trials = trials_in(out)
    assert trials[-1].user_attrs["retry_of"] == 0 and trials[-1].params == trials[0].params


BAD_SEARCH = """\
metric: val_acc
pruner: {name: hyperband}
overrides: [data=fashion_mnist]
space:
  optim.lr: {type: uniform, low: 1.0e-4, high: 1.0e-1}
  model.dropout: {type: float, low: 0.5, high: 0.1}
  optim.lrr: {type: float, low: 0.1, high: 0.2}
"""


def test_a_bad_search_file_fails_before_any_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "conf" / "search").mkdir(parents=True)
    (tmp_path / "conf" / "search" / "bad.yaml").write_text(BAD_SEARCH)
    out = tmp_path / "search"
    assert main(["tune", "search=bad", "--config-dir", str(tmp_path / "conf"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    for words in ("Unknown pruner 'hyperband'", "Unknown distribution 'uniform'", "low=0.5 must be below high=0.1",
                  "'optim.lrr', which is neither a config key"):  # fmt: skip
        assert words in err, words
    assert "Traceback" not in err and not out.exists()
    assert (
        main(["tune", "data=fashion_mnist"]) == 2
        and "search=<name>; choices: mlp_lr_dropout" in capsys.readouterr().err
    )
    assert main(["tune", "search=smoke", "optim.lr=0.1"]) == 2
    assert "optim.lr is searched by search=smoke" in capsys.readouterr().err
    assert main(["tune", "search=smoke", "--trials", "0"]) == 2 and "at least one trial" in capsys.readouterr().err
    assert main(["tune", "--resume", "--out", str(out)]) == 2 and "No search to resume" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "study.db").write_text("not a database")
    assert main(["tune", "--resume", "--out", str(tmp_path / "junk")]) == 2
    assert "Cannot read the search" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "space", "message"),
    [
        ("search.metric=test_acc", {}, "kept for the final report"),
        ("search.direction=minimize", {}, "would pick the worst trials"),
        ("search.sampler.name=grid", {}, "Unknown sampler 'grid'"),
        ("search.pruner.reduction_factor=1", {}, "reduction_factor >= 2"),
        (None, {"model": {"type": "categorical", "choices": ["mlp", "mlpp"]}}, "no model config named mlpp"),
        (None, {"model": {"type": "float", "low": 0, "high": 1}}, "must be type: categorical"),
        (None, {"trainer.epochs": {"type": "int", "low": 1, "high": 4.5}}, "whole-number"),
        (None, {"optim.eps": {"type": "float", "low": 0, "high": 1, "log": True}}, "log sampling needs low > 0"),
        (None, {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}}, "cannot be"),
        (None, {"model.norm": {"type": "categorical"}}, "non-empty choices"),
        (None, {"model.norm": {"type": "categorical", "choices": ["batch"], "low": 1}}, "not used by type"),
    ],
)
def test_check_search_names_each_problem(override: str | None, space: dict, message: str) -> None:
    search = compose_and_validate(["search=smoke", *([override] if override else [])]).search
    OmegaConf.set_struct(search, False)  # new keys in search.space, as a search file would have them
    search = OmegaConf.merge(search, {"space": space})
    with pytest.raises(DlzooError, match="Invalid search") as e:
        check_search(search, compose_and_validate(list(search.overrides)), config_groups())
    assert message in str(e.value)


def test_the_shipped_searches_are_valid() -> None:
    for name in config_groups()["search"]:
        search = compose_and_validate([f"search={name}"]).search
        check_search(search, compose_and_validate(list(search.overrides)), config_groups())


def test_drawn_values_survive_the_trip_through_override_syntax() -> None:
    values = {"optim.lr": 1.2345678901234567e-05, "model.hidden": [64, 32], "model.activation": "tanh",
              "trainer.max_steps": None, "data.download": False, "model.dropout": 0.25}  # fmt: skip
    cfg = compose_and_validate([f"{k}={override_value(v)}" for k, v in values.items()])
    for key, value in values.items():
        got = OmegaConf.select(cfg, key)
        assert (OmegaConf.to_container(got) if OmegaConf.is_config(got) else got) == value, key


DIVERGING_SEARCH = """\
n_trials: 3
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
overrides: [data=fashion_mnist, model=mlp_xavier, "model.hidden=[16]", data.train_subset=200, data.val_size=100,
            trainer.epochs=1, trainer.log_every_n_steps=1, trainer.layer_stats=false, trainer.progress=false]
space:
  trainer.max_loss: {{type: categorical, choices: {choices}}}  # 0.5 is below the first loss (~2.3): diverged
"""


def test_a_diverged_trial_fails_and_the_search_goes_on_unless_every_trial_fails_alike(
    fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf" / "search").mkdir(parents=True)
    (tmp_path / "conf" / "search" / "mixed.yaml").write_text(DIVERGING_SEARCH.format(choices="[0.5, 100.0]"))
    (tmp_path / "conf" / "search" / "doomed.yaml").write_text(DIVERGING_SEARCH.format(choices="[0.5]"))
    common = ["--config-dir", str(tmp_path / "conf"), f"data.root={fmnist_slice}", *FAST]

    assert main(["tune", "search=mixed", *common, "--out", "mixed"]) == 0
    trials = trials_in(tmp_path / "mixed")
    assert {t.state for t in trials} == {optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE}
    failed = next(t for t in trials if t.state == optuna.trial.TrialState.FAIL)
    assert status(tmp_path / "mixed", failed.number)["state"] == "failed"
    assert "Training diverged" in status(tmp_path / "mixed", failed.number)["error"]
    assert len(trials) == 3 and (tmp_path / "mixed" / "best.yaml").is_file()

    assert main(["tune", "search=doomed", *common, "--out", "doomed"]) == 2
    assert "3 trials in a row failed the same way" in capsys.readouterr().err
    assert len(trials_in(tmp_path / "doomed")) == 3


@pytest.mark.parametrize("content", ["other program", "not a database"])
def test_a_foreign_study_db_is_left_untouched(content: str, tmp_path: Path) -> None:
    """`--resume --out` a folder whose study.db is another program's SQLite database, or no database: refused from
    a read-only look, the file byte for byte as it was (Optuna would add its tables to it)."""
    import sqlite3

    from dlzoo.sweeps.tune.study import open_storage, sqlite_url

    path = tmp_path / "study.db"
    if content == "other program":
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE invoices (id INTEGER)")
            db.commit()
    else:
        path.write_bytes(b"just some bytes, not SQLite at all" * 40)
    before = path.read_bytes()
    with pytest.raises(DlzooError, match="not an Optuna study; dlzoo tune would add its own tables"):
        open_storage(sqlite_url(tmp_path))
    assert path.read_bytes() == before
