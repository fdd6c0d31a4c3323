"""Transfer learning (Géron ch. 11.2) on a small real slice of Fashion-MNIST: the task A / task B filters, weight
reuse and freezing (and resuming across the unfreeze), clear errors for incompatible checkpoints, and `dlzoo
transfer`'s report."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from dlzoo.cli import compose_and_validate
from dlzoo.data.build import build_splits, select_classes
from dlzoo.data.datasets import load_splits
from dlzoo.engine.assembly.run import run
from dlzoo.engine.training.stopping import Interrupted, StopFlag
from dlzoo.errors import DlzooError
from tests.helpers import dlzoo

TASK_A = [0, 1, 2, 3, 4, 7, 8, 9]
REUSED = [f"layers.fc{i}.linear.weight" for i in range(1, 6)]
TINY = ["trainer.threads=1", "trainer.progress=false", "data.val_size=1000"]


def cfg_for(experiment: str, root: Path, *overrides: str) -> DictConfig:
    return compose_and_validate([f"experiment={experiment}", f"data.root={root}", *TINY, *overrides])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]


@pytest.fixture(scope="module")
def model_a(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model_A trained for 30 steps: enough to differ from any fresh init."""
    folder = tmp_path_factory.mktemp("model_A")
    run(cfg_for("transfer_a", fmnist_root, "trainer.epochs=1", "trainer.max_steps=30"), folder)
    return folder


def test_select_classes_relabels_in_the_given_order() -> None:
    x = torch.arange(10).float().unsqueeze(1)
    y = torch.tensor([0, 5, 6, 7, 9, 6, 2, 5, 8, 3])
    xa, ya = select_classes(x, y, TASK_A, None)
    assert xa.squeeze(1).tolist() == [0, 3, 4, 6, 8, 9] and ya.tolist() == [
        0,
        5,
        7,
        2,
        6,
        3,
    ]  # Géron: y_A[y_A > 6] -= 2
    xb, yb = select_classes(x, y, [5, 6], 6)
    assert xb.squeeze(1).tolist() == [1, 2, 5, 7] and yb.tolist() == [0, 1, 1, 0]  # shirt (6) is the positive class


