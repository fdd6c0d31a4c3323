"""Pretraining: CD-k against the exact gradient of a tiny RBM, the RBM learning real images, the DBN's weights
landing in the MLP (with the normalization folded in exactly), the autoencoder stack, and the CLI end to end."""

from __future__ import annotations

import itertools
import signal
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dlzoo.cli import compose_and_validate
from dlzoo.data.datasets import load_splits
from dlzoo.engine.assembly.folders import load_checkpoint
from dlzoo.engine.assembly.pretraining import pretrain
from dlzoo.engine.training.checkpoint import Checkpointing
from dlzoo.engine.training.stopping import Interrupted, StopFlag
from dlzoo.errors import DlzooError
from dlzoo.models.mlp import MLP
from dlzoo.pretrain.layerwise import PretrainArgs, fold_normalization, pretrain_autoencoders, pretrain_dbn
from dlzoo.pretrain.rbm import RBM, cd_gradient, train_rbm
from tests.helpers import FAST, dlzoo

# A checkpoint's config as load_checkpoint requires it: the sections every reader relies on.
CONFIG = {"model": {}, "data": {}, "trainer": {}, "optim": {}}


def _all_states(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


def _exact_gradient(rbm: RBM, data: torch.Tensor) -> list[torch.Tensor]:
    """d/dθ of the mean log p(v) over `data`, by autograd through the exact log Z (enumerating every v)."""
    params = [p.clone().requires_grad_(True) for p in rbm.params()]
    machine = RBM(*params)
    log_z = torch.logsumexp(-machine.free_energy(_all_states(data.shape[1])), 0)
    (-machine.free_energy(data).mean() - log_z).backward()
    return [p.grad for p in params]


def test_cd_gradient_matches_the_exact_log_likelihood_gradient() -> None:
    # With sampled visible units and a long chain, CD-k's negative phase samples the model, so its mean over
    # many chains must approach the exact gradient of a 4-visible / 3-hidden RBM; a sign or transpose slip fails.
    g = torch.Generator().manual_seed(0)
    rbm = RBM(torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64),
              torch.randn(3, generator=g, dtype=torch.float64))  # fmt: skip
    data = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.float64).repeat(20000, 1)
    estimate, _ = cd_gradient(rbm, data, k=20, generator=g, sample_visible=True)
    exact = _exact_gradient(rbm, data[:3])
    for est, ex in zip(estimate, exact, strict=True):
        torch.testing.assert_close(est, ex, atol=0.02, rtol=0.0)
    # CD-1 with probabilities is biased but must still point uphill.
    cd1, _ = cd_gradient(rbm, data, k=1, generator=g)
    assert sum((a * b).sum() for a, b in zip(cd1, exact, strict=True)) > 0


def test_cd_training_raises_the_exact_log_likelihood() -> None:
    patterns = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 0, 1, 0, 1, 0]], dtype=torch.float64)
    data = patterns.repeat(100, 1)

    def mean_log_likelihood(rbm: RBM) -> float:
        log_z = torch.logsumexp(-rbm.free_energy(_all_states(6)), 0)
        return (-rbm.free_energy(patterns) - log_z).mean().item()

    g = torch.Generator().manual_seed(1)
    before = mean_log_likelihood(RBM.init(data.mean(0), 4, torch.Generator().manual_seed(1)))
    rbm = train_rbm(data, 4, epochs=60, lr=0.5, cd_k=1, batch_size=10, momentum=0.9, weight_decay=0.0, generator=g)
    after = mean_log_likelihood(rbm)
    assert after > before + 2.0 and after > -1.6  # all mass on the 3 patterns would give log(1/3) = -1.10


