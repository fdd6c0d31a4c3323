"""Run a command on a real pseudo-terminal, as a user's shell does: rich sees a TTY and draws its live bars, which
piped output (every other test, CI's log) never shows."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from dataclasses import dataclass
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]")


@dataclass
class Screen:
    returncode: int
    raw: str  # every byte the terminal received, escape codes included
    text: str  # the same without escape codes and carriage returns


def on_tty(command: list[str], cwd: Path, timeout: float = 300, columns: int = 100, rows: int = 30) -> Screen:
    """Run `command` with stdin, stdout and stderr on a fresh pseudo-terminal of `columns` x `rows`."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    # A user's terminal: no width forced through the environment, no full Hydra tracebacks asked for.
    drop = ("COLUMNS", "LINES", "HYDRA_FULL_ERROR", "NO_COLOR", "TERM", "FORCE_COLOR", "TTY_COMPATIBLE")
    env = {k: v for k, v in os.environ.items() if k not in drop} | {"TERM": "xterm-256color"}
    proc = subprocess.Popen(command, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                            start_new_session=True)  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"{' '.join(command)} ran past {timeout} s on the terminal")
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: every process holding the terminal has closed it
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    returncode = proc.wait(timeout=30)
    raw = b"".join(chunks).decode(errors="replace")
    return Screen(returncode, raw, ANSI.sub("", raw).replace("\r", "\n"))
