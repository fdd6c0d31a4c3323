"""What a `dlzoo train -m` sweep prints and writes when its last job ends (Hydra's on_multirun_end callback,
named in conf/hydra/default.yaml): its results per group and, when groups differ, the comparison of them; and
one TensorBoard HParams experiment over its jobs, the keys that differ between them marked and leading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from dlzoo.console import console, first_sentence, print_error, print_warning
from dlzoo.engine.recording.dashboards import columns_of, differing, experiment_summary
from dlzoo.engine.recording.hparams import CHOICE_GROUPS, HPARAM_KEYS, run_hparams
from dlzoo.engine.training.stopping import sweep_stopped
from dlzoo.errors import DlzooError
from dlzoo.sweeps.report import find_runs, last_error


class SweepSummary(Callback):
    """Compare the sweep's jobs in `<sweep>/compare/` and show the table; a sweep's results are already written,
    so a summary that cannot be made is a warning, never a failed sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # scipy and matplotlib load when a sweep ends, not with every run's Hydra callback
        from dlzoo.sweeps.compare import compare, show

        sweep = Path(str(config.hydra.sweep.dir))
        if not sweep.is_dir():
            return
        console.rule("sweep finished")
        try:
            write_sweep_experiment(sweep)
            # A sweep that skips its runs' figures (trainer.figures=false, as debug=fast) skips the comparison's too.
            show(compare([sweep], figures=bool(OmegaConf.select(config, "trainer.figures", default=True))))
            console.print(f"per-run table: dlzoo report {sweep}", highlight=False, soft_wrap=True)
        except (DlzooError, OSError, ValueError) as e:
            print_warning(f"no comparison of the sweep's jobs: {e} Retry with `dlzoo compare {sweep}`.")
        fail_if_jobs_failed(sweep)


def fail_if_jobs_failed(sweep: Path) -> None:
    """A sweep whose jobs did not all finish (a diverged job lets the others run, see dlzoo.train) ends non-zero,
    naming them; a stopped parallel sweep is left to its own resume message. A job is a run folder of the sweep
    that is not inside another (a stacked job's seed that diverged fails its seed, not the job: as alone)."""
    folders = sorted(p.parent.parent for p in sweep.rglob(".hydra/config.yaml"))
    jobs = [f for f in folders if not any(o in f.parents for o in folders)]
    failed = [f for f in jobs if not (f / "metrics.json").is_file()]
    if not failed or sweep_stopped():
        return
    # Each job's first sentence (what happened); its fix is in the paragraph the job printed and in its train.log.
    why = "; ".join(f"{f.name}: {first_sentence(last_error(f))}" for f in failed)
    print_error(
        f"{len(failed)} of {len(jobs)} jobs of the sweep failed ({why}), so it ends with exit status 1. The other "
        f"jobs' results stand and are compared above. Fix for the failed ones: the error each job printed above "
        f"(also in its train.log); `dlzoo report {sweep}` lists them.",
        to_log=False,
    )
    raise SystemExit(1)


def write_sweep_experiment(sweep: Path) -> None:
    """One HParams experiment in the sweep's own folder (its jobs write sessions only, see dlzoo.train): every
    job's row, the keys that differ between the jobs marked as differing, the lessons' keys first."""
    runs = find_runs(sweep)
    sessions = [run_hparams(OmegaConf.to_container(r.config, resolve=False), r.choices, r.overrides) for r in runs]  # type: ignore[arg-type]
    # Only keys every job has: TensorBoard hides a session whose value does not fit its column's type.
    keys = [k for k in dict.fromkeys(k for s in sessions for k in s) if all(k in s for s in sessions)]
    order = {k: i for i, k in enumerate((*CHOICE_GROUPS, *HPARAM_KEYS))}
    first = sorted(differing(sessions, keys), key=lambda k: order.get(k, len(order)))
    keys = first + [k for k in keys if k not in first]
    for old in sweep.glob("events.out.tfevents.*"):
        old.unlink()  # ours from a resumed sweep's earlier end: one experiment per folder
    with SummaryWriter(log_dir=str(sweep)) as writer:
        writer.file_writer.add_summary(experiment_summary(columns_of(sessions, keys), first))  # type: ignore[union-attr]
