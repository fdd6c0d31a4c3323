"""Generated datasets that need no files: XOR, the problem a single layer cannot solve (Minsky & Papert 1969)
and lecture 10-1's test bed for vanishing gradients."""

from __future__ import annotations

import torch
from torch import Tensor

XOR_POINTS = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_LABELS = torch.tensor([0, 1, 1, 0])


def xor_split(samples: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """`samples` copies of each XOR point, each moved by N(0, noise^2) per coordinate.

    Args:
        samples: copies of each of the 4 points (1 gives the lecture's 4-row table).
        noise: std of the Gaussian jitter; 0 keeps the points exact.
        generator: draws the noise, so the splits are fixed by the seed that made it.

    Returns:
        Float32 inputs (4 * samples, 2) and int64 labels (4 * samples,), the points in order 00, 01, 10, 11.
    """
    x = XOR_POINTS.repeat_interleave(samples, dim=0)
    y = XOR_LABELS.repeat_interleave(samples)
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=generator)
    return x, y


def xor_splits(samples: int, noise: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Train, val and test drawn independently from the same distribution (identical when noise is 0)."""
    generator = torch.Generator().manual_seed(seed)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (xor_split(samples, noise, generator) for _ in range(3))
    return x_train, y_train, x_val, y_val, x_test, y_test
