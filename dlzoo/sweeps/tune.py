"""`dlzoo tune search=<name>`: an Optuna study whose trials are ordinary dlzoo runs, pruned epoch by epoch on the
validation metric and stored in SQLite inside the output folder, so an interrupted search resumes where it stopped."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from dlzoo.engine.folders import write_json
from dlzoo.errors import DlzooError
from dlzoo.paths import open_nofollow, refuse_links

if TYPE_CHECKING:
    import optuna

    from dlzoo.engine.stopping import StopFlag

STUDY = "dlzoo"  # one study per output folder, so its name carries nothing
SAME_FAILURES_TO_STOP = 3  # this many trials failing with one message means the setup is broken, not the draws


def tune_command(argv: list[str]) -> int:
    """Parse `dlzoo tune` arguments and run (or resume) the search; returns the exit code."""
    from dlzoo.engine.stopping import Interrupted

    parser = argparse.ArgumentParser(prog="dlzoo tune", description=__doc__)
    parser.add_argument("overrides", nargs="*", help="search=<name> (conf/search/), then train overrides")
    parser.add_argument("--trials", type=int, help="trials in total, resumed ones included (default: n_trials)")
    parser.add_argument("--out", type=Path, help="output folder (default: outputs/tune/<date>_<search>)")
    parser.add_argument("--resume", action="store_true", help="continue the study in --out")
    parser.add_argument("--config-dir", type=Path, help="an extra config folder (its search/ holds your spaces)")
    args = parser.parse_intermixed_args(argv)
    try:
        import optuna
    except ImportError as e:
        raise DlzooError(f"dlzoo tune needs Optuna ({e}). Fix: pip install 'dlzoo[tune]'.") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # dlzoo prints each trial's outcome itself
    hint = f"The study is saved. Resume with: dlzoo tune --resume --out {args.out}"
    try:
        return _tune(args)
    except Interrupted as e:
        raise Interrupted(None, e.signum, hint) from None
    except KeyboardInterrupt:
        raise Interrupted(None, signal.SIGINT, hint) from None


def _tune(args: argparse.Namespace) -> int:
    import optuna

    from dlzoo.engine.stopping import Interrupted, stop_on_signals
    from dlzoo.sweeps.search import build_pruner, build_sampler
    from dlzoo.sweeps.tune_report import report

    if args.resume and args.out is None:
        raise DlzooError("--resume needs --out <the search's folder> (printed when the search started).")
    if args.resume and not (args.out / "study.db").is_file():
        raise DlzooError(f"No search to resume in {args.out} (no study.db). Fix: check --out, or drop --resume.")
    # A user's config folder joins Hydra's search path for the search file and for every trial's groups.
    extra = [f"hydra.searchpath=[file://{args.config_dir.absolute()}]"] if args.config_dir else []
    stored = _stored_args(args.out / "study.db") if args.resume else []
    overrides = [*args.overrides, *extra] or stored
    name, search, base_args = _compose_search(overrides)
    n_trials = args.trials if args.trials is not None else search.n_trials
    if n_trials < 1:
        raise DlzooError(f"--trials {n_trials}: a search needs at least one trial.")

    out = args.out or Path("outputs/tune") / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{name}"
    db = out / "study.db"
    if db.is_file() and not args.resume:
        raise DlzooError(f"{out} already holds a search. Fix: add --resume to continue it, or pick another --out.")
    out.mkdir(parents=True, exist_ok=True)
    args.out = out  # for the resume hint if the search is interrupted
    with _lock(out), stop_on_signals() as stop:
        storage = optuna.storages.RDBStorage(f"sqlite:///{db.absolute()}")
        study = optuna.create_study(study_name=STUDY, storage=storage, direction=search.direction, load_if_exists=True)
        spec = {"metric": search.metric, "direction": search.direction, "overrides": base_args,
                "space": OmegaConf.to_container(search.space)}  # fmt: skip
        _check_same_search(study, spec, overrides)
        _requeue_interrupted(study, out)
        study = optuna.load_study(study_name=STUDY, storage=storage, pruner=build_pruner(search.pruner),
                                  sampler=build_sampler(search.sampler, len(study.trials)))  # fmt: skip
        from dlzoo.console import console

        console.print(f"dlzoo tune search={name}: {n_trials} trials, {search.metric} ({search.direction}), "
                      f"sampler {search.sampler.name}, pruner {search.pruner.name} -> {out}")  # fmt: skip
        same_failures: list[str] = []
        try:
            while (done := _counted(study)) < n_trials and stop.signum is None:
                error = _run_trial(study, search, base_args, out, stop, f"{done + 1}/{n_trials}")
                same_failures = [*same_failures, error][-SAME_FAILURES_TO_STOP:] if error else []
                if len(same_failures) == SAME_FAILURES_TO_STOP and len(set(same_failures)) == 1:
                    raise DlzooError(f"{SAME_FAILURES_TO_STOP} trials in a row failed the same way, so the setup "
                                     f"is broken rather than the sampled values: {error}")  # fmt: skip
        except Interrupted:
            pass  # stop.signum is set: report what finished, then leave with the signal's exit code
        report(study, search.metric, out, name)
        if stop.signum is not None:
            raise Interrupted(None, stop.signum)
    return 0


def _compose_search(overrides: list[str]) -> tuple[str, DictConfig, list[str]]:
    """Compose and check the search named by `search=<name>` in `overrides`. Returns its name, the search node,
    and the overrides every trial starts from: the search file's, then the command line's other ones."""
    from dlzoo.config.compose import compose_and_validate, config_groups
    from dlzoo.sweeps.search import check_search

    name = next((o.split("=", 1)[1] for o in overrides if o.startswith("search=")), None)
    if name is None:
        searches = ", ".join(config_groups().get("search", []))
        raise DlzooError(f"Name a search space: dlzoo tune search=<name>; choices: {searches} (conf/search/).")
    search_args = [o for o in overrides if o.startswith(("search=", "search.", "hydra.searchpath="))]
    train_args = [o for o in overrides if not o.startswith(("search=", "search."))]
    search = compose_and_validate(search_args).search
    searched = {o.lstrip("+~").split("=", 1)[0] for o in train_args} & set(search.space)
    if searched:
        raise DlzooError(f"{', '.join(sorted(searched))} is searched by search={name}; drop it from the command "
                         "line, or from the search's space to fix it.")  # fmt: skip
    base_args = [*search.overrides, *train_args]
    check_search(search, compose_and_validate(base_args), config_groups())
    return name, search, base_args


def _run_trial(
    study: optuna.Study, search: DictConfig, base: list[str], out: Path, stop: StopFlag, progress: str
) -> str | None:
    """Ask the study for one trial, train it as a normal run in out/trial_<k>, and tell the study how it ended.
    Returns the error message of a failed trial, else None."""
    import optuna
    from optuna.trial import TrialState

    from dlzoo.config.compose import compose_and_validate
    from dlzoo.console import console, print_error
    from dlzoo.engine.run import run
    from dlzoo.engine.stopping import Interrupted
    from dlzoo.sweeps.search import METRICS, suggest_overrides

    trial = study.ask()
    drawn = suggest_overrides(trial, search.space)
    folder = out / f"trial_{trial.number}"
    trial.set_user_attr("overrides", drawn)
    status = {"number": trial.number, "state": "running", "params": drawn, "overrides": base + drawn, "values": []}
    tag = METRICS[search.metric][0]
    console.rule(f"trial {trial.number} ({progress}): {' '.join(drawn)}")

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        trial.report(metrics[tag], epoch)
        status["values"].append(metrics[tag])
        _write_status(folder, status)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    folder.mkdir(parents=True, exist_ok=True)
    _write_status(folder, status)
    try:
        cfg = compose_and_validate(base + drawn)
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        value = run(cfg, folder, stop, on_epoch_end=on_epoch_end)[search.metric]
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        _finish(folder, status, "pruned", status["values"][-1])
        console.print(f"trial {trial.number} pruned after epoch {len(status['values'])}: "
                      f"{search.metric} {status['values'][-1]:.4f}")  # fmt: skip
        return None
    except DlzooError as e:
        study.tell(trial, state=TrialState.FAIL)
        _finish(folder, status, "failed", None, str(e))
        print_error(f"trial {trial.number} failed (the search goes on): {e}")
        return str(e)
    except (Interrupted, KeyboardInterrupt):
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        _finish(folder, status, "interrupted", None, "stopped by Ctrl-C or SIGTERM; --resume runs it again")
        raise
    study.tell(trial, value)
    _finish(folder, status, "complete", value)
    console.print(f"trial {trial.number} complete: {search.metric} {value:.4f}")
    return None


def _counted(study: optuna.Study) -> int:
    """Trials that count towards --trials: finished ones, less the interrupted ones that were queued again."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(t.state in finished and t.number not in retried for t in trials)


