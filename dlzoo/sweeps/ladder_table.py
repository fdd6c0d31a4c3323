"""The ladder's rungs (the lecture labs and their published accuracies) and what `dlzoo ladder` makes of its
finished runs: the table (terminal, ladder.md, ladder.csv), the bar chart (ladder.png) and the TensorBoard view."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from dlzoo.config.compose import compose_config
from dlzoo.engine.recording.dashboards import read_epoch_curves, write_ladder_view
from dlzoo.engine.recording.hparams import run_hparams
from dlzoo.sweeps.compare.comparison import p_phrase
from dlzoo.sweeps.compare.stats import Contrast, contrast
from dlzoo.sweeps.report import Group, group_runs, last_error, load_run, markdown, mean_std, plain_number

# rung (= conf/experiment/<rung>.yaml): (label, what changed from the rung before, lecture test accuracy on MNIST).
# The figures are the outputs recorded at the end of each TF lab file of hunkim/DeepLearningZeroToAll (single runs,
# tf.set_random_seed(777)), as quoted in each experiment's YAML.
RUNGS: dict[str, tuple[str, str, float | None]] = {
    "lab10_1_softmax": ("10-1 softmax", "softmax regression, N(0,1) init", 0.9035),
    "lab10_2_mlp": ("10-2 NN", "+ 2 hidden ReLU layers of 256", 0.9455),
    "lab10_3_xavier": ("10-3 Xavier", "Xavier init instead of N(0,1)", 0.9783),
    "lab10_4_deep": ("10-4 deep", "deeper and wider: 4 × 512", 0.9742),
    "lab10_5_dropout": ("10-5 dropout", "+ dropout 0.3", 0.9804),
    "lab10_7_bn": ("10-7 batch norm", "+ batch norm, Adam lr 0.01", 0.9826),
    "lab11_1_cnn": ("11-1 CNN", "a 2-layer CNN (32, 64) instead of the MLP", 0.9885),
    "lab11_2_cnn_deep": ("11-2 deep CNN", "3 conv layers (32, 64, 128), FC 625, dropout", 0.9938),
    "lab11_5_ensemble": ("11-5 ensemble", "7 deep CNNs, summed logits, 20 epochs", 0.9952),
}


@dataclass
class Job:
    rung: str
    seed: int
    folder: Path
    overrides: list[str]
    members: list[Job] = field(default_factory=list)  # the seeds a stacked job trains (empty: it is one seed)


@dataclass
class Rung:
    """One row of the ladder: the rung's finished runs (as report groups them) and its failed jobs."""

    name: str
    group: Group | None
    failed: list[Job]

    @property
    def mean(self) -> float | None:
        return self.group.mean("test_acc") if self.group else None

    @property
    def std(self) -> float | None:
        return self.group.std("test_acc") if self.group else None

    @property
    def n(self) -> int:
        return len(self.group.runs) if self.group else 0


def collect(jobs: list[Job]) -> list[Rung]:
    """The ladder's rows in rung order, aggregated by dlzoo.sweeps.report from the jobs' run folders."""
    runs = [load_run(j.folder) for j in jobs if (j.folder / ".hydra" / "config.yaml").is_file()]
    groups = {g.key[0][1]: g for g in group_runs(runs, ["experiment"], "test_acc")}
    rungs = list(dict.fromkeys(j.rung for j in jobs))
    failed = [j for j in jobs if not (j.folder / "metrics.json").is_file()]
    return [Rung(r, groups.get(r), [j for j in failed if j.rung == r]) for r in rungs]


HEADER = ["rung", "what changed", "lecture (MNIST)", "ours: test acc", "n", "Δ vs rung above (95% CI)",
          "beyond noise?", "epochs", "s / run"]  # fmt: skip


def step_contrast(below: Rung | None, r: Rung) -> Contrast | None:
    """The rung against the finished rung above it (the lesson's step), over their seeds' test accuracies."""
    if below is None or not below.group or not r.group:
        return None
    a, b = below.group.values("test_acc"), r.group.values("test_acc")
    return contrast(a, b) if a and b else None


