"""What many test modules share: the real `dlzoo` command as a subprocess, the fast-run overrides, and a tracker
that records what the loop reports."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

DLZOO = [str(Path(sys.executable).parent / "dlzoo")]
if not Path(DLZOO[0]).exists():
    DLZOO = [sys.executable, "-m", "dlzoo.cli"]
FAST = ["debug=fast", "trainer.threads=1"]


def dlzoo(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"COLUMNS": "200"}
    return subprocess.run([*DLZOO, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


class Recorder:
    def __init__(self) -> None:
        self.steps: list[tuple[int, float]] = []
        self.epochs: list[dict[str, float]] = []
        self.layers: list[dict[str, float]] = []

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        pass

    def progress_due(self) -> bool:
        return False

    def show_progress(self, step: int, mean_loss: float, samples_per_s: float) -> None:
        pass

    def log_step(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        self.steps.append((step, loss))

    def log_layer_stats(self, step: int, stats: dict[str, float]) -> None:
        self.layers.append(stats)

    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.epochs.append(metrics)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `folder` (root and mount(8) needed; the test is skipped loudly
    elsewhere): a full disk, not a mocked error. Unmounted after, even when the test fails."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                                       str(folder)], capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("SKIPPED: cannot mount a tmpfs here (needs root and mount(8)); the full-disk test did not run")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)
