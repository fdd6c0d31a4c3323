"""`dlzoo ladder`: the lectures' accuracy ladder (labs 10-1 to 11-5), each rung × seed a normal `dlzoo train` run
in <out>/<rung>/seed<k>/, then one table (terminal, ladder.md, ladder.csv) and a bar chart (ladder.png) against
the lecture's figures (dlzoo.sweeps.ladder_table). Where stacking is faster (`--stack`), a rung's seeds train as
one `trainer.stack=N` run in <out>/<rung>/, which writes the same <rung>/seed<k>/ folders."""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from dlzoo.config.compose import compose_and_validate
from dlzoo.config.launch import usable_cores
from dlzoo.config.schema import settings
from dlzoo.config.validate import stack_problems
from dlzoo.console import console, print_error, print_table, say
from dlzoo.data.datasets import locate
from dlzoo.engine.assembly.stacked_run import faster_stacked
from dlzoo.engine.training.loop import resolve_device
from dlzoo.engine.training.stopping import Interrupted, handling
from dlzoo.errors import DlzooError
from dlzoo.sweeps.ladder_table import (
    HEADER,
    RUNGS,
    Job,
    caption,
    collect,
    draw_chart,
    rows,
    write_csv,
    write_markdown,
    write_view,
)
from dlzoo.sweeps.report import last_error, load_run

__all__ = ["RUNGS", "Job", "ladder_command", "parse_rung_seeds", "plan"]

# The ladder owns these; a user override of them would break the <rung>/seed<k> layout.
OWNED = ("experiment", "trainer.seed", "hydra.run.dir", "hydra.sweep.dir", "trainer.resume", "trainer.stack")


def plan(
    rungs: list[str],
    seeds: int,
    epochs: int | None,
    overrides: list[str],
    out: Path,
    rung_seeds: dict[str, int] | None = None,
) -> list[Job]:
    """One job per rung × seed (seeds 1..N, or 1..rung_seeds[rung]), in ladder order; data=mnist unless the
    overrides pick another."""
    rung_seeds = rung_seeds or {}
    unknown = [r for r in rungs if r not in RUNGS]
    if unknown:
        raise DlzooError(f"unknown rung(s) {', '.join(unknown)}; choices: {', '.join(RUNGS)}.")
    owned = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in OWNED or o.startswith("-")]
    if owned:
        raise DlzooError(
            f"dlzoo ladder sets {', '.join(owned)} itself. Fix: drop it; use --seeds N, --rungs, --out, --resume."
        )
    if seeds < 1 or (epochs is not None and epochs < 1) or any(n < 1 for n in rung_seeds.values()):
        raise DlzooError(f"--seeds {seeds} / --epochs {epochs} / --rung-seeds: each must be at least 1.")
    stray = [r for r in rung_seeds if r not in rungs]
    if stray:
        raise DlzooError(f"--rung-seeds names {', '.join(stray)}, which this ladder does not run (--rungs).")
    extra = [f"trainer.epochs={epochs}"] if epochs is not None else []
    extra.append("trainer.hparams_experiment=false")  # the ladder writes one experiment over all its runs
    return [
        Job(rung, seed, out / rung / f"seed{seed}", [f"experiment={rung}", f"trainer.seed={seed}", *extra, *overrides])
        for rung in rungs
        for seed in range(1, rung_seeds.get(rung, seeds) + 1)
    ]


def parse_rung_seeds(text: str) -> dict[str, int]:
    """`lab11_2_cnn_deep=3,lab11_5_ensemble=1` -> {rung: seeds}."""
    out = {}
    for item in filter(None, text.split(",")):
        rung, sep, n = item.partition("=")
        if not sep or not n.strip().isdigit():
            raise DlzooError(f"--rung-seeds {text!r}: write rung=N pairs, e.g. lab11_2_cnn_deep=3,lab11_5_ensemble=1.")
        out[rung.strip()] = int(n)
    return out


