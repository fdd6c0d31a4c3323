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


@contextmanager
def activation_stats(model: nn.Module) -> Iterator[dict[str, float]]:
    """Within the block, every forward pass records each activation layer's output statistics into the yielded
    dict (read it after the block): `act_mean/<layer>`, `act_std/<layer>`, and `act_saturated/<layer>` (share
    of outputs within 1% of a bound) for sigmoid/tanh or `act_dead/<layer>` (share of units that output <= 0
    for the whole batch) for the rest."""
    pending: dict[str, Tensor] = {}
    stats: dict[str, float] = {}

    def hook(name: str, bounds: tuple[float, float] | None):
        def record(module: nn.Module, inputs: object, out: Tensor) -> None:
            y = out.detach().float().flatten(1)
            pending[f"act_mean/{name}"] = y.mean()
            pending[f"act_std/{name}"] = y.std()
            if bounds is not None:
                low, high = bounds
                near = 0.01 * (high - low)
                pending[f"act_saturated/{name}"] = ((y - low < near) | (high - y < near)).float().mean()
            else:
                pending[f"act_dead/{name}"] = (y <= 0).all(dim=0).float().mean()

        return record

    handles = [
        m.register_forward_hook(hook(n, spec.bounds))
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
