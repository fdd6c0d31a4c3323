"""Faults a user meets mid-run, each followed through the recovery dlzoo prints: a full disk (continued in a new
folder), an interrupted sweep (finished jobs kept), a stop during pretraining, and an interrupted ensemble."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from dlzoo.cli import compose_and_validate
from dlzoo.engine.assembly.folders import load_checkpoint
from dlzoo.engine.assembly.run import run
from dlzoo.errors import DlzooError
from tests.helpers import DLZOO, dlzoo, tmpfs

SMALL = ["data=fashion_mnist", "data.train_subset=1000", "data.val_size=200", "data.test_subset=500",
         "trainer.threads=1", "trainer.batch_size=100", "trainer.figures=false"]  # fmt: skip
SCORES = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "steps", "epochs")


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"COLUMNS": "200"}
    return subprocess.Popen([*DLZOO, *args], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip


def _signal_when(path: Path, proc: subprocess.Popen[str], signum: int = signal.SIGINT) -> tuple[str, str]:
    """Send `signum` once `path` exists; return the process's output."""
    deadline = time.monotonic() + 180
    while not path.exists():
        assert proc.poll() is None, "the run ended before it could be interrupted: " + proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    proc.send_signal(signum)
    return proc.communicate(timeout=180)


def _command(message: str) -> list[str]:
    """The overrides of the last `dlzoo train <same overrides> ...` command a message prints, or all the
    arguments after `dlzoo train` of the last whole command it prints (which ends with trainer.resume=...)."""
    flat = " ".join(message.split())
    commands = re.findall(r"dlzoo train (?:-m )?<same overrides> ([^`]+?)(?:`|\(|$)", flat)
    commands = commands or re.findall(r"dlzoo train ((?:(?!dlzoo train).)*?trainer\.resume=\S+)", flat)
    assert commands, flat
    return shlex.split(commands[-1])


