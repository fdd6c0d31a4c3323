"""Data-parallel training (DistributedDataParallel) over the processes `dlzoo train trainer.devices=N` (or torchrun)
starts: joining the group, one output folder for every rank, each rank's shard of every global batch, and sums
across ranks. `Dist()` is the single process, where every method is the identity, so one training loop serves both."""

from __future__ import annotations

import atexit
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dlzoo.config.validate import register_configs
from dlzoo.console import console, print_error
from dlzoo.engine.training.evaluation import Prep, evaluate
from dlzoo.engine.training.stopping import handling
from dlzoo.errors import DlzooError
from dlzoo.paths import conf_dir


@dataclass(frozen=True)
class Dist:
    """This process's place in the data-parallel group. trainer.batch_size is the global batch: each step, rank r
    takes every world-th sample of it from r, and DDP averages the gradients, so the update is the one a single
    process makes on the whole batch (the lecture recipes' batch 100 stays batch 100 at any world size)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 alone writes logs, TensorBoard events, checkpoints and metrics.json."""
        return self.rank == 0

    def shard(self, batch: Tensor) -> Tensor:
        """This rank's disjoint share of a global batch (of indices or samples)."""
        return batch if self.world == 1 else batch[self.rank :: self.world]

    def loss(self, logits: Tensor, labels: Tensor, global_batch: int) -> Tensor:
        """Cross-entropy whose gradient, averaged over ranks by DDP, is the global batch's mean-loss gradient
        (shards may differ in size by one, so each rank weighs its sum by world / global batch)."""
        if self.world == 1:
            return F.cross_entropy(logits, labels)
        return F.cross_entropy(logits, labels, reduction="sum") * (self.world / global_batch)

    def sum(self, *values: float) -> list[float]:
        """Each number summed over the ranks in one all-reduce (types kept: an int count stays an int)."""
        if self.world == 1:
            return list(values)
        packed = torch.tensor(values, dtype=torch.float64)  # CPU: gloo carries it on CUDA runs too (see setup)
        tdist.all_reduce(packed)
        return [type(v)(s) for v, s in zip(values, packed.tolist(), strict=True)]

    def mean(self, value: float) -> float:
        """`value` averaged over the ranks (a per-rank loss from `loss` averages to the global batch's mean)."""
        return value if self.world == 1 else self.sum(value)[0] / self.world

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step calls: DDP around `model` (which keeps the plain weights for checkpoints
        and evaluation), or `model` itself alone. DDP broadcasts rank 0's weights when it is built."""
        if self.world == 1:
            return model
        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def evaluate(
        self, model: nn.Module, images: Tensor, labels: Tensor, batch_size: int, prep: Prep
    ) -> tuple[float, float]:
        """Loss and accuracy over a whole split, each rank scoring its shard: every rank gets the same numbers,
        so early stopping and divergence checks decide alike everywhere."""
        if self.world == 1:
            return evaluate(model, images, labels, batch_size, prep)
        x, y = self.shard(images), self.shard(labels)
        loss, acc = evaluate(model, x, y, batch_size, prep) if len(y) else (0.0, 0.0)
        loss_sum, correct, n = self.sum(loss * len(y), acc * len(y), len(y))
        return (loss_sum / n, correct / n) if n else (float("nan"), float("nan"))  # an empty split, as evaluate

    def device(self, device: torch.device) -> torch.device:
        """Each rank on its own GPU (cuda:LOCAL_RANK); CPU ranks share the CPU."""
        if self.world == 1 or device.type != "cuda":
            return device
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)


