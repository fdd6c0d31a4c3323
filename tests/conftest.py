"""Shared fixtures: the real data in ../shared/data, and small IDX folders that tests write themselves."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DLZOO_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolated_data_lookup(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep every test away from the user's $DLZOO_DATA and cache, so lookups see only what the test gives."""
    monkeypatch.delenv("DLZOO_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def fmnist_root() -> Path:
    folder = SHARED_DATA / "fashion-mnist"
    if not (folder / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real Fashion-MNIST not found at {folder} (set DLZOO_TEST_DATA)")
    return folder


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = True) -> Path:
    """Write `array` (uint8) as an IDX file with the given magic number."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_idx_folder(folder: Path, n_train: int = 600, n_test: int = 200, seed: int = 0, compress: bool = True) -> Path:
    """A learnable toy dataset in MNIST's IDX layout: each class lights up its own band of rows."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label + 3 : 2 * label + 6, 4:24] = 255
        write_idx(folder / f"{split}-images-idx3-ubyte", images, 2051, compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, 2049, compress)
    return folder


@pytest.fixture
def toy_root(tmp_path: Path) -> Path:
    return make_idx_folder(tmp_path / "toy")
