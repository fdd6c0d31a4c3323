"""End to end through the real `dlzoo` command: a tiny run on real Fashion-MNIST, a 2-job multirun, `ls`,
`validate`, and bad input (each a clear one-paragraph message, a non-zero exit and no traceback)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from tests.helpers import DLZOO, FAST, dlzoo


def test_tiny_run_writes_metrics_checkpoint_and_dashboards(fmnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = dlzoo(
        "train", *FAST, "data=fashion_mnist", f"data.root={fmnist_root}", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "layers.fc1.linear" in proc.stdout and "trainable 1,195,018" in proc.stdout  # the model summary
    assert "final metrics" in proc.stdout
    assert "mlp_dropout (mlp) on fashion_mnist" in proc.stdout  # the preset the user chose, not only its arch
    assert "seed 777  ·  device cpu  ·  threads 1" in proc.stdout  # environment facts on one line, not rows
    assert re.search(r"│ train_samples_per_s +│ +[\d,]+ │", proc.stdout) and re.search(
        r"│ wall_time_s +│ +[\d.]+ s │", proc.stdout
    )

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
        assert math.isfinite(metrics[key]), key
    for key in ("train_acc", "val_acc", "test_acc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["test_acc"] > 0.4  # 20 steps of the lab 10-5 net already beat chance (0.1) by far
    assert metrics["epochs"] == 1 and metrics["steps"] == 20 and metrics["train_samples_per_s"] > 0
    assert metrics["seed"] == 777 and metrics["torch"] and metrics["device"] == "cpu" and metrics["threads"] == 1
    assert "git_commit" in metrics  # None when running from an installed wheel

    state = __import__("torch").load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert {"model", "optimizer", "epoch", "config"} <= state.keys()
    assert state["config"]["model"]["hidden"] == [512, 512, 512, 512]
    assert (run_dir / ".hydra" / "config.yaml").is_file() and "epoch   1/1" in (run_dir / "train.log").read_text()

    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {
        "optim/lr",
        "progress/epoch",
        "per_layer_grad_norm/layers.fc1.linear",
        "per_layer_weight_norm/layers.out",
    }
    assert expected <= scalars, expected - scalars
    assert not [t for t in scalars if t.startswith("hparam/")]  # HParams reads the sub-runs: no copies among curves
    acc, loss = "accuracy_and_loss/accuracy", "accuracy_and_loss/loss"
    for split, tags in (("train", {acc, loss, "optim/loss_per_step"}), ("val", {acc, loss}),
                        ("test", {acc, loss})):  # fmt: skip
        sub = EventAccumulator(str(run_dir / split))
        sub.Reload()
        assert set(sub.Tags()["scalars"]) == tags, split
    assert "run/meta/text_summary" in events.Tags()["tensors"]  # the text tab: seed, versions, device, commit
    hparams = {}
    for metadata in events.summary_metadata.values():
        if metadata.plugin_data.plugin_name == "hparams":
            data = HParamsPluginData.FromString(metadata.plugin_data.content)
            hparams[data.WhichOneof("data")] = data
    assert hparams.keys() == {"experiment", "session_start_info", "session_end_info"}
    session = hparams["session_start_info"].session_start_info.hparams
    assert session["model.hidden"].string_value == "[512, 512, 512, 512]" and session["optim.lr"].number_value == 0.001
    metrics = {(m.name.group, m.name.tag) for m in hparams["experiment"].experiment.metric_infos}
    assert metrics >= {("test", "accuracy_and_loss/accuracy"), ("val", "accuracy_and_loss/accuracy")}


def test_multirun_of_two_models(fmnist_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = dlzoo(
        "train",
        "-m",
        "model=softmax,mlp",
        *FAST,
        "data=fashion_mnist",
        f"data.root={fmnist_root}",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    runs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert runs == ["0_softmax", "1_mlp"]
    for name in runs:
        assert math.isfinite(json.loads((sweep / name / "metrics.json").read_text())["test_acc"])


def test_a_diverged_job_lets_the_sweep_go_on_and_end_non_zero(mnist_root: Path, tmp_path: Path) -> None:
    """N(0, 1) against Xavier is a lesson whose first arm may diverge: that job's error is a result, the next job
    still runs, the comparison counts the finished one, and the sweep ends with exit 1 naming the failed job."""
    sweep = tmp_path / "sweep"
    # The N(0,1)-initialized softmax logs losses of 9-16 in its first steps, the Xavier one under 2.
    proc = dlzoo("train", "-m", "model=softmax", "model.init=normal,xavier_uniform", "trainer.max_loss=5", *FAST,
                 f"data.root={mnist_root}", f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    err = " ".join(proc.stderr.split())
    assert "1 of 2 jobs of the sweep failed (0_softmax: Training diverged: the loss exploded to" in err
    assert err.count("Training diverged") == 2  # the job's own paragraph, then the sweep's line naming it
    assert not (sweep / "0_softmax" / "metrics.json").exists()
    assert "Training diverged" in (sweep / "0_softmax" / "train.log").read_text()
    assert math.isfinite(json.loads((sweep / "1_softmax" / "metrics.json").read_text())["test_acc"])
    assert "sweep finished" in proc.stdout and (sweep / "compare" / "compare.md").is_file()


def test_ls_lists_groups_and_registries(tmp_path: Path) -> None:
    proc = dlzoo("ls", cwd=tmp_path)
    assert proc.returncode == 0
    for word in ("experiment", "lab10_5_dropout", "activation", "maxout", "variance_scaling", "onecycle", "nadam"):
        assert word in proc.stdout
    one = dlzoo("ls", "activations", cwd=tmp_path)
    assert one.returncode == 0 and "leaky_relu" in one.stdout and "lab10" not in one.stdout


def test_techniques_compose_in_one_run(fmnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    techniques = [
        "experiment=selu_self_normalizing",  # SELU + lecun_normal + alpha dropout + standardized inputs
        "optim=nadam",
        "sched=onecycle",
        "reg.l2=1e-4",
        "reg.clip_norm=1.0",
        "reg.max_norm=3.0",
        "trainer.early_stop.patience=1",
        "eval.mc_samples=4",
        "trainer.deterministic=true",
    ]
    proc = dlzoo(
        "train",
        *FAST,
        *techniques,
        "data=fashion_mnist",
        f"data.root={fmnist_root}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr  # the SELU recipe is complete
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.3 < metrics["test_acc"] <= 1 and 0.3 < metrics["test_mc_acc"] <= 1 and metrics["test_mc_entropy"] > 0
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"per_layer_act_mean/layers.fc1.act", "per_layer_act_dead/layers.fc4.act", "optim/lr"} <= tags
    test = EventAccumulator(str(run_dir / "test"))
    test.Reload()
    assert "accuracy_and_loss/accuracy_mc_dropout" in test.Tags()["scalars"]
    lrs = [e.value for e in events.Scalars("optim/lr")]
    assert max(lrs) > 5 * 0.001  # 1cycle climbs from nadam's lr 0.001 towards max_lr 0.01


def test_validate_prints_the_config_or_the_problem(tmp_path: Path) -> None:
    ok = dlzoo("validate", "experiment=lab10_7_bn", cwd=tmp_path)
    assert ok.returncode == 0 and "config is valid" in ok.stdout and "lr: 0.01" in ok.stdout
    warned = dlzoo("validate", "model.activation=selu", "model.norm=batch", cwd=tmp_path)
    assert warned.returncode == 0 and "warning: SELU with batch norm" in " ".join(warned.stderr.split())
    bad = dlzoo("validate", "model.activation=rleu", cwd=tmp_path)
    assert bad.returncode == 2 and "Did you mean 'relu'" in bad.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["model=nope"], "Unknown model config 'nope'"),
        (["model=0"], "Config group override must be a string"),
        (["trainer.epochs=abc"], "trainer.epochs"),
        (["model.activation=rleu"], "Did you mean 'relu'"),
        (["data.root=/no/such/folder"], "data.root='/no/such/folder' does not exist"),
        (["data=fashion_mnist", "data.download=false"], "No local copy of fashion_mnist"),
    ],
)
def test_bad_input_gives_a_clear_error_and_non_zero_exit(args: list[str], expected: str, tmp_path: Path) -> None:
    proc = dlzoo("train", *FAST, *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode != 0
    assert expected in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr + proc.stdout
    if args[0].startswith("data"):  # found while loading data, inside the run
        assert not (tmp_path / "run" / "metrics.json").exists()
    else:  # config problems are refused before Hydra makes a folder
        assert not (tmp_path / "run").exists()


def test_unknown_command(tmp_path: Path) -> None:
    proc = dlzoo("trian", cwd=tmp_path)
    assert proc.returncode == 2 and "train, validate, ls, eval, predict" in proc.stderr


@pytest.mark.slow
def test_lab10_5_recipe_reaches_088_on_fashion_mnist(fmnist_root: Path, tmp_path: Path) -> None:
    """The issue's bar, as the README states it: the full 15-epoch lab 10-5 recipe reaches 0.88 test accuracy on
    Fashion-MNIST as a mean over seeds 1, 2, 3 (one seed alone spreads by about ±0.004, so a single run can land
    either side of 0.88). Two 1-thread jobs side by side: about 4 minutes on an idle 2-core machine."""
    sweep = tmp_path / "sweep"
    proc = dlzoo(
        "train",
        "-m",
        "hydra/launcher=parallel",
        "model=mlp_dropout",
        "trainer.seed=1,2,3",
        "trainer.threads=1",
        "data=fashion_mnist",
        f"data.root={fmnist_root}",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=3600,  # OpenMP threads slow down 3-10x on a busy machine
    )
    assert proc.returncode == 0, proc.stderr
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert [m["seed"] for m in runs] == [1, 2, 3] and all(m["epochs"] == 15 for m in runs)
    assert statistics.mean(m["test_acc"] for m in runs) >= 0.88


@pytest.mark.slow
def test_lab10_5_reaches_0978_on_mnist(mnist_root: Path, tmp_path: Path) -> None:
    """The MNIST ladder's recorded number: `dlzoo ladder` runs lab 10-5 (784-512x4-10 ReLU, Xavier, dropout 0.3,
    Adam 1e-3, 15 epochs) over seeds 1-3, two at a time; their mean must reach 0.978 (the lecture's 0.9804 less
    about two seed-to-seed standard deviations; the README's 5 seeds measured 0.9821 ± 0.0011)."""
    out = tmp_path / "ladder"
    proc = dlzoo("ladder", "--rungs", "lab10_5_dropout", "--seeds", "3", "--jobs", "2", "--out", str(out),
                 f"data.root={mnist_root}", cwd=tmp_path, timeout=3600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    runs = [json.loads((out / "lab10_5_dropout" / f"seed{k}" / "metrics.json").read_text()) for k in (1, 2, 3)]
    assert all(m["epochs"] == 15 for m in runs)
    assert all("name: mnist" in (out / "lab10_5_dropout" / f"seed{k}" / ".hydra" / "config.yaml").read_text()
               for k in (1, 2, 3))  # fmt: skip
    assert statistics.mean(m["test_acc"] for m in runs) >= 0.978


def test_unwritable_output_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = dlzoo("train", *FAST, f"hydra.run.dir={blocker}/run", cwd=tmp_path)
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr and "Traceback" not in proc.stderr


def start_and_signal(args: list[str], run_dir: Path, cwd: Path, signum: int) -> subprocess.CompletedProcess[str]:
    """Start `dlzoo <args>` writing to `run_dir`, send `signum` once epoch 1's checkpoint exists, and wait."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([*DLZOO, *args, f"hydra.run.dir={run_dir}"], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_ctrl_c_checkpoints_and_auto_resume_matches_an_uninterrupted_run(fmnist_root: Path, tmp_path: Path) -> None:
    args = ["train", "model=mlp", "model.dropout=0.2", "data=fashion_mnist", f"data.root={fmnist_root}",
            "data.train_subset=4000", "data.val_size=500", "trainer.epochs=12", "trainer.threads=1",
            "trainer.log_every_n_steps=10"]  # fmt: skip
    full = dlzoo(*args, f"hydra.run.dir={tmp_path / 'full'}", cwd=tmp_path)
    assert full.returncode == 0, full.stderr

    run_dir = tmp_path / "interrupted"
    stopped = start_and_signal(args, run_dir, tmp_path, signal.SIGINT)  # during epoch 2 or later
    assert stopped.returncode == 130, stopped.stderr
    stderr = stopped.stderr
    resume = f"dlzoo train {' '.join(args[1:])} trainer.resume={run_dir}"  # what the user typed, to copy
    assert resume in " ".join(stderr.split()) and not (run_dir / "metrics.json").exists()

    # As a user's second command: Hydra makes a new dated folder, and auto finds the unfinished sibling run.
    later = tmp_path / "later"
    resumed = dlzoo(*args, "trainer.resume=auto", f"hydra.run.dir={later}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert not later.exists()  # no stray folder: the resumed run's log went on in the run it continued
    log = (run_dir / "train.log").read_text()
    assert "resuming" in log and "epoch  12/12" in log
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((run_dir / "metrics.json").read_text())
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "steps", "epochs"):
        assert a[key] == b[key], key  # bit-identical, not merely close
    # best_epoch names the same epoch as the best-epochNNN.pt the run kept (top_k=1 by val/loss).
    for folder, metrics in ((tmp_path / "full", a), (run_dir, b)):
        assert [p.name for p in (folder / "checkpoints").glob("best-*.pt")] == [f"best-epoch{a['best_epoch']:03d}.pt"]
        assert metrics["best_epoch"] == a["best_epoch"]


def test_a_second_process_in_a_run_folder_is_refused_at_once(fmnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "model=mlp", "data=fashion_mnist", f"data.root={fmnist_root}", "trainer.epochs=3",
            "trainer.threads=1", "data.train_subset=4000", f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    first = subprocess.Popen([*DLZOO, *args], cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)  # fmt: skip
    wait_for(run_dir / ".lock", first)  # taken before Hydra writes .hydra/, which then follows
    wait_for(run_dir / ".hydra" / "overrides.yaml", first)
    deadline = time.monotonic() + 60
    while not (overrides := (run_dir / ".hydra" / "overrides.yaml").read_text()).endswith("subset=4000\n"):
        assert time.monotonic() < deadline, f"overrides.yaml never completed: {overrides!r}"
        time.sleep(0.02)  # the file appears before Hydra has written it
    second = dlzoo(*args[:-1], "trainer.seed=5", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert second.returncode == 2
    assert f"in use by another dlzoo process (pid {first.pid})" in " ".join(second.stderr.split())
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == overrides  # Hydra never started for it
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert json.loads((run_dir / "metrics.json").read_text())["seed"] == 777 and not (run_dir / ".lock").exists()


def test_sigterm_checkpoints_and_exits_143(fmnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "model=mlp", "data=fashion_mnist", f"data.root={fmnist_root}", "trainer.epochs=50",
            "trainer.threads=1", "data.train_subset=4000"]  # fmt: skip
    assert start_and_signal(args, run_dir, tmp_path, signal.SIGTERM).returncode == 143
    state = __import__("torch").load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] >= 1 and state["epoch"] < 50


def test_resume_refuses_a_different_architecture(fmnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    base = [*FAST, "data=fashion_mnist", f"data.root={fmnist_root}"]
    assert dlzoo("train", *base, "model=mlp", f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0
    proc = dlzoo("train", *base, "model=mlp_deep", f"trainer.resume={run_dir}",
                 f"hydra.run.dir={tmp_path / 'other'}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "does not match the config: model.hidden" in " ".join(proc.stderr.split())
    assert not (tmp_path / "other").exists()  # a refused resume leaves no empty run folder
    proc = dlzoo("train", *base, "model=mlp", "data.train_subset=1000", f"trainer.resume={run_dir}",
                 f"hydra.run.dir={tmp_path / 'other'}", cwd=tmp_path)  # fmt: skip
    message = " ".join(proc.stderr.split())
    assert (
        proc.returncode == 2
        and "trained on other data than this config selects: data.train_subset: 2000 -> 1000" in message
    )


def test_eval_and_predict_a_checkpoint(fmnist_root: Path, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from dlzoo.data.datasets import load_splits

    run_dir = tmp_path / "run"
    train = dlzoo("train", *FAST, "data=fashion_mnist", f"data.root={fmnist_root}", f"hydra.run.dir={run_dir}",
                  cwd=tmp_path)  # fmt: skip
    assert train.returncode == 0, train.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())

    # Hydra overrides as in `dlzoo train`: a group choice (data=...) included, which a dotlist cannot express.
    # The group replaces the whole data section, as in train: the run's debug=fast slices are given again.
    proc = dlzoo("eval", f"ckpt={run_dir}", "eval.mc_samples=3", "data=fashion_mnist", f"data.root={fmnist_root}",
                 "data.val_size=500", "data.test_subset=2000", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    scored = json.loads((run_dir / "checkpoints" / "eval-last.json").read_text())
    assert scored["test_acc"] == metrics["test_acc"] and 0 < scored["test_mc_acc"] <= 1
    assert "eval-last.json  (the scores as JSON)" in proc.stdout and "TensorBoard events" not in proc.stdout

    test = load_splits("fashion_mnist", str(fmnist_root), download=False)
    np.save(tmp_path / "three.npy", test.x_test[:3, 0].numpy())
    Image.fromarray(test.x_test[3, 0].numpy()).save(tmp_path / "one.png")
    proc = dlzoo("predict", f"ckpt={run_dir}/checkpoints/last.pt", "input=three.npy,one.png", "format=json",
                 cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["input"] for r in rows] == ["three.npy[0]", "three.npy[1]", "three.npy[2]", "one.png"]
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-4 and r["label"] for r in rows)
    assert sum(r["class"] == int(y) for r, y in zip(rows, test.y_test[:4], strict=True)) >= 2  # 55% model

    bad = dlzoo("predict", f"ckpt={run_dir}", "input=missing.png", cwd=tmp_path)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    bad = dlzoo("eval", f"ckpt={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert bad.returncode == 2 and "No checkpoint" in bad.stderr and "Traceback" not in bad.stderr


def test_exploding_run_stops_with_a_clear_error_and_keeps_its_checkpoint(fmnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = dlzoo("train", "model=mlp", "optim.lr=10", "data=fashion_mnist", f"data.root={fmnist_root}",
                 "data.train_subset=3000", "trainer.epochs=3", "trainer.log_every_n_steps=5", "trainer.threads=1",
                 f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Training diverged: the loss exploded" in message and "lower optim.lr" in message
    assert "Traceback" not in proc.stderr and not (run_dir / "metrics.json").exists()


CUSTOM_NET = """
# A residual CNN with a split & merge block, in YAML only.
arch: sequential
bias_init: zeros
blocks:
  - {type: conv, out: 16}
  - {type: act}
  - type: residual
    blocks: [{type: conv, out: 16}, {type: act}, {type: conv, out: 16}]
  - type: branches
    merge: concat
    paths: [[{type: conv, out: 8, kernel: 1}], [{type: conv, out: 8, kernel: 3}, {type: act}]]
  - {type: maxpool, kernel: 4}
  - {type: flatten}
  - {type: linear, out: 10}
"""


def test_yaml_only_custom_net_trains_end_to_end(fmnist_root: Path, tmp_path: Path) -> None:
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "res_branch.yaml").write_text(CUSTOM_NET)
    run_dir = tmp_path / "run"
    proc = dlzoo("train", "--config-dir", "my_conf", "model=res_branch", *FAST, "data=fashion_mnist",
                 f"data.root={fmnist_root}", f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Residual" in proc.stdout and "Branches" in proc.stdout and "(N, 16, 7, 7)" in proc.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["test_acc"] > 0.2

    broken = CUSTOM_NET.replace("{type: linear, out: 10}", "{type: linear, out: 10, in: 999}")
    (tmp_path / "my_conf" / "model" / "res_branch.yaml").write_text(broken)
    proc = dlzoo("train", "--config-dir", "my_conf", "model=res_branch", *FAST, f"hydra.run.dir={tmp_path / 'bad'}",
                 cwd=tmp_path)  # fmt: skip
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "model.blocks[6] (linear) expects 999 input features" in message
    assert "gives 784" in message and not (tmp_path / "bad").exists()  # refused before any work


def test_ensemble_trains_members_and_combines_them(fmnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = dlzoo("train", "model=mlp", "ensemble.size=3", *FAST, "trainer.figures=true", "data=fashion_mnist",
                 f"data.root={fmnist_root}", f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ensemble_size"] == 3 and len(metrics["member_test_acc"]) == 3
    assert len(set(metrics["member_test_acc"])) > 1  # different seeds, different members
    assert 0 < metrics["test_acc"] <= 1
    for i in range(3):
        member = json.loads((run_dir / f"member{i}" / "metrics.json").read_text())
        assert member["seed"] == 777 + i and member["test_acc"] == metrics["member_test_acc"][i]
        assert list((run_dir / f"member{i}").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run_dir / "test"))
    events.Reload()
    assert events.Scalars("accuracy_and_loss/accuracy")[-1].value == pytest.approx(metrics["test_acc"])
    root = EventAccumulator(str(run_dir))
    root.Reload()
    assert {"test_images/confusion_matrix", "test_images/misclassified"} <= set(root.Tags()["images"])  # the vote's

    # The ensemble folder itself can be scored: every member, then their combination, as the run did.
    proc = dlzoo("eval", f"ckpt={run_dir}", "data=fashion_mnist", f"data.root={fmnist_root}", "data.val_size=500",
                 "data.test_subset=2000", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    scored = json.loads((run_dir / "eval-ensemble.json").read_text())
    assert scored["member_test_acc"] == metrics["member_test_acc"] and scored["test_acc"] == metrics["test_acc"]
