"""What parallel and cluster sweeps (Hydra's joblib and submitit launchers) need from dlzoo: the `gpu_per_job`
resolver that spreads a sweep's jobs over the GPUs, `run_name` for folder names, and knowing when a job runs
beside others."""

from __future__ import annotations

import os

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf


def gpu_per_job() -> str:
    """`trainer.device='${gpu_per_job:}'`: job k of a sweep trains on cuda:(k mod the visible GPU count). Under
    SLURM each job sees only the GPUs it was given, so this is cuda:0 there. Before a sweep starts (the config
    check) and with no GPU visible it names cuda:0, and a run without CUDA then stops with a clear error."""
    num = HydraConfig.get().job.get("num", 0) if HydraConfig.initialized() else 0
    count = torch.cuda.device_count()
    return f"cuda:{max(num, 0) % count}" if count else "cuda:0"


def run_name(*choices: object) -> str:
    """`${run_name:${hydra.runtime.choices.experiment},${hydra.runtime.choices.model}}`: a run folder's name is
    the first choice that is set, so a sweep over experiments (XOR's sigmoid vs ReLU, the init pair) names its
    folders, and TensorBoard's runs, by experiment rather than by their shared model."""
    return next((str(c) for c in choices if c not in (None, "null", "")), "run")


def register_resolvers() -> None:
    """Make the resolvers above usable in YAML and overrides (idempotent)."""
    for name, resolver in (("gpu_per_job", gpu_per_job), ("run_name", run_name)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def default_threads() -> int | None:
    """CPU threads for a run that left trainer.threads null. A job of a local parallel sweep (joblib) gets its
    share, the usable cores // hydra.launcher.n_jobs (at least 1): more threads than cores make OpenMP spin and
    slow every job. Anywhere else None: torch's own default (the physical cores)."""

    if not parallel_worker():
        return None
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if not isinstance(n_jobs, int):  # submitit and other launchers: the job's own allocation
        return None
    cores = usable_cores()
    return max(1, cores // (n_jobs if n_jobs > 0 else cores))  # joblib's n_jobs=-1: one job per core


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a cluster job or taskset sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_worker() -> bool:
    """Whether this Hydra job runs beside others on this machine (a launcher other than Hydra's basic one)."""
    if not HydraConfig.initialized():
        return False
    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN and "BasicLauncher" not in str(hc.launcher.get("_target_", ""))
