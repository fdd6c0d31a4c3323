"""The example notebook, executed as a user runs it: a real Jupyter kernel (nbclient + ipykernel, this interpreter,
this checkout's dlzoo) on real MNIST with the settings cell shrunk to seconds. Any cell error fails the test, and
the outputs must be the notebook display: bars and curves updated in place, tables rendered, no epoch lines."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "examples" / "lectures_10_11.ipynb"
KERNEL = "dlzoo-test"


def settings(mnist_root: Path) -> str:
    """What the test runs instead of the lesson's sizes (papermill's convention: a cell after the `parameters` one)."""
    return f"""DATA = {str(mnist_root)!r}
SUBSET = 500
EPOCHS = 1
XOR_EPOCHS = 20
RUNGS = ["lab10_1_softmax"]
EXTRA = ["trainer.figures=false", "trainer.threads=1"]
import sys, dlzoo
assert sys.executable == {sys.executable!r}, sys.executable
assert dlzoo.__file__.startswith({str(REPO)!r}), dlzoo.__file__"""


def kernel_spec(folder: Path) -> Path:
    """A kernel spec that starts this interpreter (a system-wide `python3` spec may name another one)."""
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    return folder


def outputs(cell: nbformat.NotebookNode, kind: str) -> list[str]:
    """The text of a cell's outputs of MIME type `kind` (display_data and execute_result alike)."""
    found = [o.get("data", {}).get(kind) for o in cell.get("outputs", [])]
    return [f if isinstance(f, str) else "".join(f) for f in found if f]


def test_the_example_notebook_runs_in_a_real_kernel(mnist_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_spec(tmp_path / "jupyter")))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(settings(mnist_root)))
    # The kernel starts in tmp_path: its outputs/ go there. A cell error raises CellExecutionError here.
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=120, resources={"metadata": {"path": str(tmp_path)}})
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)  # raises CellExecutionError on an error
            press_stop_during_a_run(client, tmp_path / "stopped")
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")  # kept for a look when something fails

    lesson = nb.cells[:-1]  # the last cell is the stop button's
    trains = [c for c in lesson if c.cell_type == "code" and "dlzoo.train(" in c.source]
    assert len(trains) == 3
    for cell in trains:
        runs = cell.source.count("dlzoo.train(")
        html = outputs(cell, "text/html")
        # Each run: its bar, finished; its curves as one PNG; its final table. Updated in place: one of each.
        assert sum("<progress" in h and "done" in h for h in html) == runs, html
        assert sum("<td style='text-align:left'>test_acc</td>" in h and "outputs:" in h for h in html) == runs, html
        assert len(outputs(cell, "image/png")) == runs
        streams = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        assert "epoch" not in streams and "final metrics" not in streams, streams
    assert not any(o.output_type == "error" for c in lesson for o in c.get("outputs", []))
    plots = [c for c in lesson if c.cell_type == "code" and "plt.show()" in c.source]
    assert plots and all(outputs(c, "image/png") for c in plots)
    assert "lab10_1_softmax" in "".join(outputs(lesson[-1], "text/html"))  # the ladder's table, rendered
    assert len(list((tmp_path / "outputs" / "runs").iterdir())) == 6  # the six runs' folders, as `dlzoo train`'s


def press_stop_during_a_run(client: NotebookClient, folder: Path) -> None:
    """The kernel's stop button (a SIGINT to the kernel process, as Jupyter sends it) during a long run: the cell
    ends with the one-paragraph Interrupted error naming the call that resumes, and the checkpoint is there."""
    last = folder / "checkpoints" / "last.pt"
    args = ["experiment=xor_deep_relu", "trainer.epochs=100000", "trainer.checkpoint.every=1", "trainer.figures=false",
            "trainer.layer_stats=false", f"hydra.run.dir={folder}"]  # fmt: skip
    cell = nbformat.v4.new_code_cell(f"dlzoo.train(*{args!r})")
    client.nb.cells.append(cell)

    def press() -> None:
        deadline = time.monotonic() + 60
        while not last.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(client.km.provisioner.pid, signal.SIGINT)

    presser = threading.Thread(target=press)
    presser.start()
    try:
        with pytest.raises(CellExecutionError) as caught:
            client.execute_cell(cell, len(client.nb.cells) - 1)
    finally:
        presser.join()
    error = next(o for o in cell.outputs if o.output_type == "error")
    assert error.ename == "Interrupted"
    resume = f"dlzoo.train({', '.join(map(repr, args))}, 'trainer.resume={folder}')"
    assert error.traceback == [f"error: Interrupted; the last checkpoint is {last}. Resume with: {resume}"]
    assert not [o for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"]  # nothing but that
    assert "interrupted: checkpoint written" in outputs(cell, "text/html")[0]
    assert last.is_file() and not (folder / "metrics.json").exists()
    assert "Resume with" in str(caught.value)
