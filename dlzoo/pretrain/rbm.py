"""A Bernoulli-Bernoulli restricted Boltzmann machine trained by contrastive divergence CD-k (Hinton 2002), with
the defaults of Hinton's "A Practical Guide to Training Restricted Boltzmann Machines" (2010, UTML TR 2010-003).
Plain tensor ops on the data's device: whole minibatches by randperm, one host sync per epoch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dlzoo.data.splits import to_float

EpochLog = Callable[[int, dict[str, float]], None]


@dataclass
class RBM:
    """Energy E(v, h) = -v.b - h.c - h W v over binary visible v and hidden h units.

    weight is (hidden, visible), nn.Linear's layout, so an RBM's hidden layer drops into an MLP layer as is.
    """

    weight: Tensor
    visible_bias: Tensor
    hidden_bias: Tensor

    @classmethod
    def init(cls, visible_mean: Tensor, n_hidden: int, generator: torch.Generator) -> RBM:
        """Guide §8: W ~ N(0, 0.01^2), hidden biases 0, and visible biases log(p / (1 - p)) for each unit's mean
        activation p on the data, so the visible units start out matching the data's marginals."""
        p = visible_mean.clamp(1e-3, 1 - 1e-3)  # pixels that are always 0 (the borders) would give -inf
        w = torch.randn(n_hidden, len(p), generator=generator, device=p.device, dtype=p.dtype) * 0.01
        return cls(w, torch.log(p / (1 - p)), torch.zeros(n_hidden, device=p.device, dtype=p.dtype))

    def hidden_probs(self, v: Tensor) -> Tensor:
        """p(h_j = 1 | v) = sigmoid(c_j + W_j . v)."""
        return torch.sigmoid(F.linear(v, self.weight, self.hidden_bias))

    def visible_probs(self, h: Tensor) -> Tensor:
        """p(v_i = 1 | h) = sigmoid(b_i + h . W_:i)."""
        return torch.sigmoid(h @ self.weight + self.visible_bias)

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = -v.b - sum_j softplus(c_j + W_j . v), so that p(v) = exp(-F(v)) / Z."""
        return -(v @ self.visible_bias) - F.softplus(F.linear(v, self.weight, self.hidden_bias)).sum(-1)

    def params(self) -> list[Tensor]:
        return [self.weight, self.visible_bias, self.hidden_bias]

    def state_dict(self) -> dict[str, Tensor]:
        return {"weight": self.weight, "visible_bias": self.visible_bias, "hidden_bias": self.hidden_bias}


def cd_gradient(
    rbm: RBM, v0: Tensor, k: int, generator: torch.Generator, sample_visible: bool = False
) -> tuple[list[Tensor], Tensor]:
    """CD-k's estimate of the log-likelihood gradient on the batch `v0` (an ascent direction).

    Guide §3: the hidden states that drive the chain are sampled (binary), but the statistics use probabilities,
    and so do the reconstructions unless `sample_visible` (needed for the chain to have p(v, h) as its stationary
    distribution, which only matters when comparing with the exact gradient).

    Args:
        rbm: the machine.
        v0: (N, visible) data in [0, 1], read as probabilities.
        k: Gibbs steps.
        generator: draws the binary states (on v0's device).
        sample_visible: sample binary reconstructions instead of using their probabilities.

    Returns:
        ([dW, db, dc] in rbm.params() order, the first reconstruction's probabilities for the recon error).
    """
    ph0 = rbm.hidden_probs(v0)
    h = torch.bernoulli(ph0, generator=generator)
    first_recon = None
    for step in range(k):
        pv = rbm.visible_probs(h)
        first_recon = pv if first_recon is None else first_recon
        v = torch.bernoulli(pv, generator=generator) if sample_visible else pv
        ph = rbm.hidden_probs(v)
        if step < k - 1:
            h = torch.bernoulli(ph, generator=generator)
    n = len(v0)
    grads = [(ph0.T @ v0 - ph.T @ v) / n, (v0 - v).mean(0), (ph0 - ph).mean(0)]
    assert first_recon is not None
    return grads, first_recon


def as_unit(batch: Tensor) -> Tensor:
    """Flat visible inputs in [0, 1]: uint8 images are scaled, float features (hidden probabilities) pass."""
    batch = batch.flatten(1)
    return to_float(batch) if batch.dtype == torch.uint8 else batch


@torch.no_grad()
def train_rbm(
    inputs: Tensor,
    n_hidden: int,
    epochs: int,
    lr: float,
    cd_k: int,
    batch_size: int,
    momentum: float,
    weight_decay: float,
    generator: torch.Generator,
    on_epoch: EpochLog | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> RBM | None:
    """Train an RBM with `n_hidden` units on `inputs` by CD-k with momentum and weight decay.

    Args:
        inputs: (N, ...) uint8 images or float features in [0, 1], on the device to train on.
        n_hidden: hidden units.
        epochs: passes over `inputs`.
        lr: step size on the mean minibatch gradient (guide §4).
        cd_k: Gibbs steps per update.
        batch_size: minibatch size (guide §5: 10 to 100).
        momentum: the momentum after the first epoch; the first uses at most 0.5 (guide §9: 0.5 while the
            reconstruction error still falls fast, then 0.9).
        weight_decay: L2 coefficient on the weights, not the biases (guide §10).
        generator: seeds the initial weights, the batch order and the Gibbs samples.
        on_epoch: called as on_epoch(epoch, {"recon_error": ...}) after each epoch; the error is the mean squared
            difference per visible unit between the data and its one-step reconstruction probabilities.
        stop_requested: checked after every update; when it turns true the training is abandoned.

    Returns:
        The trained RBM, or None when a stop was requested.
    """
    n = len(inputs)
    visible_sum = sum(as_unit(inputs[i : i + 10000]).sum(0) for i in range(0, n, 10000))
    rbm = RBM.init(visible_sum / n, n_hidden, generator)
    velocity = [torch.zeros_like(p) for p in rbm.params()]
    for epoch in range(1, epochs + 1):
        mom = min(momentum, 0.5) if epoch == 1 else momentum
        order = torch.randperm(n, generator=generator, device=inputs.device)
        squared_error = torch.zeros((), device=inputs.device)
        for start in range(0, n, batch_size):
            v0 = as_unit(inputs[order[start : start + batch_size]])
            grads, recon = cd_gradient(rbm, v0, cd_k, generator)
            grads[0] -= weight_decay * rbm.weight
            for param, vel, grad in zip(rbm.params(), velocity, grads, strict=True):
                param.add_(vel.mul_(mom).add_(grad, alpha=lr))
            squared_error += (v0 - recon).pow_(2).sum()
            if stop_requested():
                return None
        if on_epoch is not None:
            on_epoch(epoch, {"recon_error": squared_error.item() / (n * rbm.weight.shape[1])})
    return rbm


@torch.no_grad()
def hidden_features(rbm: RBM, inputs: Tensor, batch_size: int = 10000) -> Tensor:
    """p(h | v) for every row of `inputs`: the data the next RBM of a deep belief net learns from."""
    return torch.cat([rbm.hidden_probs(as_unit(inputs[i : i + batch_size])) for i in range(0, len(inputs), batch_size)])
