"""What a `dlzoo train -m` sweep prints and writes when its last job ends (Hydra's on_multirun_end callback,
named in conf/hydra/default.yaml): its results per group and, when groups differ, the comparison of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dlzoo.errors import DlzooError


class SweepSummary(Callback):
    """Compare the sweep's jobs in `<sweep>/compare/` and show the table; a sweep's results are already written,
    so a summary that cannot be made is a warning, never a failed sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from dlzoo.console import console, print_warning
        from dlzoo.sweeps.compare import compare, show

        sweep = Path(str(config.hydra.sweep.dir))
        if not sweep.is_dir():
            return
        console.rule("sweep finished")
        try:
            show(compare([sweep]))
        except (DlzooError, OSError, ValueError) as e:
            print_warning(f"no comparison of the sweep's jobs: {e} Retry with `dlzoo compare {sweep}`.")
            return
        console.print(f"per-run table: dlzoo report {sweep}; dashboards: tensorboard --logdir {sweep}",
                      highlight=False, soft_wrap=True)  # fmt: skip
