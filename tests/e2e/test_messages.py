"""What a user reads when they get something wrong: one paragraph that names the fix, printed literally (user text
often holds brackets), with a "did you mean" for every kind of typo. In-process through `dlzoo.cli.main`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dlzoo.cli import main
from dlzoo.config.compose import precheck
from dlzoo.console import print_error


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["validate", "model=mpl"], "Unknown model config 'mpl'; choices: cnn,"),
        (["validate", "model=mpl"], "Did you mean mlp? Fix: `model=mlp`"),
        (["validate", "optim=adm"], "Did you mean adam?"),
        (["trian"], "Did you mean `dlzoo train`?"),
        (["ls", "activaton"], "Did you mean `dlzoo ls activation`?"),
        (["validate", "trainer.epochs=abc"], "trainer.epochs takes an integer"),
        (["validate", "optim.lr=fast"], "optim.lr takes a number"),
        (["validate", "trainer.layer_stats=maybe"], "trainer.layer_stats takes true or false"),
        (["validate", "model.hidden=[abc]"], "model.hidden=[abc]: model.hidden[0] takes an integer"),
        (["validate", "trainer.epoch=1"], "Unknown config key 'trainer.epoch'"),
        (["validate", "trainer.epoch=1"], "Did you mean trainer.epochs?"),
        (["validate", "+trainer.epoch=1"], "Did you mean trainer.epochs?"),
        (["validate", "model.activation=[/x]"], "model.activation=[/x]"),
        (["validate", "data.val_size=0"], "data.val_size=0 is out of range: it must be >= 1"),
        (["validate", "optim.lr=inf"], "optim.lr=inf is out of range: it must be > 0 and finite"),
    ],
)
def test_typos_get_one_paragraph_naming_the_fix(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run(capsys, *args)
    assert code == 2 and expected in text, text


def test_a_bad_lr_is_not_blamed_on_the_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run(capsys, "validate", "optim.lr=-1")
    assert code == 2 and "optim.lr=-1.0 is out of range" in text and "sched.min_lr" not in text


@pytest.mark.parametrize("message", ["pip install 'dlzoo[tune]'", "model.hidden=[abc]", "a [/x] b", "[bold]x[/]"])
def test_user_text_is_printed_literally(message: str, capsys: pytest.CaptureFixture[str]) -> None:
    print_error(message)
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_a_missing_launcher_plugin_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins") else real(name, *a))  # fmt: skip
    problem = precheck(["-m", "hydra/launcher=parallel", "model=softmax,mlp"])
    assert problem and "pip install 'dlzoo[launchers]'" in problem
    assert precheck(["-m", "model=softmax,mlp"]) is None  # the basic launcher needs no extra


MY_MODEL = """arch: sequential
bias_init: zeros
blocks:
  - {type: conv, out: 16}
  - {type: act}
  - {type: maxpool, kernel: 4}
  - {type: flatten}
  - {type: linear, out: 10}
"""


def test_validate_reads_a_users_config_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "res_branch.yaml").write_text(MY_MODEL)
    code, text = run(capsys, "validate", "--config-dir", str(tmp_path / "my_conf"), "model=res_branch")
    assert code == 0 and "config is valid" in text and "maxpool" in text, text
    code, text = run(capsys, "validate", f"--config-dir={tmp_path / 'my_conf'}", "model=res_brnch")
    assert code == 2 and "Did you mean res_branch?" in text
    code, text = run(capsys, "validate", "--config-dir", str(tmp_path / "nope"), "model=res_branch")
    assert code == 2 and "is not a folder" in text


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.zeros((28, 28, 3), dtype=np.uint8), r"shape \(28, 28, 3\).*grayscale"),
        (np.full((2, 28, 28), np.nan), "NaN or infinite"),
        (np.zeros((1, 28, 28), dtype=np.complex64), "complex64 values, not pixel numbers"),
        (np.array(["a", "b"]), "<U1 values, not pixel numbers"),
    ],
)
def test_predict_refuses_arrays_that_are_not_grayscale_images(array: np.ndarray, expected: str, tmp_path: Path) -> None:
    from dlzoo.engine.inference import read_inputs
    from dlzoo.errors import DlzooError

    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DlzooError, match=expected):
        read_inputs([str(tmp_path / "x.npy")])


def test_predict_reads_the_three_documented_shapes(tmp_path: Path) -> None:
    from dlzoo.engine.inference import read_inputs

    for shape, n in (((28, 28), 1), ((3, 28, 28), 3), ((2, 784), 2)):
        np.save(tmp_path / "x.npy", np.zeros(shape, dtype=np.uint8))
        names, images = read_inputs([str(tmp_path / "x.npy")])
        assert images.shape == (n, 1, 28, 28) and len(names) == n


def test_eval_prints_its_scores_when_the_folder_is_read_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dlzoo.engine import inference

    def read_only(path: Path, payload: dict) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(inference, "write_json", read_only)
    _, what = inference._save_scores(tmp_path / "eval-last.json", {"test_acc": 0.5})
    assert what.startswith("not written") and "could not save the scores" in capsys.readouterr().err
