"""Files: where the config tree lives (inside the package in a wheel, at the repo's top level in a checkout), the
one atomic write every file dlzoo saves goes through, and the guards that keep writes from following links."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from dlzoo.errors import DlzooError

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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once, at import (setting it is the only way to read it, and not thread-safe)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a fresh temporary file beside `path`, then rename it over `path`: a crash or a full disk
    mid-write leaves the previous file (or none), never half of one. The temporary name is unique, so two
    writers never share it, and it is removed when `write` fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file 0600; a checkpoint or metrics.json gets the permissions of every other file the run
    # writes (0644 under the usual umask 022), so a shared results folder reads alike.
    os.fchmod(fd, 0o666 & ~UMASK)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def link_message(path: Path) -> str:
    return (
        f"{path} is a link (to {os.readlink(path)}), and dlzoo does not write through links: a file elsewhere "
        "would be overwritten. Fix: remove the link, or choose another folder (hydra.run.dir=<folder>, --out)."
    )


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """os.open without following a link at `path` (O_NOFOLLOW): a planted link is refused, never written through.

    Args:
        path: the file to open (created with `mode` when `flags` has O_CREAT).
        flags: os.O_* flags; O_NOFOLLOW is added.
        mode: the permission bits of a new file.

    Returns:
        The file descriptor.
    """
    try:
        return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), mode)
    except OSError:
        if path.is_symlink():
            raise DlzooError(link_message(path)) from None
        raise


def refuse_links(folder: Path) -> None:
    """Raise a DlzooError naming the first link found under `folder` (links are not followed): dlzoo writes logs,
    checkpoints and configs there, and a planted link would send a write to the file it names. `folder` itself
    may be a link: that one the user chose (a run folder on a bigger disk)."""
    if not folder.is_dir():
        return
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            if os.path.islink(os.path.join(root, name)):
                raise DlzooError(link_message(Path(root, name)))


# `${name:...}`: a resolver call (oc.env reads the environment), as opposed to a plain `${key}` reference.
_RESOLVER = re.compile(r"(\\*)\$\{(\s*[\w.]+\s*:)")


def _escape(match: re.Match[str]) -> str:
    slashes = match.group(1)  # an even count escapes only backslashes: the call would still run
    return slashes + ("" if len(slashes) % 2 else "\\") + "${" + match.group(2)


def inert(value: object) -> object:
    """`value` (a config from a file dlzoo did not just compose: a checkpoint, a run's .hydra/, a trial) with every
    resolver call escaped, so `${oc.env:SECRET}` stays that text and never becomes the secret in a message, a
    report or a dashboard. Plain `${key}` references still resolve within the config."""
    if isinstance(value, str):
        return _RESOLVER.sub(_escape, value)
    if isinstance(value, dict):
        return {k: inert(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [inert(v) for v in value]
    return value
