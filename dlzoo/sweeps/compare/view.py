"""The comparison in TensorBoard: one run folder of its own whose group `Compare` sorts before every run's
`accuracy_and_loss` and so opens first, holding the figures, the verdicts as text, and a Custom Scalars layout
whose margin charts draw each group's mean over seeds with the seeds' range around it (one run per group)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from dlzoo.sweeps.compare.arms import Arm
from dlzoo.sweeps.compare.comparison import Comparison
from dlzoo.sweeps.compare.figures import Points, RunCurves

GROUP = "Compare"  # capitalised: TensorBoard sorts tag groups by name, so it comes before accuracy_and_loss
CURVES = {  # margin chart title -> how to read it off a run
    "val accuracy": "val_acc",
    "val loss": "val_loss",
    "train loss": "train_loss",
}


def _points(curves: RunCurves, what: str) -> Points:
    if what == "val_acc":
        return curves.val_acc
    return curves.loss.get(what.removesuffix("_loss"), [])


def band(series: list[Points]) -> list[tuple[int, float, float, float]]:
    """(step, mean, min, max) over the runs at the steps every run logged."""
    found = [dict(s) for s in series if s]
    if not found:
        return []
    steps = sorted(set.intersection(*(set(s) for s in found)))
    return [(k, float(np.mean(v)), float(min(v)), float(max(v))) for k in steps if (v := [s[k] for s in found])]


def write_view(comparison: Comparison, curves: dict[Path, RunCurves], images: dict[str, np.ndarray],
               verdicts_md: str, out: Path) -> Path:  # fmt: skip
    """Write the view into `out/tensorboard/` (replacing an earlier one) and return that folder."""
    folder = out / "tensorboard"
    if folder.is_dir():
        shutil.rmtree(folder)  # ours from an earlier comparison: stale groups would show beside the new ones
    names = {arm.label: f"{i}_{_slug(arm.label)}" for i, arm in enumerate(comparison.arms)}
    layout = {GROUP: {title: ["Margin", [f"{GROUP}/{w}", f"{GROUP}/{w}_min", f"{GROUP}/{w}_max"]]
                      for title, w in CURVES.items()}}  # fmt: skip
    with SummaryWriter(log_dir=str(folder)) as writer:
        writer.add_custom_scalars(layout)
        for name, image in images.items():
            writer.add_image(f"{GROUP}/{name}", image, 0, dataformats="HWC")
        writer.add_text(f"{GROUP}/verdicts", verdicts_md, 0)
    for arm in comparison.arms:
        _write_arm(arm, curves, folder / names[arm.label])
    return folder


def _write_arm(arm: Arm, curves: dict[Path, RunCurves], folder: Path) -> None:
    rows = {w: band([_points(curves[r.folder], w) for r in arm.runs if r.folder in curves]) for w in CURVES.values()}
    if not any(rows.values()):
        return
    with SummaryWriter(log_dir=str(folder)) as writer:
        for what, points in rows.items():
            for step, mean, low, high in points:
                writer.add_scalar(f"{GROUP}/{what}", mean, step)
                writer.add_scalar(f"{GROUP}/{what}_min", low, step)
                writer.add_scalar(f"{GROUP}/{what}_max", high, step)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label).strip("_")[:60] or "group"
