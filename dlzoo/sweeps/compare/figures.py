"""The comparison's pictures, every group on ONE axis: the compared metric per group with its 95% interval, the
gradient norm and the activation std against depth (first and last recorded step), and train against val loss
over steps. Read from the runs' own TensorBoard events; saved as PNGs and returned as RGB arrays."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dlzoo.engine.recording.dashboards import ACCURACY, LOSS, read_scalars
from dlzoo.sweeps.compare.arms import Arm
from dlzoo.sweeps.compare.comparison import Comparison

# (per-layer statistic, the probes' tag prefix, axis label): the two lesson-10 statistics compared by depth.
DEPTH_STATS = (
    ("grad_norm", "per_layer_grad_norm/", "gradient norm (L2) of the layer's weights"),
    ("act_std", "per_layer_act_std/", "std of the layer's activations"),
)
Points = list[tuple[int, float]]


@dataclass
class RunCurves:
    """What the figures read of one run: per-layer statistics at its first and last recorded step (layers in
    model order), its train and val loss and its val accuracy per logged step."""

    depth: dict[str, tuple[list[str], list[float], list[float], int, int]] = field(default_factory=dict)
    loss: dict[str, Points] = field(default_factory=dict)
    val_acc: Points = field(default_factory=list)


def read_curves(folder: Path) -> RunCurves:

    # Its reader logs each finished event file at INFO; inside a sweep (Hydra's logging) that is a line per file.
    logging.getLogger("tensorboard").setLevel(logging.WARNING)

    out = RunCurves()
    if not any(folder.glob("events.out.tfevents.*")):
        return out
    guidance = {"scalars": 0, "images": 1, "histograms": 1, "tensors": 1, "compressedHistograms": 1}
    events = EventAccumulator(str(folder), size_guidance=guidance)
    events.Reload()
    tags = events.Tags().get("scalars", [])
    for stat, prefix, _ in DEPTH_STATS:
        layers = [t for t in tags if t.startswith(prefix)]
        series = {t: {e.step: e.value for e in events.Scalars(t)} for t in layers}
        steps = sorted(set.intersection(*(set(s) for s in series.values()))) if series else []
        if steps:
            first, last = steps[0], steps[-1]
            out.depth[stat] = (
                [t.removeprefix(prefix) for t in layers],
                [series[t][first] for t in layers],
                [series[t][last] for t in layers],
                first,
                last,
            )
    for split in ("train", "val"):
        found = read_scalars(folder / split, [LOSS, ACCURACY]) if (folder / split).is_dir() else {}
        out.loss[split] = found.get(LOSS, [])
        if split == "val":
            out.val_acc = found.get(ACCURACY, [])
    return out


def _canvas(width: float, height: float):
    """A figure and its axes on their own Agg canvas (engine.recording.figures' way): pyplot's matplotlib.use("Agg")
    would switch a notebook's whole process, and its own plots would stop showing."""
    # matplotlib is a slow import: it loads when a chart is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _finish(fig, path: Path) -> np.ndarray:
    """Render once; the PNG is written from those pixels (savefig would render the figure a second time)."""
    # matplotlib is a slow import: it loads when a chart is drawn
    from matplotlib.image import imsave

    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    imsave(path, image)
    return image


def _colors(n: int) -> list[str]:
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
               "tab:olive", "tab:cyan", "tab:gray"]  # fmt: skip
    return [palette[i % len(palette)] for i in range(n)]


