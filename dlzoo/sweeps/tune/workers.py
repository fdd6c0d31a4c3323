"""`dlzoo tune --workers N`: N worker processes on this machine, each a plain `dlzoo tune --resume` on the shared
study, with its share of the cores; their output goes to <out>/workers/worker_<i>.log."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from dlzoo.config.launch import usable_cores
from dlzoo.console import console, print_error

WORKER_ENV = "DLZOO_TUNE_WORKER"  # each worker's number, which offsets its sampler's seed


def worker_command(args: argparse.Namespace, out: Path, n_trials: int) -> list[str]:
    """The command line of one worker: the study by name (its stored arguments), the budget, its threads."""
    threads = args.threads or max(1, usable_cores() // args.workers)
    return [sys.executable, "-m", "dlzoo.cli", "tune", "--resume", "--storage", args.storage, "--study-name",
            args.study_name, "--out", str(out), "--trials", str(n_trials), "--threads", str(threads),
            "--heartbeat", str(args.heartbeat)]  # fmt: skip


def run_workers(args: argparse.Namespace, out: Path, n_trials: int) -> int:
    """Start `args.workers` workers, wait for all, and return the worst exit code. Ctrl-C or SIGTERM is passed
    on once to each worker (in sessions of their own, so a terminal's Ctrl-C does not reach them twice, which
    would mean "quit now"), and each stops its trial after the current step as a lone search would."""
    logs = out / "workers"
    logs.mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(args.workers):
        with open(logs / f"worker_{i}.log", "wb") as log:
            env = os.environ | {WORKER_ENV: str(i)}
            procs.append(subprocess.Popen(worker_command(args, out, n_trials), stdout=log, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True))  # fmt: skip
    console.print(f"{args.workers} workers on study {args.study_name} (logs: {logs}/worker_<i>.log)")

    def forward(signum: int, frame: FrameType | None) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for i, code in enumerate(codes):
        if code != 0:
            tail = (logs / f"worker_{i}.log").read_text(errors="replace").strip().splitlines()[-3:]
            print_error(f"worker {i} exited with {code}: {' '.join(tail)}")
    return max(codes, key=lambda c: (c != 0, c))