def test_task_filters_keep_the_right_classes_labels_and_sizes(fmnist_root: Path) -> None:
    full = load_splits("fashion_mnist", str(fmnist_root), False, val_size=1000)
    a = build_splits(cfg_for("transfer_a", fmnist_root).data)
    b = build_splits(cfg_for("transfer_b", fmnist_root).data)
    for split in ("train", "val", "test"):
        y = getattr(full, f"y_{split}")
        in_a = torch.isin(y, torch.tensor(TASK_A))
        assert torch.equal(getattr(a, f"x_{split}"), getattr(full, f"x_{split}")[in_a])
        assert torch.equal(getattr(a, f"y_{split}"), torch.tensor([TASK_A.index(c) for c in y[in_a].tolist()]))
        in_b = (y == 5) | (y == 6)
        n = 200 if split == "train" else int(in_b.sum())  # only task B's training set is cut to 200
        assert torch.equal(getattr(b, f"x_{split}"), getattr(full, f"x_{split}")[in_b][:n])
        assert torch.equal(getattr(b, f"y_{split}"), (y[in_b][:n] == 6).long())
    assert a.num_classes == 8 and b.num_classes == 2
    assert len(a.y_test) == 8000 and len(b.y_test) == 2000 and int(b.y_test.sum()) == 1000
    assert 0 < int(b.y_train.sum()) < 200  # both classes among the 200


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.classes=[1,1,2]"], "data.classes=[1, 1, 2] must be at least 2 distinct labels"),
        (["data.classes=[0,10]"], "in [0, 10)"),
        (["data.binary_positive=3"], "data.binary_positive=3 must be one of the kept labels [5, 6]"),
        (["data.binary_positive=null", "data.classes=[0,1,2]"], "model.head='sigmoid' is out of range"),
        (["data.binary_positive=null", "data.classes=null"], "fashion_mnist has 10 classes here, and a sigmoid"),
        (["transfer.freeze_epochs=-1"], "transfer.freeze_epochs=-1 is out of range"),
        (["transfer.unfreeze_lr=0"], "transfer.unfreeze_lr=0.0 is out of range"),
        (["transfer.reuse_layers=0"], "transfer.reuse_layers=0 is out of range"),
    ],
)
def test_bad_transfer_settings_are_refused(fmnist_root: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(DlzooError, match=re.escape(message)):
        cfg_for("transfer_b_on_a", fmnist_root, *overrides)


def test_reused_layers_stay_frozen_then_train_at_the_lower_lr(fmnist_root: Path, model_a: Path, tmp_path: Path) -> None:
    source = weights(model_a)
    snapshots: list[dict[str, torch.Tensor]] = []
    cfg = cfg_for("transfer_b_on_a", fmnist_root, f"transfer.ckpt={model_a}", "trainer.epochs=3",
                  "transfer.freeze_epochs=2")  # fmt: skip
    metrics = run(cfg, tmp_path, on_epoch_end=lambda e, m: snapshots.append(weights(tmp_path)))
    assert metrics["epochs"] == 3 and len(snapshots) == 3
    for epoch in (0, 1):  # frozen: the copied layers are model_A's, bit for bit; the new output layer learns
        assert all(torch.equal(snapshots[epoch][k], source[k]) for k in REUSED)
    assert not torch.equal(snapshots[0]["layers.out.weight"], snapshots[1]["layers.out.weight"])
    assert snapshots[0]["layers.out.weight"].shape == (1, 50)  # one sigmoid unit, not model_A's 8-way softmax
    assert all(not torch.equal(snapshots[2][k], source[k]) for k in REUSED)  # unfrozen in epoch 3
    history = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["history"]
    assert [h["lr"] for h in history] == [pytest.approx(1e-3), pytest.approx(1e-3), pytest.approx(1e-4)]


@pytest.mark.parametrize("freeze_epochs", [1, 2])
def test_a_resumed_run_keeps_the_freeze_schedule(
    fmnist_root: Path, model_a: Path, tmp_path: Path, freeze_epochs: int
) -> None:
    """Stopped after epoch 1 and resumed, the run matches an uninterrupted one exactly, whether the copied layers
    were unfrozen at that point (freeze_epochs=1) or still had to stay frozen (2)."""
    overrides = [f"transfer.ckpt={model_a}", "trainer.epochs=3", f"transfer.freeze_epochs={freeze_epochs}"]
    run(cfg_for("transfer_b_on_a", fmnist_root, *overrides), tmp_path / "full")
    stop = StopFlag()
    with pytest.raises(Interrupted):
        run(cfg_for("transfer_b_on_a", fmnist_root, *overrides), tmp_path / "cut", stop, lambda e, m: stop.request(2))
    run(cfg_for("transfer_b_on_a", fmnist_root, *overrides, f"trainer.resume={tmp_path / 'cut'}"), tmp_path / "x")
    full, resumed = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_incompatible_checkpoint_names_the_layers_and_both_shapes(
    fmnist_root: Path, model_a: Path, tmp_path: Path
) -> None:
    cfg = cfg_for("transfer_b_on_a", fmnist_root, f"transfer.ckpt={model_a}", "model.hidden=[300,64,50,50,50]")
    with pytest.raises(DlzooError, match=r"layers\.fc2\.linear\.weight: checkpoint \(100, 300\) vs model \(64, 300\)"):
        run(cfg, tmp_path / "shapes")
    cfg = cfg_for("transfer_b_on_a", fmnist_root, f"transfer.ckpt={model_a}", "transfer.reuse_layers=7")
    with pytest.raises(DlzooError, match=r"transfer\.reuse_layers=7, but this model has 6 weight layers"):
        run(cfg, tmp_path / "count")
    cfg = cfg_for("transfer_b_on_a", fmnist_root, f"transfer.ckpt={tmp_path / 'nothing'}")
    with pytest.raises(DlzooError, match="No checkpoint at"):
        run(cfg, tmp_path / "missing")


def test_transfer_command_runs_both_arms_and_reports_them(fmnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    tiny = ["trainer.epochs=2", "trainer.max_steps=20", "transfer.freeze_epochs=1", *TINY]
    proc = dlzoo("transfer", "--seeds", "2", "--out", str(out), f"data.root={fmnist_root}", *tiny, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    report = (out / "report.md").read_text()
    assert "| model_B |" in report and "| model_B_on_A |" in report and "2 seeds (777, 778)" in report
    assert "Error-rate reduction" in report
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["seed"] for r in rows] == ["777", "778"]
    for row in rows:
        for arm in ("model_A", "model_B", "model_B_on_A"):
            assert 0.0 <= float(row[arm]) <= 1.0
        b, b_on_a = 1 - float(row["model_B"]), 1 - float(row["model_B_on_A"])
        assert float(row["error_reduction"]) == pytest.approx((b - b_on_a) / b)
    state = torch.load(out / "seed778" / "model_B_on_A" / "checkpoints" / "last.pt", weights_only=False)
    assert state["config"]["transfer"]["ckpt"] == str(out / "seed778" / "model_A")


def test_a_one_seed_report_shows_no_nan(tmp_path: Path) -> None:
    from dlzoo.sweeps.transfer_study import write_report

    row = {"seed": 777, "model_A": 0.9, "model_B": 0.8, "model_B_on_A": 0.9, "device": "cpu"}
    recipe = {"epochs": 1, "batch_size": 20, "lr": 0.01, "freeze_epochs": 1, "unfreeze_lr": None}
    write_report(tmp_path, [row], "dlzoo transfer --seeds 1", recipe)
    report = (tmp_path / "report.md").read_text()
    assert "nan" not in report and "0.8000 (1 seed)" in report


def test_bad_transfer_command_input_exits_2_without_traceback(tmp_path: Path) -> None:
    proc = dlzoo("transfer", "--seeds", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "--seeds 0 must be a count" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("epochs", "expected"), [(1, "layers frozen for all 1 epochs."),
                                                  (6, "layers frozen for 4 epochs, then lr 0.001.")])  # fmt: skip
def test_the_report_says_the_freeze_schedule_the_runs_had(epochs: int, expected: str, tmp_path: Path) -> None:
    from dlzoo.sweeps.transfer_study import write_report

    rows = [{"seed": 1, "model_A": 0.9, "model_B": 0.9, "model_B_on_A": 0.95, "device": "cpu"}]
    recipe = {"epochs": epochs, "batch_size": 20, "lr": 0.01, "freeze_epochs": 4, "unfreeze_lr": 0.001}
    write_report(tmp_path, rows, "dlzoo transfer", recipe)
    assert expected in (tmp_path / "report.md").read_text()