def check(jobs: list[Job]) -> None:
    """Validate every job's config and find each dataset before the first run, so a typo or missing data fails
    at once instead of after hours of earlier rungs. Spaces the seeds of ensemble rungs (see below)."""
    datasets = set()
    for job in jobs:
        try:
            cfg = compose_and_validate(job.overrides)
        except DlzooError as e:
            raise DlzooError(f"rung {job.rung}, seed {job.seed}: {e}") from None
        datasets.add((cfg.data.name, cfg.data.root, cfg.data.download))
        size = cfg.ensemble.size
        if size > 1:
            # Members train seeds s, s+1, ...: ensemble k starts at (k-1)*size+1 so no two ensembles share a
            # member (seeds 1..N would share all but one, and their spread would understate the real one).
            seed = (job.seed - 1) * size + 1
            job.overrides = [f"trainer.seed={seed}" if o.startswith("trainer.seed=") else o for o in job.overrides]
    for name, root, download in sorted(datasets, key=str):
        locate(name, root, download)


def shown_columns(width: int) -> list[int]:
    """The columns of HEADER the terminal table shows at `width` columns (ladder.md and ladder.csv keep them all):
    below 120 the "what changed" text would wrap every row into a tall column, and below 100 the epochs and seconds
    per run would leave the results too little room to keep their words whole."""
    hidden = {HEADER.index("what changed")} if width < 120 else set()
    if width < 100:
        hidden |= {HEADER.index("epochs"), HEADER.index("s / run")}
    return [i for i in range(len(HEADER)) if i not in hidden]


def stack_rungs(jobs: list[Job], mode: str) -> tuple[list[Job], list[str]]:
    """The jobs to launch, with each rung's seeds (or each ensemble's members, through ensemble.stack) stacked
    where `mode` says: `on` wherever the model can be stacked, `auto` where that trains faster
    (dlzoo.engine.assembly.stacked_run.faster_stacked: every rung on a GPU, small MLPs on a CPU), `off` nowhere. Returns
    them and the rungs stacked."""
    if mode not in ("auto", "on", "off"):
        raise DlzooError(f"--stack {mode}: choices: auto, on, off.")
    launched, stacked = [], []
    for rung in dict.fromkeys(j.rung for j in jobs):
        seeds = [j for j in jobs if j.rung == rung]
        cfg = compose_and_validate(seeds[0].overrides)
        size = cfg.ensemble.size
        k = size if size > 1 else len(seeds)
        if k == 1 or mode == "off":
            can = False
        elif mode == "on":
            can = not stack_problems(cfg, k)
        else:
            can = faster_stacked(settings(cfg), k, resolve_device(cfg.trainer.device))[0]
        if size > 1:  # each ensemble stacks its own members (ensemble.stack), decided in its run
            launched += [replace(j, overrides=[*j.overrides, f"ensemble.stack={mode}"]) for j in seeds]
            stacked += [rung] if can else []
            continue
        # A seed already begun on its own (a resumed ladder) continues on its own; a stack would retrain it.
        begun = any((j.folder / ".hydra").is_dir() for j in seeds)
        begun = begun and not (seeds[0].folder.parent / "checkpoints" / "stack.pt").is_file()
        if not can or begun:
            launched += seeds
            continue
        # The rung's seeds 1..N as one run, whose seed<k>/ folders are the seeds' own.
        overrides = [o for o in seeds[0].overrides if not o.startswith("trainer.seed=")]
        launched.append(Job(rung, 1, seeds[0].folder.parent, [*overrides, "trainer.seed=1", f"trainer.stack={k}"],
                            seeds))  # fmt: skip
        stacked.append(rung)
    return launched, stacked


def run_job(job: Job, resume: bool) -> int:
    """One `dlzoo train` in a subprocess (a crash or leak stays in it); its output goes to <run>/ladder.log."""
    overrides = list(job.overrides)
    if resume and (job.folder / "checkpoints" / "last.pt").is_file():
        overrides.append(f"trainer.resume={job.folder}")  # an unfinished run continues from its last epoch
    elif resume and (job.folder / "checkpoints" / "stack.pt").is_file():
        overrides.append(f"trainer.resume={job.folder}")  # a stacked one, from its last checkpoint
    job.folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "dlzoo.train", *overrides, f"hydra.run.dir={job.folder}"]
    with (job.folder / "ladder.log").open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        RUNNING.add(proc)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.wait()  # the same Ctrl-C reached the run, which now writes its checkpoint
            raise
        finally:
            RUNNING.discard(proc)


