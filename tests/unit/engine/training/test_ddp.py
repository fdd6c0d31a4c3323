"""Data-parallel training: shards of a global batch and their weighted losses give the single-batch gradient; two
gloo processes running engine.fit match one process; `dlzoo train trainer.devices=2` on real Fashion-MNIST
matches the single-process run, writes one run folder, and refuses what DDP does not support."""

from __future__ import annotations

import ipaddress
import json
import math
import os
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from dlzoo.config.validate import OptimConfig, SchedConfig
from dlzoo.data.datasets import load_splits
from dlzoo.engine.training.distributed import Dist, check_supported, requested_devices
from dlzoo.engine.training.loop import FitOptions, fit, seed_everything
from dlzoo.errors import DlzooError
from dlzoo.models.mlp import MLP
from dlzoo.optim import build_optimizer, build_scheduler
from tests.conftest import make_idx_folder
from tests.helpers import FAST, Recorder, dlzoo


@pytest.mark.parametrize(("batch", "world"), [(100, 2), (7, 3), (2, 3)])
def test_shards_are_disjoint_and_their_losses_sum_to_the_batch_gradient(batch: int, world: int) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(batch, 5), torch.randint(0, 3, (batch,))
    idx = torch.randperm(batch)
    shards = [Dist(rank, world).shard(idx) for rank in range(world)]
    assert sorted(torch.cat(shards).tolist()) == list(range(batch))  # disjoint and complete, some maybe empty

    grads = []
    for rank, shard in enumerate(shards):
        model.zero_grad()
        Dist(rank, world).loss(model(x[shard]), y[shard], batch).backward()
        grads.append(model.weight.grad.clone())
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    # DDP averages the ranks' gradients: that average must be the whole batch's mean-loss gradient.
    torch.testing.assert_close(torch.stack(grads).mean(0), model.weight.grad)


def test_one_process_is_the_identity() -> None:
    one = Dist()
    batch = torch.arange(10)
    assert one.main and one.shard(batch) is batch and one.sum(1.5, 3) == [1.5, 3] and one.mean(2.0) == 2.0
    model = torch.nn.Linear(2, 2)
    assert one.wrap(model) is model and one.device(torch.device("cpu")) == torch.device("cpu")


def _fit(data_root: str, dist: Dist) -> dict[str, float]:
    data = load_splits("mnist", data_root, download=False, val_size=100)
    seed_everything(0)
    model = MLP(784, 10, [64])
    optimizer = build_optimizer(OmegaConf.structured(OptimConfig(name="adam", lr=1e-3)), model.parameters())
    scheduler = build_scheduler(OmegaConf.structured(SchedConfig()), optimizer, 16, 1000)
    # 500 images in batches of 32: the last batch holds 20, so both shard weighting and sums are exercised.
    r = fit(model, data, optimizer, scheduler, Recorder(), FitOptions(epochs=2, batch_size=32, seed=0,
            log_every_n_steps=5, dist=dist))  # fmt: skip
    return {"train_loss": r.train_loss, "train_acc": r.train_acc, "val_loss": r.val_loss, "val_acc": r.val_acc,
            "steps": r.steps, "samples": r.train_samples}  # fmt: skip


def _rank(rank: int, world: int, init_file: str, data_root: str, out: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    result = _fit(data_root, Dist(rank, world))
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    tdist.destroy_process_group()
    # A process that used DDP over gloo sometimes aborts in interpreter teardown, after all its work ("terminate
    # called without an active exception", torch 2.15 CPU); the results are written, so leave without teardown.
    os._exit(0)


def test_two_gloo_processes_match_one(tmp_path: Path) -> None:
    root = str(make_idx_folder(tmp_path / "toy", n_train=600, n_test=50))
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), root, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank ends with the same reduced numbers (and so the same decisions)
    single = _fit(root, Dist())
    assert ranks[0]["steps"] == single["steps"] == 32 and ranks[0]["samples"] == single["samples"] == 1000
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert math.isclose(ranks[0][key], single[key], rel_tol=1e-4, abs_tol=1e-5), key


