"""What a run's TensorBoard shows, read back from its event files as TensorBoard reads them: the headline curves of
train, val and test overlaid (one tag, three sub-runs), the per-layer lessons from the first step (scalars, the
depth figure, histograms), test-time images, the text tab and the HParams session, and the bounded terminal."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from tests.helpers import DLZOO, FAST, dlzoo
from tests.terminal import on_tty

ALL = {"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}
ACC, LOSS = "accuracy_and_loss/accuracy", "accuracy_and_loss/loss"


def events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance=ALL)
    accumulator.Reload()
    return accumulator


def hparams_records(folder: Path) -> dict[str, HParamsPluginData]:
    out = {}
    for metadata in events(folder).summary_metadata.values():
        if metadata.plugin_data.plugin_name == "hparams":
            data = HParamsPluginData.FromString(metadata.plugin_data.content)
            out[data.WhichOneof("data")] = data
    return out


@pytest.fixture(scope="module")
def xor_sigmoid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The deep sigmoid XOR net, 200 one-step epochs, with a boolean override to see in HParams."""
    out = tmp_path_factory.mktemp("xor") / "run"
    proc = dlzoo("train", "experiment=xor_deep_sigmoid", "trainer.epochs=200", "trainer.deterministic=true",
                 "trainer.threads=1", f"hydra.run.dir={out}", cwd=out.parent)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_train_val_and_test_overlay_on_one_step_axis(xor_sigmoid: tuple[Path, str]) -> None:
    run, _ = xor_sigmoid
    splits = {split: events(run / split) for split in ("train", "val", "test")}
    for split in ("train", "val"):
        steps = [e.step for e in splits[split].Scalars(ACC)]
        assert steps == list(range(1, 201))  # one point per epoch, at the global step (one step per epoch here)
    (test_point,) = splits["test"].Scalars(ACC)
    assert test_point.step == 200  # the test score ends the curves, on the same axis
    root = events(run)
    epochs = {e.step: e.value for e in root.Scalars("progress/epoch")}
    assert epochs[200] == 200  # the epoch as a scalar on the step axis (Lightning's convention)
    assert not [t for t in root.Tags()["scalars"] if t.startswith("hparam/")]


def test_the_vanishing_gradient_is_logged_from_the_first_step(xor_sigmoid: tuple[Path, str]) -> None:
    root = events(xor_sigmoid[0])
    first = {t: root.Scalars(t)[0] for t in root.Tags()["scalars"] if t.startswith("per_layer_grad_norm/")}
    assert {e.step for e in first.values()} == {1}
    ratio = first["per_layer_grad_norm/layers.fc1.linear"].value / first["per_layer_grad_norm/layers.out"].value
    assert ratio < 1e-3  # nine sigmoid layers: the first layer's gradient is orders of magnitude below the output's
    slopes = [root.Scalars(t)[0].value for t in root.Tags()["scalars"] if t.startswith("per_layer_act_slope/")]
    assert len(slopes) == 9 and all(0 < s <= 0.25 for s in slopes)  # sigmoid's derivative is at most 1/4
    assert not [t for t in root.Tags()["scalars"] if t.startswith("per_layer_act_dead/")]  # bounded: no dead units