def step_up(below: Rung | None, r: Rung) -> tuple[str, str]:
    """The step's difference of means in points with its 95% bootstrap interval, and whether Welch's test puts
    it beyond seed noise, as table cells."""
    c = step_contrast(below, r)
    if c is None:
        return "–", "–"
    text = f"{100 * c.diff:+.2f} pts"
    if c.low is not None and c.high is not None:
        text += f" [{100 * c.low:+.2f}, {100 * c.high:+.2f}]"
    if c.note.startswith("n = 1"):
        return text, "n = 1: no test"
    return text, ("yes" if c.beyond_noise else "no") + ("" if c.p is None else f" ({p_phrase(c.p)})")


def _steps(rungs: list[Rung]) -> list[Contrast | None]:
    out, previous = [], None
    for r in rungs:
        out.append(step_contrast(previous, r))
        previous = r if r.mean is not None else previous
    return out


def rows(rungs: list[Rung]) -> list[list[str]]:
    out, previous = [], None
    for r in rungs:
        label, change, lecture = RUNGS[r.name]
        ours = mean_std(r.mean, r.std) + (f" ({len(r.failed)} failed)" if r.failed else "")
        delta, beyond = step_up(previous, r)
        wall = r.group.mean("wall_time_s") if r.group else None
        out.append(
            [
                f"{label} ({r.name})",
                change,
                "–" if lecture is None else f"{lecture:.4f}",
                ours,
                str(r.n),
                delta,
                beyond,
                _epochs(r),
                "–" if wall is None else f"{wall:.0f}",
            ]
        )
        previous = r if r.mean is not None else previous
    return out


def _epochs(r: Rung) -> str:
    if not r.group or not r.group.runs:
        return "–"
    config = r.group.runs[0].config
    size = config.ensemble.size
    return f"{config.trainer.epochs}" + (f" × {size} members" if size > 1 else "")


def caption(rungs: list[Rung], command: str) -> str:
    run = next((g.runs[0] for r in rungs if (g := r.group) and g.runs), None)
    where = "no finished run"
    if run is not None and run.metrics is not None:
        device, name = run.metrics.get("device"), run.metrics.get("device_name")
        where = f"{run.config.data.name}, {device}" + (f" ({name})" if name and name != device else "")
        threads = run.metrics.get("threads")
        where += f", {threads} thread(s)" if threads else ""
    return (
        f"Test accuracy, mean ± sample std over the n seeds of each rung (trainer.seed=1..n; an ensemble k "
        f"trains members from seed (k-1)×size+1 on) on {where}. The lecture's figures are its TF labs on MNIST. "
        f"Command: {command}"
    )


def write_markdown(rungs: list[Rung], table: list[list[str]], text: str, path: Path) -> None:
    failed = [(r.name, j) for r in rungs for j in r.failed]
    lines = [f"- {rung} seed {job.seed} (`{job.folder}`): {last_error(job.folder)}" for rung, job in failed]
    tail = f"\n## Failed runs ({len(failed)})\n\n" + "\n".join(lines) + "\n" if failed else ""
    path.write_text(f"{text}\n\n{markdown(HEADER, table)}\n{tail}")


def write_csv(rungs: list[Rung], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "rung",
                "label",
                "change",
                "lecture_mnist",
                "test_acc_mean",
                "test_acc_std",
                "n",
                "failed",
                "epochs",
                "wall_time_s_mean",
                "diff_vs_above",
                "diff_ci_low",
                "diff_ci_high",
                "p_welch",
                "beyond_noise",
            ]
        )
        for r, c in zip(rungs, _steps(rungs), strict=True):
            label, change, lecture = RUNGS[r.name]
            wall = r.group.mean("wall_time_s") if r.group else None
            writer.writerow(
                [
                    r.name,
                    label,
                    change,
                    lecture,
                    plain_number(r.mean),
                    plain_number(r.std),
                    r.n,
                    len(r.failed),
                    _epochs(r),
                    plain_number(wall),
                    *(
                        [
                            plain_number(c.diff),
                            plain_number(c.low),
                            plain_number(c.high),
                            plain_number(c.p),
                            c.beyond_noise,
                        ]
                        if c
                        else ["", "", "", "", ""]
                    ),
                ]
            )


