"""`dlzoo compare`: the statistics pinned against scipy on fixed inputs, their edge cases (n = 1, identical values,
unequal n, a NaN run), properties over random seeds' results, and the grouping, verdicts and files on run folders
made here (configs composed for real, metrics written by the test)."""

from __future__ import annotations

import csv
import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf
from scipy import stats

from dlzoo.cli import main
from dlzoo.config.compose import compose_config
from dlzoo.errors import DlzooError
from dlzoo.sweeps.compare import compare
from dlzoo.sweeps.compare.stats import contrast, summarize

# Test accuracies of five seeds each: lab 10-2 (N(0,1) init) and lab 10-3 (Xavier), shaped like the ladder's.
NORMAL = [0.9463, 0.9431, 0.9494, 0.9452, 0.9475]
XAVIER = [0.9781, 0.9759, 0.9808, 0.9770, 0.9787]


def test_summary_is_scipys_t_interval() -> None:
    s = summarize(NORMAL)
    low, high = stats.t.interval(0.95, len(NORMAL) - 1, loc=np.mean(NORMAL), scale=stats.sem(NORMAL))
    assert (s.n, s.mean, s.std) == (5, pytest.approx(np.mean(NORMAL)), pytest.approx(np.std(NORMAL, ddof=1)))
    assert (s.low, s.high) == (pytest.approx(low), pytest.approx(high))


def test_contrast_is_welch_bootstrap_and_pairwise_improvement() -> None:
    c = contrast(NORMAL, XAVIER)
    assert c.diff == pytest.approx(np.mean(XAVIER) - np.mean(NORMAL))
    assert c.p == pytest.approx(stats.ttest_ind(XAVIER, NORMAL, equal_var=False).pvalue)
    assert c.p_improve == 1.0 and c.beyond_noise  # every Xavier seed beats every N(0,1) seed
    boot = stats.bootstrap((np.array(NORMAL), np.array(XAVIER)), lambda a, b, axis=-1: b.mean(axis) - a.mean(axis),
                           n_resamples=10_000, rng=np.random.default_rng(0))  # fmt: skip
    assert (c.low, c.high) == (
        pytest.approx(boot.confidence_interval.low),
        pytest.approx(boot.confidence_interval.high),
    )
    assert c.low < c.diff < c.high and c.low > 0


def test_probability_of_improvement_counts_pairs_with_ties_half() -> None:
    a, b = [0.1, 0.2, 0.3], [0.2, 0.4]
    pairs = [1.0 if y > x else 0.5 if y == x else 0.0 for x in a for y in b]
    assert contrast(a, b).p_improve == pytest.approx(sum(pairs) / len(pairs))
    # For a loss, lower is better: the same numbers read the other way.
    assert contrast(a, b, higher_is_better=False).p_improve == pytest.approx(1 - sum(pairs) / len(pairs))


def test_a_difference_within_seed_noise_is_called_so() -> None:
    deep = [0.9766, 0.9740, 0.9805, 0.9751, 0.9768]  # 10-4 against 10-3: the lecture's "no better" step
    c = contrast(XAVIER, deep)
    assert not c.beyond_noise and c.p > 0.05 and c.low < 0 < c.high


def test_edge_cases_n1_identical_and_unequal_n() -> None:
    one = summarize([0.5])
    assert one.n == 1 and one.low is None and one.std is None
    c = contrast([0.5], [0.9, 0.8])
    assert c.low is None and c.p is None and not c.beyond_noise and "n = 1" in c.note
    same = contrast([0.5, 0.5, 0.5], [1.0, 1.0])  # XOR: sigmoid stuck on every seed, ReLU solves every seed
    assert same.p is None and same.beyond_noise and same.low == same.high == 0.5 and same.note == "no seed variation"
    assert not contrast([0.7, 0.7], [0.7, 0.7, 0.7]).beyond_noise
    assert summarize([0.3, 0.3]).low == 0.3  # zero spread: a zero-width interval, not NaN
    uneven = contrast(NORMAL, XAVIER[:3])
    assert (uneven.n_a, uneven.n_b) == (5, 3)
    assert uneven.p == pytest.approx(stats.ttest_ind(XAVIER[:3], NORMAL, equal_var=False).pvalue)


