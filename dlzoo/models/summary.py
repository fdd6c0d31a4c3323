"""A Keras-style model summary: each leaf layer's output shape and parameter count, from one forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


@dataclass
class Summary:
    rows: list[LayerRow]
    trainable: int
    non_trainable: int  # frozen parameters plus buffers such as batch norm's running mean and variance


@torch.no_grad()
def summarize(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu") -> Summary:
    """Run one batch of 2 zeros through `model` (eval mode, restored after) and record every leaf layer."""
    rows: list[LayerRow] = []
    hooks = []
    for name, module in model.named_modules():
        # Leaves, plus the merge points (residual sums, branch concats) whose shapes a reader needs to see.
        if next(module.children(), None) is not None and not getattr(module, "show_in_summary", False):
            continue

        def hook(mod: nn.Module, _inp: object, out: object, name: str = name) -> None:
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            # A module may report its own shape (a one-unit sigmoid head returns two logits for the loss).
            shape = getattr(mod, "summary_shape", None) or _shape(out)
            rows.append(LayerRow(name, type(mod).__name__, shape, params))

        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros((2, *input_shape), device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    buffers = sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))
    return Summary(rows, trainable, frozen + buffers)


def _shape(out: object) -> tuple[int, ...]:
    """The per-sample shape of a layer's output; recurrent layers return (output, hidden state): show the output."""
    while isinstance(out, (tuple, list)) and out:
        out = out[0]
    return tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()
