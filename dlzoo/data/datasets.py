"""Datasets as whole uint8 tensors on the training device. Local IDX copies are found first (data.root,
$DLZOO_DATA, the cache, Debian's dataset folder); torchvision downloads only when none is found."""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dlzoo.data.splits import Splits
from dlzoo.errors import DlzooError
from dlzoo.registry import Registry

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_class: str  # the torchvision.datasets class that downloads it
    folder_names: tuple[str, ...]  # sub-folder names a local copy commonly lives under
    num_classes: int
    classes: tuple[str, ...]
    shape: tuple[int, ...] = (1, 28, 28)  # one sample: (C, H, W)
    generated: bool = False  # made in memory from data.split_seed (dlzoo.data.build), no files to find
    # md5 of the 10,000 test labels (the label bytes after the IDX header): recognises the published files, so a
    # folder of the other dataset is refused instead of silently trained on.
    test_labels_md5: str | None = None


DATASETS: Registry[DatasetSpec] = Registry("dataset", "data.name")
DATASETS.register("mnist", "handwritten digits (LeCun et al. 1998), 60k train + 10k test, 28x28")(
    DatasetSpec(
        "mnist",
        "MNIST",
        ("mnist", "MNIST"),
        10,
        tuple(str(i) for i in range(10)),
        test_labels_md5="073c3904dfbd3e141ff8aa01cfde6b15",
    )
)
DATASETS.register("fashion_mnist", "Zalando's clothing images (Xiao et al. 2017), MNIST's drop-in twin")(
    DatasetSpec(
        "fashion_mnist",
        "FashionMNIST",
        ("fashion-mnist", "fashion_mnist", "FashionMNIST"),
        10,
        ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"),
        test_labels_md5="8dea97a4e78c1bd1b5a6e8efbb870b6e",
    )
)
DATASETS.register("xor", "the 4 XOR points (data.xor_samples copies, data.xor_noise jitter); lecture 10-1")(
    DatasetSpec("xor", "", (), 2, ("0", "1"), shape=(2,), generated=True)
)


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dlzoo"


def candidate_roots(root: str | None) -> list[Path]:
    """The folders searched, in order: data.root, $DLZOO_DATA, the cache, Debian's dataset folder."""
    roots = [Path(root).expanduser()] if root else []
    if os.environ.get("DLZOO_DATA"):
        roots.append(Path(os.environ["DLZOO_DATA"]).expanduser())
    roots += [default_cache(), Path("/usr/share/datasets")]
    return roots


def find_local(spec: DatasetSpec, roots: list[Path]) -> Path | None:
    """The first folder holding all four IDX files (.gz or not), trying each root, its dataset sub-folders
    and torchvision's `<Class>/raw` layout."""
    for folder in _candidates(spec, roots):
        if all(_idx_path(folder, f) is not None for f in IDX_FILES.values()):
            return folder
    return None


def _candidates(spec: DatasetSpec, roots: list[Path]) -> list[Path]:
    """Where a copy may live under each root: the root, its dataset sub-folders, torchvision's <Class>/raw."""
    return [f for b in roots for f in (b, *(b / n for n in spec.folder_names), b / spec.torchvision_class / "raw")]


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path, expect_magic: int) -> np.ndarray:
    """Read one IDX file (gzip or raw) into a read-only uint8 array, checking its magic number and size. A file
    read before by this process (same path, size and modification time) comes from memory: the jobs of a
    multirun share one process, and unzipping MNIST's 47 MB of training images costs each of them a second."""
    stat = path.stat()
    return _read_idx(path, expect_magic, stat.st_size, stat.st_mtime_ns)


MAX_IDX_BYTES = 2**31  # 2 GB of pixels; MNIST's training images are 47 MB


