"""Run folders and checkpoints: finding what to resume, checking it fits the config, loading it, and the
metadata that makes a run reproducible (seed, versions, device, git commit)."""

from __future__ import annotations

import json
import os
import pickle
import platform
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from dlzoo import __version__
from dlzoo.config.schema import TrainConfig, as_dict
from dlzoo.errors import DlzooError
from dlzoo.paths import atomic_write, inert, open_nofollow, refuse_links

# What must match for trainer.resume=auto to pick a run: the experiment itself, not how it is being run.
IDENTITY_KEYS = ("data", "model", "optim", "sched", "reg", "trainer.epochs", "trainer.batch_size", "trainer.seed")


PRETRAIN_FILE = "pretrain.pt"  # a run stopped during pretraining, before fine-tuning wrote last.pt


def checkpoint_file(path: Path) -> Path:
    """A run folder means its checkpoints/last.pt (or pretrain.pt, or a checkpoints folder's); a file is itself."""
    if path.is_dir():
        return resumable_file(path) or resumable_file(path, inside="") or path
    return path


def resumable_file(folder: Path, inside: str = "checkpoints") -> Path | None:
    """The file a run folder resumes from: checkpoints/last.pt, or checkpoints/pretrain.pt while it was still
    pretraining (`inside=""`: `folder` is the checkpoints folder itself)."""
    for name in ("last.pt", PRETRAIN_FILE):
        path = folder / inside / name
        if path.is_file():
            return path
    return None


def run_of(file: Path) -> Path | None:
    """The run folder holding checkpoint `file` (<run>/checkpoints/last.pt or pretrain.pt, in a folder dlzoo made:
    its .hydra/ or TensorBoard events are there), or None for a loose file, whose folder is nobody's run."""
    run = file.parent.parent
    if file.parent.name != "checkpoints" or file.name not in ("last.pt", PRETRAIN_FILE):
        return None
    if (run / ".hydra").is_dir() or any(run.glob("events.out.tfevents.*")):
        return run
    return None


SECTIONS = ("model", "data", "trainer", "optim")  # what every reader of a checkpoint's config relies on


