"""Parallel and cluster sweeps through Hydra's launchers: a joblib sweep (hydra/launcher=parallel) and a
submitit_local sweep each leave one finished run folder per job; the precheck still checks every job; the
gpu_per_job resolver spreads jobs over GPUs; signal handlers are skipped where Python forbids them."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dlzoo.cli import precheck
from dlzoo.config.launch import gpu_per_job, parallel_worker, register_resolvers
from tests.helpers import FAST, dlzoo


def _runs(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))}


def test_joblib_sweep_runs_four_jobs_two_at_a_time(fmnist_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    jobs = ["model=softmax,mlp_xavier", "trainer.seed=1,2"]
    # No trainer.threads: each of the 2 parallel jobs must get its share of the cores, not all of them.
    proc = dlzoo("train", "-m", "hydra/launcher=parallel", *jobs, "debug=fast", "data=fashion_mnist",
                 f"data.root={fmnist_root}", f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "n_jobs=2" in proc.stdout + proc.stderr  # Hydra's log line: dlzoo's parallel config was used
    runs = _runs(sweep)
    assert sorted(runs) == ["0_softmax", "1_softmax", "2_mlp_xavier", "3_mlp_xavier"]
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    for metrics in runs.values():
        assert metrics["threads"] == share and metrics["steps"] == 20 and 0.1 < metrics["test_acc"] <= 1.0
    assert runs["0_softmax"]["seed"] == 1 and runs["1_softmax"]["seed"] == 2
    assert runs["0_softmax"]["test_acc"] != runs["1_softmax"]["test_acc"]  # the seeds really differ per job


def test_submitit_local_sweep_with_a_relative_data_root(fmnist_root: Path, tmp_path: Path) -> None:
    # hydra.job.chdir=false: a relative data.root must resolve from where dlzoo started, in the submitit job too.
    root = os.path.relpath(fmnist_root, tmp_path)
    proc = dlzoo("train", "-m", "hydra/launcher=submitit_local", "model=softmax,mlp_xavier", *FAST,
                 "data=fashion_mnist", f"data.root={root}", "hydra.sweep.dir=sweep", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    runs = _runs(tmp_path / "sweep")
    assert sorted(runs) == ["0_softmax", "1_mlp_xavier"]
    assert all(m["threads"] == 1 and m["steps"] == 20 for m in runs.values())


def test_precheck_ignores_the_launcher_but_checks_every_job(tmp_path: Path) -> None:
    assert precheck(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=3", "model=softmax,mlp"]) is None
    assert precheck(["-m", "hydra/launcher=slurm_example", "model=softmax"]) is None
    problem = precheck(["-m", "hydra/launcher=parallel", "model=softmax,mlp", "model.activation=rleu"])
    assert problem is not None and "rleu" in problem
    proc = dlzoo("train", "-m", "hydra/launcher=parallel", "optim.lr=0.1,-1", cwd=tmp_path)
    assert proc.returncode == 2 and "optim.lr=-1" in proc.stderr and not (tmp_path / "outputs").exists()


def test_launcher_configs_ship_the_documented_settings(tmp_path: Path) -> None:
    proc = dlzoo("train", "hydra/launcher=slurm_example", "--cfg", "hydra", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    launcher = OmegaConf.create(proc.stdout)
    for key in ("partition", "timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "array_parallelism"):
        assert key in launcher.hydra.launcher, key
    assert "SlurmLauncher" in launcher.hydra.launcher._target_


def test_gpu_per_job_cycles_over_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    cfg = OmegaConf.create({"device": "${gpu_per_job:}"})
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: False))
    assert cfg.device == "cuda:0"  # before the sweep starts (the config check): a valid name
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    for num, expected in ((0, "cuda:0"), (4, "cuda:1"), (5, "cuda:2")):
        job = OmegaConf.create({"job": {"num": num}})
        monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda job=job: job))
        assert gpu_per_job() == expected


def test_signal_handlers_only_in_the_main_thread() -> None:
    from dlzoo.engine.training.stopping import stop_on_signals

    errors: list[BaseException] = []

    def job() -> None:  # what a thread-based launcher (joblib prefer=threads) does with dlzoo's task
        try:
            with stop_on_signals() as stop:
                assert stop.signum is None
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=job)
    worker.start()
    worker.join()
    assert errors == []
    assert not parallel_worker()  # outside any Hydra job
