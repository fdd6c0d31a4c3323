"""What the search tests share: a small slice of the real Fashion-MNIST, and a real PostgreSQL server of their own
(Debian's `postgresql` package: initdb and pg_ctl in a temporary folder, reached through a unix socket only)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlzoo.data.datasets import read_idx
from tests.conftest import write_idx


@pytest.fixture(scope="session")
def fmnist_slice(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 2,000 train and 1,000 test images of the real Fashion-MNIST: smoke.yaml's trials use 1,500 of
    them, and each trial reads a few hundred kilobytes instead of the whole 55 MB."""
    folder = tmp_path_factory.mktemp("fmnist_slice")
    for split, n in (("train", 2000), ("t10k", 1000)):
        for kind, magic in (("images-idx3", 2051), ("labels-idx1", 2049)):
            array = read_idx(fmnist_root / f"{split}-{kind}-ubyte.gz", magic)[:n]
            write_idx(folder / f"{split}-{kind}-ubyte", array, magic, compress=False)
    return folder


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))  # Debian keeps the server off PATH
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server for this test session; yields its socket folder. initdb refuses to run as
    root, so as root the server runs as the `postgres` user the Debian package creates."""
    bindir = _postgres_bin()
    if bindir is None:
        reason = ("NO POSTGRESQL SERVER: the multi-worker `dlzoo tune` tests need one. Fix: apt-get install "
                  "postgresql (Debian/Ubuntu), then run the tests again.")  # fmt: skip
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason + " (CI=true: these tests must run, not skip)")
        pytest.skip(reason)
    home = Path(tempfile.mkdtemp(prefix="dlzoo-pg-"))  # not pytest's tmp: the postgres user must reach it
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]

    def pg(*args: str) -> None:
        subprocess.run([*run_as, *args], check=True, capture_output=True, timeout=120)

    pg(str(bindir / "initdb"), "-D", str(home / "data"), "-U", "dlzoo", "--auth=trust", "-E", "UTF8")
    # No TCP at all (listen_addresses=''): the socket in our own folder, so parallel sessions never collide.
    options = f"-k {home} -c listen_addresses='' -c max_connections=200 -c fsync=off"
    pg(str(bindir / "pg_ctl"), "-D", str(home / "data"), "-o", options, "-l", str(home / "log"), "-w", "start")
    try:
        yield str(home)
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(home / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's server, as the SQLAlchemy URL `dlzoo tune --storage` takes."""
    import sqlalchemy

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    admin = sqlalchemy.create_engine(f"postgresql+psycopg2://dlzoo@/postgres?host={postgres_server}",
                                     isolation_level="AUTOCOMMIT")  # fmt: skip
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        c.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"postgresql+psycopg2://dlzoo@/{name}?host={postgres_server}"
