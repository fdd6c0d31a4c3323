"""The commands a user types, on a real pseudo-terminal (rich draws live progress bars only on a TTY, so piped
tests cannot see a crash in them): each exits 0 with no traceback, and where a run trains in this process the bar
itself is on the screen."""

from __future__ import annotations

import json
import re
import signal
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
# Scoring is cut to a few hundred images too: after two steps the score says nothing, and on the CNN and ensemble
# presets it would cost more than everything else.
PRESET_BUDGET = ["debug=fast", "trainer.max_steps=2", "trainer.threads=1", "pretrain.epochs=1",
                 "pretrain.unlabeled=false", "trainer.progress=false", "trainer.max_loss=null", "data.val_size=200",
                 "data.test_subset=200"]  # fmt: skip
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


BAR = re.compile(r"epoch (\d+)/(\d+) .*?([\d,]+)/([\d,]+) · running mean loss (\S+)(?: · .*?)? · run eta (\S+)")


def _bars(screen: Screen) -> list[tuple[int, int, int, str, str]]:
    """Each drawn bar as (epoch, step, steps of the run, loss, eta)."""
    found = [BAR.search(line) for line in screen.text.splitlines()]
    return [(int(m[1]), int(m[3].replace(",", "")), int(m[4].replace(",", "")), m[5], m[6]) for m in found if m]


def test_the_live_bar_shows_the_epochs_mean_loss_and_the_runs_eta(mnist_root: Path, tmp_path: Path) -> None:
    """A 120-step run (2 epochs of 60): the bar counts the run's steps, shows a loss from the first step on, and
    once it has timed a few steps an eta for the whole run; its last loss is the epoch line's train loss. Its
    TensorBoard histograms follow the run's length: a dozen or so from step 1, not one."""
    run_dir = tmp_path / "run"
    screen = dlzoo_tty("train", "model=mlp", "data.train_subset=6000", "data.val_size=500", "trainer.epochs=2",
                       "trainer.threads=1", "trainer.figures=false", f"data.root={mnist_root}",
                       f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    assert_clean(screen)
    bars = _bars(screen)
    assert bars and {total for _, _, total, _, _ in bars} == {120}, screen.text[-3000:]
    shown = [b for b in bars if b[1] > 0]
    assert shown and all(float(loss) > 0 for _, _, _, loss, _ in shown)  # a finite loss, never nan, once stepping
    assert any(re.fullmatch(r"\d+:\d\d:\d\d", eta) for *_, eta in shown if _[1] < 120)  # the run's eta, not -:--
    assert {epoch for epoch, *_ in shown} == {1, 2}
    epoch2 = re.search(r"epoch +2/2 .*?train loss (\d+\.\d{4})", screen.text)
    assert epoch2 and bars[-1][3] == epoch2[1]  # the bar's loss means what the epoch line's means

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"histograms": 0})
    events.Reload()
    tag = next(t for t in events.Tags()["histograms"] if t.startswith("per_layer_weights/"))
    steps = [h.step for h in events.Histograms(tag)]
    assert steps[0] == 1 and 10 <= len(steps) <= 25 and steps[-1] <= 120


def test_the_bar_after_a_resume_counts_the_runs_steps(mnist_root: Path, tmp_path: Path) -> None:
    """Stopped in epoch 2 and resumed on a terminal: the bar goes on from the step it stopped at, out of the
    run's steps (not `1600/550` and a full bar for the rest of the epoch)."""
    from tests.e2e.test_cli import start_and_signal

    args = ["train", "model=mlp", "data.train_subset=6000", "data.val_size=500", "trainer.epochs=3",
            "trainer.threads=1", "trainer.figures=false", f"data.root={mnist_root}"]  # fmt: skip
    run_dir = tmp_path / "run"
    stopped = start_and_signal(args, run_dir, tmp_path, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    screen = dlzoo_tty(*args, f"trainer.resume={run_dir}", cwd=tmp_path)
    assert_clean(screen)
    bars = [b for b in _bars(screen) if b[1] > 0]
    assert bars and {total for _, _, total, _, _ in bars} == {180}, screen.text[-3000:]
    assert all(60 <= step <= 180 and (epoch - 1) * 60 <= step <= epoch * 60 for epoch, step, *_ in bars)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()  # TensorBoard's step-to-epoch map goes on as if never stopped: epoch = step / 60
    assert all(e.value == pytest.approx(e.step / 60) for e in events.Scalars("progress/epoch"))
