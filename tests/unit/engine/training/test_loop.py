"""Engine tests: the loop learns, is deterministic for a seed, honours max_steps, stops on divergence with the
last good checkpoint kept, and writes complete checkpoints."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dlzoo.config.validate import OptimConfig, SchedConfig
from dlzoo.data.datasets import load_splits
from dlzoo.data.splits import Splits
from dlzoo.engine.training.checkpoint import Checkpointing
from dlzoo.engine.training.evaluation import evaluate, mc_evaluate
from dlzoo.engine.training.loop import FitOptions, fit, seed_everything
from dlzoo.engine.training.probes import layer_stats
from dlzoo.engine.training.stopping import DivergedError, EarlyStopping
from dlzoo.models.mlp import MLP
from dlzoo.optim import build_optimizer, build_scheduler
from tests.helpers import Recorder


def train(
    data: Splits, seed: int = 0, lr: float = 1e-3, optim: str = "adam", init_scale: float = 1.0, **kwargs: object
) -> tuple[torch.nn.Module, object, Recorder]:
    seed_everything(seed)
    model = MLP(784, 10, [64, 64])
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(init_scale)
    optimizer = build_optimizer(OmegaConf.structured(OptimConfig(name=optim, lr=lr)), model.parameters())
    params = dict(epochs=3, batch_size=32, seed=seed, log_every_n_steps=5) | kwargs
    scheduler = build_scheduler(OmegaConf.structured(SchedConfig()), optimizer, 16, 1000)
    recorder = Recorder()
    result = fit(model, data, optimizer, scheduler, recorder, FitOptions(**params))  # type: ignore[arg-type]
    return model, result, recorder


@pytest.fixture
def toy(toy_root: Path) -> Splits:
    return load_splits("mnist", str(toy_root), download=False, val_size=100)


def test_fit_learns_the_toy_task(toy: Splits) -> None:
    model, result, recorder = train(toy)
    assert result.val_acc > 0.9
    assert evaluate(model, toy.x_test, toy.y_test)[1] > 0.9
    assert recorder.epochs[-1]["train/loss"] < recorder.epochs[0]["train/loss"]
    assert result.epochs == 3 and result.steps == 3 * 16  # ceil(500 / 32) steps an epoch
    assert result.train_samples == 3 * 500


def test_same_seed_same_run_different_seed_different_run(toy: Splits) -> None:
    a, ra, _ = train(toy, seed=1)
    b, rb, _ = train(toy, seed=1)
    _, rc, _ = train(toy, seed=2)
    assert (ra.train_loss, ra.val_acc) == (rb.train_loss, rb.val_acc)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert ra.train_loss != rc.train_loss


def test_max_steps_caps_the_run(toy: Splits) -> None:
    _, result, recorder = train(toy, max_steps=20)
    assert result.steps == 20 and result.epochs == 2 and len(recorder.epochs) == 2


def test_layer_stats_cover_every_weight_matrix(toy: Splits) -> None:
    _, _, recorder = train(toy, epochs=1)
    keys = set(recorder.layers[0])
    for layer in ("layers.fc1.linear", "layers.fc2.linear", "layers.out"):
        assert {f"weight_norm/{layer}", f"grad_norm/{layer}"} <= keys
    assert all(v >= 0 for v in recorder.layers[0].values())
    assert layer_stats(MLP(4, 2, [])).keys() == {"weight_norm/layers.out"}  # no grads yet: weights only


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(toy: Splits, tmp_path: Path) -> None:
    ck = Checkpointing(tmp_path)
    train(toy, epochs=1, checkpointing=ck)
    good = torch.load(ck.last, weights_only=False)
    with pytest.raises(DivergedError) as info:
        train(toy, epochs=3, optim="sgd", lr=1e30, init_scale=1e6, checkpointing=Checkpointing(tmp_path))
    message = str(info.value)
    assert "NaN or infinite" in message and "lower optim.lr" in message and str(ck.last) in message
    assert re.search(r"at step \d+\.", message)  # nothing finite was logged before: no "last good" figure
    state = torch.load(ck.last, weights_only=False)
    assert state["epoch"] == 1 and all(torch.equal(state["model"][k], good["model"][k]) for k in good["model"])


def test_an_epoch_mean_above_max_loss_stops_the_run_even_with_no_logged_step(toy: Splits) -> None:
    # No step is ever logged (the interval is longer than the run), so only the epoch mean can catch it.
    expected = r"the epoch mean loss exploded to \S+ \(above trainer.max_loss=5\) at step 16\. "
    with pytest.raises(DivergedError, match=expected):
        train(toy, epochs=1, init_scale=100.0, max_loss=5.0, log_every_n_steps=10**6)
    _, result, _ = train(toy, epochs=1, max_loss=5.0, log_every_n_steps=10**6)  # a sane net is left alone
    assert result.train_loss < 5.0


def test_checkpoint_holds_everything_to_resume(toy: Splits, tmp_path: Path) -> None:
    ck = Checkpointing(tmp_path / "ckpt", extra={"config": {"a": 1}})
    model, _, _ = train(toy, epochs=2, checkpointing=ck)
    state = torch.load(ck.last, weights_only=False)
    assert state["epoch"] == 2 and state["step"] == 32 and state["config"] == {"a": 1}
    assert {"optimizer", "scheduler", "rng", "history", "seen", "train_time"} <= state.keys()
    assert state["optimizer"]["state"] and len(state["history"]) == 2
    fresh = MLP(784, 10, [64, 64])
    fresh.load_state_dict(state["model"])
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), model.parameters(), strict=True))
    assert not list(ck.folder.glob("*.tmp"))


def test_top_k_keeps_the_best_epochs_weights(toy: Splits, tmp_path: Path) -> None:
    ck = Checkpointing(tmp_path, top_k=2, monitor="val/acc")
    _, _, recorder = train(toy, epochs=4, checkpointing=ck)
    accs = {e + 1: m["val/acc"] for e, m in enumerate(recorder.epochs)}
    kept = sorted(int(p.stem.removeprefix("best-epoch")) for p in tmp_path.glob("best-epoch*.pt"))
    assert len(kept) == 2
    assert min(accs[e] for e in kept) >= max(accs[e] for e in accs if e not in kept)


def resumed_run(toy: Splits, tmp_path: Path, stop_at_step: int) -> tuple[torch.nn.Module, object]:
    """Train 3 epochs but stop after `stop_at_step`, then resume from last.pt in a fresh model/optimizer."""
    from dlzoo.engine.training.stopping import Interrupted, StopFlag

    stop = StopFlag()

    class StopAt(Recorder):
        def log_step(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
            if step == stop_at_step:
                stop.request(2)

    ck = Checkpointing(tmp_path)
    seed_everything(0)
    model = MLP(784, 10, [64, 64], dropout=0.2)  # dropout: the global RNG must resume exactly too
    opt = build_optimizer(OmegaConf.structured(OptimConfig(name="adam", lr=1e-3)), model.parameters())
    sched = build_scheduler(OmegaConf.structured(SchedConfig(name="cosine")), opt, 16, 48)
    kwargs = dict(epochs=3, batch_size=32, seed=0, log_every_n_steps=1, checkpointing=ck)
    with pytest.raises(Interrupted):
        fit(model, toy, opt, sched, StopAt(), FitOptions(stop=stop, **kwargs))
    torch.manual_seed(1234)  # the resumed process starts from different RNG states
    model = MLP(784, 10, [64, 64], dropout=0.2)
    opt = build_optimizer(OmegaConf.structured(OptimConfig(name="adam", lr=1e-3)), model.parameters())
    sched = build_scheduler(OmegaConf.structured(SchedConfig(name="cosine")), opt, 16, 48)
    result = fit(model, toy, opt, sched, Recorder(), FitOptions(**kwargs), torch.load(ck.last, weights_only=False))
    return model, result


@pytest.mark.parametrize("stop_at_step", [16, 21])  # after epoch 1 exactly; in the middle of epoch 2
def test_resume_is_bit_identical_to_an_uninterrupted_run(toy: Splits, tmp_path: Path, stop_at_step: int) -> None:
    seed_everything(0)
    model = MLP(784, 10, [64, 64], dropout=0.2)
    opt = build_optimizer(OmegaConf.structured(OptimConfig(name="adam", lr=1e-3)), model.parameters())
    sched = build_scheduler(OmegaConf.structured(SchedConfig(name="cosine")), opt, 16, 48)
    full = fit(model, toy, opt, sched, Recorder(), FitOptions(epochs=3, batch_size=32, seed=0, log_every_n_steps=1))
    resumed_model, resumed = resumed_run(toy, tmp_path, stop_at_step)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True))
    assert resumed.history == full.history
    assert (resumed.steps, resumed.train_samples, resumed.val_acc) == (full.steps, full.train_samples, full.val_acc)


def test_a_failed_write_keeps_the_previous_checkpoint(toy: Splits, tmp_path: Path, monkeypatch) -> None:
    from dlzoo.errors import DlzooError

    ck = Checkpointing(tmp_path, top_k=0)
    train(toy, epochs=1, checkpointing=ck)
    before = ck.last.read_bytes()
    real_save = torch.save

    def full_disk(obj: object, f: object, *args: object, **kwargs: object) -> None:
        real_save(obj, f, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DlzooError, match=r"No space left on device\. The previous last\.pt is intact"):
        train(toy, epochs=2, checkpointing=Checkpointing(tmp_path, top_k=0))
    assert ck.last.read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_early_stopping_stops_after_patience_and_remembers_the_best() -> None:
    model = MLP(4, 2, [3])
    stopper = EarlyStopping(patience=2, monitor="val/loss")
    losses = [1.0, 0.5, 0.6, 0.4, 0.45, 0.41]
    stops = [stopper.update(epoch, {"val/loss": v}, model) for epoch, v in enumerate(losses, start=1)]
    assert stops == [False, False, False, False, False, True] and stopper.best_epoch == 4
    acc = EarlyStopping(patience=1, monitor="val/acc")
    assert [acc.update(e, {"val/acc": v}, model) for e, v in enumerate([0.5, 0.7, 0.6], start=1)] == [
        False,
        False,
        True,
    ]


def test_fit_with_early_stopping_restores_the_best_epoch(toy: Splits) -> None:
    # min_delta so large that no later epoch counts as better: stop after epoch 1 + patience, restore epoch 1.
    model, result, recorder = train(toy, epochs=8, early_stopping=EarlyStopping(2, "val/loss", min_delta=100.0))
    assert result.stopped_early and result.epochs == 3 and result.weights_epoch == 1
    assert result.val_loss == recorder.epochs[0]["val/loss"] != recorder.epochs[2]["val/loss"]
    assert evaluate(model, toy.x_val, toy.y_val)[0] == pytest.approx(recorder.epochs[0]["val/loss"], rel=1e-5)


def test_mc_dropout_averages_stochastic_passes(toy: Splits) -> None:
    seed_everything(0)
    plain = MLP(784, 10, [64])
    acc = evaluate(plain, toy.x_test, toy.y_test)[1]
    mc_acc, entropy = mc_evaluate(plain, toy.x_test, toy.y_test, samples=5)
    assert mc_acc == acc  # no dropout: every pass is the same
    dropped = MLP(784, 10, [64], dropout=0.5).eval()
    mc_acc, entropy = mc_evaluate(dropped, toy.x_test, toy.y_test, samples=20)
    assert 0 <= mc_acc <= 1 and 0 < entropy <= math.log(10)
    assert not dropped.training and all(not m.training for m in dropped.modules())  # restored to eval


def test_activation_stats_show_dead_units_and_saturation(toy: Splits) -> None:
    from dlzoo.engine.training.probes import activation_stats

    x = toy.prep(toy.x_train[:256])
    zeros = MLP(784, 10, [32, 32])
    for p in zeros.parameters():
        torch.nn.init.zeros_(p)
    with activation_stats(zeros) as stats:
        zeros(x)
    assert stats["act_dead/layers.fc1.act"] == 1.0 and stats["act_std/layers.fc2.act"] == 0.0

    seed_everything(0)
    sigmoid = MLP(784, 10, [32], activation="sigmoid")
    torch.nn.init.normal_(sigmoid.layers.fc1.linear.weight, 0, 1.0)  # N(0,1) on 784 inputs: saturates
    with activation_stats(sigmoid) as stats:
        sigmoid(x)
    # Saturated units pass almost no gradient: the mean derivative falls far below sigmoid's best, 0.25.
    assert stats["act_slope/layers.fc1.act"] < 0.05 and "act_dead/layers.fc1.act" not in stats


@pytest.mark.parametrize(("activation", "expected"), [("relu", None), ("sigmoid", 0.25), ("identity", 1.0)])
def test_act_slope_is_the_mean_derivative(activation: str, expected: float | None) -> None:
    from dlzoo.engine.training.probes import activation_stats

    model = MLP(3, 2, [4], activation=activation)
    torch.nn.init.zeros_(model.layers.fc1.linear.weight)
    torch.nn.init.zeros_(model.layers.fc1.linear.bias)
    if activation == "relu":  # half the units active: bias +1 on two, -1 on the others
        model.layers.fc1.linear.bias.data = torch.tensor([1.0, 1.0, -1.0, -1.0])
        expected = 0.5
    with activation_stats(model) as stats:
        model(torch.randn(8, 3))
    assert stats["act_slope/layers.fc1.act"] == pytest.approx(expected)


def test_the_slope_probe_leaves_the_random_streams_alone() -> None:
    """rrelu draws random slopes in training: the probe's extra forward must not shift later draws."""
    from dlzoo.engine.training.probes import activation_stats

    model = MLP(3, 2, [4], activation="rrelu", dropout=0.5).train()
    x = torch.randn(8, 3)
    torch.manual_seed(0)
    with activation_stats(model):
        first = model(x)
    after_probe = torch.rand(3)
    torch.manual_seed(0)
    plain = model(x)
    assert torch.equal(first, plain) and torch.equal(after_probe, torch.rand(3))


