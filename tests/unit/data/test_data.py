"""Data tests on real files from ../shared/data and on IDX folders the tests write (never the network)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from dlzoo.data.datasets import DATASETS, find_local, load_splits, locate, read_idx
from dlzoo.data.splits import to_float
from dlzoo.errors import DlzooError
from tests.conftest import make_idx_folder, write_idx


def test_real_fashion_mnist_loads_with_the_standard_split(fmnist_root: Path) -> None:
    splits = load_splits("fashion_mnist", str(fmnist_root), download=False)
    assert splits.x_train.shape == (55000, 1, 28, 28) and splits.x_train.dtype == torch.uint8
    assert len(splits.y_val) == 5000 and splits.x_test.shape == (10000, 1, 28, 28)
    assert splits.y_test.bincount().tolist() == [1000] * 10  # the published test set is balanced
    assert splits.source == fmnist_root


def test_parent_folder_of_the_dataset_works_as_root(fmnist_root: Path) -> None:
    assert locate("fashion_mnist", str(fmnist_root.parent), download=False) == fmnist_root


def test_dlzoo_data_env_is_searched(fmnist_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLZOO_DATA", str(fmnist_root.parent))
    assert locate("fashion_mnist", None, download=False) == fmnist_root


def test_split_is_seeded_disjoint_and_independent_of_the_training_seed(toy_root: Path) -> None:
    a = load_splits("mnist", str(toy_root), download=False, val_size=100, split_seed=3)
    b = load_splits("mnist", str(toy_root), download=False, val_size=100, split_seed=3)
    c = load_splits("mnist", str(toy_root), download=False, val_size=100, split_seed=4)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_val, c.x_val)
    assert len(a.y_train) + len(a.y_val) == 600


def test_train_subset_and_uncompressed_files(tmp_path: Path) -> None:
    root = make_idx_folder(tmp_path / "raw", compress=False)
    splits = load_splits("mnist", str(root), download=False, val_size=50, train_subset=64)
    assert len(splits.y_train) == 64 and splits.input_shape == (1, 28, 28)


def test_torchvision_layout_is_found(tmp_path: Path) -> None:
    make_idx_folder(tmp_path / "FashionMNIST" / "raw")
    assert find_local(DATASETS.get("fashion_mnist"), [tmp_path]) == tmp_path / "FashionMNIST" / "raw"


def test_to_float_scales_pixels_to_unit_interval() -> None:
    x = torch.tensor([0, 128, 255], dtype=torch.uint8)
    assert torch.allclose(to_float(x), torch.tensor([0.0, 128 / 255, 1.0]))


def test_missing_root_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DlzooError, match=r"does not exist.*data\.root="):
        locate("mnist", str(tmp_path / "nowhere"))


def test_offline_without_a_copy_lists_the_folders_searched(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DlzooError) as info:
        locate("fashion_mnist", str(tmp_path / "empty"), download=False)
    message = str(info.value)
    assert str(tmp_path / "empty") in message and "DLZOO_DATA" in message
    assert "dataset-fashion-mnist" in message and "t10k-images-idx3-ubyte" in message


def test_incomplete_folder_is_not_taken(tmp_path: Path) -> None:
    root = make_idx_folder(tmp_path / "partial")
    (root / "train-images-idx3-ubyte.gz").unlink()  # like ../shared/data/mnist: no train images
    assert find_local(DATASETS.get("mnist"), [root]) is None


def test_corrupt_gzip_names_the_file(tmp_path: Path) -> None:
    root = make_idx_folder(tmp_path / "bad")
    target = root / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:100])  # truncated download
    with pytest.raises(DlzooError, match=r"t10k-images-idx3-ubyte\.gz"):
        load_splits("mnist", str(root), download=False, val_size=10)


def test_wrong_magic_is_reported(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", np.zeros(10, dtype=np.uint8), 2049)
    with pytest.raises(DlzooError, match="magic number is 2049, expected 2051"):
        read_idx(path, 2051)


def test_size_mismatch_with_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "short.gz"
    header = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (5, 28, 28))
    path.write_bytes(gzip.compress(header + bytes(100)))
    with pytest.raises(DlzooError, match="truncated or padded"):
        read_idx(path, 2051)


@pytest.mark.parametrize("dims", [(2**31, 2**31, 4), (2**16, 2**16, 2**16)])
def test_a_crafted_idx_header_is_refused_before_its_size_is_allocated(dims: tuple[int, ...], tmp_path: Path) -> None:
    """[2^31, 2^31, 4] overflows int64 to 0 in np.prod; [2^16]^3 promises 256 TB: both are refused from the
    header, the body never read."""
    path = tmp_path / "crafted.gz"
    header = (2051).to_bytes(4, "big")[:3] + bytes([3]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(gzip.compress(header + bytes(100)))
    with pytest.raises(DlzooError, match="damaged IDX header"):
        read_idx(path, 2051)


def test_image_label_count_mismatch_is_reported(tmp_path: Path) -> None:
    root = make_idx_folder(tmp_path / "mismatch")
    write_idx(root / "t10k-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8), 2049)
    with pytest.raises(DlzooError, match="200 items but the labels 7"):
        load_splits("mnist", str(root), download=False, val_size=10)


def test_real_mnist_loads_and_is_recognised(mnist_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    splits = load_splits("mnist", str(mnist_root), download=False)
    assert len(splits.y_train) == 55_000 and len(splits.y_val) == 5_000 and len(splits.y_test) == 10_000
    assert "not the published" not in capsys.readouterr().err


def test_the_other_datasets_files_are_refused(mnist_root: Path, fmnist_root: Path) -> None:
    with pytest.raises(DlzooError, match=r"holds fashion_mnist, not mnist.*`data=fashion_mnist`"):
        load_splits("mnist", str(fmnist_root), download=False)
    with pytest.raises(DlzooError, match=r"holds mnist, not fashion_mnist"):
        load_splits("fashion_mnist", str(mnist_root), download=False)


def test_unknown_files_train_with_a_warning(toy_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load_splits("mnist", str(toy_root), download=False, val_size=100)
    assert "not the published mnist files" in " ".join(capsys.readouterr().err.split())


def test_a_failed_download_leaves_no_empty_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(root: str, **kwargs: object) -> None:
        (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)  # as torchvision does before fetching
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    cache = tmp_path / "cache"
    (cache / "kept").mkdir(parents=True)  # a folder that was there before stays
    with pytest.raises(DlzooError, match=r"the download into .* failed"):
        locate("mnist", str(cache), download=True)
    assert sorted(p.name for p in cache.rglob("*")) == ["kept"]


def test_a_corrupt_deflate_stream_names_the_file(tmp_path: Path) -> None:
    root = make_idx_folder(tmp_path / "bad")
    target = root / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[20:60] = bytes(40)  # the deflate blocks, not the gzip header or its length trailer
    target.write_bytes(bytes(data))
    with pytest.raises(DlzooError, match=r"Cannot read .*t10k-labels-idx1-ubyte\.gz.*corrupt or truncated"):
        load_splits("mnist", str(root), download=False, val_size=10)


def test_a_folder_with_some_of_the_files_names_the_missing_ones(tmp_path: Path) -> None:
    root = make_idx_folder(tmp_path / "partial")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DlzooError, match=r"has only some of the files: missing t10k-labels-idx1-ubyte"):
        locate("mnist", str(root), download=False)


def test_standardizing_constant_images_is_a_clean_error(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    for split, n in (("train", 200), ("t10k", 50)):
        write_idx(root / f"{split}-images-idx3-ubyte", np.full((n, 28, 28), 7, dtype=np.uint8), 2051)
        write_idx(root / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10, 2049)
    with pytest.raises(DlzooError, match=r"all one value \(std 0\).*data.normalize=none"):
        load_splits("mnist", str(root), download=False, val_size=20, normalize="standardize")
