"""`dlzoo tune search=<name>`: an Optuna study whose trials are ordinary dlzoo runs, pruned epoch by epoch on the
validation metric. The study lives in SQLite inside the output folder (one worker), or in a shared database
(--storage postgresql://...) that any number of workers, on any machines sharing the output folder, join by name."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from dlzoo.config.compose import compose_and_validate, config_groups
from dlzoo.config.launch import usable_cores
from dlzoo.console import console
from dlzoo.engine.training.stopping import Interrupted, stop_on_signals
from dlzoo.errors import DlzooError
from dlzoo.paths import refuse_links
from dlzoo.sweeps.tune import study as st
from dlzoo.sweeps.tune.report import report
from dlzoo.sweeps.tune.search import build_pruner, build_sampler, check_search
from dlzoo.sweeps.tune.study import open_storage, sqlite_url, study_names
from dlzoo.sweeps.tune.trial import TrialPlan, finish, run_trial
from dlzoo.sweeps.tune.workers import WORKER_ENV, run_workers

if TYPE_CHECKING:
    import optuna

    from dlzoo.sweeps.tune.trial import TrialPlan

SAME_FAILURES_TO_STOP = 3  # this many trials failing with one message means the setup is broken, not the draws
HEARTBEAT_S = 20  # a dead worker's trial is retried after 5 silent heartbeats: ~2 minutes, short beside a trial


def tune_command(argv: list[str]) -> int:
    """Parse `dlzoo tune` arguments and run (or resume, or join) the search; returns the exit code."""
    parser = argparse.ArgumentParser(prog="dlzoo tune", description=__doc__)
    parser.add_argument("overrides", nargs="*", help="search=<name> (conf/search/), then train overrides")
    parser.add_argument("--trials", type=int, help="trials in total, resumed ones included (default: n_trials)")
    parser.add_argument("--out", type=Path, help="output folder (default: outputs/tune/<date>_<search>, or "
                        "outputs/tune/<study name> with --storage)")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue the study in --out (or --storage)")
    parser.add_argument("--config-dir", type=Path, help="an extra config folder (its search/ holds your spaces)")
    parser.add_argument("--storage", help="a shared study database, e.g. postgresql://user:pw@host/db "
                        "(default: SQLite in --out)")  # fmt: skip
    parser.add_argument("--study-name", help="the study's name in --storage (default: the search's name)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (needs --storage)")
    parser.add_argument("--threads", type=int, help="CPU threads per trial (default: trainer.threads, or the "
                        "cores // --workers)")  # fmt: skip
    parser.add_argument("--seeds", type=int, help="seeds per trial (default 1); stacked where the model allows")
    parser.add_argument("--objective", choices=["mean", "lcb"], help="what a trial with several seeds scores: "
                        "the seeds' mean, or its lower 95%% confidence bound (default: mean)")  # fmt: skip
    parser.add_argument("--heartbeat", type=int, default=HEARTBEAT_S, help="seconds between a running trial's "
                        f"heartbeats with --storage; 5 missed fail and retry it (default {HEARTBEAT_S})")  # fmt: skip
    args = parser.parse_intermixed_args(argv)
    try:
        # optuna is the optional `tune` extra
        import optuna
    except ImportError as e:
        raise DlzooError(f"dlzoo tune needs Optuna ({e}). Fix: pip install 'dlzoo[tune]'.") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # dlzoo prints each trial's outcome itself
    try:
        return _tune(args)
    except Interrupted as e:
        raise Interrupted(None, e.signum, _resume_hint(args)) from None
    except KeyboardInterrupt:
        raise Interrupted(None, signal.SIGINT, _resume_hint(args)) from None


def _resume_hint(args: argparse.Namespace) -> str:
    where = f"--storage '{args.storage}' --study-name {args.study_name} " if args.storage else ""
    return f"The study is saved. Resume with: dlzoo tune --resume {where}--out {args.out}"


def _tune(args: argparse.Namespace) -> int:
    shared = args.storage is not None
    for flag, value in (("--workers", args.workers), ("--seeds", args.seeds), ("--heartbeat", args.heartbeat),
                        ("--threads", args.threads)):  # fmt: skip
        if value is not None and value < 1:
            raise DlzooError(f"{flag} {value}: must be at least 1.")
    if args.workers > 1 and not shared:
        raise DlzooError(f"--workers {args.workers} needs a study database that several processes can write at "
                         "once; SQLite (the default) is not one. Fix: --storage postgresql://user@host/dbname "
                         "(docs/tune.md shows a local PostgreSQL in two commands), or drop --workers.")  # fmt: skip
    stored = _stored(args) if args.resume else {}
    # A user's config folder joins Hydra's search path for the search file and for every trial's groups.
    extra = [f"hydra.searchpath=[file://{args.config_dir.absolute()}]"] if args.config_dir else []
    overrides = [*args.overrides, *extra] or stored.get("args", [])
    name, search, base_args = _compose_search(overrides)
    options = {"seeds": args.seeds or stored.get("seeds", 1), "objective": args.objective or stored.get("objective")
               or "mean"}  # fmt: skip
    if options["objective"] == "lcb" and options["seeds"] < 2:
        raise DlzooError("--objective lcb needs --seeds 2 or more: one seed has no spread to bound. Fix: add "
                         "--seeds 3 (or drop --objective lcb to optimize the single seed's score).")  # fmt: skip
    if options["seeds"] > 1 and (size := compose_and_validate(base_args).ensemble.size) > 1:
        raise DlzooError(
            f"--seeds {options['seeds']} with ensemble.size={size} would train seeds x members models "
            "per trial. Fix: tune the ensemble with --seeds 1 (its members already average seeds)."
        )
    n_trials = args.trials if args.trials is not None else search.n_trials
    if n_trials < 1:
        raise DlzooError(f"--trials {n_trials}: a search needs at least one trial.")
    args.study_name = args.study_name or stored.get("study") or name
    args.out = (
        args.out
        or (Path(stored["out"]) if stored.get("out") else None)
        or Path("outputs/tune") / (args.study_name if shared else f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{name}")
    )
    out: Path = args.out
    url = args.storage or st.sqlite_url(out)
    if not shared and (out / "study.db").is_file() and not args.resume:
        raise DlzooError(f"{out} already holds a search. Fix: add --resume to continue it, or pick another --out.")
    _check_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"metric": search.metric, "direction": search.direction, "overrides": base_args,
            "space": OmegaConf.to_container(search.space), **options}  # fmt: skip
    plan = TrialPlan(search.metric, search.direction, base_args, options["seeds"], options["objective"],
                     _threads(args, base_args))  # fmt: skip
    if args.workers > 1:
        storage = st.open_storage(url)
        study = _open_study(storage, args.study_name, search, spec, overrides, out)
        rc = run_workers(args, out, n_trials)
        report(
            optuna_load(storage, args.study_name),
            search.metric,
            out,
            name,
            st.shown_url(url),
            _scored(search.metric, options),
        )
        if rc - 128 in (signal.SIGINT, signal.SIGTERM):
            raise Interrupted(None, rc - 128)
        return rc

    # SQLite: one worker holds the folder, so a RUNNING trial in the database is one a killed search left behind.
    lock = contextlib.nullcontext(True) if shared else st.folder_lock(out / ".lock", blocking=False)
    with lock as held, stop_on_signals() as stop:
        if not held:
            raise DlzooError(f"Another dlzoo tune is running in {out}. Fix: wait for it, use another --out, or "
                             "share a --storage database to run several workers.")  # fmt: skip
        storage = st.open_storage(url, args.heartbeat if shared else None)
        study = _open_study(storage, args.study_name, search, spec, overrides, out)
        if not shared:
            _requeue_interrupted(study, out)
        seed_shift = _worker_number() if shared else 0
        study = optuna_load(storage, args.study_name, build_pruner(search.pruner),
                            build_sampler(search.sampler, len(study.trials) + 7919 * seed_shift))  # fmt: skip

        joined = f", joining {len(study.trials)} trials" if shared and study.trials else ""
        console.print(f"dlzoo tune search={name}: {n_trials} trials, {_objective(plan)} ({search.direction}), "
                      f"sampler {search.sampler.name}, pruner {search.pruner.name}, study {args.study_name} in "
                      f"{st.shown_url(url)}{joined} -> {out}")  # fmt: skip
        same_failures: list[str] = []
        try:
            while (trial := st.next_trial(study, n_trials, out, stop, poll_s=min(args.heartbeat, 2))) is not None:
                progress = f"{st.finished(study.get_trials(deepcopy=False)) + 1}/{n_trials}"
                with st.heartbeat(storage, trial):
                    error = run_trial(study, trial, search, plan, out, stop, progress)
                same_failures = [*same_failures, error][-SAME_FAILURES_TO_STOP:] if error else []
                if len(same_failures) == SAME_FAILURES_TO_STOP and len(set(same_failures)) == 1:
                    raise DlzooError(f"{SAME_FAILURES_TO_STOP} trials in a row failed the same way, so the setup "
                                     f"is broken rather than the sampled values: {error}")  # fmt: skip
        except Interrupted:
            pass  # stop.signum is set: report what finished, then leave with the signal's exit code
        report(study, search.metric, out, name, st.shown_url(url), _scored(search.metric, options))
        if stop.signum is not None:
            raise Interrupted(None, stop.signum)
    return 0


def optuna_load(storage: Any, name: str, pruner: Any = None, sampler: Any = None) -> optuna.Study:
    # optuna is the optional `tune` extra
    import optuna

    return optuna.load_study(study_name=name, storage=storage, pruner=pruner, sampler=sampler)


def _scored(metric: str, options: dict[str, Any]) -> str | None:
    """What a trial's value is when not the metric itself: the seeds' mean or their lower 95% bound."""
    return None if options["seeds"] == 1 else f"{metric} {options['objective']} over {options['seeds']} seeds"


def _objective(plan: TrialPlan) -> str:
    if plan.seeds == 1:
        return plan.metric
    return f"{'mean' if plan.objective == 'mean' else 'lower 95% bound'} of {plan.metric} over {plan.seeds} seeds"


def _threads(args: argparse.Namespace, base_args: list[str]) -> list[str]:
    """This worker's trainer.threads: --threads, else the user's own trainer.threads, else the cores shared out
    among --workers (more threads than cores make OpenMP spin and slow every worker down)."""
    if args.threads is not None:
        return [f"trainer.threads={args.threads}"]
    if any(a.startswith("trainer.threads=") for a in base_args) or args.workers == 1:
        return []
    return [f"trainer.threads={max(1, usable_cores() // args.workers)}"]


def _worker_number() -> int:
    """Which worker this is, to give each its own sampler seed (two workers starting together would otherwise
    draw the same random trials): --workers' number, a SLURM array task's id, else the process id."""
    for key in (WORKER_ENV, "SLURM_ARRAY_TASK_ID", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key]) + 1
    return os.getpid()


def _check_folder(out: Path) -> None:
    if out.exists():
        refuse_links(out)  # the locks, the trials' folders and best.yaml are all written there


def _open_study(storage: Any, name: str, search: DictConfig, spec: dict[str, Any], args: list[str],
                out: Path) -> optuna.Study:  # fmt: skip
    """Create the study, or join the one of that name; refuse to join one that searches something else."""
    # optuna is the optional `tune` extra
    import optuna

    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=search.direction,
                                    load_if_exists=True)  # fmt: skip
    except Exception as e:  # two workers creating the same study at once: the loser loads the winner's
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except Exception:
            raise DlzooError(f"Cannot create study {name!r}: {e}") from None
    _check_same_search(study, spec, args, out)
    return study


def _check_same_search(study: optuna.Study, spec: dict[str, Any], args: list[str], out: Path) -> None:
    """Store what the study searches on its first start; refuse to resume or join it with a different search."""
    saved = study.user_attrs.get("spec")
    if saved is None:
        study.set_user_attr("spec", spec)
        study.set_user_attr("args", args)
        study.set_user_attr("out", str(out.absolute()))
        return
    saved = {"seeds": 1, "objective": "mean"} | saved  # studies from before --seeds
    changed = [key for key in spec if saved.get(key) != spec[key]]
    if changed:
        raise DlzooError(
            f"The study {study.study_name!r} differs from this one in: {', '.join(changed)} (it ran: dlzoo tune "
            f"{' '.join(study.user_attrs.get('args', []))}). Fix: resume with those arguments (or none: "
            "--resume alone reuses them), or start the new search in another --out (or --study-name)."
        )


def _stored(args: argparse.Namespace) -> dict[str, Any]:
    """What a study was started with (its arguments, seeds, objective, study name, folder), for --resume."""
    # optuna is the optional `tune` extra
    import optuna

    if args.storage is None:
        if args.out is None:
            raise DlzooError("--resume needs --out <the search's folder> (printed when the search started).")
        if not (args.out / "study.db").is_file():
            raise DlzooError(f"No search to resume in {args.out} (no study.db). Fix: check --out, or drop --resume.")
    url = args.storage or sqlite_url(args.out)
    try:
        storage = open_storage(url)
        names = study_names(storage)
    except DlzooError as e:
        raise DlzooError(f"Cannot read the search in {args.out if args.storage is None else url}: {e}") from None
    name = args.study_name or (names[0] if len(names) == 1 else None)
    if name not in names:
        known = ", ".join(names) or "none"
        raise DlzooError(f"No study to resume named {name or '(unnamed)'} in this storage (studies: {known}). Fix: "
                         "pass --study-name <one of them>.")  # fmt: skip
    study = optuna.load_study(study_name=name, storage=storage)
    spec = study.user_attrs.get("spec", {})
    return {"args": list(study.user_attrs.get("args", [])), "seeds": spec.get("seeds", 1),
            "objective": spec.get("objective", "mean"), "study": name, "out": study.user_attrs.get("out")}  # fmt: skip


def _compose_search(overrides: list[str]) -> tuple[str, DictConfig, list[str]]:
    """Compose and check the search named by `search=<name>` in `overrides`. Returns its name, the search node,
    and the overrides every trial starts from: the search file's, then the command line's other ones."""
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


def _requeue_interrupted(study: optuna.Study, out: Path) -> None:
    """A trial still RUNNING in the SQLite study belongs to a search that was killed (the folder lock rules out a
    live one): mark it failed and queue its parameters again."""
    # optuna is the optional `tune` extra
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        folder = out / f"trial_{trial.number}"
        if (folder / "trial.json").is_file():
            finish(folder, json.loads((folder / "trial.json").read_text()), "interrupted", None,
                   "the search was killed during this trial; --resume ran it again")  # fmt: skip
        console.print(f"trial {trial.number} was interrupted: marked failed, its parameters queued again")
