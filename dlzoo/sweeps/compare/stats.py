"""The statistics of a comparison over seeds, all from scipy.stats: a group's mean with its t confidence interval,
and for two groups the difference of means with a bootstrap interval, Welch's t-test and the probability of
improvement. Pure functions of lists of floats; nothing here reads a run."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95  # every interval here is a 95% one
ALPHA = 0.05  # a difference is beyond seed noise when p < ALPHA and its interval excludes 0
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # the interval of the same numbers is the same on every run of `dlzoo compare`


@dataclass(frozen=True)
class Summary:
    """One group's values: n, mean, sample std and the 95% t interval of the mean (None where n < 2)."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Contrast:
    """Group b against group a (b - a), with `better` telling which sign is an improvement.

    diff: mean(b) - mean(a). low/high: the 95% bootstrap interval of that difference (None where a group has one
    value). p: Welch's two-sided t-test (None where it is undefined: n < 2, or no variation in either group).
    p_improve: P(a random seed of b is better than one of a), ties counting half (Mann-Whitney's U / (n_a n_b),
    the "probability of improvement" of Agarwal et al. 2021). beyond_noise: p < 0.05 and the interval excludes 0,
    or, with no seed variation at all, the two groups simply differ.
    """

    n_a: int
    n_b: int
    diff: float
    low: float | None
    high: float | None
    p: float | None
    p_improve: float
    beyond_noise: bool
    note: str = ""


def summarize(values: list[float]) -> Summary:
    """Mean, sample std and the 95% t interval of the mean; n = 1 gives no std and no interval."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("summarize needs at least one value")
    mean = float(x.mean())
    if len(x) < 2:
        return Summary(1, mean, None, None, None)
    std = float(x.std(ddof=1))
    if std == 0.0:
        return Summary(len(x), mean, 0.0, mean, mean)
    low, high = stats.t.interval(LEVEL, len(x) - 1, loc=mean, scale=stats.sem(x))
    return Summary(len(x), mean, std, float(low), float(high))


def contrast(a: list[float], b: list[float], higher_is_better: bool = True) -> Contrast:
    """b against a over their seeds (see Contrast); `higher_is_better` is False for losses."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(xa) == 0 or len(xb) == 0:
        raise ValueError("contrast needs at least one value in each group")
    diff = float(xb.mean() - xa.mean())
    sign = 1.0 if higher_is_better else -1.0
    p_improve = _probability_of_improvement(sign * xa, sign * xb)
    if len(xa) < 2 or len(xb) < 2:
        return Contrast(len(xa), len(xb), diff, None, None, None, p_improve, False, "n = 1: no interval, no test")
    if xa.std() == 0.0 and xb.std() == 0.0:
        # Every seed gave the same value in each group: there is no noise to test against, only the difference.
        return Contrast(len(xa), len(xb), diff, diff, diff, None, p_improve, diff != 0.0, "no seed variation")
    with warnings.catch_warnings():
        # Near-identical seeds trip scipy's precision warning; the p-value it returns is still the right one.
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(xb, xa, equal_var=False).pvalue)
    low, high = _bootstrap_interval(xa, xb)
    beyond = p < ALPHA and (low > 0.0 or high < 0.0)
    return Contrast(len(xa), len(xb), diff, low, high, p, p_improve, beyond)


def _probability_of_improvement(a: np.ndarray, b: np.ndarray) -> float:
    """P(b > a) over all pairs, ties half: Mann-Whitney's U statistic of b over n_a n_b."""
    return float(stats.mannwhitneyu(b, a, alternative="two-sided").statistic / (len(a) * len(b)))


def _bootstrap_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The 95% interval of mean(b) - mean(a), resampling each group's seeds on their own (BCa; the percentile
    interval where BCa is undefined, as when a resampled group has no spread)."""

    def difference(xa: np.ndarray, xb: np.ndarray, axis: int = -1) -> np.ndarray:
        return xb.mean(axis=axis) - xa.mean(axis=axis)

    for method in ("BCa", "percentile"):
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a degenerate BCa is detected below and falls back to percentile
            result = stats.bootstrap(
                (a, b), difference, n_resamples=RESAMPLES, confidence_level=LEVEL, method=method,
                rng=np.random.default_rng(BOOTSTRAP_SEED),
            )  # fmt: skip
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high
    return float("nan"), float("nan")
