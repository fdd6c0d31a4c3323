"""A comparison computed once: each arm's summary, each arm against the baseline, and the plain verdicts; and the
same as rows for the terminal, compare.md and compare.csv."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from dlzoo.sweeps.compare.arms import Arm
from dlzoo.sweeps.compare.stats import ALPHA, LEVEL, Contrast, Summary, contrast, summarize
from dlzoo.sweeps.report import markdown

SHOWN = ("test_acc", "test_loss")  # summarized for every arm; the compared metric is added when it is another


@dataclass
class Comparison:
    """Arms (in the order their runs came), the baseline among them, the metric the verdicts are about, and what
    was computed from them."""

    metric: str
    keys: list[str]
    arms: list[Arm]
    baseline: Arm
    chain: bool = False  # each group against the one before it (a ladder's steps), not all against the baseline

    def __post_init__(self) -> None:
        self.higher_is_better = not self.metric.endswith("loss")
        self.summaries = {(a.label, m): summarize(v) for a in self.arms for m in self.metrics if (v := a.values(m))}
        self.contrasts: dict[str, Contrast] = {}
        for arm in self.arms:
            ref = self.reference(arm)
            if ref is not None and arm.values(self.metric) and ref.values(self.metric):
                self.contrasts[arm.label] = contrast(ref.values(self.metric), arm.values(self.metric),
                                                     self.higher_is_better)  # fmt: skip

    def reference(self, arm: Arm) -> Arm | None:
        """What `arm` is compared with: the baseline, or with `chain` the nearest group before it with runs."""
        if not self.chain:
            return None if arm is self.baseline else self.baseline
        before = [a for a in self.arms[: self.arms.index(arm)] if a.runs]
        return before[-1] if before else None

    @property
    def metrics(self) -> list[str]:
        return [*SHOWN, *([self.metric] if self.metric not in SHOWN else [])]

    @property
    def excluded(self) -> list[tuple[Arm, str, str]]:
        """(arm, run folder, why) for every run that does not count."""
        return [(a, str(r.folder), why) for a in self.arms for r, why in a.excluded]

    def summary(self, arm: Arm, metric: str) -> Summary | None:
        return self.summaries.get((arm.label, metric))

    def verdict(self, arm: Arm) -> str:
        """One plain sentence: arm against what it is compared with, on the compared metric."""
        c = self.contrasts.get(arm.label)
        if c is None:
            return ""
        ref = self.reference(arm)
        a, b = ref.label if ref else "", arm.label
        amount = f"{difference(self.metric, c.diff)} {interval(self.metric, c)}".rstrip()
        evidence = f"{p_text(c)}n = {c.n_b} vs {c.n_a}"
        if c.note.startswith("n = 1"):
            where = {1.0: "above every seed of", 0.0: "below every seed of"}.get(c.p_improve, "among the seeds of")
            place = f"{b} lies {where} {a} (P(better) {c.p_improve:.2f}); " if c.n_b == 1 and c.n_a > 1 else ""
            return f"{b} vs {a}: {amount}, {evidence}: {place}one run on a side, no test (train more seeds)"
        if not c.beyond_noise:
            return f"{b} vs {a}: {amount}, {evidence}: within seed noise"
        better = (c.diff > 0) == self.higher_is_better
        return f"{b} {'beats' if better else 'is worse than'} {a} by {amount}, {evidence}"

    def header(self) -> list[str]:
        what = " · ".join(self.keys) or "group"
        cells = [f"{m} [95% CI]" for m in self.metrics]
        against = "the group above" if self.chain else self.baseline.label
        return [what, "n", "seeds", *cells, f"Δ {self.metric} vs {against} [95% CI]", "p (Welch)",
                "P(better)", "beyond noise?", "verdict"]  # fmt: skip

    def rows(self) -> list[list[str]]:
        rows = []
        for arm in self.arms:
            stats = [summary_text(self.summary(arm, m)) for m in self.metrics]
            delta, p, better, beyond = self._against_baseline(arm)
            seeds = ", ".join(map(str, arm.seeds())) or "–"
            rows.append([arm.label, self._n(arm), seeds, *stats, f"{delta} {beyond[1]}".strip(), p, better,
                         beyond[0], self.verdict(arm)])  # fmt: skip
        return rows

    def terminal_header(self) -> list[str]:
        unit = " (points)" if self.metric.endswith("acc") else ""
        return ["group", "n", self.metric, "95% CI", f"Δ{unit}\n[95% CI]", "p", "beyond\nnoise"]

    def terminal_rows(self) -> list[list[str]]:
        """The compared metric only, narrow enough for an 80-column terminal; the verdicts follow the table."""
        rows = []
        for arm in self.arms:
            s = self.summary(arm, self.metric)
            mean = "–" if s is None else f"{s.mean:.4f}"
            ci = "n = 1" if s is not None and s.low is None else "–" if s is None else f"{s.low:.3f}–{s.high:.3f}"
            delta, p, _, beyond = self._against_baseline(arm, unit=False)
            rows.append([arm.label, self._n(arm), mean, ci, f"{delta} {beyond[1]}".strip(), p, beyond[0]])
        return rows

    def _n(self, arm: Arm) -> str:
        return str(len(arm.runs)) + (f" (+{len(arm.excluded)} not counted)" if arm.excluded else "")

    def _against_baseline(self, arm: Arm, unit: bool = True) -> tuple[str, str, str, tuple[str, str]]:
        """(difference, p, P(better), (beyond noise?, interval of the difference)) as text."""
        c = self.contrasts.get(arm.label)
        if self.reference(arm) is None:
            return "baseline" if arm.runs else "–", "", "", ("", "")
        if c is None:
            return "–", "", "", ("no finished run", "")
        beyond = "yes" if c.beyond_noise else "n = 1" if c.note.startswith("n = 1") else "no"
        interval_text = interval(self.metric, c)
        return difference(self.metric, c.diff, unit), p_value(c.p), f"{c.p_improve:.2f}", (beyond, interval_text)

    def caption(self) -> str:
        direction = "higher" if self.higher_is_better else "lower"
        return (
            f"{sum(len(a.runs) for a in self.arms)} runs in {len(self.arms)} groups; seeds pooled within a group. "
            f"Intervals are {LEVEL:.0%}: t over seeds for a mean, bootstrap over seeds (BCa) for a difference; "
            f"p from Welch's t-test; P(better) is the chance a seed of the group beats a seed of the baseline on "
            f"{self.metric} ({direction} is better). Beyond seed noise: p < {ALPHA} and the interval excludes 0."
        )


def difference(metric: str, value: float, unit: bool = True) -> str:
    """Accuracies in points (hundredths), other metrics as they are."""
    if metric.endswith("acc"):
        return f"{100 * value:+.2f}" + (" points" if unit else "")
    return f"{value:+.4g}"


def interval(metric: str, c: Contrast) -> str:
    if c.low is None or c.high is None:
        return ""
    scale = 100.0 if metric.endswith("acc") else 1.0
    return f"[{scale * c.low:+.2f}, {scale * c.high:+.2f}]" if scale > 1 else f"[{c.low:+.4g}, {c.high:+.4g}]"


def p_value(p: float | None) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_phrase(p: float) -> str:
    """The p-value as a verdict says it: "p < 0.001" or "p = 0.025"."""
    return f"p {p_value(p)}" if p < 0.001 else f"p = {p_value(p)}"


def p_text(c: Contrast) -> str:
    if c.p is None:
        return f"{c.note}, " if c.note and not c.note.startswith("n = 1") else ""
    return f"{p_phrase(c.p)}, "


def summary_text(s: Summary | None) -> str:
    if s is None:
        return "–"
    if s.low is None or s.high is None:
        return f"{s.mean:.4f} (n = 1)"
    return f"{s.mean:.4f} [{s.low:.4f}, {s.high:.4f}]"


def write_markdown(comparison: Comparison, path: Path, title: str) -> None:
    verdicts = [comparison.verdict(a) for a in comparison.arms if comparison.verdict(a)]
    text = f"# {title}\n\n" + "".join(f"- {v}\n" for v in verdicts)
    text += f"\n{comparison.caption()}\n\n{markdown(comparison.header(), comparison.rows())}\n"
    if comparison.excluded:
        text += f"\n## Runs not counted ({len(comparison.excluded)})\n\n"
        text += "".join(f"- `{folder}` ({arm.label}): {why}\n" for arm, folder, why in comparison.excluded)
    path.write_text(text)


def write_csv(comparison: Comparison, path: Path) -> None:
    """One row per group, numbers unformatted, for pandas or a spreadsheet."""
    fields = [f"{m}_{s}" for m in comparison.metrics for s in ("mean", "std", "ci_low", "ci_high")]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "n", "excluded", "seeds", *fields, "compared_with", "diff", "diff_ci_low",
                         "diff_ci_high", "p_welch", "p_improve", "beyond_noise", "verdict"])  # fmt: skip
        for arm in comparison.arms:
            numbers: list[object] = []
            for m in comparison.metrics:
                s = comparison.summary(arm, m)
                numbers += [s.mean, s.std, s.low, s.high] if s else [None] * 4
            c = comparison.contrasts.get(arm.label)
            tail = [c.diff, c.low, c.high, c.p, c.p_improve, c.beyond_noise] if c else [None] * 6
            row = [arm.label, len(arm.runs), len(arm.excluded), " ".join(map(str, arm.seeds())), *numbers,
                   ref.label if (ref := comparison.reference(arm)) else "", *tail, comparison.verdict(arm)]  # fmt: skip
            writer.writerow(["" if v is None else v for v in row])
