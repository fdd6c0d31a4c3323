"""`dlzoo train`: the @hydra.main entry point. Hydra composes conf/train.yaml with the command line (one call per
job of a multirun); dlzoo.engine.assembly.run.run does the work; this module turns its outcome into an exit status."""

from __future__ import annotations

import math
import sys
import types
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dlzoo.config import launch
from dlzoo.config.validate import register_configs
from dlzoo.console import console, refuse_linked_logs
from dlzoo.engine.assembly.folders import remove_if_empty
from dlzoo.engine.assembly.run import run
from dlzoo.engine.training import distributed
from dlzoo.engine.training.stopping import (
    DivergedError,
    Interrupted,
    exit_status,
    quiet_when_full,
    stop_on_signals,
    sweep_stopped,
)
from dlzoo.errors import DlzooError
from dlzoo.paths import conf_dir

register_configs()


class _Entry(types.ModuleType):
    """This module, callable as the Python API's function. Importing it (the CLI does) makes Python bind the
    package's attribute `train` to the module, replacing the function `dlzoo.train` that dlzoo/__init__.py
    exports; a module class with __call__ (Python's documented hook) keeps `dlzoo.train(...)` working then."""

    def __call__(self, *overrides: str, **kwargs: Any) -> Any:
        # The Python API only when called as one: `dlzoo train` itself never loads it
        from dlzoo.api import train

        return train(*overrides, **kwargs)


sys.modules[__name__].__class__ = _Entry


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra's entry: composes conf/train.yaml with the command line, one call per job of a multirun."""
    if launch.parallel_worker():  # several jobs share the terminal: live progress bars would overwrite each other
        cfg.trainer.progress = False
    quiet_when_full()  # for the rest of this process: Hydra's own last log lines may meet the full disk too
    hydra_dir = Path(HydraConfig.get().runtime.output_dir)
    # A single run that failed before writing anything, or that resumed into its old folder, leaves no empty
    # folder behind (`dlzoo report` would list it as a lost run). A sweep keeps a failed job's folder: its
    # train.log is where `dlzoo report` finds why it failed.
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    if sweep:  # the sweep writes one HParams experiment over all its jobs when it ends (sweeps.sweep_end)
        cfg.trainer.hparams_experiment = False
    try:
        return _main(cfg, hydra_dir, Path(HydraConfig.get().sweep.dir) if sweep else None)
    finally:
        remove_if_empty(hydra_dir, keep_log=sweep)


def _main(cfg: DictConfig, hydra_dir: Path, sweep_dir: Path | None) -> float:
    if launch.parallel_worker() and sweep_stopped():
        console.print(f"not started: the sweep was stopped ({hydra_dir.name})")
        return math.nan
    try:
        refuse_linked_logs()
        # Under DDP a stop must reach every rank at the same step; torchrun's own signal handling ends them all.
        with nullcontext() if distributed.launched() else stop_on_signals() as stop:
            return run(cfg, hydra_dir, stop)["test_acc"]
    except Interrupted as e:
        if sweep_dir is not None:  # the sweep is what resumes: its finished jobs are kept, this one continues
            e.hint = (f"Resume the sweep with: dlzoo train -m <same overrides> hydra.sweep.dir={sweep_dir} "
                      "trainer.resume=auto (finished jobs are kept, this one continues).")  # fmt: skip
        status = exit_status(e)
        if launch.parallel_worker():  # an exit would make joblib kill the other jobs, maybe mid-checkpoint
            return math.nan
        sys.exit(status)
    except DivergedError as e:
        status = exit_status(e)  # the one paragraph, on the terminal and in the job's train.log
        if sweep_dir is None:
            sys.exit(status)
        # In a sweep a diverged job is one of its results (N(0,1) exploding is the lesson), not the sweep's end: its
        # folder keeps the error for `dlzoo report` and `dlzoo compare`, the other jobs run, and the sweep ends
        # non-zero naming it (dlzoo.sweeps.sweep_end).
        return math.nan
    except (DlzooError, KeyboardInterrupt) as e:
        sys.exit(exit_status(e))  # Hydra would print a traceback for anything that leaves this function


if __name__ == "__main__":
    try:
        sys.argv += distributed.setup(sys.argv[1:])  # `torchrun -m dlzoo.train`: one run folder for all ranks
    except DlzooError as e:
        sys.exit(exit_status(e))
    main()
