"""`dlzoo report`: every run under a folder (a multirun, outputs/runs, a ladder) read back from its metrics.json and
.hydra/ files, grouped by what varied apart from the seed, as mean ± sample std tables (terminal, markdown, CSV)
and one TensorBoard HParams experiment. The ladder reuses this aggregation."""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dlzoo.console import console, print_table
from dlzoo.engine.recording.dashboards import write_hparams_experiment
from dlzoo.engine.training.checkpoint import signed
from dlzoo.errors import DlzooError
from dlzoo.paths import inert

METRICS = ("val_acc", "test_acc", "test_loss")  # always tabulated; --metric adds its own column
# Overrides that say where or how a run ran, not what it trained: runs differing only in these share a row.
NOT_SWEPT = ("trainer.seed", "data.root", "trainer.threads", "trainer.progress", "trainer.resume")
HPARAMS_DIR = "hparams_report"
REPORT_DIR = "report"  # the folder a report writes beside the runs it reports on, unless --out says otherwise


@dataclass
class Run:
    """One run folder: its config as Hydra saved it, its final metrics (None if it failed or is unfinished) and,
    for a failed run, the last error line of its logs."""

    folder: Path
    overrides: list[str]
    config: DictConfig
    choices: dict[str, Any]
    metrics: dict[str, Any] | None
    error: str | None = None

    @property
    def seed(self) -> int:
        return int(self.config.trainer.seed)

    def value(self, key: str) -> Any:
        """What `key` was in this run: a config group's choice (model=mlp), else the composed config's value."""
        if key in self.choices:
            return self.choices[key]
        value = OmegaConf.select(self.config, key, default=None)
        return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


@dataclass
class Group:
    """Runs that differ only in their seed (and where/how they ran), keyed by the values of the swept keys."""

    key: tuple[tuple[str, Any], ...]
    runs: list[Run] = field(default_factory=list)
    failed: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        found = (r.metrics.get(metric) for r in self.runs if r.metrics)
        return [float(v) for v in found if isinstance(v, (int, float)) and not isinstance(v, bool)]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float | None:
        """Sample std (n - 1), as papers report over seeds; None for fewer than two runs."""
        values = self.values(metric)
        if len(values) > 1 and not all(math.isfinite(v) for v in values):
            return math.nan  # a diverged seed: statistics.stdev cannot take NaN or inf
        return statistics.stdev(values) if len(values) > 1 else None

    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.runs)


def find_runs(root: Path) -> list[Run]:
    """Every Hydra run folder (one holding .hydra/config.yaml) at any depth under `root`, in natural order."""
    if not root.is_dir():
        raise DlzooError(
            f"No folder {root}. Fix: give a sweep or runs folder, e.g. `dlzoo report outputs/multirun/<date>` "
            "(a multirun's hydra.sweep.dir), outputs/runs or a ladder's folder."
        )
    folders = sorted((p.parent.parent for p in root.rglob(".hydra/config.yaml")), key=_natural)
    if not folders:
        raise DlzooError(
            f"{root} holds no runs (no <run>/.hydra/config.yaml at any depth). Fix: point at the folder a "
            "`dlzoo train` or `dlzoo train -m` wrote (its hydra.run.dir or hydra.sweep.dir), or train first."
        )
    runs = [load_run(folder) for folder in folders]
    # A stacked run's folder only sums up its seeds, which are runs of their own below it.
    return [r for r in runs if not (r.metrics and isinstance(k := r.metrics.get("stack", 1), int) and k > 1)]


def load_run(folder: Path) -> Run:
    """One run folder as `dlzoo report` sees it; a damaged one (unreadable .hydra/ or metrics.json, metrics that are
    no run's) comes back with no metrics and `damaged: ...` as its error, so it is listed and never counted."""
    hydra_dir = folder / ".hydra"
    try:
        # inert: a folder from elsewhere may hold ${oc.env:...}, which must not put this machine's secrets in a report
        config = OmegaConf.create(inert(OmegaConf.to_container(OmegaConf.load(hydra_dir / "config.yaml"))))
        overrides_file, hydra_file = hydra_dir / "overrides.yaml", hydra_dir / "hydra.yaml"
        saved = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        overrides = [str(o) for o in inert(saved)]  # type: ignore[union-attr]
        choices: dict[str, Any] = {}
        if hydra_file.is_file():
            found = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.choices", default=None)
            choices = {k: v for k, v in OmegaConf.to_container(found).items() if "/" not in k} if found else {}
        if not isinstance(config, DictConfig) or not isinstance(OmegaConf.select(config, "trainer.seed"), int):
            raise ValueError("its config has no integer trainer.seed")
    except Exception as e:  # any damage to Hydra's files: YAML, encoding, shape, interpolation
        why = " ".join(str(e).split())[:200]
        return Run(folder, [], OmegaConf.create({"trainer": {"seed": -1}}), {}, None, f"damaged .hydra/: {why}")
    metrics_file = folder / "metrics.json"
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
        except (ValueError, OSError) as e:  # truncated, not UTF-8, unreadable
            return Run(folder, overrides, config, choices, None, f"damaged {metrics_file.name}: {e}")
        if not isinstance(metrics, dict) or not isinstance(metrics.get("test_acc"), int | float):
            return Run(folder, overrides, config, choices, None, f"damaged {metrics_file.name}: no test_acc in it")
        if not isinstance(metrics.get("stack", 1), int):
            return Run(folder, overrides, config, choices, None, f"damaged {metrics_file.name}: stack is no count")
        return Run(folder, overrides, config, choices, metrics)
    return Run(folder, overrides, config, choices, None, last_error(folder))


