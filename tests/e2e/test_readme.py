"""The README's Quickstart block, run line by line as a user pastes it: each command is taken from README.md
itself, given a small budget, and must exit 0 with no traceback. A README line that stops working fails here.
(Every other command of the README and the docs is checked by tests/e2e/test_docs.py.)"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from pathlib import Path

import pytest

from dlzoo import cli
from tests.docs_commands import README, commands
from tests.helpers import DLZOO

# Appended to every command of a verb: seconds instead of minutes. The README's own words stay untouched.
BUDGET = {"train": ["debug=fast", "trainer.threads=1"]}


def quickstart_commands() -> list[tuple[str, ...]]:
    """The `dlzoo` lines of the bash block under '## Quickstart', as the shell splits them."""
    text = README.read_text()
    start = text.index("\n## Quickstart")
    first, last = text.count("\n", 0, start) + 1, text.count("\n", 0, text.index("\n## ", start + 1)) + 1
    return [c.words for c in commands(README) if first < c.line < last and c.words[0] == "dlzoo"]


def test_the_readme_quickstart_has_the_commands_this_test_runs() -> None:
    verbs = {words[1] for words in quickstart_commands()}
    assert {"train", "ls", "validate", "eval", "report", "compare"} <= verbs


def test_every_quickstart_command_runs(
    mnist_root: Path, fmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training lines run as the `dlzoo` command; the verbs that only read (report, compare, eval, ls, validate)
    run in this process through the same entry point, which saves a Python and torch start-up each."""
    data = mnist_root.parent  # holds mnist/ and fashion-mnist/: what the README has a user's $DLZOO_DATA point at
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"DLZOO_DATA": str(data)}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLZOO_DATA", str(data))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    failures = []
    for words in quickstart_commands():
        if words[1] == "train":
            proc = subprocess.run([*DLZOO, *words[1:], *BUDGET["train"]], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=600)  # fmt: skip
            code, err = proc.returncode, proc.stderr
        else:
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = cli.main(list(words[1:]))
            err = out.getvalue()
        if code != 0 or "Traceback" in err:
            failures.append(f"{' '.join(words)}\n  exit {code}: {err.strip()[-800:]}")
    assert not failures, "README lines that fail:\n" + "\n".join(failures)