def test_histograms_images_and_text(xor_sigmoid: tuple[Path, str]) -> None:
    root = events(xor_sigmoid[0])
    histograms = root.Tags()["histograms"]
    for kind in ("weights", "grads", "activations"):
        tags = [t for t in histograms if t.startswith(f"per_layer_{kind}/")]
        assert len(tags) >= 9, kind
        assert root.Histograms(tags[0])[0].step == 1  # the net as initialized
    from PIL import Image

    for what in ("1_gradient_norm", "2_activation_std", "3_activation_slope"):
        (figure,) = root.Images(f"layers_by_depth/{what}")
        picture = np.asarray(Image.open(io.BytesIO(figure.encoded_image_string)))
        assert picture.shape[1] > picture.shape[0] > 200 and picture.std() > 10, what  # drawn, not blank
    assert root.Images("test_images/confusion_matrix")
    assert "test_images/misclassified" not in root.Tags()["images"]  # XOR's inputs are points, not images
    assert root.Tags()["graph"]  # the Graphs tab
    texts = {t.removesuffix("/text_summary"): root.Tensors(t)[0] for t in root.Tags()["tensors"]}
    assert {"run/command", "run/config", "run/model", "run/final_metrics", "run/meta"} <= texts.keys()
    text = {k: v.tensor_proto.string_val[0].decode() for k, v in texts.items()}
    assert "experiment=xor_deep_sigmoid" in text["run/command"] and "activation: sigmoid" in text["run/config"]
    assert "layers.fc1.linear" in text["run/model"] and "| test_acc |" in text["run/final_metrics"]


def test_hparams_reads_the_sub_runs_keeps_booleans_and_leads_with_the_choices(xor_sigmoid: tuple[Path, str]) -> None:
    records = hparams_records(xor_sigmoid[0])
    session = records["session_start_info"].session_start_info.hparams
    assert session["trainer.deterministic"].WhichOneof("kind") == "bool_value"  # not 1.0000
    assert session["trainer.deterministic"].bool_value is True
    experiment = records["experiment"].experiment
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    assert metrics == {("val", ACC), ("test", ACC), ("val", LOSS), ("test", LOSS)}
    first = sorted(h.name for h in experiment.hparam_infos if h.differs)
    assert first == ["experiment", "trainer.deterministic", "trainer.epochs"]  # what the command line chose


def test_a_long_run_prints_a_bounded_number_of_epoch_lines(xor_sigmoid: tuple[Path, str]) -> None:
    run, stdout = xor_sigmoid
    printed = re.findall(r"^epoch +\d+/200", stdout, flags=re.M)
    assert 10 <= len(printed) <= 21 and printed[-1] == "epoch 200/200"
    assert (run / "train.log").read_text().count("epoch ") >= 200  # the log keeps every epoch


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_images_of_a_real_run_and_of_an_ensemble(model: str, mnist_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "ensemble"
    proc = dlzoo("train", *FAST, "trainer.figures=true", f"model={model}", "ensemble.size=2", "trainer.max_steps=5",
                 f"data.root={mnist_root}", f"hydra.run.dir={run}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for folder in (run / "member0", run):  # a member's own pictures, then the ensemble's vote
        images = events(folder).Tags()["images"]
        assert {"test_images/confusion_matrix", "test_images/misclassified"} <= set(images), folder
    test = events(run / "test")
    assert {ACC, ACC + "_member_mean"} <= set(test.Tags()["scalars"])  # the ensemble beside its members' mean
    member = events(run / "member0")
    assert member.Tags()["graph"] and len([t for t in member.Tags()["images"] if t.startswith("layers_by_depth/")]) == 3


def test_tables_stay_readable_on_an_80_column_terminal(mnist_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    screen = on_tty([*DLZOO, "train", *FAST, f"data.root={mnist_root}", f"hydra.run.dir={run}"], cwd=tmp_path,
                    columns=80)  # fmt: skip
    assert screen.returncode == 0, screen.text[-2000:]
    # debug=fast is a smoke run: curves, histograms and text, but no graph or figures (they cost more than it).
    root = events(run)
    assert not root.Tags()["images"] and not root.Tags()["graph"] and root.Tags()["histograms"]
    assert "run/config/text_summary" in root.Tags()["tensors"]
    lines = screen.text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(re.match(r"│ train_samples_per_s +│ +[\d,]+ │", line) for line in lines)  # one row, not wrapped
    assert any(re.match(r"│ layers\.fc1\.linear +│ Linear +│ +\(N, 512\) │ +401,920 │", line) for line in lines)
