"""The README's Quickstart and lessons blocks, run line by line as a user pastes them: each `dlzoo` command is taken
from README.md itself, given a small budget (and the folders a placeholder stands for), and must exit 0 with no
traceback. A README line that stops working fails here."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np

from tests.helpers import DLZOO

README = Path(__file__).resolve().parents[2] / "README.md"
# Appended to every command of a verb: seconds instead of minutes. The README's own words stay untouched.
BUDGET = {
    "train": ["debug=fast", "trainer.threads=1", "trainer.max_loss=null", "pretrain.epochs=1",
              "pretrain.unlabeled=false"],
    "ladder": ["--seeds", "1", "--epochs", "1", "--rungs", "lab10_1_softmax,lab10_3_xavier", "debug=fast",
               "trainer.threads=1"],
    "transfer": ["--seeds", "1", "trainer.epochs=2", "trainer.max_steps=10", "transfer.freeze_epochs=1",
                 "trainer.threads=1", "data.val_size=500"],
    "tune": ["--trials", "1", "debug=fast", "trainer.threads=1"],
    "eval": [],
    "predict": [],
}  # fmt: skip


def quickstart_commands() -> list[str]:
    """The `dlzoo` lines of the bash blocks between '## Quickstart' and the next '## ' heading, comments dropped."""
    text = README.read_text()
    section = text.split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [line.split("  #", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("dlzoo ")]


def test_the_readme_quickstart_has_the_commands_this_test_runs() -> None:
    verbs = {shlex.split(c)[1] for c in quickstart_commands()}
    assert {"train", "ls", "validate", "eval", "predict", "ladder", "transfer", "report", "compare", "tune"} <= verbs


def test_every_quickstart_command_runs(mnist_root: Path, fmnist_root: Path, tmp_path: Path) -> None:
    data = mnist_root.parent  # holds mnist/ and fashion-mnist/: what a user's $DLZOO_DATA or data.root points at
    np.save(tmp_path / "batch.npy", np.zeros((2, 28, 28), dtype=np.uint8))
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "digit.png")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"DLZOO_DATA": str(data)}
    first_run, first_sweep, failures = tmp_path / "run0", None, []
    for i, line in enumerate(quickstart_commands()):
        line = (line.replace("/usr/share/datasets/fashion-mnist", str(fmnist_root))
                .replace("<fashion-mnist folder>", str(fmnist_root)).replace("<folder>", str(data))
                .replace("outputs/runs/<run>", str(first_run))
                .replace("outputs/multirun/<sweep>", str(first_sweep))
                .replace("dlzoo train ...", "dlzoo train debug=fast"))  # fmt: skip
        words = shlex.split(line)[1:]
        verb = words[0]
        extra = list(BUDGET.get(verb, []))
        if verb == "train" and "-m" in words:
            first_sweep = first_sweep or tmp_path / f"sweep{i}"
            extra.append(f"hydra.sweep.dir={tmp_path / f'sweep{i}'}")
        elif verb == "train":
            extra.append(f"hydra.run.dir={first_run if i == 0 else tmp_path / f'run{i}'}")
        elif verb in ("ladder", "transfer", "tune"):
            extra += ["--out", str(tmp_path / f"{verb}{i}")]
        proc = subprocess.run([*DLZOO, *words, *extra], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        if proc.returncode != 0 or "Traceback" in proc.stderr:
            failures.append(f"{line}\n  exit {proc.returncode}: {proc.stderr.strip()[-800:]}")
    assert not failures, "README lines that fail:\n" + "\n".join(failures)