@functools.lru_cache(maxsize=8)  # the four files of two datasets
def _read_idx(path: Path, expect_magic: int, size: int, mtime_ns: int) -> np.ndarray:
    # The header is read first and the body only up to the size it promises (plus one byte, to tell padding): a
    # crafted header or a gzip bomb is refused before its bytes are allocated.
    kind = "images" if expect_magic == _IMAGES_MAGIC else "labels"
    try:
        with gzip.open(path) if path.suffix == ".gz" else path.open("rb") as f:
            start = f.read(4)
            magic = int.from_bytes(start, "big") if len(start) == 4 else -1
            if magic != expect_magic:
                raise DlzooError(
                    f"{path} is not an IDX {kind} file: its magic number is {magic}, expected {expect_magic}. "
                    "Check that the four files are not swapped or damaged, and replace this one with a fresh copy."
                )
            head = f.read(4 * start[3])
            dims = [int.from_bytes(head[4 * i : 4 * i + 4], "big") for i in range(len(head) // 4)]
            promised = math.prod(dims)
            if len(dims) != start[3] or promised > MAX_IDX_BYTES:
                raise DlzooError(
                    f"{path} has a damaged IDX header: it promises {dims} values ({promised:,} bytes; at most "
                    f"{MAX_IDX_BYTES:,} are read). Replace it with a fresh copy."
                )
            raw = f.read(promised + 1)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:  # zlib: a corrupt deflate stream inside
        raise DlzooError(
            f"Cannot read {path}: {e}. The file is corrupt or truncated; replace it with a fresh copy "
            "(or delete it and let dlzoo download it again)."
        ) from None
    if len(raw) != promised:
        more = "more" if len(raw) > promised else f"only {len(raw):,}"
        raise DlzooError(
            f"{path} is truncated or padded: its header promises {dims} values ({promised:,} bytes after the "
            f"header) but the file holds {more}. Replace it with a fresh copy."
        )
    array = np.frombuffer(raw, dtype=np.uint8).reshape(dims)
    array.flags.writeable = False  # shared by every caller through the cache
    return array


def _load_folder(folder: Path, spec: DatasetSpec) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = _idx_path(folder, stem)
        assert path is not None
        arrays[key] = read_idx(path, _IMAGES_MAGIC if key.endswith("images") else _LABELS_MAGIC)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DlzooError(
                f"{folder}: the {split} images hold {len(images)} items but the labels {len(labels)}; the "
                "files belong to different datasets or one is damaged. Replace them with a matching set."
            )
        if labels.size and labels.max() >= spec.num_classes:
            raise DlzooError(
                f"{folder}: {split} labels go up to {labels.max()}, but {spec.name} has {spec.num_classes} "
                "classes. Is data.name right for this folder?"
            )

    check_identity(folder, spec, arrays["test_labels"])

    def images(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.copy()).unsqueeze(1)  # (N, 1, H, W)

    def labels(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return (
        images(arrays["train_images"]),
        labels(arrays["train_labels"]),
        images(arrays["test_images"]),
        labels(arrays["test_labels"]),
    )


def check_identity(folder: Path, spec: DatasetSpec, test_labels: np.ndarray) -> None:
    """Refuse a folder that holds another known dataset (data=mnist pointed at Fashion-MNIST trains silently on
    the wrong images otherwise); warn when the files are none of the published ones."""
    # rich stays off the path of every command's start (`dlzoo --help` imports this module)
    from dlzoo.console import print_warning

    if spec.test_labels_md5 is None:
        return
    digest = hashlib.md5(np.ascontiguousarray(test_labels).tobytes()).hexdigest()
    if digest == spec.test_labels_md5:
        return
    other = next((n for n in DATASETS if DATASETS.get(n).test_labels_md5 == digest), None)
    if other is not None:
        raise DlzooError(
            f"{folder} holds {other}, not {spec.name} (its test labels are {other}'s published ones). Fix: "
            f"`data={other}` to train on it, or point data.root at a folder of {spec.name}'s four IDX files."
        )
    print_warning(f"{folder}: these are not the published {spec.name} files (their test labels differ); training "
                  "on them as given. Results will not compare with the lecture's or the README's figures.")  # fmt: skip


def _download(spec: DatasetSpec, target: Path, searched: list[Path]) -> Path:
    # torchvision is a slow import, needed only to download
    import torchvision.datasets

    existed = {p for p in target.rglob("*") if p.is_dir()} | ({target} if target.is_dir() else set())
    try:
        getattr(torchvision.datasets, spec.torchvision_class)(root=str(target), train=True, download=True)
        getattr(torchvision.datasets, spec.torchvision_class)(root=str(target), train=False, download=True)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError... all mean "no copy"
        # Leave no empty <Class>/raw folders behind: a later lookup (or a user) would take them for a copy.
        made = [p for p in [target, *target.rglob("*")] if p.is_dir() and p not in existed]
        for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        raise DlzooError(_missing_message(spec, searched, f"the download into {target} failed ({e})")) from None
    folder = find_local(spec, [target])
    if folder is None:
        raise DlzooError(_missing_message(spec, searched, f"the download into {target} left no IDX files"))
    return folder


def _missing_message(spec: DatasetSpec, searched: list[Path], why: str) -> str:
    files = ", ".join(f + "[.gz]" for f in IDX_FILES.values())
    debian = (
        " On Debian/Ubuntu `apt-get install dataset-fashion-mnist` installs it under /usr/share/datasets/fashion-mnist."
        if spec.name == "fashion_mnist"
        else ""
    )
    partial = [(f, [n for n in IDX_FILES.values() if _idx_path(f, n) is None]) for f in _candidates(spec, searched)]
    partial = [(f, missing) for f, missing in partial if f.is_dir() and 0 < len(missing) < len(IDX_FILES)]
    incomplete = "".join(f" {f} has only some of the files: missing {', '.join(m)}." for f, m in partial[:2])
    return (
        f"No local copy of {spec.name} was found and {why}.{incomplete} "
        f"Searched: {', '.join(str(r) for r in searched)} "
        f"(each also as <folder>/{{{','.join(spec.folder_names)}}} and <folder>/{spec.torchvision_class}/raw). "
        f"Fix: point data.root (or $DLZOO_DATA) at a folder holding {spec.name}'s four IDX files ({files}), "
        f"e.g. `data.root=~/data/{spec.folder_names[0]}`, or connect to the internet and keep "
        f"data.download=true.{debian}"
    )


def locate(name: str, root: str | None = None, download: bool = True) -> Path:
    """Find a folder with the four IDX files of dataset `name`, downloading into data.root or the cache if
    allowed and nothing local is found."""
    spec = DATASETS.get(name)
    if root and not Path(root).expanduser().is_dir():
        files = ", ".join(f + "[.gz]" for f in IDX_FILES.values())
        raise DlzooError(
            f"data.root={root!r} does not exist (resolved from {Path.cwd()}). Fix: give the folder that holds "
            f"{spec.name}'s four IDX files ({files}), e.g. `data.root=~/data/{spec.folder_names[0]}`; or drop "
            f"data.root: dlzoo then looks in $DLZOO_DATA, {default_cache()} and /usr/share/datasets, and "
            "downloads the files when online."
        )
    roots = candidate_roots(root)
    folder = find_local(spec, roots)
    if folder is not None:
        return folder
    if not download:
        raise DlzooError(_missing_message(spec, roots, "data.download=false"))
    return _download(spec, Path(root).expanduser() if root else default_cache(), roots)


def load_splits(
    name: str,
    root: str | None = None,
    download: bool = True,
    val_size: int = 5000,
    split_seed: int = 0,
    train_subset: int | None = None,
    device: torch.device | str = "cpu",
    normalize: str = "none",
) -> Splits:
    """Load dataset `name` and split its train set into train/val with a seeded permutation.

    Args:
        name: DATASETS name.
        root: a folder to search first (and download into).
        download: allow torchvision's download when no local copy is found.
        val_size: images held out of the train set for validation.
        split_seed: seeds the train/val permutation, so the split is the same for every training seed.
        train_subset: keep only the first N images of the shuffled train part.
        device: where the tensors live for the whole run.
        normalize: "none" keeps pixels in [0, 1]; "standardize" also shifts and scales them by the training
            split's mean and std (one pair for all pixels), as SELU nets need.

    Returns:
        Splits with uint8 images (N, 1, 28, 28) and int64 labels on `device`.
    """
    spec = DATASETS.get(name)
    folder = locate(name, root, download)
    x, y, x_test, y_test = _load_folder(folder, spec)
    if val_size >= len(x):
        raise DlzooError(f"data.val_size={val_size} leaves no training images: {spec.name} has {len(x)}.")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    mean, std = 0.0, 1.0
    if normalize == "standardize":
        pixels = x[train_idx].float().div_(255.0)
        mean, std = pixels.mean().item(), check_spread(pixels.std().item(), folder)
    return Splits(
        x_train=x[train_idx].to(device),
        y_train=y[train_idx].to(device),
        x_val=x[val_idx].to(device),
        y_val=y[val_idx].to(device),
        x_test=x_test.to(device),
        y_test=y_test.to(device),
        num_classes=spec.num_classes,
        source=folder,
        mean=mean,
        std=std,
    )


def check_spread(std: float, source: object) -> float:
    """The std that data.normalize=standardize divides by; images that are all one value have none."""
    if not std > 1e-8:
        raise DlzooError(
            f"data.normalize=standardize: the training images from {source} are all one value (std 0), so there "
            "is nothing to scale. Fix: check the files, or use data.normalize=none."
        )
    return std
