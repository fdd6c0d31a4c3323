"""Shared fixtures: the real data in ../shared/data, and small IDX folders that tests write themselves."""

from __future__ import annotations

import gzip
import os
import re
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


IDX_FILES = tuple(f"{s}-ubyte.gz" for s in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3",
                                           "t10k-labels-idx1"))  # fmt: skip


DATA_HINT = (
    "set DLZOO_TEST_DATA to a folder holding fashion-mnist/ and mnist/ (each with the four IDX files), "
    "e.g. DLZOO_TEST_DATA=/path/to/data pytest"
)
_missing: set[str] = set()


def real_data(name: str) -> Path:
    """The real dataset folder `name` under DLZOO_TEST_DATA (default ../shared/data). Missing data skips the test,
    loudly (see the summary hook below); under CI (CI=true) it fails it, since a skipped end-to-end test proves
    nothing."""
    folder = SHARED_DATA / name
    if not all((folder / f).is_file() for f in IDX_FILES):
        message = f"real {name} not found at {folder}: {DATA_HINT}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        _missing.add(name)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def fmnist_root() -> Path:
    return real_data("fashion-mnist")


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    return real_data("mnist")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One loud line when real-data tests were skipped, naming what to set. Read from the skip reports, which
    reach this (controller) process from every pytest-xdist worker."""
    skipped = terminalreporter.stats.get("skipped", [])
    missing = set(_missing)
    for report in skipped:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        missing |= set(re.findall(r"real (\S+) not found at", reason))
    if missing:
        terminalreporter.write_line(
            f"REAL DATA MISSING ({', '.join(sorted(missing))}): {len(skipped)} test(s) skipped, the end-to-end runs "
            f"among them. To run them, {DATA_HINT}.",
            red=True,
            bold=True,
        )


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