def test_dlzoo_train_devices_2_matches_one_process(fmnist_root: Path, tmp_path: Path) -> None:
    common = [*FAST, "model=mlp_xavier", "trainer.device=cpu", "data=fashion_mnist", f"data.root={fmnist_root}",
              "trainer.epochs=2", "trainer.max_steps=30"]  # fmt: skip
    single = dlzoo("train", *common, f"hydra.run.dir={tmp_path / 'single'}", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    ddp_cwd = tmp_path / "ddp"
    ddp_cwd.mkdir()
    # No hydra.run.dir: the ranks must agree on the ${now:...}-named folder that rank 0 picks.
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:  # every socket the run's processes (working in ddp_cwd) listen on while they run
        while not done.wait(0.1):
            seen.update(_listening(_sockets_of_processes_in(ddp_cwd)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        ddp = dlzoo("train", *common, "trainer.devices=2", cwd=ddp_cwd)
    finally:
        done.set()
        watcher.join()
    assert ddp.returncode == 0, ddp.stderr
    exposed = {a for a in seen if not a.startswith(("127.", "::1"))}
    assert not exposed, f"the ranks listened beyond loopback: {exposed}"
    assert ddp.stdout.count("final metrics") == 1  # ranks > 0 print nothing

    runs = list((ddp_cwd / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    written = sorted(p.relative_to(ddp_cwd) for p in ddp_cwd.rglob("*") if p.is_file())
    assert len([p for p in written if p.name == "metrics.json"]) == 1
    # One TensorBoard run and its train/val/test sub-runs, each written once (by rank 0).
    events = sorted(p.parent.name for p in written if p.name.startswith("events.out.tfevents"))
    assert len(events) == 4 and events[-3:] == ["test", "train", "val"], events
    assert len([p for p in written if p.name == "train.log"]) == 1

    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    two = json.loads((runs[0] / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["steps"] == one["steps"] == 30
    assert abs(two["test_acc"] - one["test_acc"]) <= 0.005, (one["test_acc"], two["test_acc"])
    assert math.isclose(two["test_loss"], one["test_loss"], rel_tol=1e-3)
    state = torch.load(runs[0] / "checkpoints" / "last.pt", weights_only=False)
    assert not any(k.startswith("module.") for k in state["model"])  # plain weights: eval/predict load them


def _sockets_of_processes_in(cwd: Path) -> set[str]:
    """The socket inodes held by the processes working in `cwd` (the dlzoo command and its ranks): other tests
    running beside this one may listen on other interfaces, and are not this run."""
    inodes = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")) != cwd:
                continue
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:  # the process ended, or is not ours to read
            continue
        inodes.update(link[len("socket:[") : -1] for link in links if link.startswith("socket:["))
    return inodes


def _listening(inodes: set[str]) -> set[str]:
    """The local addresses of the listening TCP sockets among `inodes` (from /proc/net/tcp and tcp6), e.g.
    '127.0.0.1:5432', '0.0.0.0:29400' or '::1:80'."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:] if Path(table).exists() else []:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # TCP_LISTEN, by one of the run's processes
                continue
            host, port = fields[1].split(":")
            raw = bytes.fromhex(host)  # 32-bit words in the host's (little-endian) byte order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(f"{ipaddress.ip_address(raw)}:{int(port, 16)}")
    return found


def test_unsupported_combinations_are_refused(tmp_path: Path) -> None:
    proc = dlzoo("train", "trainer.devices=2", "ensemble.size=2", cwd=tmp_path)
    assert proc.returncode == 2 and "trainer.devices" in proc.stderr and "Traceback" not in proc.stderr
    proc = dlzoo("train", "trainer.devices=0", cwd=tmp_path)
    assert proc.returncode == 2 and "trainer.devices=0" in proc.stderr
    with pytest.raises(DlzooError, match="torchrun --nproc_per_node=2"):
        check_supported(world=1, devices=2, ensemble_size=1, resume=None)
    with pytest.raises(DlzooError, match="resume"):
        check_supported(world=2, devices=1, ensemble_size=1, resume="auto")
    with pytest.raises(DlzooError, match="torchrun started 2"):
        check_supported(world=2, devices=3, ensemble_size=1, resume=None)
    check_supported(world=2, devices=1, ensemble_size=1, resume=None)  # torchrun alone decides the world size
    assert requested_devices(["model=mlp", "trainer.devices=2", "trainer.devices=4"]) == 4
    assert requested_devices(["model=mlp"]) == 1


@pytest.mark.skipif(os.environ.get("WORLD_SIZE") is not None, reason="already inside a torchrun group")
def test_single_process_stays_out_of_any_group() -> None:
    from dlzoo.engine.training.distributed import current, launched, setup

    assert not launched() and current() == Dist() and setup(["model=mlp"]) == []
