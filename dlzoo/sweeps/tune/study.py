"""The study behind `dlzoo tune`: its storage (SQLite in the output folder, or a shared database any number of
workers join by name), the trial budget those workers share, and the heartbeat that retries a dead worker's trial."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dlzoo.errors import DlzooError
from dlzoo.paths import open_nofollow
from dlzoo.sweeps.tune.trial import finish

if TYPE_CHECKING:
    import optuna

    from dlzoo.engine.training.stopping import StopFlag

GRACE_HEARTBEATS = 5  # a trial is dead after this many missed heartbeats: a busy 1-thread trainer can miss one
MAX_RETRIES = 3  # a trial whose worker died this often is killing its workers (out of memory, say): give up on it


def sqlite_url(out: Path) -> str:
    """The default storage: one SQLite file in the search's own folder (one worker at a time)."""
    return f"sqlite:///{(out / 'study.db').absolute()}"


def shown_url(url: str) -> str:
    """The storage URL with any password masked, for tables and messages."""
    try:
        # sqlalchemy comes with optuna, the optional `tune` extra
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL SQLAlchemy cannot parse is reported when the storage opens
        return url


def open_storage(url: str, heartbeat_s: int | None = None) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage; with `heartbeat_s`, each running trial's worker records a heartbeat that often and a
    trial silent for GRACE_HEARTBEATS of them is failed and queued again (RetryHeartbeatStaleTrialCallback)."""
    # optuna is the optional `tune` extra
    import optuna

    kwargs: dict[str, object] = {}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: since 2.8
    if heartbeat_s is not None:
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        callback = "heartbeat_stale_trial_callback" if retry is not None else "failed_trial_callback"
        retry = retry or optuna.storages.RetryFailedTrialCallback  # optuna < 4.6 names it so
        kwargs = {"heartbeat_interval": heartbeat_s, "grace_period": GRACE_HEARTBEATS * heartbeat_s,
                  callback: retry(max_retry=MAX_RETRIES)}  # fmt: skip
    if problem := _foreign_sqlite(url):
        raise DlzooError(problem)
    try:
        # pool_pre_ping: a worker that idled past the server's connection timeout reconnects instead of failing.
        engine = {"pool_pre_ping": True} if not url.startswith("sqlite") else None
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
    except ImportError as e:
        raise DlzooError(f"The study database {shown_url(url)} needs a driver ({e}). Fix: pip install "
                         "'dlzoo[postgres]' for postgresql:// URLs.") from None  # fmt: skip
    except Exception as e:  # SQLAlchemy, Alembic and Optuna each have their own error types for a bad database
        raise DlzooError(f"Cannot open the study database {shown_url(url)}: {e}. Fix: check the URL "
                         "(postgresql://user:password@host:5432/dbname), that the server runs and that the "
                         "database exists (createdb dbname).") from None  # fmt: skip


def _foreign_sqlite(url: str) -> str | None:
    """An existing SQLite file that is not an Optuna study (another program's database, or not a database at all):
    opening it as storage would add Optuna's tables to it. Read read-only, before anything is written."""
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url.removeprefix("sqlite:///"))
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as e:
        tables, why = None, str(e)
    if tables is None or (tables and "studies" not in tables):
        what = f"a database of something else (tables: {', '.join(sorted(tables)[:5])})" if tables else \
            f"not an SQLite database ({why})"  # fmt: skip
        return (
            f"{path} is {what}, not an Optuna study; dlzoo tune would add its own tables to it. Fix: give the "
            "search its own folder (--out <new folder>)."
        )
    return None


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def retry_of(trial: optuna.trial.FrozenTrial) -> int | None:
    """The trial this one runs again: after its worker's heartbeat stopped (the last of Optuna's system attr
    `retry_history`, which also copies the failed trial's user attrs), else after a Ctrl-C or a killed SQLite
    search (user attr `retry_of`)."""
    history = trial.system_attrs.get("retry_history") or []
    return history[-1] if history else trial.user_attrs.get("retry_of")


def superseded(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """The numbers of failed trials that were queued again: their retry stands in for them in the budget."""
    return {n for t in trials if (n := retry_of(t)) is not None}


def counted(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that take a place in the budget: every trial, less those a retry replaced."""
    gone = superseded(trials)
    return [t for t in trials if t.number not in gone]


def finished(trials: list[optuna.trial.FrozenTrial]) -> int:
    return sum(t.state.is_finished() for t in counted(trials))


@contextlib.contextmanager
def folder_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An advisory lock on `path` (fcntl.flock): yields whether it is held. Workers on other machines share it
    through the output folder's file system (NFS and Lustre pass flock on); on Windows nothing is locked."""
    try:
        # Unix-only (on Windows nothing is locked)
        import fcntl
    except ImportError:
        yield True
        return
    with os.fdopen(open_nofollow(path, os.O_RDWR | os.O_CREAT), "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError:
            yield False
            return
        yield True


def next_trial(study: optuna.Study, n_trials: int, out: Path, stop: StopFlag, poll_s: float) -> optuna.Trial | None:
    """Take the next trial of the shared budget, or None once every place in it is finished.

    Under a lock in the output folder, so two workers never both take the last place: fail the trials whose worker
    stopped beating (their retries join the queue), then run a queued trial, else a new one while the budget has
    room. With no room but trials still running elsewhere, wait: one of them may die and be queued again.
    """
    # optuna is the optional `tune` extra
    import optuna

    while stop.signum is None:
        with folder_lock(out / ".ask.lock"):
            with warnings.catch_warnings():  # "experimental since 2.9": stable in use since
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            everything = study.get_trials(deepcopy=False)
            _mark_abandoned(everything, out)
            trials = counted(everything)
            if len(trials) < n_trials or any(t.state == optuna.trial.TrialState.WAITING for t in trials):
                with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for optimize(); we beat
                    warnings.simplefilter("ignore")
                    return study.ask()
        if not any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
            return None
        time.sleep(poll_s)
    return None


def _mark_abandoned(trials: list[optuna.trial.FrozenTrial], out: Path) -> None:
    """A retried trial's folder still says "running" when its worker died: say what happened to it instead."""
    retries = {n: t.number for t in trials if (n := retry_of(t)) is not None}
    for t in trials:
        path = out / f"trial_{t.number}" / "trial.json"
        if t.number in retries and t.state.is_finished() and path.is_file():
            status = json.loads(path.read_text())
            if status.get("state") == "running":
                finish(path.parent, status, "interrupted", None, f"its worker stopped (no heartbeat for the grace "
                       f"period); trial {retries[t.number]} runs its parameters again")  # fmt: skip


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial: optuna.Trial) -> Iterator[None]:
    """Record `trial`'s heartbeat from a thread while it trains (what Study.optimize does; tune asks and tells
    itself). A no-op on a storage without heartbeats."""
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if interval is None:
        yield
        return
    trial_id = trial._trial_id  # Optuna's heartbeat API takes the storage's id, which Trial keeps private
    done = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a lost connection: the next beat retries; silence means death
                storage.record_heartbeat(trial_id)
            if done.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"dlzoo-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