def metric_figure(comparison: Comparison, path: Path) -> np.ndarray:
    """Each group's seeds as dots, its mean with the 95% t interval as a whisker, the baseline's mean as a line
    across (none in a chain); a group beyond seed noise from what it is compared with is starred. The axis spans
    the values, and says so."""
    metric, arms = comparison.metric, comparison.arms
    fig, ax = _canvas(max(6.0, 1.3 * len(arms) + 2.5), 4.2)
    shown: list[float] = []
    for i, (arm, color) in enumerate(zip(arms, _colors(len(arms)), strict=True)):
        values = arm.values(metric)
        shown += values
        ax.scatter(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values, s=14, alpha=0.45,
                   color=color)  # fmt: skip
        s = comparison.summary(arm, metric)
        if s is None:
            continue
        if s.low is not None and s.high is not None:
            shown += [s.low, s.high]
            ax.errorbar([i + 0.22], [s.mean], yerr=[[s.mean - s.low], [s.high - s.mean]], fmt="o", color=color,
                        capsize=5, markersize=6)  # fmt: skip
        else:
            ax.scatter([i + 0.22], [s.mean], color=color, s=36)
        c = comparison.contrasts.get(arm.label)
        star = " *" if c is not None and c.beyond_noise else ""
        ax.annotate(f"{s.mean:.4f}{star}", (i + 0.22, s.mean), textcoords="offset points", xytext=(6, 0),
                    fontsize=8, color=color, va="center")  # fmt: skip
    base = None if comparison.chain else comparison.summary(comparison.baseline, metric)
    if base is not None:
        ax.axhline(base.mean, color="gray", linestyle=":", linewidth=1, label=f"baseline: {comparison.baseline.label}")
    if shown:
        low, high = min(shown), max(shown)
        pad = max(1e-3, 0.12 * (high - low))
        low, high = low - pad, high + pad
        if metric.endswith("acc"):  # a t interval over few seeds can pass 0 or 1; accuracy cannot
            low, high = max(low, 0.0), min(high, 1.0 + pad / 2)
        ax.set_ylim(low, high)
    ax.set_xticks(range(len(arms)), [f"{a.label}\nn={len(a.runs)}" for a in arms], fontsize=8)
    ax.set_xlim(-0.5, len(arms) - 0.3)
    ax.set_ylabel(f"{metric} (axis from {ax.get_ylim()[0]:.4g})")
    ax.set_title(f"{metric} per group: seeds (dots), mean and 95% CI; * beyond seed noise", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    if base is not None:
        ax.legend(fontsize=8, loc="best")
    fig.subplots_adjust(left=0.12, right=0.98, top=0.9, bottom=0.2)
    return _finish(fig, path)


def depth_figure(arms: list[Arm], curves: dict[Path, RunCurves], stat: str, path: Path) -> np.ndarray | None:
    """One per-layer statistic against depth for every group on one log axis: the mean over seeds at the first
    recorded step (solid) and the last (dashed), the seeds' range as a band. None when no run recorded it."""
    label = next(text for s, _, text in DEPTH_STATS if s == stat)
    fig, ax = _canvas(8.0, 4.2)
    drawn = False
    for arm, color in zip(arms, _colors(len(arms)), strict=True):
        found = [curves[r.folder].depth[stat] for r in arm.runs if stat in curves[r.folder].depth]
        if not found:
            continue
        depth = min(len(f[0]) for f in found)
        one_step = all(f[3] == f[4] for f in found)  # a short run recorded its layers once: one line, not two
        for which, style in ((1, "-"),) if one_step else ((1, "-"), (2, "--")):
            ys = np.array([f[which][:depth] for f in found], dtype=float).clip(min=1e-12)
            xs = np.arange(1, depth + 1)
            step = found[0][which + 2]
            mean = np.exp(np.log(ys).mean(0))  # geometric: the values span decades
            ax.plot(xs, mean, style, marker="o", markersize=3, color=color,
                    label=f"{arm.label} · step {step} (n={len(found)})")  # fmt: skip
            if len(found) > 1:
                ax.fill_between(xs, ys.min(0), ys.max(0), color=color, alpha=0.15, linewidth=0)
        drawn = True
    if not drawn:
        return None
    ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer depth (1 = next to the input)")
    ax.set_ylabel(label)
    ax.set_title(f"{label} by depth: first recorded step solid, last dashed; band = the seeds' range", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.13)
    return _finish(fig, path)


def loss_figure(arms: list[Arm], curves: dict[Path, RunCurves], path: Path) -> np.ndarray | None:
    """Train (solid) and val (dashed) loss over steps, one colour per group, the mean over seeds with the seeds'
    range as a band: the gap between the two lines is the overfitting dropout closes. Log axis when the losses
    span more than two decades."""
    fig, ax = _canvas(8.0, 4.2)
    spans: list[float] = []
    for arm, color in zip(arms, _colors(len(arms)), strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            series = [dict(curves[r.folder].loss.get(split, [])) for r in arm.runs]
            series = [s for s in series if s]
            if not series:
                continue
            steps = sorted(set.intersection(*(set(s) for s in series)))
            if not steps:
                continue
            ys = np.array([[s[k] for k in steps] for s in series], dtype=float)
            ax.plot(steps, ys.mean(0), style, color=color, label=f"{arm.label} · {split} (n={len(series)})")
            if len(series) > 1:
                ax.fill_between(steps, ys.min(0), ys.max(0), color=color, alpha=0.15, linewidth=0)
            spans += [float(np.nanmin(ys)), float(np.nanmax(ys))]
    if not spans:
        return None
    positive = [s for s in spans if s > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (epoch mean for train, full set for val)")
    ax.set_title("train (solid) vs val (dashed) loss per group; band = the seeds' range", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.13)
    return _finish(fig, path)


def draw_all(comparison: Comparison, curves: dict[Path, RunCurves], out: Path) -> dict[str, np.ndarray]:
    """Every figure the runs have data for, saved in `out` (compare.png, compare_<what>.png), keyed by a name
    that orders them for TensorBoard."""
    arms = comparison.arms
    images: dict[str, np.ndarray | None] = {"1_" + comparison.metric: metric_figure(comparison, out / "compare.png")}
    for i, (stat, _, _) in enumerate(DEPTH_STATS, 2):
        images[f"{i}_{stat}_by_depth"] = depth_figure(arms, curves, stat, out / f"compare_{stat}_by_depth.png")
    images["4_train_vs_val_loss"] = loss_figure(arms, curves, out / "compare_loss.png")
    return {k: v for k, v in images.items() if v is not None}
