"""trainer.stack=K: K seeds of an MLP trained as one batched model must be the K standalone runs (same initial
weights, batch orders and dropout masks; only the batched matmul's rounding differs), each written to its own
run folder that `dlzoo report` reads as seeds; what cannot be stacked exactly is refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dlzoo.cli import compose_and_validate
from dlzoo.engine.folders import load_checkpoint
from dlzoo.engine.run import run
from dlzoo.errors import DlzooError
from tests.helpers import dlzoo

BASE = ["model.hidden=[32,16]", "model.dropout=0.2", "trainer.epochs=2", "trainer.batch_size=50",
        "trainer.threads=1", "trainer.log_every_n_steps=5", "trainer.figures=false"]  # fmt: skip


def test_each_stacked_member_matches_its_standalone_run(toy_root: Path, tmp_path: Path) -> None:
    overrides = [*BASE, f"data.root={toy_root}", "data.val_size=100"]
    stack = run(compose_and_validate([*overrides, "trainer.stack=3"]), tmp_path / "stack")
    assert stack["seeds"] == [777, 778, 779] and len(stack["member_test_acc"]) == 3
    for seed in stack["seeds"]:
        alone = run(compose_and_validate([*overrides, f"trainer.seed={seed}"]), tmp_path / f"alone{seed}")
        ours = json.loads((tmp_path / "stack" / f"seed{seed}" / "metrics.json").read_text())
        assert ours["seed"] == seed and ours["steps"] == alone["steps"] == 20
        for key in ("train_loss", "val_loss", "test_loss"):
            assert ours[key] == pytest.approx(alone[key], rel=1e-5, abs=1e-6), key
        a = load_checkpoint(tmp_path / f"alone{seed}" / "checkpoints" / "last.pt")["model"]
        b = load_checkpoint(tmp_path / "stack" / f"seed{seed}" / "checkpoints" / "last.pt")["model"]
        for name in a:  # float32 after 20 Adam steps with dropout: equal masks and orders, or this fails by far
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    accs = stack["member_test_acc"]
    assert stack["test_acc"] == pytest.approx(sum(accs) / 3) and len(set(accs)) > 1  # the seeds really differ


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["model=cnn"], "only MLPs are stacked"),
        (["model=mlp_bn"], "model.norm=none"),
        (["reg.clip_norm=1.0"], "penalties and clipping are per member"),
        (["trainer.early_stop.patience=2"], "per-member early stopping"),
        (["ensemble.size=3"], "an ensemble's members are not stacked"),
        (["trainer.stack=0"], "trainer.stack=0 is out of range"),
    ],
)
def test_what_cannot_be_stacked_exactly_is_refused(extra: list[str], message: str) -> None:
    with pytest.raises(DlzooError, match=message):
        compose_and_validate(["trainer.stack=2", *extra])


def test_a_stacked_run_through_the_cli_is_read_by_report_as_seeds(fmnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = dlzoo("train", "trainer.stack=3", "debug=fast", "trainer.threads=1", "data=fashion_mnist",
                 f"data.root={fmnist_root}", f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "training 3 seeds (777..779) as one stacked model" in proc.stdout
    for seed in (777, 778, 779):
        folder = run_dir / f"seed{seed}"
        assert json.loads((folder / "metrics.json").read_text())["seed"] == seed
        assert list((folder / "val").glob("events.*")) and (folder / ".hydra" / "config.yaml").is_file()
    report = dlzoo("report", str(run_dir), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    rows = (run_dir / "report.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("3,777 778 779,"), rows  # one row: the three seeds, not the stack
    evaluated = dlzoo("eval", f"ckpt={run_dir / 'seed778'}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