def write_view(rungs: list[Rung], table: list[list[str]], out: Path) -> None:
    """The ladder's TensorBoard view (dashboards.write_ladder_view): a run per rung, named for its lab, on charts
    of our test accuracy and the lecture's, and an HParams table of the ladder's runs led by the rung."""
    points = [(RUNGS[r.name][0], r.mean, r.std, RUNGS[r.name][2]) for r in rungs]
    # An ensemble's curves are its members' (the ensemble folder logs only the combined test accuracy).
    curves = {r.name: [read_epoch_curves(folder) for run in (r.group.runs if r.group else [])
                       for folder in (sorted(run.folder.glob("member*")) or [run.folder])]
              for r in rungs}  # fmt: skip
    runs = [run for r in rungs if r.group for run in r.group.runs]
    sessions = [run_hparams(OmegaConf.to_container(run.config, resolve=True), run.choices) for run in runs]  # type: ignore[arg-type]
    write_ladder_view(out, points, curves, sessions, markdown(HEADER, table))


def lab_epochs(rung: str) -> int:
    """The epochs the lab itself trains (its experiment YAML), to flag rungs that ran a shorter budget."""
    return int(compose_config([f"experiment={rung}"]).trainer.epochs)


def draw_chart(rungs: list[Rung], title: str, path: Path) -> None:
    """Dot-and-whisker chart: per rung our mean (dot) ± sample std (whisker, only for n > 1), each seed as a
    faint point, and the lecture's figure as a hollow diamond beside it; each mean is written next to its dot,
    each tick says n and epochs, and a rung trained for fewer epochs than its lab is flagged. Accuracies near 1
    differ by tenths of a point, so the axis spans just the values shown, stated on the axis itself."""
    # A figure of its own, not pyplot's: matplotlib.use("Agg") would switch the process (dlzoo.ladder in a notebook).
    # matplotlib is a slow import: it loads when the chart is drawn
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(7.0, 1.25 * len(rungs) + 2), 5.0))
    ax = fig.subplots()
    shown: list[float] = []
    short: list[str] = []
    labels = []
    for i, r in enumerate(rungs):
        label, _, lecture = RUNGS[r.name]
        epochs = _epochs(r)
        if r.group and r.group.runs and r.group.runs[0].config.trainer.epochs < lab_epochs(r.name):
            short.append(label)
        labels.append(f"{label}\nn={r.n}" + (f", {epochs} ep" if epochs != "–" else "") + ("" if r.mean is not None
                      else "\n(no finished run)"))  # fmt: skip
        if lecture is not None:
            ax.scatter([i + 0.18], [lecture], marker="D", facecolors="none", edgecolors="tab:red", s=46, zorder=3,
                       label="lecture (TF lab, 1 run)" if i == 0 else None)  # fmt: skip
            shown.append(lecture)
        if r.mean is None or r.group is None:
            continue
        seeds = [run.metrics["test_acc"] for run in r.group.runs if run.metrics]
        ax.scatter([i - 0.12] * len(seeds), seeds, s=10, color="tab:blue", alpha=0.35, zorder=2,
                   label="ours: each seed" if i == 0 else None)  # fmt: skip
        if r.n > 1 and r.std is not None:
            ax.errorbar([i], [r.mean], yerr=[r.std], fmt="none", ecolor="tab:blue", capsize=5, zorder=3)
        ax.scatter([i], [r.mean], s=36, color="tab:blue", zorder=4, label="ours: mean ± std" if i == 0 else None)
        ax.annotate(f"{r.mean:.4f}", (i, r.mean), textcoords="offset points", xytext=(-8, 8), ha="right",
                    fontsize=8, color="tab:blue")  # fmt: skip
        shown += seeds
    low, high = (min(shown), max(shown)) if shown else (0.0, 1.0)
    pad = max(0.002, 0.08 * (high - low))
    ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad) if high + pad < 1.0 else 1.0)
    ax.set_xticks(range(len(rungs)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"test accuracy (axis from {ax.get_ylim()[0]:.3f}, not 0)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if short:
        fig.text(0.01, 0.01, f"Shorter budget than the lab: {', '.join(short)}.", fontsize=8, color="tab:orange")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