def test_a_full_disk_is_recovered_in_a_new_folder_as_the_message_says(
    fmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = [*SMALL, f"data.root={fmnist_root}", "trainer.epochs=3"]
    full = dlzoo("train", *overrides, f"hydra.run.dir={tmp_path / 'full'}", cwd=tmp_path)
    assert full.returncode == 0, full.stderr

    # The disk fills after epoch 1: every later torch.save fails the way its zip writer reports it.
    disk_full = False

    def save(*args: object, **kwargs: object) -> None:
        if disk_full:
            raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing "
                               "file data/3: file write failed")  # fmt: skip
        real_save(*args, **kwargs)

    def fill_disk(epoch: int, metrics: dict) -> None:
        nonlocal disk_full
        disk_full = True

    real_save = torch.save
    monkeypatch.setattr(torch, "save", save)
    first = tmp_path / "first"
    with pytest.raises(DlzooError) as failed:
        run(compose_and_validate(overrides), first, on_epoch_end=fill_disk)
    monkeypatch.undo()
    message = str(failed.value)
    assert "Could not write the checkpoint" in message and "file write failed" in message
    assert load_checkpoint(first / "checkpoints" / "last.pt")["epoch"] == 1 and not list(first.rglob("*.tmp*"))

    # The recovery exactly as printed, with the new folder filled in, as a user types it.
    recovery = [a.replace("<new-folder>", str(tmp_path / "elsewhere")) for a in _command(message)]
    assert sorted(recovery) == [f"hydra.run.dir={tmp_path / 'elsewhere'}", f"trainer.resume={first}"]
    resumed = dlzoo("train", *overrides, *recovery, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    moved = tmp_path / "elsewhere"
    assert not (first / "metrics.json").exists()  # the full disk is left as it was
    for key in SCORES:
        assert _metrics(moved)[key] == _metrics(tmp_path / "full")[key], key  # bit-identical to no failure
    copied = {p.relative_to(first) for p in first.rglob("events.*")}  # epoch 1's curves go on in the new folder
    assert copied and copied <= {p.relative_to(moved) for p in moved.rglob("*") if p.is_file()}


def test_a_resumed_sweep_keeps_its_finished_jobs_and_resumes_the_stopped_one(fmnist_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["train", "-m", *SMALL, f"data.root={fmnist_root}", "trainer.epochs=30", "trainer.seed=1,2",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = _start(args, tmp_path)
    _, stderr = _signal_when(sweep / "1_mlp_dropout" / "checkpoints" / "last.pt", proc)  # job 0 has finished by then
    assert proc.returncode == 130, stderr
    command = _command(stderr)  # how to resume the whole sweep, not one job of it
    assert command == [f"hydra.sweep.dir={sweep}", "trainer.resume=auto"]
    job0 = _metrics(sweep / "0_mlp_dropout")
    events = sorted(p.name for p in (sweep / "0_mlp_dropout").rglob("events.*"))
    log0 = (sweep / "0_mlp_dropout" / "train.log").read_text()

    resumed = dlzoo(*args[:-1], *command, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "already finished" in resumed.stdout and "resuming" in resumed.stdout
    assert _metrics(sweep / "0_mlp_dropout") == job0  # kept, not retrained
    assert sorted(p.name for p in (sweep / "0_mlp_dropout").rglob("events.*")) == events
    assert (sweep / "0_mlp_dropout" / "train.log").read_text().count("epoch  30/30") == log0.count("epoch  30/30") == 1
    assert _metrics(sweep / "1_mlp_dropout")["seed"] == 2 and _metrics(sweep / "1_mlp_dropout")["steps"] == 300


def test_ctrl_c_in_pretraining_stops_at_once_and_the_run_resumes(fmnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["train", *SMALL, f"data.root={fmnist_root}", "data.train_subset=3000", "model.hidden=[256,256]",
            "model.activation=sigmoid", "pretrain=rbm", "pretrain.epochs=200", "pretrain.unlabeled=false",
            "trainer.epochs=1", f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = _start(args, tmp_path)
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    for line in proc.stdout:  # the second layer's first epoch: layer 1 is finished and saved
        if "pretrain rbm2  epoch   1" in line:
            break
        assert time.monotonic() < deadline and proc.poll() is None
    asked = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - asked < 10  # 199 pretraining epochs were left: the stop did not wait for them
    assert (run_dir / "checkpoints" / "pretrain.pt").is_file() and f"trainer.resume={run_dir}" in stderr

    shorter = [a.replace("pretrain.epochs=200", "pretrain.epochs=2") for a in args]  # a changed setting warns only
    resumed = dlzoo(*shorter, f"trainer.resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "in pretraining" in resumed.stdout
    assert "pretrain rbm1" not in resumed.stdout and "pretrain rbm2  epoch   2" in resumed.stdout
    assert (run_dir / "metrics.json").is_file() and not (run_dir / "checkpoints" / "pretrain.pt").exists()


def test_an_interrupted_ensemble_resumes_as_a_whole(fmnist_root: Path, tmp_path: Path) -> None:
    args = ["train", *SMALL, f"data.root={fmnist_root}", "ensemble.size=3", "trainer.epochs=4"]
    whole = dlzoo(*args, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr

    run_dir = tmp_path / "run"
    proc = _start([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    _, stderr = _signal_when(run_dir / "member1" / "checkpoints" / "last.pt", proc)
    assert proc.returncode == 130, stderr
    command = _command(stderr)  # the command as typed (hydra.run.dir is Hydra's own), resuming in place
    assert command == [*args[1:], f"trainer.resume={run_dir}"]
    assert "1 finished member(s) are kept" in " ".join(stderr.split())
    member0 = _metrics(run_dir / "member0")

    resumed = dlzoo("train", *command, cwd=tmp_path)  # in place: Hydra's new dated folder is not kept
    assert resumed.returncode == 0, resumed.stderr
    assert "finished before: kept" in resumed.stdout and "ensemble member 2/3" in resumed.stdout
    assert _metrics(run_dir / "member0") == member0 and not list((tmp_path / "outputs").rglob("*.json"))
    ours, theirs = _metrics(run_dir), _metrics(tmp_path / "whole")
    assert [_metrics(run_dir / f"member{i}")["seed"] for i in range(3)] == [777, 778, 779]
    for key in ("test_acc", "member_test_acc", "val_loss", "steps"):
        assert ours[key] == theirs[key], key  # bit-identical to the uninterrupted ensemble


def test_ctrl_c_in_a_stacked_run_resumes_as_the_message_says(fmnist_root: Path, tmp_path: Path) -> None:
    args = ["train", *SMALL, f"data.root={fmnist_root}", "model=mlp", "trainer.stack=3", "trainer.epochs=4"]
    whole = dlzoo(*args, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr

    run_dir = tmp_path / "run"
    proc = _start([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    _, stderr = _signal_when(run_dir / "checkpoints" / "stack.pt", proc)  # written after epoch 1
    assert proc.returncode == 130, stderr
    command = _command(stderr)
    assert command == [*args[1:], f"trainer.resume={run_dir}"], stderr
    resumed = dlzoo("train", *command, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming the stacked run {run_dir}" in " ".join(resumed.stdout.split())
    for seed in (777, 778, 779):  # every seed bit-identical to the uninterrupted stack's
        ours, theirs = _metrics(run_dir / f"seed{seed}"), _metrics(tmp_path / "whole" / f"seed{seed}")
        for key in SCORES:
            assert ours[key] == theirs[key], (seed, key)


def test_ctrl_c_in_a_parallel_sweep_lets_every_running_job_write_its_checkpoint(
    fmnist_root: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    # Wide layers make each checkpoint write take a while: the window in which a killed job loses it.
    args = ["train", "-m", "hydra/launcher=parallel", *SMALL, f"data.root={fmnist_root}", "model.hidden=[2000,2000]",
            "trainer.epochs=50", "trainer.seed=1,2,3,4", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"COLUMNS": "200"}
    proc = subprocess.Popen([*DLZOO, *args], cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while not list(sweep.glob("*/checkpoints/last.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.02)
    signalled = time.time()
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the parent and both running jobs
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr
    said = " ".join(stdout.split()).count("stopping after this step and writing a checkpoint")
    written = re.findall(r"the last checkpoint is (\S+last\.pt)\.", " ".join(stderr.split()))
    assert said == len(written) == 2, (stdout, stderr)
    for path in written:  # each is the checkpoint of the stop, not an earlier epoch's
        # A signal that lands while a job writes its epoch's checkpoint stops it right after that write, with
        # nothing trained since: then the file can predate the signal by the few ms the write had left.
        assert Path(path).stat().st_mtime >= signalled - 0.1 and load_checkpoint(Path(path))["step"] > 0
    assert stdout.count("not started: the sweep was stopped") == 2  # the queued jobs
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_mlp_dropout", "1_mlp_dropout"]


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 4 MiB tmpfs."""
    with tmpfs(tmp_path / "disk", "4m") as folder:
        yield folder


# No checkpoint before the disk fills (the fast tier); a checkpoint each epoch (the slow tier: which write meets the
# full disk first, events or checkpoint, varies).
@pytest.mark.parametrize("every", [pytest.param(1, marks=pytest.mark.slow), 1_000_000])
def test_a_disk_that_fills_mid_run_ends_in_one_paragraph_and_the_printed_fix_works(
    every: int, small_disk: Path, tmp_path: Path
) -> None:
    """The disk fills while TensorBoard events, train.log and checkpoints are being written: exit 2, the error
    and no traceback (none from logging or the event writer's thread either), nothing already written lost, and
    once space is freed the command the message prints finishes the run."""
    run_dir = small_disk / "run"
    args = ["train", "experiment=xor_deep_relu", "trainer.epochs=100000", f"trainer.checkpoint.every={every}",
            "trainer.threads=1", "trainer.figures=false", f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = _start(args, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / ("checkpoints/last.pt" if every == 1 else "val")).exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.05)
        filler = small_disk / "filler"
        # Unbuffered, so the write that meets the full disk raises here and the close has nothing left to flush.
        with pytest.raises(OSError), filler.open("wb", buffering=0) as f:
            while True:
                f.write(bytes(1 << 16))
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # a failed check must not leave the run holding the tmpfs (umount: target is busy)
        proc.wait()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr and stderr.startswith("error: ") and "Fix:" in stderr, stderr
    if every == 1:
        assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] >= 1
    filler.unlink()
    command = re.findall(r"`(dlzoo train [^`]+)`", " ".join(stderr.split()))[0]
    fixed = [a.replace("trainer.epochs=100000", "trainer.epochs=3") for a in shlex.split(command)[2:]]
    assert "<same overrides>" not in command  # every message prints the command typed, the checkpoint write's too
    again = dlzoo("train", *[a.replace("trainer.epochs=100000", "trainer.epochs=3") for a in fixed], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
