"""Per-layer diagnostics for TensorBoard: weight and gradient norms, and activation statistics (mean, std,
dead units or saturation). They make lecture 10's story visible: gradients vanish towards the input of a deep
sigmoid net, and an all-zeros init leaves every unit of a layer identical."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from dlzoo.models.activations import activation_spec


def layer_stats(model: nn.Module) -> dict[str, float]:
    """L2 norms of each weight and of its gradient, keyed `weight_norm/<layer>` and `grad_norm/<layer>`."""
    named = [
        (n.removesuffix(".weight"), p) for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1
    ]
    if not named:
        return {}
    weights = torch.stack(torch._foreach_norm([p.detach() for _, p in named]))
    grads = [p.grad for _, p in named]
    out = {f"weight_norm/{n}": v for (n, _), v in zip(named, weights.tolist(), strict=True)}
    if all(g is not None for g in grads):
        norms = torch.stack(torch._foreach_norm(grads)).tolist()  # type: ignore[arg-type]
        out |= {f"grad_norm/{n}": v for (n, _), v in zip(named, norms, strict=True)}
    return out


def layer_tensors(model: nn.Module, activations: dict[str, Tensor]) -> dict[str, Tensor]:
    """What the histograms show, keyed `weights/<layer>`, `grads/<layer>` and `activations/<layer>`: each weight
    matrix or kernel, its gradient (when there is one) and each activation layer's output."""
    out: dict[str, Tensor] = {}
    for n, p in model.named_parameters():
        if n.endswith("weight") and p.dim() > 1:
            layer = n.removesuffix(".weight")
            out[f"weights/{layer}"] = p.detach()
            if p.grad is not None:
                out[f"grads/{layer}"] = p.grad.detach()
    return out | {f"activations/{n}": t for n, t in activations.items()}


@contextmanager
def activation_stats(model: nn.Module, keep: dict[str, Tensor] | None = None) -> Iterator[dict[str, float]]:
    """Within the block, every forward pass records each activation layer's output statistics into the yielded
    dict (read it after the block): `act_mean/<layer>`, `act_std/<layer>`, `act_slope/<layer>` (the mean of the
    activation's derivative over the batch: ReLU's share of active units, at most 0.25 for a sigmoid and lower as
    it saturates; backprop multiplies the gradient by it at every layer) and, for unbounded activations,
    `act_dead/<layer>` (share of units that output <= 0 for the whole batch). With `keep`, each layer's output is
    also stored there (detached), for histograms."""
    pending: dict[str, Tensor] = {}
    stats: dict[str, float] = {}
    busy: set[nn.Module] = set()  # the slope's own forward through the module must not record again

    def hook(name: str, bounded: bool):
        def record(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
            if module in busy:
                return
            y = out.detach().float().flatten(1)
            pending[f"act_mean/{name}"] = y.mean()
            pending[f"act_std/{name}"] = y.std()
            pending[f"act_slope/{name}"] = _mean_slope(module, inputs[0], busy)
            if not bounded:
                pending[f"act_dead/{name}"] = (y <= 0).all(dim=0).float().mean()
            if keep is not None:
                keep[name] = out.detach()

        return record

    handles = [
        m.register_forward_hook(hook(n, spec.bounds is not None))
        for n, m in model.named_modules()
        if (spec := activation_spec(m)) is not None
    ]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()
        if pending:
            values = torch.stack(list(pending.values())).tolist()  # one host sync for all layers
            stats.update(zip(pending, values, strict=True))


def _mean_slope(module: nn.Module, x: Tensor, busy: set[nn.Module]) -> Tensor:
    """The mean over the batch of d(sum of outputs)/d(input): for an elementwise activation its derivative, for
    maxout 1/k. Computed by running the module once more on a detached copy of its input, with every random
    stream restored afterwards (rrelu draws slopes), so training goes on exactly as without the probe."""
    devices = [x.device.index or 0] if x.is_cuda else []
    busy.add(module)
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            x = x.detach().float().requires_grad_(True)
            (grad,) = torch.autograd.grad(module(x).sum(), x)
    finally:
        busy.discard(module)
    return grad.mean()
