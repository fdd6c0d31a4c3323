"""trainer.stack=K: K seeds (or an ensemble's K members) trained as one batched model must be the K standalone
runs (same initial weights, batch orders and dropout masks; only the batched kernels' float rounding differs), each
written to its own run folder that `dlzoo report` reads as seeds; a stacked run resumes exactly; what cannot be
stacked exactly is refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dlzoo.cli import compose_and_validate
from dlzoo.config.schema import as_dict, settings
from dlzoo.data.datasets import load_splits
from dlzoo.engine.assembly.folders import load_checkpoint
from dlzoo.engine.assembly.run import run
from dlzoo.engine.assembly.stacked_run import fit_stack
from dlzoo.engine.training.loop import seed_everything
from dlzoo.engine.training.stopping import Interrupted, StopFlag
from dlzoo.errors import DlzooError
from dlzoo.models import build_model
from tests.helpers import dlzoo

BASE = ["model.hidden=[32,16]", "model.dropout=0.2", "trainer.epochs=2", "trainer.batch_size=50",
        "trainer.threads=1", "trainer.log_every_n_steps=5", "trainer.figures=false", "data.val_size=100"]  # fmt: skip
# A small CNN with every image-layout layer: grouped conv, per-member batch norm, pooling, dropout masks.
CNN = ["model=cnn", "model.blocks=[{type:conv,out:6,bias:false},{type:batchnorm},{type:act},{type:maxpool,kernel:2},"
       "{type:dropout,p:0.2},{type:conv,out:8,kernel:3,init:normal,init_std:0.1},{type:act},{type:avgpool,kernel:2},"
       "{type:flatten},{type:linear,out:16},{type:act},{type:dropout,p:0.3},{type:linear,out:10}]"]  # fmt: skip

PRESETS = {
    "mlp_dropout": [],
    "mlp_bn": ["model=mlp_bn", "model.hidden=[32,16]"],
    "cnn": CNN,
    "selu_alpha_dropout": ["model=mlp_selu", "model.hidden=[32,16]", "model.dropout=0.1"],
    "maxout": ["model.activation=maxout"],
    "per_member_reg": [
        "reg.clip_norm=0.5",
        "reg.max_norm=1.0",
        "reg.l2=1e-4",
        "reg.clip_value=0.5",
        "optim=momentum",
        "optim.lr=0.05",
    ],
    # Residual and branch nets (lecture 10-4's Lego): vmap stacks any forward, not only a chain of layers. The
    # residual net's batch-norm biases feed a conv and another batch norm, so their gradients cancel to a tiny rest
    # that Adam turns into lr-sized steps whatever its rounding (a grouped convolution's: 1e-7 after the first step,
    # 1e-4 after the second, 1e-3 after the fourth). Two steps run both paths: the probed one and the vmapped one.
    "residual": ["model=resnet_small", "trainer.max_steps=2"],
    "branches": ["model=inception_small", "trainer.max_steps=8"],
    "prelu": ["model.activation=prelu"],  # a parametric activation: one more stacked parameter, nothing to write
    "bf16": ["trainer.precision=bf16"],  # autocast around the vmapped forward, as around the standalone one
    "early_stopping": [
        "trainer.epochs=6",
        "trainer.early_stop.patience=1",
        "trainer.early_stop.min_delta=0.02",
        "trainer.early_stop.monitor=val/acc",
    ],
}


# (losses, weights) as relative errors, in float32 after 20 Adam steps: a grouped convolution rounds differently from
# K single ones, and Adam turns that noise into full lr-sized steps wherever a gradient is ~0 (a unit that pooling
# or ReLU starved), so CNN weights are compared by ||a - b|| / ||a|| per tensor rather than element by element. A
# wrong dropout mask or batch order misses by orders of magnitude more.
TOLERANCE = {"cnn": (1e-3, 5e-4), "residual": (1e-3, 5e-4), "branches": (1e-3, 5e-4)}


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-4) -> None:
    for name in a:
        if not a[name].is_floating_point():
            assert torch.equal(a[name], b[name]), name
            continue
        err = ((b[name] - a[name]).norm() / a[name].norm().clamp_min(1e-12)).item()
        assert err <= rtol, f"{name}: relative error {err:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p == "residual" else p for p in PRESETS])
def test_each_stacked_member_matches_its_standalone_run(preset: str, toy_root: Path, tmp_path: Path) -> None:
    overrides = [*BASE, f"data.root={toy_root}", *PRESETS[preset]]
    stack = run(compose_and_validate([*overrides, "trainer.stack=3"]), tmp_path / "stack")
    assert stack["seeds"] == [777, 778, 779] and len(stack["member_test_acc"]) == 3
    for seed in stack["seeds"]:
        alone = run(compose_and_validate([*overrides, f"trainer.seed={seed}"]), tmp_path / f"alone{seed}")
        ours = json.loads((tmp_path / "stack" / f"seed{seed}" / "metrics.json").read_text())
        assert ours["seed"] == seed and ours["steps"] == alone["steps"] and ours["epochs"] == alone["epochs"]
        loss_tol, weight_tol = TOLERANCE.get(preset, (1e-5, 1e-4))
        for key in ("train_loss", "val_loss", "test_loss"):
            assert ours[key] == pytest.approx(alone[key], rel=loss_tol, abs=loss_tol / 10), key
        a = load_checkpoint(tmp_path / f"alone{seed}" / "checkpoints" / "last.pt")["model"]
        b = load_checkpoint(tmp_path / "stack" / f"seed{seed}" / "checkpoints" / "last.pt")["model"]
        _assert_same_weights(a, b, weight_tol)
    accs = stack["member_test_acc"]
    assert stack["test_acc"] == pytest.approx(sum(accs) / 3)
    if preset == "early_stopping":  # each member stopped where its own run did, not where the others did
        assert any(json.loads((tmp_path / "stack" / f"seed{s}" / "metrics.json").read_text())["epochs"] < 6
                   for s in stack["seeds"])  # fmt: skip


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("preset", ["mlp_bn", "cnn"])
def test_a_stacked_members_layer_dashboards_are_its_standalone_runs(
    preset: str, toy_root: Path, tmp_path: Path
) -> None:
    overrides = [*BASE, f"data.root={toy_root}", "trainer.histogram_every_n_steps=10", "trainer.figures=true",
                 *PRESETS[preset]]  # fmt: skip
    run(compose_and_validate([*overrides, "trainer.stack=2"]), tmp_path / "stack")
    run(compose_and_validate([*overrides, "trainer.seed=778"]), tmp_path / "alone")
    ours, theirs = _scalars(tmp_path / "stack" / "seed778"), _scalars(tmp_path / "alone")
    layers = [tag for tag in theirs if tag.startswith("per_layer")]
    assert len(layers) >= 8 and set(layers) <= set(ours)  # weight and grad norms, act mean/std/slope/dead
    for tag in layers:
        assert [s for s, _ in ours[tag]] == [s for s, _ in theirs[tag]] == [1, 5, 10, 15, 20], tag
        assert [v for _, v in ours[tag]] == pytest.approx([v for _, v in theirs[tag]], rel=2e-3, abs=1e-5), tag


def test_a_stacked_ensemble_is_the_ensemble_trained_member_by_member(toy_root: Path, tmp_path: Path) -> None:
    overrides = [*BASE, f"data.root={toy_root}", "ensemble.size=3"]
    stacked = run(compose_and_validate([*overrides, "trainer.stack=3"]), tmp_path / "stacked")
    alone = run(compose_and_validate([*overrides, "ensemble.stack=off"]), tmp_path / "alone")
    assert stacked["ensemble_size"] == 3 and stacked["test_acc"] == pytest.approx(alone["test_acc"], abs=1 / 200)
    assert stacked["member_test_acc"] == pytest.approx(alone["member_test_acc"], abs=1 / 200)
    for i in range(3):
        a = load_checkpoint(tmp_path / "alone" / f"member{i}" / "checkpoints" / "last.pt")["model"]
        b = load_checkpoint(tmp_path / "stacked" / f"member{i}" / "checkpoints" / "last.pt")["model"]
        _assert_same_weights(a, b)


class _Quiet:
    """A tracker that records logged losses and can request a stop at a given step."""

    def __init__(self, stop: StopFlag | None = None, at: int | None = None) -> None:
        self.stop, self.at, self.losses = stop, at, []

    def log_step(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        self.losses.append((step, loss))
        if self.stop is not None and step == self.at:
            self.stop.request(2)

    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None


def _members(cfg, data, seeds):  # type: ignore[no-untyped-def]
    models, generators = [], []
    for seed in seeds:
        seed_everything(seed)
        models.append(build_model(cfg.model, data.input_shape, data.num_classes).train())
        generators.append(torch.Generator().manual_seed(seed + 100))
    return models, generators


@pytest.mark.parametrize("preset", ["mlp_bn", "cnn"])
@pytest.mark.parametrize("stop_at", [12, 21])  # after epoch 1 exactly; in the middle of epoch 2
def test_a_stacked_run_resumes_bit_identically(preset: str, stop_at: int, toy_root: Path, tmp_path: Path) -> None:
    overrides = [f"data.root={toy_root}", "trainer.epochs=3", "trainer.log_every_n_steps=1", "trainer.stack=2"]
    cfg = settings(compose_and_validate([*BASE, *overrides, *PRESETS[preset]]))
    data = load_splits("mnist", str(toy_root), download=False, val_size=100)
    seeds = [1, 2]
    models, gens = _members(cfg, data, seeds)
    full = fit_stack(models, gens, seeds, [_Quiet(), _Quiet()], data, cfg)
    stop, ck = StopFlag(), tmp_path / "stack.pt"
    first, gens1 = _members(cfg, data, seeds)
    with pytest.raises(Interrupted):
        fit_stack(first, gens1, seeds, [_Quiet(stop, stop_at), _Quiet()], data, cfg, ck, stop=stop,
                  extra={"config": as_dict(cfg)})  # fmt: skip
    again, gens2 = _members(cfg, data, seeds)
    torch.manual_seed(1234)
    resumed = fit_stack(again, gens2, seeds, [_Quiet(), _Quiet()], data, cfg, resume=load_checkpoint(ck))
    for whole, part, a, b in zip(full, resumed, models, again, strict=True):
        assert part.history == whole.history and part.steps == whole.steps == 30
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(p, q), name


def test_a_diverging_member_does_not_touch_the_others(toy_root: Path) -> None:
    cfg = settings(compose_and_validate([*BASE, f"data.root={toy_root}", "trainer.stack=3",
                                         "trainer.log_every_n_steps=1"]))  # fmt: skip
    data = load_splits("mnist", str(toy_root), download=False, val_size=100)
    seeds = [1, 2, 3]
    healthy, gens = _members(cfg, data, seeds)
    clean = fit_stack(healthy, gens, seeds, [_Quiet() for _ in seeds], data, cfg)
    models, gens = _members(cfg, data, seeds)
    with torch.no_grad():
        next(models[1].parameters()).fill_(float("nan"))
    trackers = [_Quiet() for _ in seeds]
    results = fit_stack(models, gens, seeds, trackers, data, cfg)
    assert [r.train_loss != r.train_loss for r in results] == [False, True, False]  # only member 1 is NaN
    assert trackers[1].losses == [] and len(trackers[0].losses) == 20  # its curve stops; the others' do not
    for k in (0, 2):
        assert results[k].history == clean[k].history
        assert all(torch.equal(p, q) for p, q in zip(models[k].parameters(), healthy[k].parameters(), strict=True))


def test_a_stopped_stacked_run_resumes_through_run(toy_root: Path, tmp_path: Path) -> None:
    overrides = [*BASE, f"data.root={toy_root}", "trainer.stack=2", *PRESETS["mlp_bn"]]
    whole = run(compose_and_validate(overrides), tmp_path / "whole")
    stop = StopFlag()
    stop.request(15)  # already set: the run stops after its first step, mid-epoch, and writes stack.pt
    with pytest.raises(Interrupted) as info:
        run(compose_and_validate(overrides), tmp_path / "part", stop)
    assert info.value.checkpoint == tmp_path / "part" / "checkpoints" / "stack.pt"
    resumed = run(compose_and_validate([*overrides, f"trainer.resume={tmp_path / 'part'}"]), tmp_path / "other")
    assert resumed["member_test_acc"] == whole["member_test_acc"]
    for seed in (777, 778):
        a = load_checkpoint(tmp_path / "whole" / f"seed{seed}" / "checkpoints" / "last.pt")
        b = load_checkpoint(tmp_path / "part" / f"seed{seed}" / "checkpoints" / "last.pt")
        assert a["history"] == b["history"] and all(torch.equal(a["model"][n], b["model"][n]) for n in a["model"])
    again = run(compose_and_validate([*overrides, f"trainer.resume={tmp_path / 'part'}"]), tmp_path / "other")
    assert again["member_test_acc"] == whole["member_test_acc"]  # finished: kept, not retrained


@pytest.mark.parametrize("preset", ["mlp", "mlp_bn", "mlp_dropout", "mlp_xavier", "mlp_deep", "softmax", "cnn",
                                    "cnn_deep", "cnn_layers", "mlp_selu", "resnet_small",
                                    "inception_small"])  # fmt: skip
def test_the_lecture_presets_can_be_stacked(preset: str) -> None:
    assert compose_and_validate([f"model={preset}", "trainer.stack=3"]).trainer.stack == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["model=rnn_rows"], "RNN layers \\(torch.vmap has no batching rule for the fused recurrent kernel\\)"),
        (["model=lstm_rows"], "LSTM layers"),
        (["model.activation=rrelu"], "RReLU layers \\(they draw random slopes from the global stream"),
        (["ensemble.size=3"], "stack the whole ensemble, trainer.stack=3"),
        (["sched=plateau"], "one optimizer steps every member with one learning rate"),
        (["trainer.precision=fp16", "trainer.device=cuda"], "fp16's loss scaler skips every member's step"),
        (["trainer.compile=true"], "torch.compile is not wired into the stack's vmapped forward"),
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
    rows = (run_dir / "report" / "report.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("3,777 778 779,"), rows  # one row: the three seeds, not the stack
    evaluated = dlzoo("eval", f"ckpt={run_dir / 'seed778'}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    whole = dlzoo("eval", f"ckpt={run_dir}", cwd=tmp_path)  # the stack itself is no one model
    assert whole.returncode == 2 and f"Fix: give one of them, e.g. ckpt={run_dir / 'seed777'}" in " ".join(
        whole.stderr.split()), whole.stderr  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "device", "k", "says"),
    [
        (["model=mlp"], "cpu", 3, "the 3 members train as one stacked model (stacking: measured faster on a CPU"),
        (["model=mlp_dropout"], "cpu", 1, "one after another (stacking: measured no faster on a CPU for an MLP of "
         "1,195,018 weights"),
        (["model=cnn"], "cpu", 1, "one after another (stacking: measured slower for convolutional nets on a CPU)"),
        (["model=cnn"], "cuda", 3, "as one stacked model (stacking: on a GPU"),
        (["model=lstm_rows"], "cuda", 1, "one after another (stacking: cannot take this config"),
        (["model=cnn", "ensemble.stack=on"], "cpu", 3, "ensemble.stack=on: the 3 members train as one stacked"),
        (["model=mlp", "ensemble.stack=off"], "cpu", 1, None),
        (["model=mlp", "trainer.resume=auto"], "cpu", 1, None),  # nothing stacked to resume: member by member
    ],
)  # fmt: skip
def test_ensemble_stack_auto_stacks_where_faster_and_says_so(
    extra: list[str], device: str, k: int, says: str | None, tmp_path: Path
) -> None:
    from dlzoo.engine.assembly.stacked_run import stack_size

    cfg = settings(compose_and_validate(["ensemble.size=3", *extra]))
    size, line = stack_size(cfg, torch.device(device), tmp_path)
    assert size == k and (line is None if says is None else says in line), line


def test_ensemble_stack_on_refuses_a_model_it_cannot_stack() -> None:
    with pytest.raises(
        DlzooError, match=r"ensemble\.stack=on trains the 3 members as one batched model; its model has LSTM"
    ):
        compose_and_validate(["ensemble.size=3", "ensemble.stack=on", "model=lstm_rows"])


@pytest.mark.parametrize("extra", [["trainer.stack=2"], ["ensemble.size=2", "ensemble.stack=on"]])
def test_a_stack_reports_each_epoch_and_a_standalone_runs_scores(extra: list[str], toy_root: Path,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    """What `dlzoo tune` reads: a stack calls on_epoch_end once per epoch with its members' mean, and (for seeds)
    returns the standalone run's score names as the seeds' means, each seed's own value beside them."""
    seen: list[tuple[int, dict[str, float]]] = []
    metrics = run(compose_and_validate([*BASE, f"data.root={toy_root}", *extra]), tmp_path, None,
                  lambda epoch, m: seen.append((epoch, m)))  # fmt: skip
    assert [e for e, _ in seen] == [1, 2] and 0.0 <= seen[-1][1]["val/acc"] <= 1.0
    folders = sorted(p for p in tmp_path.iterdir() if (p / "checkpoints").is_dir())
    last = [load_checkpoint(f / "checkpoints" / "last.pt")["history"][-1]["val/acc"] for f in folders]
    assert seen[-1][1]["val/acc"] == pytest.approx(sum(last) / 2)
    if "trainer.stack=2" in extra:
        assert metrics["val_acc"] == pytest.approx(sum(metrics["member_val_acc"]) / 2)
        assert metrics["member_val_acc"] == pytest.approx(last)
    assert {"val_acc", "val_loss", "test_acc", "test_loss"} <= set(metrics)