def test_rbm_reconstruction_error_falls_on_real_images(fmnist_root: Path) -> None:
    torch.set_num_threads(1)
    images = load_splits("fashion_mnist", str(fmnist_root), False, val_size=0, train_subset=2000).x_train
    errors: list[float] = []
    rbm = train_rbm(
        images, 64, 4, lr=0.1, cd_k=1, batch_size=50, momentum=0.9, weight_decay=2e-4,
        generator=torch.Generator().manual_seed(0), on_epoch=lambda e, m: errors.append(m["recon_error"]),
    )  # fmt: skip
    assert len(errors) == 4 and all(b < a for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.7 * errors[0]
    # Free energy: training images are far more probable under the model than noise of the same mean.
    x = images[:500].flatten(1).float() / 255
    noise = torch.bernoulli(x.mean().expand_as(x), generator=torch.Generator().manual_seed(0))
    assert rbm.free_energy(x).mean() < rbm.free_energy(noise).mean() - 50


def test_fold_normalization_gives_the_same_pre_activations() -> None:
    g = torch.Generator().manual_seed(0)
    weight, bias, x = torch.randn(5, 784, generator=g), torch.randn(5, generator=g), torch.rand(8, 784, generator=g)
    mean, std = 0.2860, 0.3530  # Fashion-MNIST's train split
    folded_w, folded_b = fold_normalization(weight, bias, mean, std)
    torch.testing.assert_close((x - mean) / std @ folded_w.T + folded_b, x @ weight.T + bias, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (0.2860, 0.3530)])
def test_dbn_copies_every_hidden_layer_and_keeps_the_output_layer(mean: float, std: float) -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (300, 1, 6, 6), dtype=torch.uint8)
    model = MLP(36, 3, [10, 7], activation="sigmoid")
    out_before = model.layers.out.weight.clone()
    blocks = [model.layers.fc1, model.layers.fc2]
    logged: list[tuple[str, int]] = []
    rbms = pretrain_dbn(
        blocks, images, mean, std, PretrainArgs(epochs=2, batch_size=50), lambda t, e, m: logged.append((t, e))
    )
    assert logged == [("rbm1", 1), ("rbm1", 2), ("rbm2", 1), ("rbm2", 2)]
    assert [r.weight.shape for r in rbms] == [(10, 36), (7, 10)]
    torch.testing.assert_close(model.layers.fc2.linear.weight, rbms[1].weight, rtol=0, atol=0)
    torch.testing.assert_close(model.layers.fc2.linear.bias, rbms[1].hidden_bias, rtol=0, atol=0)
    assert torch.equal(model.layers.out.weight, out_before)
    # The fine-tuned net's first layer on normalized inputs computes the RBM's p(h | v) on the raw pixels.
    x = images.flatten(1).float() / 255
    torch.testing.assert_close(model.layers.fc1((x - mean) / std), rbms[0].hidden_probs(x), atol=1e-5, rtol=1e-4)


def test_autoencoder_stack_lowers_each_layers_reconstruction_loss() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (400, 1, 6, 6), dtype=torch.uint8)
    images[:200, :, :3] = 0  # structure to learn: half the images have a dark top half
    model = MLP(36, 3, [16, 8], activation="relu")
    before = [model.layers.fc1.linear.weight.clone(), model.layers.fc2.linear.weight.clone()]
    losses: dict[str, list[float]] = {}
    args = PretrainArgs(epochs=5, lr=0.01, batch_size=50)
    blocks = [model.layers.fc1, model.layers.fc2]
    pretrain_autoencoders(blocks, images, 0.5, 0.3, args, lambda t, e, m: losses.setdefault(t, []).append(m["loss"]))
    assert set(losses) == {"ae1", "ae2"} and all(len(v) == 5 and v[-1] < v[0] for v in losses.values()), losses
    assert not torch.equal(model.layers.fc1.linear.weight, before[0])
    assert not torch.equal(model.layers.fc2.linear.weight, before[1])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pretrain=rbm", "pretrain.cd_k=0"], "pretrain.cd_k=0 is out of range"),
        (["pretrain=rbm", "model=cnn"], "pretrain=rbm initializes the hidden Linear layers of an MLP"),
        (["pretrain=autoencoder", "model=mlp_bn"], "model.norm=none"),
        (["pretrain.method=dbm"], "Unknown pretrain 'dbm' for pretrain.method"),
    ],
)
def test_bad_settings_are_refused_before_any_work(overrides: list[str], message: str) -> None:
    with pytest.raises(DlzooError, match=message):
        compose_and_validate(overrides)


