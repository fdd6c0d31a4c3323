"""`dlzoo.train`, `dlzoo.ladder` and `dlzoo.load`: the CLI's verbs as Python functions, for notebooks and scripts.
The same overrides, checks, errors and run folders as `dlzoo train` (Hydra's own run machinery makes the folder,
.hydra/ and train.log); each returns a result object instead of an exit status."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from dlzoo.config.compose import explain, precheck, split_args
from dlzoo.config.validate import register_configs
from dlzoo.console import console
from dlzoo.engine.assembly.folders import load_checkpoint, output_problem, remove_if_empty, resumable_file
from dlzoo.engine.assembly.run import run
from dlzoo.engine.inference import load_model, members
from dlzoo.engine.training.distributed import requested_devices
from dlzoo.engine.training.stopping import Interrupted, quiet_when_full, stop_on_signals
from dlzoo.errors import DlzooError
from dlzoo.notebook import NotebookView, in_jupyter
from dlzoo.paths import conf_dir

__all__ = ["DlzooError", "Interrupted", "LadderResult", "Result", "compare", "ladder", "load", "train"]


@dataclass
class Result:
    """One run, trained by `train` or read back by `load`.

    Attributes:
        folder: the run folder (what `dlzoo report`, `dlzoo eval ckpt=<folder>` and TensorBoard read).
        metrics: metrics.json (test_acc, test_loss, ...); None for a run that has not finished.
        history: one row per epoch (epoch, train/loss, train/acc, val/loss, val/acc, lr; an ensemble's rows also
            name their member): a pandas DataFrame when pandas is installed, else a list of dicts.
        config: the composed config the run trained with (its .hydra/config.yaml).
        overrides: the overrides it was started with (its .hydra/overrides.yaml: hydra.* ones aside).
    """

    folder: Path
    metrics: dict[str, Any] | None
    history: Any
    config: DictConfig
    overrides: list[str] = field(default_factory=list)

    def model(self) -> Any:
        """The trained model in eval mode, loaded from the run's checkpoint (the restored best epoch's weights
        after early stopping with restore_best); a list of models for an ensemble."""
        found = members(self.folder)
        return [_trained_model(m) for m in found] if found else _trained_model(self.folder)

    def __repr__(self) -> str:
        acc = (self.metrics or {}).get("test_acc")
        score = f"test_acc {acc:.4f}" if isinstance(acc, float) else "unfinished"
        return f"<dlzoo Result {score}, {len(_rows(self.history))} epoch(s), {self.folder}>"

    def _repr_html_(self) -> str:
        return f"<code>{escape(repr(self))}</code>"


@dataclass
class LadderResult:
    """A ladder: its folder (ladder.md, ladder.csv, ladder.png, one folder per rung and seed), its table (one row
    per rung: a DataFrame with pandas, else a list of dicts) and every run in it."""

    folder: Path
    table: Any
    runs: list[Result]
    failed: bool = False

    def __repr__(self) -> str:
        return f"<dlzoo LadderResult {len(self.runs)} run(s), {self.folder}>"


def train(
    *overrides: str,
    data_root: str | Path | None = None,
    config_dir: str | Path | Sequence[str | Path] | None = None,
) -> Result:
    """Train one config, exactly as `dlzoo train <overrides>` does.

    In Jupyter the progress and a loss/accuracy figure update in place every epoch and the final metrics come as
    a table; elsewhere the output is the CLI's. The first interrupt (Ctrl-C, the kernel's stop button) stops after
    the current step and writes a checkpoint, and `Interrupted` says how to resume.

    Args:
        *overrides: Hydra overrides as typed on the command line, e.g. "model=mlp_xavier", "trainer.epochs=3".
        data_root: the dataset folder (the override data.root=...).
        config_dir: your own config folder(s) (--config-dir).

    Returns:
        The run's Result.

    Raises:
        DlzooError: a config, data or folder problem, with the CLI's message.
        Interrupted: stopped on request after writing the checkpoint; the message says how to resume.
    """
    args = _args(overrides, data_root)
    dirs = [str(Path(d).expanduser().absolute()) for d in _as_list(config_dir)]
    flags = split_args(args).flags
    if flags:
        raise DlzooError(f"dlzoo.train runs one config and takes overrides only, not {' '.join(flags)}. Fix: for a "
                         "sweep, call dlzoo.train once per value in a loop (or run `!dlzoo train -m ...` and "
                         "dlzoo.load its run folders); for --config-dir use config_dir=.")  # fmt: skip
    if requested_devices(args) > 1:
        raise DlzooError("dlzoo.train trains in this process, and trainer.devices > 1 needs one process per "
                         "device. Fix: run `!dlzoo train ... trainer.devices=N`, then dlzoo.load its "
                         "folder.")  # fmt: skip
    problem = output_problem(args) or precheck([*args, *(w for d in dirs for w in ("--config-dir", d))])
    if problem:
        raise DlzooError(problem)
    return _train(args, dirs)


def _train(args: list[str], dirs: list[str]) -> Result:
    """The run itself: Hydra's run machinery around the CLI's task body, the notebook view fed by its epochs."""
    history: list[dict[str, Any]] = []
    folders: list[Path] = []
    failed: list[Exception] = []
    view = None

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        history.append({"epoch": epoch, **metrics})
        if view is not None:
            view.epoch_end(epoch, metrics)

    def task(cfg: DictConfig) -> dict[str, Any] | None:
        nonlocal view
        out = Path(HydraConfig.get().runtime.output_dir)
        if _notebook():
            view = NotebookView(cfg.trainer.epochs, "dlzoo.train(" + ", ".join(map(repr, args)) + ")")
        try:
            with stop_on_signals() as stop:
                return run(cfg, out, stop, on_epoch_end, on_folder=folders.append)
        except Exception as e:  # raised below, after Hydra: it would print "Error executing job" on stderr first
            failed.append(e)
            return None
        finally:
            remove_if_empty(out)  # as the CLI: a run that wrote nothing leaves no empty folder

    # hydra.mode=RUN: what @hydra.main adds for a single run, so .hydra/hydra.yaml is the CLI's to the letter.
    overrides = [*args, "hydra.mode=RUN"]
    overrides += [f"hydra.searchpath=[{','.join('file://' + d for d in dirs)}]"] if dirs else []
    try:
        with _process_state(quiet=_notebook()):
            metrics = _hydra_run(overrides, task)
        if failed:
            raise failed[0]
    except Interrupted as e:
        if folders:
            resume = [a for a in args if not a.startswith("trainer.resume=")] + [f"trainer.resume={folders[-1]}"]
            keywords = [f"config_dir={dirs!r}"] if dirs else []
            e.hint = "Resume with: dlzoo.train(" + ", ".join([*map(repr, resume), *keywords]) + ")"
        if view is not None:
            view.stopped("interrupted: checkpoint written")
        raise
    except DlzooError as e:
        if view is not None:
            view.stopped("failed: " + str(e).split(". ")[0])
        raise
    folder = folders[-1]
    if view is not None:
        view.finish(metrics, folder)
    return _result(folder, metrics, history)


def _hydra_run(overrides: list[str], task: Any) -> Any:
    """Hydra's run mode, as @hydra.main drives it: compose conf/train.yaml with `overrides`, make hydra.run.dir
    with .hydra/ (config, hydra, overrides) and train.log, set HydraConfig, call `task`. GlobalHydra is restored
    afterwards, so the next call (or the user's own compose) starts clean."""
    register_configs()
    try:
        # job_name "train": the job name @hydra.main gives dlzoo/train.py, which names the log file train.log.
        with initialize_config_dir(config_dir=str(conf_dir()), job_name="train", version_base="1.3"):
            hydra = GlobalHydra.instance().hydra
            assert hydra is not None
            return hydra.run(config_name="train", task_function=task, overrides=overrides).return_value
    except HydraException as e:
        raise DlzooError(explain(e)) from None


def ladder(
    *overrides: str,
    seeds: int = 3,
    epochs: int | None = None,
    rungs: Sequence[str] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    jobs: int = 1,
    stack: str = "auto",
    rung_seeds: dict[str, int] | None = None,
    data_root: str | Path | None = None,
) -> LadderResult:
    """The lectures' accuracy ladder, as `dlzoo ladder` (each rung × seed a run of its own, then the table).

    Args:
        *overrides: Hydra overrides for every run, e.g. "data.train_subset=2000".
        seeds: seeds per rung (--seeds).
        epochs: epochs for every rung (--epochs; default each lab's own).
        rungs: a subset of the rungs, in ladder order (--rungs; default all).
        out: the ladder's folder (--out; default outputs/ladder/<timestamp>).
        resume: continue the ladder in `out`, skipping finished runs (--resume).
        jobs: runs side by side (--jobs).
        stack: train a rung's seeds as one stacked model: auto, on, off (--stack).
        rung_seeds: seeds for some rungs, e.g. {"lab11_5_ensemble": 1} (--rung-seeds).
        data_root: the dataset folder (data.root=...).

    Returns:
        The LadderResult: its folder, its table and every run.
    """
    # scipy and matplotlib (the ladder's table and chart) load only when a ladder runs
    from dlzoo.sweeps.ladder import ladder_command

    folder = Path(out) if out is not None else Path("outputs/ladder") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    argv = ["--seeds", str(seeds), "--out", str(folder), "--jobs", str(jobs), "--stack", stack]
    argv += ["--epochs", str(epochs)] if epochs is not None else []
    argv += ["--rungs", ",".join(rungs)] if rungs else []
    argv += ["--rung-seeds", ",".join(f"{k}={v}" for k, v in rung_seeds.items())] if rung_seeds else []
    argv += ["--resume"] if resume else []
    try:
        with _process_state(quiet=False):
            code = ladder_command([*argv, *_args(overrides, data_root)])
    except Interrupted as e:
        e.hint = (
            "The interrupted runs checkpointed. Continue with: dlzoo.ladder(<the same arguments>, "
            f"resume=True, out={str(folder)!r})"
        )
        raise
    table = _read_csv(folder / "ladder.csv")
    runs = [load(p.parent) for p in sorted(folder.glob("*/seed*/metrics.json"))]
    return LadderResult(folder, table, runs, failed=code != 0)


def compare(
    *folders: str | Path,
    by: Sequence[str] | None = None,
    baseline: str | None = None,
    metric: str = "test_acc",
    out: str | Path | None = None,
    chain: bool = False,
) -> Any:
    """Runs on one axis, as `dlzoo compare`: grouped by what differs between them, each group against the
    baseline (or, with `chain`, the group before it) with a verdict on whether the difference is beyond seed noise.

    Args:
        *folders: run, sweep or ladder folders, or glob patterns.
        by: the config keys that define the groups (--by; default the keys that differ).
        baseline: the group the others are compared with (--baseline; default the first).
        metric: the metrics.json key the verdicts are about (--metric).
        out: where to write (--out; default <folder>/compare for one folder).
        chain: each group against the one before it (--chain).

    Returns:
        dlzoo.sweeps.compare.Compared: `.comparison` (arms, summaries, contrasts, `verdict(arm)`), `.out`,
        `.files`, and `.table()` (compare.csv as a DataFrame with pandas, else a list of dicts).
    """
    # scipy and matplotlib load only when a comparison runs
    from dlzoo.sweeps.compare import compare as compare_runs
    from dlzoo.sweeps.compare import show

    result = compare_runs(list(folders), list(by) if by else None, baseline, metric,
                          Path(out) if out is not None else None, chain)  # fmt: skip
    if _notebook():
        # IPython is there only in a notebook (the optional `notebook` extra)
        from IPython.display import Image, Markdown, display

        display(Markdown((result.out / "compare.md").read_text()))
        display(*(Image(str(path)) for path in result.files if path.suffix == ".png"))
    else:
        show(result)
    return result


def load(run_folder: str | Path) -> Result:
    """A run folder written by `dlzoo train` or `dlzoo.train`, read back: metrics, per-epoch history, config.

    Args:
        run_folder: the folder (it holds .hydra/config.yaml).

    Returns:
        Its Result (metrics None while it has not finished).
    """
    folder = Path(run_folder).expanduser()
    if not (folder / ".hydra" / "config.yaml").is_file():
        raise DlzooError(f"{folder} is not a dlzoo run folder (no .hydra/config.yaml). Fix: give the folder that "
                         "dlzoo.train or `dlzoo train` printed (outputs/runs/<date>_<model> by default).")  # fmt: skip
    metrics_file = folder / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    return _result(folder, metrics, [])


def _result(folder: Path, metrics: dict[str, Any] | None, history: list[dict[str, Any]]) -> Result:
    """A Result from the run folder's files; the history is the checkpoint's when there is one (every epoch since
    the start, a resumed run's too), else what the call saw."""
    config = OmegaConf.load(folder / ".hydra" / "config.yaml")
    assert isinstance(config, DictConfig)
    overrides_file = folder / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
    return Result(folder, metrics, _frame(_saved_history(folder) or history), config, overrides)


def _saved_history(folder: Path) -> list[dict[str, Any]]:
    """The per-epoch rows kept in the run's last checkpoint (each ensemble member's, or each stacked seed's)."""
    parts = [(None, folder)] if resumable_file(folder) else []
    parts += [(p.name, p) for p in sorted(folder.glob("member*")) + sorted(folder.glob("seed*")) if resumable_file(p)]
    rows = []
    for name, part in parts:
        path = resumable_file(part)
        assert path is not None
        history = load_checkpoint(path).get("history", [])
        rows += [({"member": name} if name else {}) | dict(h) for h in history]
    return rows


def _trained_model(folder: Path) -> Any:
    model, cfg, _, path = load_model(folder, [])
    es = load_checkpoint(path).get("early_stopping") if cfg.trainer.early_stop.restore_best else None
    if es and es.get("best_state") is not None:
        model.load_state_dict(es["best_state"])
    return model


def _frame(rows: list[dict[str, Any]]) -> Any:
    """A pandas DataFrame of `rows` when pandas is installed, else the rows themselves."""
    try:
        # pandas is optional (the `notebook` extra)
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows)


