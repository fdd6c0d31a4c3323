"""`dlzoo tune --seeds K`: the trial's score over its seeds (mean, or the lower 95% t-bound), every seed's score on
the trial, and pruning that works for every kind of run a trial can be: single, stacked seeds, seeds one after
another, and ensembles stacked or not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from hypothesis import given
from hypothesis import strategies as st
from optuna.trial import TrialState
from scipy import stats

from dlzoo.cli import main
from dlzoo.errors import DlzooError
from dlzoo.sweeps.compare.stats import summarize
from dlzoo.sweeps.tune.trial import score

# Random sampler seed 0 draws lr 1e-7, 0.1, 1e-7: the first trial sets the bar, the second beats it, the third
# (as hopeless as the first) falls below the median of the two at its first epoch and is pruned there.
PRUNE = """\
metric: val_acc
direction: maximize
n_trials: 3
sampler: {name: random, seed: 0}
pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}
overrides: [data=fashion_mnist, model=mlp_xavier, "model.hidden=[16]", data.train_subset=200, data.val_size=100,
            data.test_subset=100, trainer.epochs=2, trainer.batch_size=50, trainer.layer_stats=false,
            trainer.progress=false, trainer.figures=false, trainer.threads=1]
space:
  optim.lr: {type: categorical, choices: [0.1, 1.0e-7]}
"""


def test_lcb_is_the_end_of_the_interval_compare_reports() -> None:
    for values in ([0.80, 0.82, 0.84], [0.97, 0.975, 0.968, 0.981, 0.977], [0.1 * i for i in range(40)]):
        n = len(values)
        mean, sem = sum(values) / n, stats.sem(values)
        low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=sem)
        assert score(values, "lcb", "maximize") == pytest.approx(low, abs=1e-12)
        assert score(values, "lcb", "minimize") == pytest.approx(high, abs=1e-12)
        assert (low, high) == pytest.approx((summarize(values).low, summarize(values).high), abs=1e-12)


def test_lcb_of_three_seeds_by_hand() -> None:
    # mean 0.82, sample std 0.02: half-width t(0.975, 2 df) = 4.303 (any statistics table) * 0.02 / sqrt(3)
    half = 4.303 * 0.02 / math.sqrt(3)
    assert score([0.80, 0.82, 0.84], "lcb", "maximize") == pytest.approx(0.82 - half, abs=1e-5)
    assert score([0.80, 0.82, 0.84], "lcb", "minimize") == pytest.approx(0.82 + half, abs=1e-5)
    assert score([0.80, 0.82, 0.84], "mean", "maximize") == pytest.approx(0.82)
    with pytest.raises(DlzooError, match="at least two seeds"):
        score([0.8], "lcb", "maximize")


@given(st.lists(st.floats(0, 1), min_size=2, max_size=12))
def test_lcb_is_the_pessimistic_side_of_the_mean(values: list[float]) -> None:
    mean = sum(values) / len(values)
    assert score(values, "lcb", "maximize") <= mean + 1e-12 <= score(values, "lcb", "minimize") + 2e-12
    # the same spread over more seeds is a narrower bound
    assert score(values * 2, "lcb", "maximize") >= score(values, "lcb", "maximize") - 1e-12


def test_lcb_needs_several_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "search=smoke", "--objective", "lcb", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "--objective lcb needs --seeds 2 or more" in err and not (tmp_path / "s").exists()
    assert main(["tune", "search=smoke", "--seeds", "2", "ensemble.size=2", "--out", str(tmp_path / "s")]) == 2
    assert "seeds x members" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kind", "args", "seeds"),
    [
        # the two kinds whose path the faster cases already take (test_tune.py prunes single runs too)
        pytest.param("single", [], 1, marks=pytest.mark.slow),
        pytest.param("trainer.stack", ["trainer.stack=2"], 2, marks=pytest.mark.slow),
        ("--seeds stacked, lcb", ["--seeds", "2", "--objective", "lcb"], 2),
        ("--seeds one after another", ["--seeds", "2", "sched=plateau"], 2),  # a plateau schedule cannot stack
        ("ensemble", ["ensemble.size=2", "ensemble.stack=off"], 1),
        ("stacked ensemble", ["ensemble.size=2", "ensemble.stack=on"], 1),
    ],
)
def test_every_kind_of_trial_is_pruned_on_its_seeds_mean(
    kind: str, args: list[str], seeds: int, fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf" / "search").mkdir(parents=True)
    (tmp_path / "conf" / "search" / "prune.yaml").write_text(PRUNE)
    out = tmp_path / "s"
    argv = ["tune", "search=prune", "--config-dir", str(tmp_path / "conf"), f"data.root={fmnist_slice}", *args]
    assert main([*argv, "--out", str(out)]) == 0
    table = capsys.readouterr().out

    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    trials = optuna.load_study(study_name="prune", storage=storage).get_trials()
    assert [t.params["optim.lr"] for t in trials] == [1e-7, 0.1, 1e-7]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED], kind
    assert list(trials[2].intermediate_values) == [1]  # stopped at its first epoch
    # Models trained one after another report on: model i's epoch e is step 2i + e.
    sequential = kind in ("--seeds one after another", "ensemble")
    assert len(trials[1].intermediate_values) == (4 if sequential else 2)
    info = json.loads((out / "trial_1" / "trial.json").read_text())
    assert info["values"] == list(trials[1].intermediate_values.values())
    scores = trials[1].user_attrs["seed_scores"]
    assert len(scores) == seeds and all(0.1 < s <= 1 for s in scores)
    if seeds > 1:
        assert "val_acc per seed" in table and f"{scores[0]:.4f} {scores[1]:.4f}" in table
        objective = "lcb" if "lcb" in kind else "mean"
        assert trials[1].value == pytest.approx(score(scores, objective, "maximize"))
        assert info["seeds_trained"] == ("one after another" if sequential else "stacked")
    if kind == "--seeds one after another":
        # each seed a normal run of its own (trainer.seed 777, 778), whose score the trial keeps
        runs = [json.loads((out / "trial_1" / f"seed{s}" / "metrics.json").read_text()) for s in (777, 778)]
        assert [r["val_acc"] for r in runs] == pytest.approx(scores) and [r["seed"] for r in runs] == [777, 778]
