"""Where the config tree lives: inside the package in a wheel, at the repo's top level in a checkout."""

from __future__ import annotations

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