def current() -> Dist:
    """This process's Dist: from the joined process group, else the single process."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return Dist()
    return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


RENDEZVOUS = "DLZOO_RENDEZVOUS"  # the file:// address the ranks `dlzoo train trainer.devices=N` starts meet at


def launched() -> bool:
    """Whether torchrun started this process as one of several (it sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(argv: list[str]) -> list[str]:
    """Under torchrun: join the process group, agree on one run folder and quiet ranks > 0. Hydra names the
    folder after the clock (${now:...}), which can tick between processes, so rank 0 resolves hydra.run.dir and
    broadcasts it. Returns the Hydra overrides to append to this rank's command line ([] for one process)."""
    if not launched():
        return []
    if any(a in ("-m", "--multirun") for a in argv):
        raise DlzooError(
            "Data-parallel training runs one config at a time; -m (a sweep) is not supported under torchrun or "
            "trainer.devices > 1. Fix: run the sweep's jobs one after another, or sweep without DDP."
        )
    # Scalars always travel through gloo on CPU tensors; DDP's gradients use nccl when the model is on CUDA.
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if RENDEZVOUS in os.environ:  # started by `dlzoo train trainer.devices=N`: the ranks meet through a file
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        tdist.init_process_group(backend, init_method=os.environ[RENDEZVOUS], rank=rank, world_size=world)
    else:  # torchrun (one machine or several): its env:// rendezvous
        tdist.init_process_group(backend)
    atexit.register(tdist.destroy_process_group)
    chosen: list[Any] = [_run_dir(argv) if tdist.get_rank() == 0 else None]
    tdist.broadcast_object_list(chosen, src=0)
    extra = [f"hydra.run.dir='{chosen[0]}'"] if chosen[0] else []  # None: Hydra reports the bad override itself
    if tdist.get_rank() > 0:
        console.quiet = True
        extra += ["hydra.output_subdir=null", "hydra.job_logging.root.handlers=[]"]
    return extra


def _run_dir(argv: list[str]) -> str | None:
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose("train", overrides=[a for a in argv if not a.startswith("-")], return_hydra_config=True)
        return str(OmegaConf.select(cfg, "hydra.run.dir"))
    except Exception:  # any composition error is Hydra's to report, in its own words, on every rank
        return None


def check_supported(world: int, devices: int, ensemble_size: int, resume: str | None) -> None:
    """Refuse what data-parallel training does not do, before any work."""
    if devices > 1 and world == 1:
        raise DlzooError(
            f"trainer.devices={devices} needs {devices} processes, but this is a single one. Fix: start it with "
            f"`dlzoo train trainer.devices={devices} ...` (which starts the processes) or "
            f"`torchrun --nproc_per_node={devices} -m dlzoo.train ...`."
        )
    if world > 1 and devices not in (1, world):
        raise DlzooError(
            f"trainer.devices={devices} but torchrun started {world} processes. Fix: drop trainer.devices (torchrun's "
            f"--nproc_per_node decides) or make the two agree."
        )
    if world > 1 and ensemble_size > 1:
        raise DlzooError(
            f"ensemble.size={ensemble_size} with {world} data-parallel processes is not supported. Fix: train the "
            "ensemble in one process (ensemble.size alone), or train single models with DDP."
        )
    if world > 1 and resume is not None:
        raise DlzooError(
            "trainer.resume with data-parallel training is not supported: the checkpoint keeps one rank's random "
            "streams. Fix: resume in a single process (drop trainer.devices / torchrun), or start a new run."
        )


def spawn(args: list[str], devices: int) -> int:
    """`dlzoo train trainer.devices=N ...`: run the same command as N rank processes on this machine."""
    if any(a in ("-m", "--multirun") for a in args):
        print_error(f"trainer.devices={devices} trains one config at a time; drop -m (or trainer.devices for a sweep).")
        return 2
    # Share the cores between the ranks (trainer.threads still wins).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="dlzoo-ddp-") as rendezvous:
        env = {"OMP_NUM_THREADS": str(max(1, cores // devices))} | dict(os.environ) | local_group(devices, rendezvous)
        command = [sys.executable, "-m", "dlzoo.train", *args]
        ranks = [subprocess.Popen(command, env=env | {"RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(devices)]
        return supervise(ranks)


def local_group(world: int, rendezvous: str) -> dict[str, str]:
    """The environment of `world` ranks on this machine that listen on no network interface: they meet through a
    file (torch's FileStore, not torchrun's TCP store, which listens on every interface), and gloo and NCCL
    connect the ranks over loopback."""
    env = {"WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
           RENDEZVOUS: f"file://{rendezvous}/store"}  # fmt: skip
    loopback = next((n for n in ("lo", "lo0") if Path("/sys/class/net", n).exists()), None)
    if loopback is not None:
        env |= {"GLOO_SOCKET_IFNAME": loopback, "NCCL_SOCKET_IFNAME": loopback}
    return env


def supervise(ranks: list[subprocess.Popen[bytes]], grace_s: float = 30.0) -> int:
    """Wait for the ranks as torchrun would: a SIGTERM or SIGHUP to this process is passed on to each (a Ctrl-C
    reaches them all from the terminal already), and once one rank has failed, the others, which would wait for
    it forever in their next all-reduce, are stopped after `grace_s`. Returns the first failure's exit status."""

    def forward(signum: int, frame: object) -> None:
        for rank in ranks:
            if rank.poll() is None:
                rank.send_signal(signum)

    failed_at: float | None = None
    with handling((signal.SIGTERM, signal.SIGHUP), forward):
        while any(rank.poll() is None for rank in ranks):
            try:
                time.sleep(0.1)
            except KeyboardInterrupt:  # the ranks got the same Ctrl-C: they checkpoint and exit on their own
                continue
            codes = [rank.poll() for rank in ranks]
            if failed_at is None and any(code not in (None, 0) for code in codes):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                forward(signal.SIGTERM, None)
                failed_at = math.inf
    return next((rank.returncode for rank in ranks if rank.returncode != 0), 0)


def requested_devices(args: list[str]) -> int:
    """trainer.devices as given on the command line (the last one wins, as in Hydra); 1 when absent."""
    values = [a.split("=", 1)[1] for a in args if a.startswith("trainer.devices=")]
    return int(values[-1]) if values and values[-1].isdigit() else 1
