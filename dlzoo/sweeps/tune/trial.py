"""One trial of `dlzoo tune`: its drawn overrides trained as a normal dlzoo run over K seeds (stacked into one
batched model where the config allows, else one after another), reported to the pruner epoch by epoch, and scored
by the seeds' mean or their lower 95% confidence bound."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from dlzoo.config.compose import compose_and_validate
from dlzoo.config.validate import stack_problems
from dlzoo.console import console, print_error, print_warning
from dlzoo.engine.assembly.folders import write_json
from dlzoo.engine.assembly.run import run
from dlzoo.engine.training.stopping import Interrupted
from dlzoo.errors import DlzooError
from dlzoo.sweeps.compare.stats import summarize
from dlzoo.sweeps.tune.search import METRICS, suggest_overrides

if TYPE_CHECKING:
    import optuna

    from dlzoo.engine.training.stopping import StopFlag


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of a search shares: the overrides it starts from, the metric and how seeds are scored."""

    metric: str
    direction: str
    base: list[str]
    seeds: int = 1
    objective: str = "mean"
    extra: list[str] = field(default_factory=list)  # this worker's own overrides (threads): not part of the search


def score(values: list[float], objective: str, direction: str) -> float:
    """The trial's value from its seeds' scores: their mean, or (lcb) the pessimistic end of the mean's 95%
    t-interval (lower for an accuracy, upper for a loss), which favours settings that are good on every seed.

    Args:
        values: one score per seed (at least two for lcb).
        objective: mean | lcb.
        direction: the search's direction, maximize or minimize.
    Returns:
        The value the study optimizes.
    """
    s = summarize(values)  # the same 95% t interval `dlzoo compare` gives a group of seeds
    if objective == "mean":
        return s.mean
    if s.low is None or s.high is None:
        raise DlzooError("--objective lcb needs at least two seeds' scores (--seeds 2 or more).")
    return s.low if direction == "maximize" else s.high


def run_trial(study: optuna.Study, trial: optuna.Trial, search: DictConfig, plan: TrialPlan, out: Path,
              stop: StopFlag, progress: str) -> str | None:  # fmt: skip
    """Train `trial` as a normal run in out/trial_<number> and tell the study how it ended. Returns the error
    message of a failed trial, else None."""
    # optuna is the optional `tune` extra
    import optuna
    from optuna.trial import TrialState

    drawn = suggest_overrides(trial, search.space)
    folder = out / f"trial_{trial.number}"
    trial.set_user_attr("overrides", drawn)
    status: dict[str, Any] = {"number": trial.number, "state": "running", "params": drawn,
                              "overrides": plan.base + drawn, "values": [], "pid": _pid()}  # fmt: skip
    tag = METRICS[plan.metric][0]
    console.rule(f"trial {trial.number} ({progress}): {' '.join(drawn)}")
    steps = _Steps()

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        step = steps.step(epoch)
        trial.report(metrics[tag], step)
        status["values"].append(metrics[tag])
        _write_status(folder, status)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after step {step}")

    folder.mkdir(parents=True, exist_ok=True)
    _write_status(folder, status)
    try:
        scores, how = _train(plan, drawn, folder, stop, on_epoch_end)
        status["seed_scores"], status["seeds_trained"] = scores, how
        trial.set_user_attr("seed_scores", scores)
        bad = [i for i, s in enumerate(scores) if s is None]
        if bad:
            raise DlzooError(f"seed(s) {bad} of {len(scores)} diverged, so this setting is not robust to the seed.")
        value = score(scores, plan.objective, plan.direction)
    except optuna.TrialPruned:
        _tell(study, trial, TrialState.PRUNED)
        finish(folder, status, "pruned", status["values"][-1])
        console.print(f"trial {trial.number} pruned after step {len(status['values'])}: "
                      f"{plan.metric} {status['values'][-1]:.4f}")  # fmt: skip
        return None
    except DlzooError as e:
        _tell(study, trial, TrialState.FAIL)
        finish(folder, status, "failed", None, str(e))
        print_error(f"trial {trial.number} failed (the search goes on): {e}")
        return str(e)
    except (Interrupted, KeyboardInterrupt):
        if _tell(study, trial, TrialState.FAIL):
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        finish(folder, status, "interrupted", None, "stopped by Ctrl-C or SIGTERM; --resume runs it again")
        raise
    _tell(study, trial, value=value)
    finish(folder, status, "complete", value)
    seeds = f" (seeds: {', '.join(f'{s:.4f}' for s in scores)})" if len(scores) > 1 else ""
    console.print(f"trial {trial.number} complete: {plan.objective if plan.seeds > 1 else plan.metric} "
                  f"{value:.4f}{seeds}")  # fmt: skip
    return None


def _train(plan: TrialPlan, drawn: list[str], folder: Path, stop: StopFlag, on_epoch_end: Any) -> tuple[list, str]:
    """Run the trial's K seeds; returns each seed's score (None for a diverged seed) and how they trained."""
    args = [*plan.base, *drawn, *plan.extra]
    cfg = compose_and_validate(args)
    if plan.seeds > 1 and not stack_problems(cfg, plan.seeds):
        args, how = [*args, f"trainer.stack={plan.seeds}"], "stacked"
        cfg = compose_and_validate(args)
    elif plan.seeds > 1:
        how = "one after another"  # stacking refused (plateau schedule, LSTM, ...): K ordinary runs
    else:
        how = "stacked" if cfg.trainer.stack > 1 else "single"
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if how != "one after another":
        metrics = run(cfg, folder, stop, on_epoch_end=on_epoch_end)
        return list(metrics.get(f"member_{plan.metric}", [metrics[plan.metric]])), how
    scores = []
    for seed in range(cfg.trainer.seed, cfg.trainer.seed + plan.seeds):
        one = compose_and_validate([*args, f"trainer.seed={seed}"])
        try:
            scores.append(run(one, folder / f"seed{seed}", stop, on_epoch_end=on_epoch_end)[plan.metric])
        except DlzooError as e:
            if "diverged" not in str(e):
                raise
            scores.append(None)
    return scores, how


class _Steps:
    """The pruner's step for each reported epoch. A run that trains several models one after another (seeds
    without stacking, an unstacked ensemble) restarts its epochs at 1: its steps go on counting, so model i's
    epoch e is step i*E+e and the pruner compares it with the same model's same epoch in the other trials."""

    def __init__(self) -> None:
        self.offset = self.last = 0

    def step(self, epoch: int) -> int:
        if epoch <= self.last:
            self.offset += self.last
        self.last = epoch
        return self.offset + epoch


def _tell(study: optuna.Study, trial: optuna.Trial, state: Any = None, value: float | None = None) -> bool:
    """Tell the study how `trial` ended; False when it was already failed by another worker (this worker's
    heartbeat stalled past the grace period), whose retry then stands in for it."""
    try:
        study.tell(trial, value, state=state)
        return True
    except Exception as e:  # Optuna raises ValueError (older) or UpdateFinishedTrialError for a finished trial
        if trial.number not in [t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()]:
            raise
        print_warning(f"trial {trial.number} was failed by another worker meanwhile (its heartbeat stopped for "
                      f"longer than the grace period: {e}); its retry counts instead.")  # fmt: skip
        return False


def _pid() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _write_status(folder: Path, status: dict[str, Any]) -> None:
    if folder.is_dir():
        write_json(folder / "trial.json", status)


def finish(folder: Path, status: dict[str, Any], state: str, value: float | None, error: str | None = None) -> None:
    """Write the trial's trial.json with its final state."""
    _write_status(folder, status | {"state": state, "value": value, "epochs": len(status["values"]), "error": error})
