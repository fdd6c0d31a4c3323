"""dlzoo.train / dlzoo.load / dlzoo.ladder (dlzoo/api.py) and the notebook display (dlzoo/notebook.py): what they
return, the CLI's errors and numbers, interrupting and resuming, and no state left behind between calls."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

import dlzoo
from dlzoo.notebook import NotebookView
from tests.helpers import FAST
from tests.helpers import dlzoo as dlzoo_cli

# A tiny XOR run: synthetic data, a few full-batch steps, no TensorBoard images.
XOR = ["experiment=xor_deep_relu", "trainer.epochs=3", "trainer.figures=false", "trainer.threads=1"]


@pytest.fixture(scope="module")
def xor_run(tmp_path_factory: pytest.TempPathFactory) -> dlzoo.Result:
    return dlzoo.train(*XOR, f"hydra.run.dir={tmp_path_factory.mktemp('api') / 'xor'}")


def test_import_dlzoo_is_light_and_exposes_the_api() -> None:
    code = ("import sys, dlzoo; assert 'torch' not in sys.modules and 'hydra' not in sys.modules, 'heavy import'; "
            "print(dlzoo.train.__module__, sorted(set(dir(dlzoo)) & {'train', 'load', 'ladder'}))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "dlzoo.api ['ladder', 'load', 'train']"
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        dlzoo.trian  # noqa: B018


def test_train_returns_the_run(xor_run: dlzoo.Result) -> None:
    import pandas as pd

    r = xor_run
    assert set(os.listdir(r.folder)) >= {".hydra", "checkpoints", "metrics.json", "train.log", "train", "val"}
    assert sorted(os.listdir(r.folder / ".hydra")) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert r.metrics is not None and r.metrics["epochs"] == 3 and 0.0 <= r.metrics["test_acc"] <= 1.0
    assert isinstance(r.history, pd.DataFrame)
    assert list(r.history["epoch"]) == [1, 2, 3]
    assert list(r.history.columns) == ["epoch", "train/loss", "train/acc", "val/loss", "val/acc", "lr"]
    assert r.history["val/loss"].iloc[-1] == pytest.approx(r.metrics["val_loss"])
    assert r.config.model.activation == "relu" and r.config.trainer.epochs == 3
    assert r.overrides[:2] == XOR[:2]
    model = r.model()
    assert not model.training
    with torch.no_grad():
        assert model(torch.tensor([[0.0, 1.0]])).shape[0] == 1
    assert "test_acc" in repr(r) and str(r.folder) in repr(r)


def test_load_reads_back_what_train_returned(xor_run: dlzoo.Result, monkeypatch: pytest.MonkeyPatch) -> None:
    again = dlzoo.load(xor_run.folder)
    assert again.metrics == xor_run.metrics
    assert again.history.equals(xor_run.history)
    monkeypatch.setitem(sys.modules, "pandas", None)  # as without pandas installed: a list of dicts
    rows = dlzoo.load(xor_run.folder).history
    assert isinstance(rows, list) and [h["epoch"] for h in rows] == [1, 2, 3]
    assert rows[-1]["val/loss"] == pytest.approx(xor_run.metrics["val_loss"])


def test_load_refuses_a_folder_that_is_no_run(tmp_path: Path) -> None:
    with pytest.raises(dlzoo.DlzooError, match=r"is not a dlzoo run folder .*Fix:"):
        dlzoo.load(tmp_path)


def test_the_api_and_the_cli_give_the_same_run(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same seed, same numbers (CPU is deterministic); the same folder layout and .hydra files; and the CLI's
    `dlzoo eval` and `dlzoo report` read the API's folder."""
    from dlzoo.engine.inference import eval_command
    from dlzoo.sweeps.report import find_runs

    args = [*FAST, f"data.root={mnist_root}"]
    proc = dlzoo_cli("train", *args, f"hydra.run.dir={tmp_path / 'cli'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    monkeypatch.chdir(tmp_path)  # where the CLI ran: hydra.yaml records it
    api = dlzoo.train(*FAST, f"hydra.run.dir={tmp_path / 'api'}", data_root=mnist_root)
    cli = dlzoo.load(tmp_path / "cli")
    for key in ("train_loss", "val_loss", "test_loss", "test_acc", "steps"):
        assert api.metrics[key] == cli.metrics[key], key
    assert api.history.equals(cli.history)
    assert (tmp_path / "api/.hydra/config.yaml").read_text() == (tmp_path / "cli/.hydra/config.yaml").read_text()
    hydra_yaml = [
        (tmp_path / f"{w}/.hydra/hydra.yaml").read_text().replace(f"/{w}\n", "/<run>\n") for w in ("api", "cli")
    ]
    assert hydra_yaml[0] == hydra_yaml[1]  # the run folder's name aside, as @hydra.main writes it
    assert api.overrides == cli.overrides == [*FAST, f"data.root={mnist_root}"]
    assert sorted(p.name for p in api.folder.iterdir() if not p.name.startswith("events")) == sorted(
        p.name for p in cli.folder.iterdir() if not p.name.startswith("events")
    )
    assert "epoch   1/1" in (api.folder / "train.log").read_text()
    assert eval_command([f"ckpt={api.folder}"])["test_acc"] == api.metrics["test_acc"]
    assert {r.folder for r in find_runs(tmp_path)} == {api.folder, cli.folder}


def test_errors_are_the_clis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A bad override raises the DlzooError the CLI prints (same text), before any folder is made."""
    from dlzoo.cli import main

    monkeypatch.chdir(tmp_path)
    for bad in (["model=mlp_dropot"], ["trainer.epoch=3"], ["optim.lr=fast"]):
        with pytest.raises(dlzoo.DlzooError) as caught:
            dlzoo.train(*bad, "trainer.epochs=1")
        capsys.readouterr()
        assert main(["train", *bad, "trainer.epochs=1"]) == 2  # the CLI's own entry, in this process
        assert capsys.readouterr().err.strip() == "error: " + str(caught.value)
    assert not (tmp_path / "outputs").exists()
    with pytest.raises(dlzoo.DlzooError, match=r"data\.root='/nonexistent' does not exist"):
        dlzoo.train("data.root=/nonexistent")  # found inside the run: its empty folder is removed, as the CLI's
    assert not any((tmp_path / "outputs" / "runs").iterdir())
    assert "Error executing job" not in capsys.readouterr().err  # Hydra's line for a failed job: the error says it
    assert caught.value._render_traceback_() == ["error: " + str(caught.value)]  # what Jupyter shows: no traceback
    with pytest.raises(dlzoo.DlzooError, match="takes overrides only, not -m"):
        dlzoo.train("-m", "model=mlp,mlp_xavier")
    with pytest.raises(dlzoo.DlzooError, match=r"trainer\.devices > 1"):
        dlzoo.train("trainer.devices=2")
    typed = re.escape('as typed on the command line, e.g. "trainer.epochs=3"; got 3')
    with pytest.raises(dlzoo.DlzooError, match=typed):
        dlzoo.train("trainer.epochs", 3)  # type: ignore[arg-type]


def open_files() -> dict[str, str]:
    """Each open descriptor and what it points at (a failure then names the file, pipe or socket left open).
    Font files are left out: matplotlib keeps up to 64 open fonts per thread in an LRU cache (font_manager._get_font),
    bounded, and one evicted font closes its file when the collector frees it, at a time no test controls."""
    gc.collect()
    files = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used, closed by now
            files[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return {fd: target for fd, target in files.items() if not target.endswith((".ttf", ".otf", ".afm"))}


def process_state() -> tuple[Any, ...]:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    return (open_files(), sorted(t.name for t in threading.enumerate()),
            list(logging.getLogger().handlers), logging.getLogger().level, torch.get_num_threads(),
            GlobalHydra.instance().is_initialized(), HydraConfig.initialized(),
            signal.getsignal(signal.SIGINT))  # fmt: skip


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_repeated_calls_leave_nothing_behind(xor_run: dlzoo.Result, tmp_path: Path) -> None:
    """A notebook trains many times in one process: no open train.log, writer thread or Hydra state may pile up,
    torch's thread count comes back, and the same seed gives the same numbers every time. One call first: a
    library another test in this worker used may start something once, on its first use (not a pile-up)."""
    dlzoo.train(*XOR, f"hydra.run.dir={tmp_path / 'warm'}")
    before = process_state()
    second = dlzoo.train(*XOR, f"hydra.run.dir={tmp_path / 'again'}")
    assert process_state() == before
    assert second.metrics["test_loss"] == xor_run.metrics["test_loss"]
    assert second.history.equals(xor_run.history)
    logging.getLogger("dlzoo").info("after the run")  # reaches no run's train.log
    assert "after the run" not in (second.folder / "train.log").read_text()


def test_interrupt_checkpoints_and_says_how_to_resume(tmp_path: Path) -> None:
    """The kernel's stop button is a SIGINT to the kernel process: the run stops after its step, writes last.pt
    and raises Interrupted naming the dlzoo.train call that resumes it; that call finishes the run in place."""
    folder = tmp_path / "run"
    args = ["experiment=xor_deep_relu", "trainer.epochs=100000", "trainer.checkpoint.every=1", "trainer.figures=false",
            "trainer.threads=1", "trainer.layer_stats=false", f"hydra.run.dir={folder}"]  # fmt: skip
    last = folder / "checkpoints" / "last.pt"

    returned = threading.Event()

    def press_stop() -> None:
        while not last.is_file() and not returned.wait(0.05):
            pass
        if not returned.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_stop)
    presser.start()
    try:
        with pytest.raises(dlzoo.Interrupted) as caught:
            dlzoo.train(*args)
    finally:
        returned.set()
        presser.join()
    message = str(caught.value)
    assert message.startswith(f"Interrupted; the last checkpoint is {last}.")
    resume = f"dlzoo.train({', '.join(map(repr, args))}, 'trainer.resume={folder}')"
    assert message.endswith("Resume with: " + resume)
    assert last.is_file() and not (folder / "metrics.json").exists()
    done = dlzoo.load(folder).history["epoch"].iloc[-1]
    finished = dlzoo.train(*[a.replace("100000", str(done + 2)) for a in args], f"trainer.resume={folder}")
    assert finished.folder == folder and finished.metrics["epochs"] == done + 2
    assert list(finished.history["epoch"]) == list(range(1, done + 3))


class Shown:
    """What IPython.display.display records for the view: each handle and every object it was updated with."""

    def __init__(self) -> None:
        self.handles: list[Shown.Handle] = []

    class Handle:
        def __init__(self, obj: Any) -> None:
            self.objects = [obj]

        def update(self, obj: Any) -> None:
            self.objects.append(obj)

    def __call__(self, obj: Any, display_id: bool = False) -> Shown.Handle:
        assert display_id  # every output is made once, then updated in place
        self.handles.append(Shown.Handle(obj))
        return self.handles[-1]


def epoch_metrics(epoch: int) -> dict[str, float]:
    return {"train/loss": 1 / epoch, "train/acc": 0.5, "val/loss": 1.1 / epoch, "val/acc": 0.4, "lr": 0.1}


def test_the_notebook_view_updates_in_place_and_draws_the_last_epoch() -> None:
    shown = Shown()
    view = NotebookView(200, "dlzoo.train('x')", show=shown)
    for epoch in range(1, 201):  # 200 quick epochs: redrawn far fewer times, the first and the last always
        view.epoch_end(epoch, epoch_metrics(epoch))
    view.finish({"test_acc": 0.5, "seed": 1}, "outputs/runs/x")
    bar, plot, table = shown.handles
    assert len(shown.handles) == 3
    assert 2 <= len(plot.objects) - 1 < 20
    assert plot.objects[-1].format == "png" and plot.objects[-1].data.startswith(b"\x89PNG")
    assert "value='200' max='200'" in bar.objects[-1].data and "done" in bar.objects[-1].data
    assert "test_acc" in table.objects[-1].data and "seed 1" in table.objects[-1].data


def test_the_notebook_view_draws_each_ensemble_member() -> None:
    shown = Shown()
    view = NotebookView(2, "t", show=shown)
    for _member in range(3):
        for epoch in (1, 2):
            view.epoch_end(epoch, epoch_metrics(epoch))
    assert [len(s) for s in view.series] == [2, 2, 2]
    view.stopped("interrupted: checkpoint written")
    assert "interrupted: checkpoint written" in shown.handles[0].objects[-1].data


@pytest.mark.filterwarnings("ignore:No artists with labels")  # an empty ladder's chart has no legend entries
def test_a_run_leaves_the_notebooks_matplotlib_backend(tmp_path: Path) -> None:
    """The dashboards' figures and the ladder's chart draw on their own canvases: a notebook's plt.show() (its
    inline backend) keeps working after dlzoo.train or dlzoo.ladder."""
    import matplotlib

    from dlzoo.engine.recording.figures import confusion_figure
    from dlzoo.sweeps.ladder_table import draw_chart

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend other than Agg, standing for the notebook's
    try:
        image = confusion_figure(torch.eye(3, dtype=torch.long) * 5, ["a", "b", "c"], "t")
        draw_chart([], "t", tmp_path / "ladder.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert image.ndim == 3 and image.shape[2] == 3 and image.std() > 0
    assert (tmp_path / "ladder.png").read_bytes().startswith(b"\x89PNG")


def test_a_resume_moves_only_the_runs_own_log(tmp_path: Path) -> None:
    """Resuming points Hydra's train.log handler at the continued folder; a notebook user's own log file on the
    root logger keeps going where they put it."""
    from dlzoo.console import redirect_file_logs

    root = logging.getLogger()
    mine = logging.FileHandler(tmp_path / "mine.log")
    hydras = logging.FileHandler(tmp_path / "new" / "train.log", delay=True)
    (tmp_path / "old").mkdir()
    root.addHandler(mine)
    root.addHandler(hydras)
    try:
        redirect_file_logs(tmp_path / "old" / "train.log")
    finally:
        root.removeHandler(mine)
        root.removeHandler(hydras)
        mine.close()
        hydras.close()
    assert mine.baseFilename == str(tmp_path / "mine.log")
    assert hydras.baseFilename == str(tmp_path / "old" / "train.log")
