"""What many test modules share: the real `dlzoo` command as a subprocess, the fast-run overrides, and a tracker
that records what the loop reports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
