"""The commands a user types, on a real pseudo-terminal (rich draws live progress bars only on a TTY, so piped
tests cannot see a crash in them): each exits 0 with no traceback, and where a run trains in this process the bar
itself is on the screen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import DLZOO
from tests.terminal import Screen, on_tty

FAST = ["debug=fast", "trainer.threads=1"]


def dlzoo_tty(*args: str, cwd: Path, timeout: float = 300) -> Screen:
    return on_tty([*DLZOO, *args], cwd=cwd, timeout=timeout)


def assert_clean(screen: Screen) -> None:
    assert screen.returncode == 0, screen.text[-3000:]
    assert "Traceback" not in screen.text and "Error executing job" not in screen.text, screen.text[-3000:]


def assert_bar_drawn(screen: Screen) -> None:
    # The bar's own text: a rule of "━", "epoch i/n", the live loss and speed, the time left.
    assert "━" in screen.text and "samples/s" in screen.text and "eta" in screen.text, screen.text[-3000:]


def test_train_then_eval_on_a_terminal(mnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    screen = dlzoo_tty("train", *FAST, f"data.root={mnist_root}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert_clean(screen)
    assert_bar_drawn(screen)
    assert "epoch 1/1" in screen.text and "final metrics" in screen.text
    assert (run_dir / "metrics.json").is_file()

    screen = dlzoo_tty("eval", f"ckpt={run_dir}", cwd=tmp_path)
    assert_clean(screen)
    assert "test_acc" in screen.text


def test_multirun_on_a_terminal(mnist_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    screen = dlzoo_tty("train", "-m", "model=softmax,mlp", *FAST, f"data.root={mnist_root}",
                       f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    assert_clean(screen)
    assert_bar_drawn(screen)
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == ["0_softmax", "1_mlp"]


def test_transfer_on_a_terminal(fmnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    tiny = ["trainer.epochs=2", "trainer.max_steps=10", "transfer.freeze_epochs=1", "trainer.threads=1",
            "data.val_size=500"]  # fmt: skip
    screen = dlzoo_tty("transfer", "--seeds", "1", "--out", str(out), f"data.root={fmnist_root}", *tiny, cwd=tmp_path)
    assert_clean(screen)
    assert_bar_drawn(screen)
    assert (out / "report.md").is_file()


def test_ladder_on_a_terminal(mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ladder"
    screen = dlzoo_tty("ladder", "--seeds", "1", "--epochs", "1", "--rungs", "lab10_1_softmax", "--out", str(out),
                       *FAST, f"data.root={mnist_root}", cwd=tmp_path)  # fmt: skip
    assert_clean(screen)
    assert "10-1 softmax" in screen.text and (out / "ladder.csv").is_file()


def test_tune_on_a_terminal(mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "search"
    screen = dlzoo_tty("tune", "search=smoke", "--trials", "2", "--out", str(out), "data=mnist",
                       f"data.root={mnist_root}", "trainer.threads=1", cwd=tmp_path)  # fmt: skip
    assert_clean(screen)
    assert (out / "best.yaml").is_file()


def test_an_error_on_a_terminal_is_one_paragraph(tmp_path: Path) -> None:
    screen = dlzoo_tty("train", "model=mpl", cwd=tmp_path)
    assert screen.returncode == 2 and "Traceback" not in screen.text
    assert "Did you mean mlp?" in screen.text.replace("\n", " ")


def _presets(group: str) -> str:
    from dlzoo.paths import conf_dir

    return ",".join(sorted(p.stem for p in (conf_dir() / group).glob("*.yaml")))


# Small budgets for the presets that would otherwise pretrain on every training image for minutes; no divergence
# cap, since two steps of the N(0, 1)-initialized deep net average a loss near 1e6 before it settles.
PRESET_BUDGET = ["debug=fast", "trainer.max_steps=2", "trainer.threads=1", "pretrain.epochs=1",
                 "pretrain.unlabeled=false", "trainer.progress=false", "trainer.max_loss=null"]  # fmt: skip
# debug=fast draws no graph or figures: tests/e2e/test_dashboards.py draws them for an MLP, an ensemble and a CNN.
FIGURES: dict[str, list[str]] = {"model": [], "experiment": []}


@pytest.mark.parametrize("group", ["model", "experiment"])
def test_every_preset_trains_through_the_cli_summary_included(
    group: str, mnist_root: Path, fmnist_root: Path, tmp_path: Path
) -> None:
    from tests.helpers import dlzoo

    sweep = tmp_path / "sweep"
    names = _presets(group).split(",")
    # The folder above mnist/ and fashion-mnist/: each preset finds its own dataset (the transfer ones use Fashion).
    proc = dlzoo("train", "-m", f"{group}={','.join(names)}", *PRESET_BUDGET, *FIGURES[group],
                 f"data.root={mnist_root.parent}",
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    finished = sorted(sweep.glob("*/metrics.json"))
    assert len(finished) == len(names), sorted(p.name for p in sweep.iterdir())
    # Every job printed its model summary (an ensemble prints one per member).
    assert proc.stdout.count("output shape") >= len(names)
    for path in finished:
        assert 0.0 <= json.loads(path.read_text())["test_acc"] <= 1.0