_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[[A-Z]+\] - ")
_ERROR_LINE = re.compile(r"^error:|\[ERROR\]|^\w*(Error|Exception|Interrupt)\b")


def last_error(folder: Path) -> str:
    """The last error line in a run's logs (train.log, the ladder's ladder.log, Hydra's job log)."""
    lines: list[str] = []
    for log in sorted((p for p in folder.glob("*.log") if p.is_file()), key=lambda p: p.stat().st_mtime):
        lines += [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR_LINE.search(line)]
    if not errors:
        return "no metrics.json and no error in its logs: still running, or killed"
    return _LOG_PREFIX.sub("", errors[-1]).removeprefix("error:").strip()


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def swept_keys(runs: list[Run]) -> list[str]:
    """The overridden keys whose value differs between runs (seed and where-it-ran keys aside), in the order the
    command lines named them."""
    keys = dict.fromkeys(
        key for r in runs for o in r.overrides if not (key := _override_key(o)).startswith(("hydra.", "hydra/"))
    )
    return [k for k in keys if k not in NOT_SWEPT and len({repr(r.value(k)) for r in runs}) > 1]


def shared_overrides(runs: list[Run]) -> list[str]:
    """The overrides every run has (the sweep's fixed settings), for the table's caption."""
    common = set.intersection(*(set(r.overrides) for r in runs)) if runs else set()
    return [o for o in runs[0].overrides if o in common and not _override_key(o).startswith("hydra")] if runs else []


def group_runs(runs: list[Run], keys: list[str], metric: str) -> list[Group]:
    """One group per distinct value of `keys`, best `metric` mean first; groups with no value for it come last."""
    groups: dict[tuple[tuple[str, Any], ...], Group] = {}
    for run in runs:
        key = tuple((k, run.value(k)) for k in keys)
        group = groups.setdefault(tuple((k, _hashable(v)) for k, v in key), Group(key))
        (group.runs if run.metrics is not None else group.failed).append(run)

    def rank(g: Group) -> tuple[int, float]:
        mean = g.mean(metric)
        if mean is None or math.isnan(mean):
            return (1, 0.0)
        return (0, signed(metric, mean))

    return sorted(groups.values(), key=rank)


def mean_std(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


@dataclass
class Report:
    """Everything `dlzoo report` shows and writes, computed once."""

    root: Path
    metric: str
    runs: list[Run]
    keys: list[str]
    groups: list[Group]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if r.metrics is None]

    @property
    def metrics(self) -> list[str]:
        return [*METRICS, *([self.metric] if self.metric not in METRICS else [])]

    def header(self) -> list[str]:
        return [*(self.keys or ["runs"]), "n", "seeds", *self.metrics, "s / run", *(["failed"] if self.failed else [])]

    def rows(self) -> list[list[str]]:
        rows = []
        for g in self.groups:
            label = [_fmt_value(v) for _, v in g.key] or ["(all)"]
            stats = [mean_std(g.mean(m), g.std(m)) for m in self.metrics]
            wall = g.mean("wall_time_s")
            failed = [str(len(g.failed)) if g.failed else ""] if self.failed else []
            seeds = ", ".join(map(str, g.seeds())) or "–"
            rows.append([*label, str(len(g.runs)), seeds, *stats, "–" if wall is None else f"{wall:.0f}", *failed])
        return rows

    def caption(self) -> str:
        order = "lower" if signed(self.metric, 1.0) > 0 else "higher"
        shared = " ".join(shared_overrides(self.runs)) or "(defaults)"
        return (
            f"{len(self.runs)} runs in {self.root}; sorted by {self.metric} ({order} is better); mean ± sample std "
            f"over the n seeds of each row. All runs: {shared}"
        )

    def failures(self) -> list[tuple[str, str]]:
        """(run folder relative to the root, plus its seed and swept values; its last error line) per failed run."""
        out = []
        for r in self.failed:
            what = " ".join(f"{k}={_fmt_value(r.value(k))}" for k in self.keys)
            out.append((f"{_relative(r.folder, self.root)} ({what + ' ' if what else ''}seed {r.seed})", r.error or ""))
        return out