def test_training_logs_activation_stats(toy: Splits) -> None:
    _, _, recorder = train(toy, epochs=1)
    assert {"act_mean/layers.fc1.act", "act_std/layers.fc2.act", "act_dead/layers.fc1.act"} <= set(recorder.layers[0])


def test_penalty_and_max_norm_apply_in_fit(toy: Splits) -> None:
    from dlzoo.optim.regularize import Regularizer

    model, _, _ = train(toy, epochs=1, regularizer=Regularizer(l2=1e-3, max_norm=0.5, clip_norm=1.0))
    assert (model.layers.fc1.linear.weight.norm(dim=1) <= 0.5 + 1e-5).all()


def test_on_epoch_end_sees_every_validated_epoch_and_can_stop_the_run(toy: Splits) -> None:
    seen: list[tuple[int, float]] = []
    _, _, recorder = train(toy, on_epoch_end=lambda epoch, m: seen.append((epoch, m["val/acc"])))
    assert [e for e, _ in seen] == [1, 2, 3] and [a for _, a in seen] == [m["val/acc"] for m in recorder.epochs]

    class Pruned(Exception):
        pass

    def prune(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        train(toy, on_epoch_end=prune)


def test_bf16_autocast_learns_as_fp32_does_and_keeps_fp32_weights(toy: Splits) -> None:
    model, result, _ = train(toy, precision="bf16")
    assert result.val_acc > 0.9
    assert all(p.dtype == torch.float32 for p in model.parameters())


class _Payload:
    """Unpickling this runs a shell command: what a hostile .pt could carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    from dlzoo.engine.assembly.folders import load_checkpoint
    from dlzoo.errors import DlzooError

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "meta": _Payload(marker)}, path)
    with pytest.raises(DlzooError, match=r"Refused to load .*evil\.pt.*could run code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_real_checkpoint_loads_with_only_the_allowed_types(toy: Splits, tmp_path: Path) -> None:
    from dlzoo.engine.assembly.folders import load_checkpoint

    config = {"model": {"a": 1}, "data": {}, "trainer": {}, "optim": {}}
    ck = Checkpointing(tmp_path, extra={"config": config, "meta": {"torch": torch.__version__}})
    train(toy, epochs=1, checkpointing=ck)
    state = load_checkpoint(ck.last)
    assert state["epoch"] == 1 and state["config"] == config and "rng" in state


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A real 256 KiB tmpfs: a full disk, not a mocked error."""
    from tests.helpers import tmpfs

    with tmpfs(tmp_path / "disk", "256k") as folder:
        yield folder


def test_a_real_full_disk_is_a_clean_error_that_leaves_no_temp_file(tiny_disk: Path) -> None:
    from dlzoo.engine.training.checkpoint import save_checkpoint
    from dlzoo.errors import DlzooError

    small = tiny_disk / "last.pt"
    save_checkpoint(small, {"model": {"w": torch.zeros(1000)}})  # 4 kB: fits
    with pytest.raises(DlzooError, match=r"Could not write the checkpoint .*The previous last.pt is intact"):
        save_checkpoint(small, {"model": {"w": torch.zeros(200_000)}})  # 800 kB: does not
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["last.pt"]  # no partial .tmp keeps the disk full
    assert torch.load(small, weights_only=True)["model"]["w"].numel() == 1000


def test_a_finished_ensemble_member_is_kept_with_its_weights_even_under_a_data_driven_init(toy_root: Path) -> None:
    # Resuming an ensemble rebuilds its finished members only to load their weights; LSUV still needs its batch.
    from dlzoo.cli import compose_and_validate
    from dlzoo.engine.assembly import resuming
    from dlzoo.engine.assembly.run import _finished_member

    cfg = compose_and_validate(["model=mlp", "model.hidden=[16]", "model.init=lsuv", f"data.root={toy_root}"])
    data = load_splits("mnist", str(toy_root), download=False, val_size=100)
    saved = MLP(784, 10, [16]).state_dict()
    start = resuming.Start(checkpoint={"model": saved, "early_stopping": None}, finished={"test_acc": 0.5})
    model = _finished_member(cfg, data, torch.device("cpu"), start)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.values(), strict=True))
    assert not model.training