RUNNING: set[subprocess.Popen[bytes]] = set()  # the runs training now (worker threads add and remove them)


@contextmanager
def forward_termination() -> Iterator[list[int]]:
    """A Ctrl-C reaches every run (one process group); a SIGTERM or SIGHUP sent to the ladder alone (a job
    scheduler, `kill`) would leave its runs training on as orphans. Forward it to each running run, which then
    checkpoints and exits, and stop starting new ones, as Ctrl-C does. Yields the signal received, if any."""
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        for proc in list(RUNNING):
            proc.send_signal(signum)
        raise KeyboardInterrupt

    with handling((signal.SIGTERM, signal.SIGHUP), forward):
        yield received


def threads_per_job(jobs: int, overrides: list[str]) -> list[str]:
    """`trainer.threads=<cores // jobs>` for runs side by side (one thread each when jobs = cores): more threads
    than cores make OpenMP spin-wait and slow every run. None when the user set trainer.threads or runs one job."""
    if jobs == 1 or any(o.split("=", 1)[0].lstrip("+") == "trainer.threads" for o in overrides):
        return []
    return [f"trainer.threads={max(1, usable_cores() // jobs)}"]


def run_all(todo: list[Job], jobs: int, resume: bool) -> None:
    """Run `todo` with up to `jobs` side by side; one line per finished run with the estimated time left."""
    took: dict[str, list[float]] = {}  # rung -> seconds of its finished runs, for the estimate
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending = {pool.submit(_timed, job, resume): job for job in todo}
        done_count = 0
        while pending:
            try:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                # The terminal's Ctrl-C reached every running run (one process group): they checkpoint and exit,
                # and leaving the pool waits for them. Queued runs must not start.
                for future in pending:
                    future.cancel()
                raise
            for future in finished:
                job = pending.pop(future)
                code, seconds = future.result()  # re-raises a KeyboardInterrupt from the worker
                took.setdefault(job.rung, []).append(seconds)
                done_count += 1
                left = eta(list(pending.values()), took, jobs)
                elapsed = time.perf_counter() - started
                which = f"seeds 1..{len(job.members)} (stacked)" if job.members else f"seed {job.seed}"
                say(f"[{done_count}/{len(todo)}] {job.rung} {which}: {outcome(job, code)} ({seconds:.0f} s)"
                    f"  ·  {_clock(elapsed)} elapsed, about {_clock(left)} left")  # fmt: skip


def _timed(job: Job, resume: bool) -> tuple[int, float]:
    t0 = time.perf_counter()
    return run_job(job, resume), time.perf_counter() - t0


def _done(folder: Path) -> bool:
    """A run that finished and whose metrics.json reads as one (a damaged one is run again, from its checkpoint)."""
    return (folder / "metrics.json").is_file() and load_run(folder).metrics is not None


def outcome(job: Job, code: int) -> str:
    """'test acc 0.9821', or why the run failed (the last error line of its log)."""
    if (job.folder / "metrics.json").is_file():
        value = (load_run(job.folder).metrics or {}).get("test_acc")
        if isinstance(value, float):
            return f"test acc {value:.4f}" + (" (their mean)" if job.members else "")
    return f"FAILED (exit {code}): {last_error(job.folder)}"


