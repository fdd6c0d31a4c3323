"""`build_splits`: the data config -> Splits. IDX datasets, optionally cut down to some classes (Géron's transfer
tasks: 8 of Fashion-MNIST's classes, or shirt vs sandal as a binary task), or a generated one (xor)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from dlzoo.checks import Checks
from dlzoo.data.datasets import DATASETS, check_spread, load_splits
from dlzoo.data.splits import Splits
from dlzoo.data.synthetic import xor_splits


@dataclass
class DataConfig:
    name: str = "mnist"  # registry: dlzoo ls dataset
    root: str | None = None  # a folder with the four IDX files; else $DLZOO_DATA, then the cache
    download: bool = True  # fetch through torchvision when no local copy is found
    val_size: int = 5000  # held out of the 60k train images (TF input_data's 55k/5k split)
    split_seed: int = 0  # fixed apart from trainer.seed so every training seed sees the same split
    train_subset: int | None = None  # keep only N training images (smoke tests, quick looks)
    test_subset: int | None = None  # score on the first N test images only (smoke runs; figures use all 10,000)
    normalize: str = "none"  # none = pixels in [0, 1] (the labs); standardize = mean 0, std 1 (what SELU needs)
    classes: list[int] | None = None  # keep only these labels, renumbered 0..k-1 in this order (Géron's task A)
    binary_positive: int | None = None  # label 1 for this class, 0 for every other kept one (Géron's task B: 6)
    xor_samples: int = 1  # data.name=xor: copies of each of the 4 XOR points in every split
    xor_noise: float = 0.0  # data.name=xor: std of the Gaussian noise added to every copy's coordinates


def num_classes(data: DataConfig) -> int:
    """How many classes the model scores once data.classes / data.binary_positive have been applied."""
    if data.binary_positive is not None:
        return 2
    if data.classes is not None:
        return len(data.classes)
    return DATASETS.get(data.name).num_classes


def class_names(data: DataConfig) -> list[str]:
    """The label names after data.classes / data.binary_positive relabel them (for confusion matrices)."""
    spec = DATASETS.get(data.name)
    if data.binary_positive is not None:
        return ["other", spec.classes[data.binary_positive]]
    if data.classes is not None:
        return [spec.classes[c] for c in data.classes]
    return list(spec.classes)


def data_problems(data: DictConfig) -> list[str]:
    """What is wrong with the data section: sizes, normalization, the class filter and the xor options."""
    c = Checks(data, "data")
    c.check("normalize", data.normalize in ("none", "standardize"), "none or standardize")
    # 0 would leave validation empty: val/loss, early stopping and best-epoch checkpoints need at least one image.
    c.check("val_size", data.val_size >= 1, ">= 1")
    c.check("train_subset", data.train_subset is None or data.train_subset >= 1, ">= 1 or null")
    c.check("test_subset", data.test_subset is None or data.test_subset >= 1, ">= 1 or null")
    if data.name not in DATASETS:
        return c.problems  # validate already names the unknown dataset
    spec, problems = DATASETS.get(data.name), c.problems
    n = spec.num_classes
    if spec.generated and (data.classes is not None or data.binary_positive is not None):
        problems.append(f"data.classes / data.binary_positive select classes of an IDX dataset; {data.name} has none.")
    if data.classes is not None:
        classes = list(data.classes)
        if len(set(classes)) != len(classes) or not all(0 <= c < n for c in classes) or len(classes) < 2:
            problems.append(
                f"data.classes={classes} must be at least 2 distinct labels in [0, {n}) ({data.name}: "
                f"{', '.join(f'{i}={c}' for i, c in enumerate(spec.classes))})."
            )
    if data.binary_positive is not None:
        kept = list(data.classes) if data.classes is not None else list(range(n))
        if data.binary_positive not in kept:
            problems.append(f"data.binary_positive={data.binary_positive} must be one of the kept labels {kept}.")
    if data.xor_samples < 1:
        problems.append(f"data.xor_samples={data.xor_samples} is out of range: it must be >= 1.")
    if data.xor_noise < 0:
        problems.append(f"data.xor_noise={data.xor_noise} is out of range: it must be >= 0 (a std).")
    return problems


def select_classes(x: Tensor, y: Tensor, classes: list[int], positive: int | None) -> tuple[Tensor, Tensor]:
    """Keep the samples whose label is in `classes`, in their order, relabelled: 0..k-1 in the order of `classes`,
    or 1 for `positive` and 0 for the rest.

    Args:
        x: samples (N, ...).
        y: int64 labels (N,).
        classes: the labels to keep.
        positive: when given, the binary relabelling's class 1 (Géron's task B: shirt, 6).

    Returns:
        The kept samples and their new labels, on the device of `y`.
    """
    table = torch.full((int(y.max().item()) + 1 if len(y) else 1,), -1, dtype=torch.long, device=y.device)
    for new, old in enumerate(classes):
        if old < len(table):
            table[old] = int(old == positive) if positive is not None else new
    labels = table[y]
    keep = labels >= 0
    return x[keep], labels[keep]


def build_splits(data: DataConfig, device: torch.device | str = "cpu") -> Splits:
    """The Splits that `data` (a DataConfig node) describes, on `device`. The class filter runs on every split
    before data.train_subset, so a subset of N keeps the first N training samples of the kept classes (Géron's
    200 shirts and sandals), and standardization statistics come from the filtered training set."""
    spec = DATASETS.get(data.name)
    if spec.generated:
        x, y, x_val, y_val, x_test, y_test = xor_splits(data.xor_samples, data.xor_noise, data.split_seed)
        source = Path(f"<generated, data.split_seed={data.split_seed}>")
        splits = Splits(x, y, x_val, y_val, x_test, y_test, spec.num_classes, source)
    elif data.classes is None and data.binary_positive is None:
        return _test_subset(
            data,
            load_splits(
                data.name,
                data.root,
                data.download,
                data.val_size,
                data.split_seed,
                data.train_subset,
                device,
                data.normalize,
            ),
        )
    else:
        splits = load_splits(data.name, data.root, data.download, data.val_size, data.split_seed, None, device)
        classes = list(data.classes) if data.classes is not None else list(range(spec.num_classes))
        for split in ("train", "val", "test"):
            kept = select_classes(getattr(splits, f"x_{split}"), getattr(splits, f"y_{split}"), classes,
                                  data.binary_positive)  # fmt: skip
            setattr(splits, f"x_{split}", kept[0])
            setattr(splits, f"y_{split}", kept[1])
        splits.num_classes = num_classes(data)
    if data.train_subset is not None:
        splits.x_train, splits.y_train = splits.x_train[: data.train_subset], splits.y_train[: data.train_subset]
    if data.normalize == "standardize":
        values = splits.prep(splits.x_train)
        splits.mean, splits.std = values.mean().item(), check_spread(values.std().item(), splits.source)
    for split in ("train", "val", "test"):
        setattr(splits, f"x_{split}", getattr(splits, f"x_{split}").to(device))
        setattr(splits, f"y_{split}", getattr(splits, f"y_{split}").to(device))
    return _test_subset(data, splits)


def _test_subset(data: DataConfig, splits: Splits) -> Splits:
    if data.test_subset is not None:
        splits.x_test, splits.y_test = splits.x_test[: data.test_subset], splits.y_test[: data.test_subset]
    return splits