def _unpacked_size_problem(path: Path) -> str | None:
    """torch.save stores each tensor uncompressed in a zip archive, so what a checkpoint unpacks to is about its
    size on disk. A compressed record (a zip bomb: megabytes that unpack to gigabytes) or records larger than the
    file are refused from the archive's directory, before anything is unpacked."""
    if not zipfile.is_zipfile(path):
        return None  # torch's legacy format, or not an archive at all: torch.load's own checks apply
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        return f"its archive is damaged ({e})"
    if any(r.compress_type != zipfile.ZIP_STORED for r in records):
        return "it holds compressed records, which torch.save never writes (a small file could unpack to gigabytes)"
    if sum(r.file_size for r in records) > path.stat().st_size:
        return "its records claim more bytes than the file holds"
    return None


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """torch.load with a clear error for a missing, truncated or foreign file; `mmap` maps the tensors from the
    file instead of reading them (for a look at the config)."""
    if not path.is_file():
        raise DlzooError(f"No checkpoint at {path}. Fix: give a run folder with checkpoints/last.pt or a .pt file.")
    if problem := _unpacked_size_problem(path):
        raise DlzooError(f"Refused to load {path}: {problem}. Fix: use a checkpoint written by dlzoo (torch.save).")
    try:
        # weights_only: a .pt is a pickle, and a foreign one could run code as it loads. Only the types dlzoo
        # itself saves are allowed (tensors, containers, numpy RNG state, torch's version string).
        with torch.serialization.safe_globals(_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise DlzooError(
            f"Refused to load {path}: it holds objects a dlzoo checkpoint never does, and loading them could run "
            f"code ({' '.join(str(e).split('Check the documentation')[0].split()[-25:])}). Fix: use a checkpoint "
            "written by dlzoo; a file from elsewhere is not loaded."
        ) from None
    except Exception as e:  # zip errors and truncation all mean the same thing to the user
        why = str(e).split(". ")[0].rstrip(".")  # torch's zip errors go on for lines after their first sentence
        raise DlzooError(
            f"Cannot read checkpoint {path} ({why}): it is truncated or not a dlzoo checkpoint. Fix: use another one "
            "(checkpoints/best-*.pt, or an earlier run)."
        ) from None
    if not isinstance(state, dict) or "model" not in state or not isinstance(state.get("config"), dict):
        raise DlzooError(f"{path} is not a dlzoo checkpoint (no model weights and config inside).")
    if missing := [k for k in SECTIONS if not isinstance(state["config"].get(k), dict)]:
        meta = state.get("meta")
        version = meta.get("dlzoo", "an unknown version") if isinstance(meta, dict) else "an unknown version"
        raise DlzooError(
            f"{path} was written by dlzoo {version}, whose config has no {', '.join(missing)} section: this dlzoo "
            f"({__version__}) cannot read it. Fix: use it with the dlzoo version that wrote it, or retrain."
        )
    state["config"] = inert(state["config"])  # a shared file's ${oc.env:...} never reads this machine's secrets
    return state


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` as JSON atomically: a crash or full disk leaves the old file or none, never half of one.
    The temporary name is unique, so two writers never share it."""
    text = json.dumps(payload, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def lock_holder(folder: Path) -> str | None:
    """The pid holding `folder`'s run lock, or None when no process holds it."""
    # Unix-only: imported where a lock is taken, so the CLI still starts without it
    import fcntl

    path = folder / ".lock"
    if path.is_symlink() or not path.is_file():
        return None
    with os.fdopen(open_nofollow(path, os.O_RDONLY), "r") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "unknown"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def in_use_message(folder: Path, holder: str) -> str:
    return (
        f"{folder} is in use by another dlzoo process (pid {holder}), which is writing its checkpoints and "
        "metrics there. Fix: wait for it to finish, or give this run its own folder (hydra.run.dir=<folder>)."
    )


_HELD: set[Path] = set()  # the folders this process holds the lock of: taking one again is a no-op


MIN_FREE = 1 << 20  # bytes: below a MiB even Hydra's .hydra/ files and the first TensorBoard events may not fit
NAME_MAX = 255  # bytes in one folder name: ext4, xfs, btrfs, tmpfs, APFS and NTFS alike
PSEUDO = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "configfs",
          "bpf", "pstore", "fusectl", "mqueue", "hugetlbfs", "efivarfs", "binfmt_misc"}  # fmt: skip


def _pseudo_file_system(path: Path) -> str | None:
    """The kernel file system `path` lies on (/proc, /sys, /dev), where creating a folder fails or means nothing;
    None for storage, or where the mount table cannot be read (not Linux)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return None
    best = max((m for m in mounts if len(m) == 2 and path.is_relative_to(m[0].replace("\\040", " "))),
               key=lambda m: len(m[0]), default=None)  # fmt: skip
    return f"{best[0]} ({best[1]})" if best is not None and best[1] in PSEUDO else None


def output_problem(args: list[str]) -> str | None:
    """Hydra creates the run folder before dlzoo's code runs, so check where it will go first: the nearest
    existing parent of hydra.run.dir / hydra.sweep.dir (default outputs/) must be a writable folder."""
    keys = (
        ("hydra.sweep.dir=", "hydra.run.dir=") if any(a in ("-m", "--multirun") for a in args) else ("hydra.run.dir=",)
    )
    target = next((a.split("=", 1)[1] for a in args for k in keys if a.startswith(k)), "outputs")
    path = Path(target.split("$", 1)[0] or ".").expanduser().absolute()
    if long := [p for p in path.parts if len(p.encode()) > NAME_MAX]:
        return (f"Cannot create the output folder {target}: the name {long[0][:40]}... is {len(long[0].encode())} "
                f"bytes, and a file system allows {NAME_MAX} per folder name. Fix: a shorter hydra.run.dir "
                "(hydra.sweep.dir for -m).")  # fmt: skip
    while not path.exists() and path != path.parent:
        path = path.parent
    if (kind := _pseudo_file_system(path)) is not None:
        return (
            f"Cannot create the output folder {target}: {path} is on {kind}, a kernel interface rather than "
            "storage. Fix: choose a folder on a disk with hydra.run.dir=<folder> (hydra.sweep.dir for -m)."
        )
    if path.is_dir() and (free := shutil.disk_usage(path).free) < MIN_FREE:
        return (f"Cannot start a run in {target}: the disk holding {path} is full ({free // 1024} KiB free; Hydra "
                "writes the run's .hydra/ config before dlzoo starts). Fix: free disk space, or choose a folder on "
                "another disk with hydra.run.dir=<folder> (hydra.sweep.dir for -m).")  # fmt: skip
    if path.is_dir() and os.access(path, os.W_OK):
        named = any(a.startswith(keys) for a in args)
        if named and path == Path(target).expanduser().absolute():  # Hydra writes .hydra/, train.log there first
            try:
                refuse_links(path)
            except DlzooError as e:
                return str(e)
        # Hydra would rewrite .hydra/ of a run another process is still writing: refuse before it starts.
        holder = lock_holder(path) if path == Path(target).expanduser().absolute() else None
        return in_use_message(path, holder) if holder else None
    what = "is a file, not a folder" if path.exists() and not path.is_dir() else "is not writable"
    return (
        f"Cannot create the output folder {target}: {path} {what}. Fix: choose another with "
        "hydra.run.dir=<folder> (hydra.sweep.dir=<folder> for -m), or run dlzoo from a writable directory."
    )


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold `folder`/.lock for this process (an OS lock, released even if the process is killed); a second
    process asking for it is refused at once, naming the holder. Re-entrant within this process: `dlzoo train`
    takes it before Hydra writes .hydra/, and the run inside takes it again."""
    # Unix-only: imported where a lock is taken, so the CLI still starts without it
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:
        yield
        return
    path = folder / ".lock"
    with os.fdopen(open_nofollow(path, os.O_RDWR | os.O_CREAT), "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise DlzooError(in_use_message(folder, f.read().strip() or "unknown")) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            path.unlink(missing_ok=True)
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_if_empty(folder: Path, keep_log: bool = False) -> None:
    """Remove a run folder that holds no result: nothing but Hydra's .hydra/, empty folders and train.log (kept,
    with its folder, when `keep_log` and the log has something to say, such as a sweep job's error)."""
    if not folder.is_dir():
        return
    log = folder / "train.log"
    files = [p for p in folder.rglob("*") if p.is_file() and ".hydra" not in p.relative_to(folder).parts
             and p.name != ".lock"]  # fmt: skip
    if any(p != log for p in files) or (keep_log and log.is_file() and log.stat().st_size > 0):
        return
    shutil.rmtree(folder, ignore_errors=True)


def _safe_globals() -> list[Any]:
    """What a dlzoo checkpoint pickles beyond tensors and containers: numpy's RNG state (an array of uint32
    and Python scalars) and numpy scalars in the history, and torch's version in the metadata."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed np.core
    names = ("UInt32DType", "UInt8DType", "Int64DType", "Int32DType", "Float64DType", "Float32DType", "BoolDType")
    dtypes = [getattr(np.dtypes, n) for n in names if hasattr(getattr(np, "dtypes", None), n)]
    return [
        core.multiarray._reconstruct,
        core.multiarray.scalar,
        np.ndarray,
        np.dtype,
        *dtypes,
        torch.torch_version.TorchVersion,
    ]


def _select(container: dict[str, Any], dotted: str) -> Any:
    return OmegaConf.select(OmegaConf.create(container), dotted)


def identity(config: dict[str, Any]) -> dict[str, Any]:
    return {key: OmegaConf.to_container(v) if OmegaConf.is_config(v := _select(config, key)) else v
            for key in IDENTITY_KEYS}  # fmt: skip


def find_resume(value: str | None, out_dir: Path, cfg: TrainConfig) -> Path | None:
    """The last.pt that trainer.resume names: auto looks in this run's folder, then for the newest unfinished
    sibling run with the same experiment; a folder or file names one directly."""
    if value is None:
        return None
    if value != "auto":
        path = checkpoint_file(Path(value).expanduser())
        if not path.is_file():
            raise DlzooError(
                f"trainer.resume={value!r}: no checkpoint there (looked for checkpoints/last.pt in a run folder, "
                "or a .pt file). Fix: point it at the run folder printed when the run stopped, or use auto."
            )
        return path
    own = resumable_file(out_dir)
    if own is not None and not (out_dir / "metrics.json").is_file():
        return own
    wanted = identity(as_dict(cfg))
    siblings = out_dir.parent.iterdir() if out_dir.parent.is_dir() else iter(())
    found = (resumable_file(run) for run in siblings if run.is_dir())
    candidates = sorted((p for p in found if p is not None), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        run = path.parent.parent
        if run == out_dir or (run / "metrics.json").is_file():
            continue
        if same_config(path, wanted):
            return path
    return None


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """The half-written files (.<name>.<random>.tmp, from atomic_write) a killed process left in `folder` and its
    checkpoints/: only called under the run's lock, when no other process can be writing them."""
    stale = [p for d in (folder, folder / "checkpoints") if d.is_dir() for p in d.glob(".*.tmp")
             if p.is_file() and not p.is_symlink()]  # fmt: skip
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def same_config(path: Path, wanted: dict[str, Any]) -> bool:
    """Whether the checkpoint at `path` (another run's, found by trainer.resume=auto) is of the config whose
    identity is `wanted`. Its tensors are mapped, not read: scanning siblings costs their configs, not their weights;
    a damaged or foreign sibling is simply not the one."""
    try:
        return identity(load_checkpoint(path, mmap=True)["config"]) == wanted
    except DlzooError:
        return False


def check_compatible(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Refuse a checkpoint whose model differs from the config; list the other settings that changed."""
    current = as_dict(cfg)
    diffs = _diff(saved, current)
    model_diffs = [d for d in diffs if d.startswith("model.")]
    if model_diffs or saved["data"]["name"] != current["data"]["name"]:
        raise DlzooError(
            "The checkpoint's model does not match the config: "
            + "; ".join(model_diffs or ["data.name"])
            + ". Fix: resume with the same model settings (they are in the run's .hydra/config.yaml), or start "
            "a new run without trainer.resume."
        )
    # The batch order and the position inside an epoch index the training split: another split would replay
    # the old order over other images (empty batches past its end, NaN). Where the files live may change.
    data_diffs = [d for d in diffs if d.startswith(DATA_IDENTITY)]
    if data_diffs:
        raise DlzooError(
            "The checkpoint was trained on other data than this config selects: "
            + "; ".join(data_diffs)
            + ". Fix: resume with the run's own data settings (in its .hydra/config.yaml), or start a new run "
            "without trainer.resume."
        )
    ignored = ("trainer.resume", "trainer.progress")
    return [d for d in diffs if not d.startswith(ignored)]


# The data keys that decide which images, in which split, a run trains on (data.root and data.download only say
# where the same files are found).
DATA_IDENTITY = tuple(f"data.{k}" for k in ("name", "val_size", "split_seed", "train_subset", "normalize", "classes",
                                            "binary_positive", "xor_samples", "xor_noise"))  # fmt: skip


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def check_writable(folder: Path) -> None:
    """Fail before any work if the run folder cannot take files, or holds a link a write would follow."""
    refuse_links(folder)
    probe = folder / "checkpoints" / ".write-test"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
    except OSError as e:
        probe.unlink(missing_ok=True)  # a full disk can create the file and then refuse its bytes
        raise DlzooError(
            f"The output folder {folder} is not writable ({e.strerror or e}). Fix: free disk space, fix its "
            "permissions, or choose another with hydra.run.dir=<folder> (hydra.sweep.dir for -m)."
        ) from None
    probe.unlink(missing_ok=True)
    with suppress(OSError):  # a run without checkpoints (trainer.checkpoint.enabled=false) keeps none
        probe.parent.rmdir()


def metadata(seed: int, device: torch.device) -> dict[str, Any]:
    """What it takes to reproduce the numbers: seed, versions, device and the code's git commit."""
    # torchvision is a slow import, and `dlzoo --help` imports this module
    import torchvision

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "seed": seed,
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "dlzoo": __version__,
        "git_commit": git_commit(),
    }


PACKAGE = Path(__file__).resolve().parents[1]  # the dlzoo/ folder this code runs from


def git_commit(package: Path = PACKAGE) -> str | None:
    """The commit of the git checkout the dlzoo `package` folder is tracked in (with -dirty), or None for an
    installed wheel: an untracked copy (site-packages inside some repository's virtualenv) has no commit of its own.
    """

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=5)

    try:
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")
