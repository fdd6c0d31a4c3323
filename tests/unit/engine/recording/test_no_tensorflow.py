"""TensorFlow installed beside dlzoo must not be loaded by TensorBoard's writer: with tensorflow-cpu 2.21 it made
torch's later import of Triton crash the run (a segmentation fault when the optimizer was built)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
from pathlib import Path
from dlzoo.engine.recording.tracking import RunTracker

with RunTracker(Path(sys.argv[1]), 1, progress=False) as tracker:
    tracker.log_epoch(1, 10, {"train/loss": 1.0, "train/acc": 0.5, "val/loss": 1.0, "val/acc": 0.5, "lr": 0.1})
print("tensorflow" in sys.modules)
"""


def test_writing_events_never_imports_an_installed_tensorflow(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "tensorflow"
    fake.mkdir(parents=True)
    marker = tmp_path / "tensorflow-was-imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('a stand-in')\n")
    env = {"PYTHONPATH": f"{fake.parent}:{Path(__file__).resolve().parents[4]}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists() and proc.stdout.strip().splitlines()[-1] == "False"
    assert list((tmp_path / "run" / "train").glob("events.*"))  # the events were written, by TensorBoard's stub