def _read_csv(path: Path) -> Any:
    """A CSV the sweeps write (ladder.csv): a DataFrame with pandas, else a list of dicts of strings."""
    if not path.is_file():
        return []
    try:
        # pandas is optional (the `notebook` extra)
        import pandas as pd
    except ImportError:
        with path.open() as f:
            return list(csv.DictReader(f))
    return pd.read_csv(path)


def _rows(history: Any) -> list[Any]:
    return history.to_dict("records") if hasattr(history, "to_dict") else list(history)


def _args(overrides: Sequence[str], data_root: str | Path | None) -> list[str]:
    bad = [o for o in overrides if not isinstance(o, str)]
    if bad:
        raise DlzooError(f"overrides are strings as typed on the command line, e.g. \"trainer.epochs=3\"; got "
                         f"{bad[0]!r}.")  # fmt: skip
    return [*overrides, *([f"data.root={data_root}"] if data_root is not None else [])]


def _as_list(value: str | Path | Sequence[str | Path] | None) -> list[str | Path]:
    if value is None:
        return []
    return [value] if isinstance(value, (str, Path)) else list(value)


def _notebook() -> bool:
    return in_jupyter()


@contextmanager
def _process_state(quiet: bool) -> Iterator[None]:
    """What a run changes process-wide, put back afterwards, since a notebook runs many in one process: the
    logging handlers Hydra installs (train.log of this run stays open otherwise), torch's thread count and
    determinism switches, and the quiet of logging and writer threads on a full disk. `quiet` mutes dlzoo's
    console (the notebook view shows the run instead); warnings and errors still print."""
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]  # fmt: skip
    saved = {id(lg): (lg, list(lg.handlers), lg.level, lg.propagate, lg.disabled) for lg in loggers}
    torch_state = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled(), torch.is_anomaly_enabled(),
                   torch.backends.cudnn.benchmark)  # fmt: skip
    was_quiet = console.quiet
    console.quiet = quiet or was_quiet
    loud_when_full = quiet_when_full()
    try:
        yield
    finally:
        loud_when_full()
        console.quiet = was_quiet
        kept = {id(h) for _, handlers, *_ in saved.values() for h in handlers}
        now = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]  # fmt: skip
        for lg in now:
            for handler in list(lg.handlers):
                if id(handler) not in kept:
                    lg.removeHandler(handler)
                    handler.close()
        for lg, handlers, level, propagate, disabled in saved.values():
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled
        threads, deterministic, warn_only, anomaly, benchmark = torch_state
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.autograd.set_detect_anomaly(anomaly)
        torch.backends.cudnn.benchmark = benchmark