def build_report(root: Path, metric: str = "test_acc") -> Report:
    """Read and group every run under `root`; raises DlzooError for a missing or empty folder or unknown metric."""
    runs = find_runs(root)
    done = [r for r in runs if r.metrics is not None]
    known = sorted({k for r in done for k, v in r.metrics.items() if isinstance(v, (int, float))})  # type: ignore[union-attr]
    if done and metric not in known:
        raise DlzooError(
            f"No run under {root} has a numeric {metric!r} in its metrics.json; choices: {', '.join(known)}."
        )
    keys = swept_keys(runs)
    return Report(root, metric, runs, keys, group_runs(runs, keys, metric))


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows)])


def write_markdown(report: Report, path: Path) -> None:
    text = f"# Report: {report.root}\n\n{report.caption()}\n\n{markdown(report.header(), report.rows())}\n"
    if report.failed:
        text += f"\n## Failed or unfinished runs ({len(report.failed)})\n\n"
        text += "".join(f"- `{where}`: {error}\n" for where, error in report.failures())
    path.write_text(text)


def write_csv(report: Report, path: Path) -> None:
    """One row per group with numbers unformatted (mean and std apart), for pandas or a spreadsheet."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        stats = [f"{m}_{s}" for m in [*report.metrics, "wall_time_s"] for s in ("mean", "std")]
        writer.writerow([*report.keys, "n", "seeds", *stats, "failed", "runs"])
        for g in report.groups:
            numbers = [plain_number(f(m)) for m in [*report.metrics, "wall_time_s"] for f in (g.mean, g.std)]
            folders = " ".join(_relative(r.folder, report.root) for r in g.runs + g.failed)
            seeds = " ".join(map(str, g.seeds()))
            writer.writerow([*(_fmt_value(v) for _, v in g.key), len(g.runs), seeds, *numbers, len(g.failed), folders])


def hparams_sessions(report: Report) -> list[tuple[str, dict[str, Any], dict[str, float]]]:
    """(sub-run name, hyperparameters, final metrics) per finished run: the swept keys and the seed as columns."""
    sessions = []
    for r in (r for g in report.groups for r in g.runs):
        hparams = {k: r.value(k) for k in report.keys} | {"trainer.seed": r.seed}
        metrics = {
            m: float(v)
            for m in ("val_acc", "val_loss", "test_acc", "test_loss", report.metric)
            if isinstance(v := (r.metrics or {}).get(m), (int, float))
        }
        sessions.append((_relative(r.folder, report.root), hparams, metrics))
    return sessions


def report_command(argv: list[str]) -> int:
    """`dlzoo report <folder> [--metric test_acc] [--out DIR]`: print, then write report.md and report.csv into
    <folder>/report/ (or DIR); with a DIR outside the folder also DIR/hparams_report/ (one HParams experiment:
    `tensorboard --logdir DIR/hparams_report`)."""
    parser = argparse.ArgumentParser(prog="dlzoo report", description=report_command.__doc__)
    parser.add_argument("folder", type=Path, help="a multirun (hydra.sweep.dir), outputs/runs, or a ladder folder")
    parser.add_argument("--metric", default="test_acc", help="the metrics.json key to sort by (default test_acc)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the files (default: <folder>/report)")
    args = parser.parse_intermixed_args(argv)

    report = build_report(args.folder, args.metric)
    out = args.out or args.folder / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    print_table(
        f"report: {report.root}",
        report.header(),
        report.rows(),
        report.caption(),
        right=range(len(report.keys) or 1, len(report.header())),
    )
    if report.failed:
        print_table(
            f"failed or unfinished runs ({len(report.failed)})",
            ["run", "last error"],
            [list(f) for f in report.failures()],
        )
    write_markdown(report, out / "report.md")
    write_csv(report, out / "report.csv")
    hparams_dir = out / HPARAMS_DIR
    if hparams_dir.is_dir():
        shutil.rmtree(hparams_dir)  # ours from an earlier report; stale sessions would show twice
    sessions = hparams_sessions(report)
    inside = out.resolve().is_relative_to(args.folder.resolve())
    if sessions and not inside:
        write_hparams_experiment(hparams_dir, sessions)
        hparams = f"HParams: tensorboard --logdir {hparams_dir}"
    else:
        # Sessions inside the folder would show twice in its own dashboards, with their metrics as extra dots.
        hparams = f"HParams: tensorboard --logdir {args.folder} (its runs' own; --out <folder elsewhere> adds one)"
    console.print(f"wrote {out / 'report.md'}, {out / 'report.csv'}; {hparams}", highlight=False, soft_wrap=True)
    return 0


def _natural(path: Path) -> list[Any]:
    """Job folders 2_mlp before 10_mlp."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def _relative(folder: Path, root: Path) -> str:
    rel = folder.relative_to(root).as_posix()
    return rel if rel != "." else folder.name


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (list, dict)) else value


def _fmt_value(value: Any) -> str:
    return "null" if value is None else str(value)


def plain_number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"
