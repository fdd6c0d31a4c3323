"""What the engine trains on: the train/val/test splits as whole tensors on one device, and the per-batch
conversion of uint8 pixels to the model's float inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


@dataclass
class Splits:
    """Train/val/test as uint8 images (N, C, H, W) and int64 labels, all on one device."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    source: Path
    mean: float = 0.0  # subtracted after scaling to [0, 1]; set by data.normalize=standardize
    std: float = 1.0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def prep(self, images: Tensor) -> Tensor:
        """uint8 images -> the float inputs the model sees, per batch on the device."""
        x = to_float(images)
        return x if (self.mean, self.std) == (0.0, 1.0) else x.sub_(self.mean).div_(self.std)


def to_float(images: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [0, 1], done per batch on the device (the labs' scaling); float inputs (generated
    datasets) come back as a float32 copy, so in-place normalization never writes into the dataset."""
    if images.is_floating_point():
        return images.to(torch.float32, copy=True)
    return images.float().div_(255.0)
