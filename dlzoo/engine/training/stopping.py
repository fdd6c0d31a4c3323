"""Why training stops before its last epoch: early stopping on a stalled validation metric, a stop request
(Ctrl-C / SIGTERM), and divergence (a NaN, infinite or exploded loss), with the errors the loop raises."""

from __future__ import annotations

import copy
import errno
import logging
import math
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from dlzoo.console import console, print_error
from dlzoo.engine.training.checkpoint import Checkpointing, resume_command, signed, start_command
from dlzoo.errors import DlzooError


class DivergedError(DlzooError):
    """The loss became NaN or infinite."""


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C / SIGTERM) after writing a resumable checkpoint. `hint` says how to
    continue when the command is not a single `dlzoo train` (a search, a ladder)."""

    def __init__(self, checkpoint: Path | None, signum: int, hint: str | None = None) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.checkpoint, self.signum, self.hint = checkpoint, signum, hint

    def __str__(self) -> str:
        """Where the checkpoint is and how to resume: what the CLI prints and what a notebook shows."""
        where = self.checkpoint.parent.parent if self.checkpoint else None
        hint = self.hint or (f"Resume with: {resume_command(where)}" if where else "")
        saved = f"the last checkpoint is {self.checkpoint}." if self.checkpoint else "what finished is kept."
        return f"Interrupted; {saved} {hint}".rstrip()

    def _render_traceback_(self) -> list[str]:
        return ["error: " + str(self)]  # IPython shows this instead of a traceback (see dlzoo.errors)


def exit_status(e: BaseException) -> int:
    """The one error boundary of every dlzoo process (the CLI and the @hydra.main entry): a DlzooError is one
    paragraph on stderr and exit 2; a stop request says where the checkpoint is and how to resume, exit 128 + its
    signal; a second Ctrl-C exits 130. Anything else is a bug and keeps its traceback."""
    if isinstance(e, DlzooError):
        print_error(str(e))
        return 2
    if isinstance(e, Interrupted):
        print_error(str(e))
        return 128 + e.signum
    if isinstance(e, KeyboardInterrupt):
        rank = int(os.environ.get("RANK", "0"))
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # data-parallel ranks stop at once, together (no stop flag)
            if rank == 0:
                print_error("Interrupted: data-parallel ranks stop at once; checkpoints/last.pt is the last complete "
                            "one (written every trainer.checkpoint.every epochs). A data-parallel run does not "
                            "resume: continue from it in one process with trainer.resume=<run folder>.")  # fmt: skip
        else:
            print_error("Interrupted at once (second Ctrl-C); checkpoints on disk are the last complete ones.")
        return 130
    raise e


FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left; over the user's quota


def quiet_when_full() -> Callable[[], None]:
    """From now on, a full disk met by logging or by a writer thread (TensorBoard's) prints no traceback over the
    one-paragraph error the run ends with (the writer's error reaches the run at its next write). Returns the
    function that puts the previous behaviour back (a notebook's process goes on after the run)."""
    saved = logging.raiseExceptions, threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in FULL):
            saved[1](args)

    def restore() -> None:
        logging.raiseExceptions, threading.excepthook = saved

    logging.raiseExceptions, threading.excepthook = False, hook
    return restore


def full_disk(e: BaseException, folder: Path) -> DlzooError | None:
    """A full disk met anywhere in a run (TensorBoard events, figures, metrics.json; the checkpoint write says it
    itself) as one paragraph: what stays written and the command that continues; None for other errors."""
    while e is not None and not (isinstance(e, OSError) and e.errno in FULL):
        e = e.__cause__ or e.__context__  # type: ignore[assignment]  # a writer's close can raise on top of it
    if e is None:
        return None
    what = f" (writing {e.filename})" if getattr(e, "filename", None) else ""
    resume = resume_command(folder)
    if not (folder / "checkpoints" / "last.pt").is_file():  # nothing to continue from: the same command again
        again = start_command(folder)
        return DlzooError(f"The disk holding {folder} is full: {e.strerror}{what}. The run stopped before its first "
                          f"checkpoint. Fix: free disk space and run `{again}` again (or give it "
                          "hydra.run.dir=<folder> on another disk).")  # fmt: skip
    return DlzooError(
        f"The disk holding {folder} is full: {e.strerror}{what}. The run stopped; its last checkpoint "
        f"{folder / 'checkpoints' / 'last.pt'} and everything written before stay as they were. Fix: free disk space "
        f"and continue with `{resume}`, or on another disk with `{resume} hydra.run.dir=<new-folder>` (the run so "
        "far is copied there)."
    )


STOPPING = "\nstopping after this step and writing a checkpoint (Ctrl-C again to quit now)"
FINISHING = ("\ntraining is done: testing and writing the results (Ctrl-C again to quit now; "
             "the checkpoint of the last epoch is kept)")  # fmt: skip


class StopFlag:
    """Set from a signal handler (or a test); the loop checks it after every step. Once the last training step is
    done there is nothing left to stop: the handler then says that the run tests and finishes."""

    def __init__(self, message: str = STOPPING) -> None:
        self.signum: int | None = None
        self.done = False  # the last training step was taken
        self.promised = False  # the request came while training: "stopping after this step" was printed
        self._message = message

    def request(self, signum: int) -> None:
        self.signum = signum
        self.promised = not self.done

    def training_done(self) -> None:
        self.done = True

    @property
    def message(self) -> str:
        return FINISHING if self.done else self._message


class EarlyStopping:
    """Stop after `patience` epochs without `monitor` improving by more than `min_delta`; remember the best
    epoch's weights (on their device) so they can be restored (Keras' EarlyStopping)."""

    def __init__(self, patience: int, monitor: str = "val/loss", min_delta: float = 0.0) -> None:
        self.patience, self.monitor, self.min_delta = patience, monitor, min_delta
        self.best, self.best_epoch, self.bad_epochs = math.inf, 0, 0
        self.best_state: dict[str, Tensor] | None = None

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Record this epoch; True when training should stop."""
        value = signed(self.monitor, metrics[self.monitor])
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("best", "best_epoch", "bad_epochs", "best_state")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def diverged_error(
    step: int,
    last_finite: float,
    checkpointing: Checkpointing | None,
    value: float,
    max_loss: float | None,
    which: str = "loss",
) -> DivergedError:
    """The error for a loss (`which`: "loss" at a logged step, or the "epoch mean") that is NaN or above max_loss."""
    what = (
        "became NaN or infinite"
        if not math.isfinite(value)
        else f"exploded to {value:.4g} (above trainer.max_loss={max_loss:g})"
    )
    kept = (
        f" The last good checkpoint is kept at {checkpointing.last}."
        if checkpointing is not None and checkpointing.last.exists()
        else ""
    )
    last = f" (last good logged loss {last_finite:.4g})" if math.isfinite(last_finite) else ""
    return DivergedError(
        f"Training diverged: the {which} {what} at step {step}{last}.{kept}"
        " Fix: lower optim.lr (e.g. by 10x), use an initializer scaled to the layer "
        "(model.init=xavier_uniform or he_normal), clip gradients (reg.clip_norm=1.0), or add model.norm=batch; "
        "trainer.detect_anomaly=true finds the operation that produced it."
    )


@contextmanager
def _first_stop(message: str, also: Callable[[], None] = lambda: None) -> Iterator[StopFlag]:
    """Handlers for SIGINT and SIGTERM (restored after): the first sets the flag, runs `also` and prints the flag's
    message (`message` at first); Ctrl-C then interrupts at once."""
    stop = StopFlag(message)

    def handler(signum: int, frame: object) -> None:
        stop.request(signum)
        also()
        console.print(stop.message)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    with handling((signal.SIGINT, signal.SIGTERM), handler):
        yield stop


@contextmanager
def handling(signums: tuple[int, ...], handler: Callable[[int, Any], None]) -> Iterator[None]:
    """`handler` for each of `signums` while the block runs; the previous handlers come back after it."""
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """The first Ctrl-C or SIGTERM asks the loop to stop after its current step and checkpoint; a second Ctrl-C
    interrupts at once (files stay intact: every write is a rename of a complete temporary file). Outside the main
    thread (a thread-based launcher) Python allows no handlers: the flag then stays unset."""
    if threading.current_thread() is not threading.main_thread():
        yield StopFlag()
        return
    with _first_stop(STOPPING) as stop:
        yield stop


# Set by the parent of a parallel sweep for its jobs: the file that exists once the sweep was asked to stop.
SWEEP_STOP_ENV = "DLZOO_SWEEP_STOP"


@contextmanager
def parallel_sweep_stop() -> Iterator[StopFlag]:
    """The parent process of a parallel (joblib) sweep. A terminal's Ctrl-C reaches every running job as well, and
    each writes its checkpoint; the parent must not kill them mid-write, so its first Ctrl-C or SIGTERM only marks
    the sweep stopped (queued jobs then end at once) and waits for the running ones. A second Ctrl-C quits now."""
    marker = Path(tempfile.gettempdir()) / f"dlzoo-sweep-stop-{os.getpid()}"
    marker.unlink(missing_ok=True)
    os.environ[SWEEP_STOP_ENV] = str(marker)
    message = ("\nstopping the sweep: running jobs finish their step and write a checkpoint, queued jobs do not "
               "start (Ctrl-C again to quit now)")  # fmt: skip
    try:
        with _first_stop(message, also=marker.touch) as stop:
            yield stop
    finally:
        marker.unlink(missing_ok=True)
        os.environ.pop(SWEEP_STOP_ENV, None)


def sweep_stopped() -> bool:
    """Whether this job belongs to a parallel sweep that was asked to stop before the job started."""
    marker = os.environ.get(SWEEP_STOP_ENV)
    return marker is not None and Path(marker).exists()