seeds_results = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=2, max_size=8)


@settings(max_examples=40, deadline=None)
@given(seeds_results, seeds_results)
def test_contrast_properties(a: list[float], b: list[float]) -> None:
    c, back = contrast(a, b), contrast(b, a)
    assert c.diff == pytest.approx(-back.diff, abs=1e-12)
    assert 0.0 <= c.p_improve <= 1.0 and c.p_improve == pytest.approx(1.0 - back.p_improve)
    if c.p is not None:
        assert 0.0 <= c.p <= 1.0 and c.p == pytest.approx(back.p)
        if c.beyond_noise:
            assert c.low is not None and c.high is not None and not c.low <= 0.0 <= c.high
    if c.low is not None and c.high is not None and not math.isnan(c.low):
        assert c.low <= c.high


@functools.lru_cache
def _composed(overrides: tuple[str, ...]) -> DictConfig:
    return compose_config(list(overrides))


def fake_run(folder: Path, overrides: list[str], metrics: dict[str, object] | None) -> Path:
    """A run folder as `dlzoo train` leaves it: .hydra/ (config composed for real, overrides, choices) and
    metrics.json (None: a run that failed)."""
    cfg = _composed(tuple(o for o in overrides if not o.startswith("trainer.seed=")))
    seeds = [int(o.split("=")[1]) for o in overrides if o.startswith("trainer.seed=")]
    cfg = OmegaConf.merge(cfg, {"trainer": {"seed": seeds[0]}}) if seeds else cfg
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    picked = dict(o.split("=", 1) for o in overrides if "." not in o.split("=", 1)[0])
    choices = {"model": picked.get("model", "mlp"), "experiment": picked.get("experiment")}
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), folder / ".hydra" / "hydra.yaml")
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep of model.init normal vs xavier_uniform, five seeds each, plus one xavier seed that diverged (NaN)."""
    root = tmp_path_factory.mktemp("sweep")
    job = 0
    for init, accs in (("normal", NORMAL), ("xavier_uniform", XAVIER)):
        for seed, acc in enumerate(accs, 1):
            metrics = {"test_acc": acc, "test_loss": 1.0 - acc, "val_acc": acc}
            fake_run(root / f"{job}_mlp", ["model=mlp", f"model.init={init}", f"trainer.seed={seed}"], metrics)
            job += 1
    fake_run(root / f"{job}_mlp", ["model=mlp", "model.init=xavier_uniform", "trainer.seed=6"],
             {"test_acc": float("nan"), "test_loss": float("nan")})  # fmt: skip
    return root


def test_compare_groups_by_what_differs_and_writes_its_files(sweep: Path, tmp_path: Path) -> None:
    result = compare([sweep], out=tmp_path / "cmp")
    c = result.comparison
    assert c.keys == ["model.init"] and [a.label for a in c.arms] == ["normal", "xavier_uniform"]
    assert c.baseline.label == "normal" and c.arms[1].seeds() == [1, 2, 3, 4, 5]
    # The NaN run is not counted, and is reported with its folder.
    assert [(arm.label, Path(folder).name, why) for arm, folder, why in c.excluded] == [
        ("xavier_uniform", "10_mlp", "test_acc is nan")
    ]
    verdict = c.verdict(c.arms[1])
    points = 100 * (np.mean(XAVIER) - np.mean(NORMAL))
    assert verdict.startswith(f"xavier_uniform beats normal by {points:+.2f} points [")
    assert verdict.endswith("p < 0.001, n = 5 vs 5")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert verdict in md and "Runs not counted (1)" in md and "10_mlp" in md
    rows = list(csv.DictReader((tmp_path / "cmp" / "compare.csv").open()))
    assert rows[1]["group"] == "xavier_uniform" and rows[1]["excluded"] == "1"
    assert float(rows[1]["p_welch"]) == pytest.approx(stats.ttest_ind(XAVIER, NORMAL, equal_var=False).pvalue)
    assert float(rows[0]["test_acc_mean"]) == pytest.approx(np.mean(NORMAL)) and rows[0]["diff"] == ""
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert any((result.tensorboard).glob("events.out.tfevents.*"))


def test_compare_by_baseline_and_metric_choices(sweep: Path, tmp_path: Path) -> None:
    loss = compare([sweep], baseline="xavier_uniform", metric="test_loss", out=tmp_path / "a", figures=False).comparison
    assert loss.baseline.label == "xavier_uniform" and not loss.higher_is_better
    assert loss.verdict(loss.arms[0]).startswith("normal is worse than xavier_uniform by +")
    with pytest.raises(DlzooError, match="Did you mean --baseline 'xavier_uniform'"):
        compare([sweep], baseline="xavier_unifrom", out=tmp_path / "b", figures=False)
    with pytest.raises(DlzooError, match=r"Did you mean 'model\.init'"):
        compare([sweep], by=["model.inti"], out=tmp_path / "c", figures=False)
    with pytest.raises(DlzooError, match=r"Did you mean --metric val_acc\? Choices: test_acc, test_loss, val_acc"):
        compare([sweep], metric="val_ac", out=tmp_path / "d", figures=False)


def test_chain_compares_each_group_with_the_one_before(tmp_path: Path) -> None:
    """A ladder's steps: 10-2 -> 10-3 -> 10-4, each against the rung above, not all against the first."""
    deep = [0.9766, 0.9740, 0.9805, 0.9751, 0.9768]
    for rung, accs in (("lab10_2_mlp", NORMAL), ("lab10_3_xavier", XAVIER), ("lab10_4_deep", deep)):
        for seed, acc in enumerate(accs, 1):
            fake_run(tmp_path / rung / f"seed{seed}", [f"experiment={rung}", f"trainer.seed={seed}"], {"test_acc": acc})
    c = compare([tmp_path], chain=True, out=tmp_path / "out", figures=False).comparison
    assert [a.label for a in c.arms] == ["lab10_2_mlp", "lab10_3_xavier", "lab10_4_deep"]
    assert [getattr(c.reference(a), "label", None) for a in c.arms] == [None, "lab10_2_mlp", "lab10_3_xavier"]
    assert c.verdict(c.arms[1]).startswith("lab10_3_xavier beats lab10_2_mlp by +3.")
    assert c.verdict(c.arms[2]).endswith("within seed noise")
    assert c.contrasts["lab10_4_deep"].p == pytest.approx(stats.ttest_ind(deep, XAVIER, equal_var=False).pvalue)
    assert main(["compare", str(tmp_path), "--chain", "--baseline", "lab10_2_mlp"]) == 2


