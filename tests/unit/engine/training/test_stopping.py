"""The one error boundary: every failure a user can act on becomes one message and its exit status."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from dlzoo.engine.training.stopping import Interrupted, exit_status, resume_command
from dlzoo.errors import DlzooError


def test_exit_status_names_the_fix_and_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(DlzooError("model.hidden=[0] is out of range")) == 2
    assert "error: model.hidden=[0] is out of range" in capsys.readouterr().err
    last = Path("/runs/a/checkpoints/last.pt")
    assert exit_status(Interrupted(last, signal.SIGTERM)) == 128 + signal.SIGTERM
    err = " ".join(capsys.readouterr().err.split())
    assert f"the last checkpoint is {last}" in err and "trainer.resume=/runs/a" in err
    assert exit_status(Interrupted(None, signal.SIGINT, "Resume with: dlzoo tune --resume --out x")) == 130
    assert "dlzoo tune --resume --out x" in capsys.readouterr().err
    assert exit_status(KeyboardInterrupt()) == 130


def test_a_bug_keeps_its_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        exit_status(ZeroDivisionError("a bug"))


def test_the_resume_command_is_the_one_typed_quoted_for_a_shell() -> None:
    typed = ["model=mlp", "model.hidden=[256,256]", "trainer.resume=auto", "+trainer.note=a b", "optim.lr=0.1"]
    command = resume_command(Path("/runs/my run"), typed)
    assert command == ("dlzoo train model=mlp 'model.hidden=[256,256]' '+trainer.note=a b' optim.lr=0.1 "
                       "'trainer.resume=/runs/my run'")  # fmt: skip
    assert resume_command(Path("/runs/a")) == "dlzoo train <same overrides> trainer.resume=/runs/a"  # no Hydra run


def test_a_full_disk_in_a_writer_thread_prints_no_traceback_until_restored(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import logging
    import threading

    from dlzoo.engine.training.stopping import quiet_when_full

    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)  # Python's own, not pytest's

    def raising(e: Exception) -> None:
        def target() -> None:
            raise e

        thread = threading.Thread(target=target)
        thread.start()
        thread.join()

    before = threading.excepthook, logging.raiseExceptions
    restore = quiet_when_full()
    try:
        raising(OSError(errno.ENOSPC, "No space left on device"))
        assert capfd.readouterr().err == ""  # the run's own one-paragraph error says it
        raising(ValueError("a bug"))
        assert "ValueError: a bug" in capfd.readouterr().err  # anything else keeps its traceback
    finally:
        restore()
    assert (threading.excepthook, logging.raiseExceptions) == before  # a notebook's process goes on as it was
