"""Checkpoints from another dlzoo version, edited, or crafted: each refused with one paragraph before anything is
unpacked, trained or written, never a KeyError, a shape or RNG-size RuntimeError, or gigabytes of memory."""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from dlzoo.cli import compose_and_validate
from dlzoo.engine.assembly.folders import identity, load_checkpoint, same_config
from dlzoo.engine.assembly.run import run
from dlzoo.engine.inference import load_model
from dlzoo.errors import DlzooError

XOR = ["experiment=xor_deep_relu", "trainer.epochs=2", "trainer.figures=false", "trainer.threads=1",
       "trainer.progress=false"]  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("foreign") / "run"
    run(compose_and_validate(XOR), folder)
    path = folder / "checkpoints" / "last.pt"
    return path, torch.load(path, weights_only=False)


def _write(state: dict[str, Any], folder: Path) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    torch.save(state, folder / "checkpoints" / "last.pt")
    return folder


def test_a_compressed_archive_is_refused_before_it_is_unpacked(saved: tuple[Path, dict], tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(saved[0]) as a, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as b:
        for record in a.infolist():
            b.writestr(record.filename, a.read(record.filename))
    with pytest.raises(DlzooError, match=r"compressed records, which torch\.save never writes"):
        load_checkpoint(bomb)


def test_a_config_from_another_version_is_named_not_a_traceback(saved: tuple[Path, dict], tmp_path: Path) -> None:
    state = copy.deepcopy(saved[1])
    del state["config"]["data"]
    with pytest.raises(DlzooError, match="whose config has no data section"):
        load_checkpoint(_write(state, tmp_path / "old") / "checkpoints" / "last.pt")
    state = copy.deepcopy(saved[1])
    state["config"]["added_later"] = {"x": 1}
    with pytest.raises(DlzooError, match="does not fit this dlzoo version: Key 'added_later'"):
        load_model(_write(state, tmp_path / "newer"), [])


@pytest.mark.parametrize(
    ("edit", "expected"),
    [("shape", r"other shapes than this model's \(layers\.fc1\.linear\.weight: checkpoint \(3, 3\)"),
     ("rng", "random-number state is not the one this torch keeps")],
)  # fmt: skip
def test_a_resume_that_cannot_restore_is_refused_before_training(
    edit: str, expected: str, saved: tuple[Path, dict], tmp_path: Path
) -> None:
    state = copy.deepcopy(saved[1])
    if edit == "shape":
        state["model"]["layers.fc1.linear.weight"] = torch.zeros(3, 3)
    else:
        state["rng"]["torch"] = state["rng"]["torch"][:10]
    source = _write(state, tmp_path / "edited")
    with pytest.raises(DlzooError, match=expected):
        run(compose_and_validate([*XOR, "trainer.epochs=3", f"trainer.resume={source}"]), tmp_path / "new")
    assert not (source / "metrics.json").exists()


def test_resume_auto_skips_a_damaged_sibling(saved: tuple[Path, dict], tmp_path: Path) -> None:
    """same_config (trainer.resume=auto's look at other runs) maps the tensors rather than reading them; a damaged
    sibling is simply not a match, rather than an error that stops the resume."""
    wanted = identity(saved[1]["config"])
    assert same_config(saved[0], wanted)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(saved[0].read_bytes()[:500])
    assert not same_config(damaged, wanted)


def test_a_resume_removes_what_a_killed_write_left(saved: tuple[Path, dict], tmp_path: Path) -> None:
    """SIGKILL mid-write leaves .last.pt.<random>.tmp beside last.pt: the next run in that folder (holding its
    lock, so no writer is alive) removes it, and only it."""
    folder = _write(copy.deepcopy(saved[1]), tmp_path / "killed")
    stale = folder / "checkpoints" / ".last.pt.k3j2.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = folder / "checkpoints" / "notes.tmp"
    keep.write_text("the user's")
    run(compose_and_validate([*XOR, "trainer.epochs=3", f"trainer.resume={folder}"]), folder)
    assert not stale.exists() and keep.exists() and (folder / "metrics.json").is_file()


def test_checkpoints_and_metrics_have_the_permissions_of_every_other_file(saved: tuple[Path, dict]) -> None:
    """Written through a temporary file (mkstemp makes it 0600), last.pt and metrics.json still get what the
    umask gives the run's other files (train.log, events): one rule for the whole folder."""
    folder = saved[0].parent.parent
    modes = {p.name: p.stat().st_mode & 0o777 for p in (saved[0], folder / "metrics.json", folder / "config.yaml")
             if p.exists()}  # fmt: skip
    events = next(folder.rglob("events.out.tfevents.*"))
    assert set(modes.values()) == {events.stat().st_mode & 0o777}, (modes, oct(events.stat().st_mode))