def test_compare_reads_globs_and_separate_folders(sweep: Path, tmp_path: Path) -> None:
    c = compare(
        [str(sweep / "[0-4]_mlp"), sweep / "5_mlp", sweep / "6_mlp"], out=tmp_path / "g", figures=False
    ).comparison
    assert [(a.label, len(a.runs)) for a in c.arms] == [("normal", 5), ("xavier_uniform", 2)]
    with pytest.raises(DlzooError, match="No folder matches"):
        compare([str(tmp_path / "nothing*")])


def test_one_seed_per_group_says_there_is_no_test(tmp_path: Path) -> None:
    fake_run(tmp_path / "a", ["model=mlp", "model.dropout=0.0"], {"test_acc": 0.97})
    fake_run(tmp_path / "b", ["model=mlp", "model.dropout=0.3"], {"test_acc": 0.98})
    c = compare([tmp_path / "a", tmp_path / "b"], out=tmp_path / "out", figures=False).comparison
    assert c.verdict(c.arms[1]) == "0.3 vs 0.0: +1.00 points, n = 1 vs 1: one run on a side, no test (train more seeds)"


def test_the_cli_prints_verdicts_and_fails_cleanly(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", str(sweep), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "xavier_uniform beats normal by" in out and "runs not counted (1; their whole errors: compare.md)" in out
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert "No folder" in capsys.readouterr().err


def test_the_python_api_returns_the_comparison(sweep: Path, tmp_path: Path) -> None:
    import dlzoo

    result = dlzoo.compare(sweep, out=tmp_path / "api")
    assert result.comparison.baseline.label == "normal" and result.out == tmp_path / "api"
    table = result.table()
    assert list(table["group"]) == ["normal", "xavier_uniform"] and bool(table["beyond_noise"][1])
