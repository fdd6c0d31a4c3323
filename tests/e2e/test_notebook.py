"""The example notebook, executed as a user runs it: a real Jupyter kernel (nbclient + ipykernel, this interpreter,
this checkout's dlzoo) on real MNIST with the settings cell shrunk to seconds. Any cell error fails the test, and
the outputs must be the notebook display: bars and curves updated in place, tables rendered, no epoch lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

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
    try:
        NotebookClient(nb, kernel_name=KERNEL, timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")  # kept for a look when something fails

    trains = [c for c in nb.cells if c.cell_type == "code" and "dlzoo.train(" in c.source]
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
    assert not any(o.output_type == "error" for c in nb.cells for o in c.get("outputs", []))
    plots = [c for c in nb.cells if c.cell_type == "code" and "plt.show()" in c.source]
    assert plots and all(outputs(c, "image/png") for c in plots)
    assert "lab10_1_softmax" in "".join(outputs(nb.cells[-1], "text/html"))  # the ladder's table, rendered
    assert len(list((tmp_path / "outputs" / "runs").iterdir())) == 6  # the six runs' folders, as `dlzoo train`'s