def eta(pending: list[Job], took: dict[str, list[float]], jobs: int) -> float:
    """Seconds until the pending runs finish: each costs its rung's mean so far (or, for a rung not yet seen,
    the mean of all finished runs), shared over the `jobs` slots."""
    everything = [t for times in took.values() for t in times]
    fallback = sum(everything) / len(everything) if everything else 0.0
    total = sum(sum(took[j.rung]) / len(took[j.rung]) if j.rung in took else fallback for j in pending)
    return total / jobs


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def ladder_command(argv: list[str]) -> int:
    """`dlzoo ladder [--seeds N] [--epochs E] [--resume] [--rungs a,b] [--out DIR] [overrides...]`."""
    parser = argparse.ArgumentParser(prog="dlzoo ladder", description="Run the lectures' accuracy ladder.")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per rung: trainer.seed=1..N (default 3)")
    parser.add_argument("--rung-seeds", default="", help="seeds for some rungs, e.g. lab11_5_ensemble=1 (else --seeds)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every rung (default: each lab's own)")
    parser.add_argument("--rungs", default=",".join(RUNGS), help=f"comma-separated subset of: {', '.join(RUNGS)}")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/ladder/<timestamp>)")
    parser.add_argument("--resume", action="store_true", help="with --out: skip runs that have a metrics.json")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (default 1), each cores // jobs threads")
    parser.add_argument("--stack", default="auto", help="train a rung's seeds as one stacked model: auto (where "
                        "faster: MLPs up to 500k weights on a CPU, every rung on a GPU), on, off")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. data=fashion_mnist")
    args = parser.parse_intermixed_args(argv)

    if args.resume and args.out is None:
        raise DlzooError("--resume needs --out <the earlier ladder's folder> to know which ladder to continue.")
    out = args.out or Path("outputs/ladder") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    rung_seeds = parse_rung_seeds(args.rung_seeds)
    jobs = plan([r for r in args.rungs.split(",") if r], args.seeds, args.epochs, args.overrides, out, rung_seeds)
    if not args.resume and any((j.folder / ".hydra").is_dir() for j in jobs):
        raise DlzooError(f"{out} already holds ladder runs. Fix: add --resume to continue it, or choose a new --out.")
    check(jobs)
    out.mkdir(parents=True, exist_ok=True)

    if args.jobs < 1:
        raise DlzooError(f"--jobs {args.jobs}: give at least 1 (the runs that train side by side).")
    launched, stacked = stack_rungs(jobs, args.stack)
    todo = [j for j in launched if not (args.resume and all(_done(m.folder) for m in j.members or [j]))]
    threads = threads_per_job(args.jobs, args.overrides)
    for job in todo:
        job.overrides += threads
    console.print(f"ladder: {len(jobs)} runs in {len(launched)} jobs ({len(launched) - len(todo)} already done) in "
                  f"{out}, {args.jobs} at a time{', ' + threads[0] + ' each' if threads else ''}")  # fmt: skip
    if stacked:
        console.print(f"stacked (trainer.stack, --stack {args.stack}): {', '.join(stacked)}: each rung's seeds, or "
                      "each ensemble's members, train as one batched model")  # fmt: skip
    with forward_termination() as received:
        try:
            run_all(todo, args.jobs, args.resume)
        except KeyboardInterrupt:
            extra = [] if "--resume" in argv else ["--resume"]
            extra += [] if any(a == "--out" or a.startswith("--out=") for a in argv) else ["--out", str(out)]
            hint = f"The interrupted runs checkpointed. Continue with: {shlex.join(['dlzoo', 'ladder', *argv, *extra])}"
            raise Interrupted(None, received[0] if received else signal.SIGINT, hint) from None

    rungs = collect(jobs)
    command = "dlzoo ladder " + " ".join(argv)
    table = rows(rungs)
    keep = shown_columns(console.width)
    print_table(f"ladder: {out}", [HEADER[i] for i in keep], [[row[i] for i in keep] for row in table],
                caption(rungs, command), right=range(keep.index(2), len(keep)))  # fmt: skip
    write_markdown(rungs, table, caption(rungs, command), out / "ladder.md")
    write_csv(rungs, out / "ladder.csv")
    dataset = next((g.runs[0].config.data.name for r in rungs if (g := r.group) and g.runs), "")
    seeds = "/".join(str(n) for n in dict.fromkeys(r.n for r in rungs))
    draw_chart(rungs, f"accuracy ladder on {dataset}: test accuracy over {seeds} seed(s) per rung (n below)",
               out / "ladder.png")  # fmt: skip
    write_view(rungs, table, out)
    console.print(f"wrote {out}/ladder.md, ladder.csv, ladder.png; dashboards: tensorboard --logdir {out}")
    failed = [j for r in rungs for j in r.failed]
    if failed:
        print_error(
            f"{len(failed)} run(s) failed: "
            + "; ".join(f"{j.rung} seed {j.seed} ({j.folder}/ladder.log)" for j in failed)
        )
        return 1
    return 0