def test_cli_pretrains_then_fine_tunes_and_logs_to_tensorboard(fmnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = dlzoo("train", *FAST, "data=fashion_mnist", f"data.root={fmnist_root}", "model.hidden=[32,16]",
                 "data.normalize=standardize", "pretrain=rbm", "pretrain.epochs=1", "pretrain.unlabeled=false",
                 f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "pretraining 2 hidden layer(s) with rbm on 2,000 images" in proc.stdout
    assert "pretrain rbm2  epoch   1  recon_error" in proc.stdout
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert {"pretrain/rbm1/recon_error", "pretrain/rbm2/recon_error"} <= set(events.Tags()["scalars"])
    test = EventAccumulator(str(run_dir / "test"))
    test.Reload()
    assert "accuracy_and_loss/accuracy" in test.Tags()["scalars"]

    bad = dlzoo("train", *FAST, "pretrain=rbm", "pretrain.lr=-1", f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path)
    assert bad.returncode == 2 and "pretrain.lr=-1" in bad.stderr and "Traceback" not in bad.stderr


def test_rbm_in_a_relu_net_is_warned_about_and_sigmoid_is_not() -> None:
    from dlzoo.config.validate import warnings

    assert any("learns sigmoid units" in w for w in warnings(compose_and_validate(["experiment=init_rbm"])))
    sigmoid = compose_and_validate(["experiment=init_rbm", "model.activation=sigmoid"])
    assert not any("sigmoid units" in w for w in warnings(sigmoid))


class _StopAt:
    """A pretraining log (the tracker's two methods) that asks to stop after layer `tag`'s first epoch."""

    def __init__(self, stop: StopFlag, tag: str | None) -> None:
        self.stop, self.tag = stop, tag

    def log_pretrain_start(self, method: str, images: int, layers: int) -> None:
        pass

    def log_pretrain(self, layer: str, epoch: int, metrics: dict[str, float]) -> None:
        if layer == self.tag and epoch == 1:
            self.stop.request(signal.SIGINT)


@pytest.mark.parametrize(("method", "stop_in"), [("rbm", "rbm2"), ("rbm", "rbm1"), ("autoencoder", "ae2")])
def test_a_stop_in_pretraining_is_prompt_and_resumes_exactly(
    method: str, stop_in: str, toy_root: Path, tmp_path: Path
) -> None:
    cfg = compose_and_validate([f"pretrain={method}", "pretrain.epochs=2", "pretrain.batch_size=50",
                                "model.hidden=[12,8]", "model.dropout=0.2", f"data.root={toy_root}"])  # fmt: skip
    data = load_splits("mnist", str(toy_root), download=False, val_size=100)

    def model_and_checkpoints(folder: str) -> tuple[torch.nn.Module, Checkpointing]:
        torch.manual_seed(0)
        return MLP(784, 10, [12, 8], dropout=0.2), Checkpointing(tmp_path / folder, extra={"config": CONFIG})

    whole, ck = model_and_checkpoints("whole")
    pretrain(cfg, whole, data, _StopAt(StopFlag(), None), 0, ck, StopFlag())
    after = torch.rand(3)  # the global RNG too ends as in an uninterrupted run
    assert not (tmp_path / "whole" / "pretrain.pt").exists()  # fine-tuning's last.pt takes over

    stop = StopFlag()
    part, ck = model_and_checkpoints("part")
    with pytest.raises(Interrupted) as stopped:
        pretrain(cfg, part, data, _StopAt(stop, stop_in), 0, ck, stop)
    assert stopped.value.checkpoint == tmp_path / "part" / "pretrain.pt"
    saved = load_checkpoint(stopped.value.checkpoint)  # the allowlisted loader reads it
    finished = len(saved["pretrain"]["rbms" if method == "rbm" else "blocks"]) if saved["pretrain"] else 0
    assert finished == int(stop_in[-1]) - 1  # the layers before the stop are kept, the stopped one is redone
    resumed, ck = model_and_checkpoints("part")
    pretrain(cfg, resumed, data, _StopAt(StopFlag(), None), 0, ck, StopFlag(), saved)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(torch.rand(3), after)