def _requeue_interrupted(study: optuna.Study, out: Path) -> None:
    """A trial still RUNNING in the database belongs to a search that was killed (the folder lock rules out a
    live one): mark it failed and queue its parameters again."""
    from optuna.trial import TrialState

    from dlzoo.console import console

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        folder = out / f"trial_{trial.number}"
        if (folder / "trial.json").is_file():
            _finish(folder, json.loads((folder / "trial.json").read_text()), "interrupted", None,
                    "the search was killed during this trial; --resume ran it again")  # fmt: skip
        console.print(f"trial {trial.number} was interrupted: marked failed, its parameters queued again")


def _check_same_search(study: optuna.Study, spec: dict[str, Any], args: list[str]) -> None:
    """Store what the study searches on its first start; refuse to resume it with a different search."""
    saved = study.user_attrs.get("spec")
    if saved is None:
        study.set_user_attr("spec", spec)
        study.set_user_attr("args", args)
        return
    changed = [key for key in spec if saved.get(key) != spec[key]]
    if changed:
        raise DlzooError(
            f"The study in this folder differs from this one in: {', '.join(changed)} (it ran: dlzoo tune "
            f"{' '.join(study.user_attrs.get('args', []))}). Fix: resume with those arguments (or none: "
            "--resume alone reuses them), or start the new search in another --out."
        )


def _stored_args(db: Path) -> list[str]:
    import optuna

    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{db.absolute()}")
        return list(optuna.load_study(study_name=STUDY, storage=storage).user_attrs.get("args", []))
    except Exception as e:  # SQLAlchemy, Alembic and Optuna each have their own error types for a bad file
        raise DlzooError(f"Cannot read the search in {db}: {e}. Fix: point --out at a dlzoo tune folder.") from None


def _write_status(folder: Path, status: dict[str, Any]) -> None:
    if folder.is_dir():
        write_json(folder / "trial.json", status)


def _finish(folder: Path, status: dict[str, Any], state: str, value: float | None, error: str | None = None) -> None:
    _write_status(folder, status | {"state": state, "value": value, "epochs": len(status["values"]), "error": error})


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """One search per folder at a time; this is also what lets a resume treat RUNNING trials as dead."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one search per folder is then on the user
        yield
        return
    refuse_links(out)  # the lock, the trials' folders and best.yaml are all written there
    with os.fdopen(open_nofollow(out / ".lock", os.O_RDWR | os.O_CREAT), "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DlzooError(
                f"Another dlzoo tune is running in {out}. Fix: wait for it, or use another --out."
            ) from None
        yield