@pytest.mark.parametrize("at_step", [47, 48])  # the last epoch's next-to-last step; its last (3 epochs x 16 steps)
def test_a_signal_says_what_happens_before_and_after_the_last_step(
    toy: Splits, tmp_path: Path, capsys: pytest.CaptureFixture[str], at_step: int
) -> None:
    """A real SIGINT to this process through the handler `dlzoo train` installs: before the last training step
    the run stops with a checkpoint; with it or after it, training is over, and the messages say the run tests and
    finishes rather than promise a stop that does not come."""
    import os
    import signal

    from dlzoo.engine.training.stopping import Interrupted, stop_on_signals

    class SignalAt(Recorder):
        def log_step(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
            if step == at_step:
                os.kill(os.getpid(), signal.SIGINT)

    ck = Checkpointing(tmp_path)
    seed_everything(0)
    model = MLP(784, 10, [16])
    opt = build_optimizer(OmegaConf.structured(OptimConfig(name="adam", lr=1e-3)), model.parameters())
    sched = build_scheduler(OmegaConf.structured(SchedConfig()), opt, 16, 48)
    opts = dict(epochs=3, batch_size=32, seed=0, log_every_n_steps=1, checkpointing=ck)
    with stop_on_signals() as stop:
        if at_step == 47:
            with pytest.raises(Interrupted):
                fit(model, toy, opt, sched, SignalAt(), FitOptions(stop=stop, **opts))  # type: ignore[arg-type]
            assert "stopping after this step" in capsys.readouterr().out
            assert torch.load(ck.last, weights_only=False)["step"] == 47
            return
        result = fit(model, toy, opt, sched, SignalAt(), FitOptions(stop=stop, **opts))  # type: ignore[arg-type]
        out = capsys.readouterr().out
        assert "stopping after this step" in out and "came with the last training step" in out
        assert result.steps == 48 and torch.load(ck.last, weights_only=False)["epoch"] == 3  # type: ignore[union-attr]
        os.kill(os.getpid(), signal.SIGTERM)  # while the run tests and writes its results (a Ctrl-C now quits)
        out = capsys.readouterr().out
        assert "training is done: testing and writing the results" in out and "stopping" not in out
