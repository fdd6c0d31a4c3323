"""`dlzoo compare`: runs from any folders (runs, sweeps, a ladder) on one axis, grouped by what differs between
them, with each group against a baseline and a plain verdict on whether the difference is beyond seed noise.
Writes compare.md, compare.csv, the figures and a TensorBoard view; `compare()` is the same for Python."""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dlzoo.console import console, first_sentence, print_table
from dlzoo.errors import DlzooError
from dlzoo.registry import closest
from dlzoo.sweeps.compare.arms import arms, collect, compared_keys, expand, pick_baseline
from dlzoo.sweeps.compare.comparison import Comparison, write_csv, write_markdown
from dlzoo.sweeps.compare.figures import draw_all, read_curves
from dlzoo.sweeps.compare.view import write_view

__all__ = ["Compared", "Comparison", "compare", "compare_command"]
OUT_NAME = "compare"  # the folder a comparison of one folder writes inside it


@dataclass
class Compared:
    """What `compare` computed and where it wrote it."""

    comparison: Comparison
    out: Path
    files: list[Path]
    tensorboard: Path  # the view alone
    logdir: Path  # what to open: the compared folder with the view inside it, else the view

    def table(self) -> Any:
        """compare.csv: a pandas DataFrame when pandas is installed, else a list of dicts of strings."""
        path = self.out / "compare.csv"
        try:
            # pandas is optional (the `notebook` extra)
            import pandas as pd
        except ImportError:
            with path.open() as f:
                return list(csv.DictReader(f))
        return pd.read_csv(path)


def compare(
    targets: list[str | Path],
    by: list[str] | None = None,
    baseline: str | None = None,
    metric: str = "test_acc",
    out: Path | None = None,
    chain: bool = False,
    figures: bool = True,
) -> Compared:
    """Compare the runs under `targets` (folders or glob patterns) and write the results.

    Args:
        targets: run, sweep, ladder or report folders, or globs matching them.
        by: the config keys that define the groups (default: the keys whose value differs between the runs).
        baseline: the group every other is compared with (its label; default the first group).
        metric: the metrics.json key the verdicts are about; lower is better when it ends in "loss".
        out: where to write (default `<folder>/compare` for one folder, else outputs/compare/<date>_<time>).
        chain: compare each group with the one before it (a ladder's steps) instead of with the baseline.
        figures: draw the PNGs and TensorBoard's images (False: the tables, the text and the margin charts only).

    Returns:
        The comparison, the output folder, the files written there and the TensorBoard view's folder.
    """
    if not targets:
        raise DlzooError("dlzoo compare needs at least one folder. Fix: `dlzoo compare outputs/multirun/<sweep>` "
                         "or several run folders, e.g. `dlzoo compare outputs/runs/*xor*`.")  # fmt: skip
    folders = expand([str(t) for t in targets])
    runs = collect(folders)
    finished = [r.metrics for r in runs if r.metrics]
    known = sorted({k for m in finished for k, v in m.items() if isinstance(v, (int, float)) and k != "seed"})
    if finished and not any(metric in m for m in finished):
        hint = closest(metric, known)
        raise DlzooError(f"No run has {metric!r} in its metrics.json." + (f" Did you mean --metric {hint}?" if hint
                         else "") + f" Choices: {', '.join(known)}.")  # fmt: skip
    keys = compared_keys(runs, by)
    found = arms(runs, keys, metric)
    comparison = Comparison(metric, keys, found, pick_baseline(found, baseline), chain)
    if out is None:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        out = folders[0] / OUT_NAME if len(folders) == 1 else Path("outputs") / "compare" / stamp
    out.mkdir(parents=True, exist_ok=True)
    curves = {r.folder: read_curves(r.folder) for a in found for r in a.runs}
    images = draw_all(comparison, curves, out) if figures else {}
    title = f"Comparison of {', '.join(str(f) for f in folders)}"
    write_markdown(comparison, out / "compare.md", title)
    write_csv(comparison, out / "compare.csv")
    verdicts = "\n".join(f"- {v}" for a in found if (v := comparison.verdict(a)))
    view = write_view(comparison, curves, images, verdicts or "(one group: nothing to compare)", out)
    files = [out / "compare.md", out / "compare.csv", *sorted(out.glob("compare*.png"))]
    inside = len(folders) == 1 and out.resolve().is_relative_to(folders[0].resolve())
    return Compared(comparison, out, files, view, folders[0] if inside else view)


def show(result: Compared) -> None:
    """The verdicts, the table and any run not counted, on the terminal; then where the files are."""
    c = result.comparison
    header = c.terminal_header()
    against = "each against the group above" if c.chain else f"baseline: {c.baseline.label}"
    print_table(f"compare: {c.metric} by {' · '.join(c.keys) or 'group'} ({against})", header,
                c.terminal_rows(), c.caption(), right=range(1, len(header)), compact=True,
                wrap=[0, 1, 4, 6])  # fmt: skip
    if c.excluded:
        # What happened to each; the fix each error names is in compare.md, `dlzoo report` and the run's train.log.
        print_table(f"runs not counted ({len(c.excluded)}; their whole errors: compare.md)", ["group", "run", "why"],
                    [[arm.label, folder, first_sentence(why)] for arm, folder, why in c.excluded])  # fmt: skip
    for arm in c.arms:
        if verdict := c.verdict(arm):
            console.print(f"  {verdict}", highlight=False, soft_wrap=True)
    console.print(f"wrote {', '.join(str(f) for f in result.files)}", highlight=False, soft_wrap=True)
    console.print(f"TensorBoard: tensorboard --logdir {result.logdir} (opens on the Compare group; Custom Scalars: "
                  "each group's mean and range over seeds)", highlight=False, soft_wrap=True)  # fmt: skip


def compare_command(argv: list[str]) -> int:
    """`dlzoo compare <folders or globs> [--by KEY,...] [--baseline GROUP] [--metric M] [--out DIR]`."""
    parser = argparse.ArgumentParser(
        prog="dlzoo compare",
        description="Compare runs (any run, sweep or ladder folders) grouped by what differs between them: each "
        "group's mean with a 95% CI over seeds, each group against the baseline (difference with a bootstrap CI, "
        "Welch's p, probability of improvement) and a verdict on whether it is beyond seed noise.",
    )
    parser.add_argument("folders", nargs="+", help="run, sweep or ladder folders, or glob patterns")
    parser.add_argument("--by", default=None, help="comma-separated config keys that define the groups")
    parser.add_argument("--baseline", default=None, help="the group the others are compared with (default: first)")
    parser.add_argument("--metric", default="test_acc", help="metrics.json key the verdicts are about")
    parser.add_argument("--chain", action="store_true", help="each group against the one before it (ladder steps)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <folder>/compare)")
    args = parser.parse_intermixed_args(argv)
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    if args.chain and args.baseline:
        raise DlzooError("--chain compares each group with the one before it, so it takes no --baseline. Fix: "
                         "drop one of the two.")  # fmt: skip
    show(compare(args.folders, by, args.baseline, args.metric, args.out, args.chain))
    return 0
