"""Files: where the config tree lives (inside the package in a wheel, at the repo's top level in a checkout), and
the one atomic write every file dlzoo saves goes through."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """The `conf/` folder: `dlzoo/conf` in an installed wheel, `<repo>/conf` in an editable install."""
    for candidate in (_PKG / "conf", _PKG.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"dlzoo's config tree (conf/train.yaml) is missing: looked in {_PKG / 'conf'} and {_PKG.parent / 'conf'}. "
        "Reinstall dlzoo (`pip install .` or `pip install -e .` from the repository)."
    )


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a fresh temporary file beside `path`, then rename it over `path`: a crash or a full disk
    mid-write leaves the previous file (or none), never half of one. The temporary name is unique, so two
    writers never share it, and it is removed when `write` fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
