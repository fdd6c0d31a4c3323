"""Search spaces for `dlzoo tune`: the distribution, sampler and pruner registries, the check of a search config
before any trial, and the step that turns an Optuna trial's draws into `dlzoo train` overrides."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from dlzoo.errors import DlzooError
from dlzoo.registry import Registry

if TYPE_CHECKING:
    import optuna

# The metrics a search may optimize, and the per-epoch tag engine.fit reports them under. The test set is
# deliberately absent: choosing hyperparameters on it would make the final test accuracy an optimistic estimate.
METRICS = {"val_acc": ("val/acc", "maximize"), "val_loss": ("val/loss", "minimize")}
DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class Distribution:
    """How to check one searched key's settings (a list of problems) and draw a value for it."""

    check: Callable[[str, DictConfig], list[str]]
    suggest: Callable[[optuna.Trial, str, DictConfig], Any]


DISTRIBUTIONS: Registry[Distribution] = Registry("distribution", "search.space.<key>.type")
SAMPLERS: Registry[Callable[..., optuna.samplers.BaseSampler]] = Registry("sampler", "search.sampler.name")
PRUNERS: Registry[Callable[..., optuna.pruners.BasePruner]] = Registry("pruner", "search.pruner.name")


def _check_range(key: str, spec: DictConfig, integer: bool) -> list[str]:
    where = f"search.space.{key}"
    if spec.low is None or spec.high is None:
        return [f"{where} needs low and high."]
    problems = []
    if spec.choices is not None:
        problems.append(f"{where}.choices is only for type: categorical.")
    if not spec.low < spec.high:
        problems.append(f"{where}: low={spec.low} must be below high={spec.high}.")
    if spec.log and spec.low <= 0:
        problems.append(f"{where}: log sampling needs low > 0 (got {spec.low}).")
    if spec.log and spec.step is not None:
        problems.append(f"{where}: step and log cannot be combined (a grid is linear); drop one.")
    if spec.step is not None and spec.step <= 0:
        problems.append(f"{where}.step={spec.step} must be > 0.")
    if integer and not all(float(v).is_integer() for v in (spec.low, spec.high, spec.step or 1)):
        problems.append(f"{where}: type int needs whole-number low, high and step.")
    return problems


def _check_choices(key: str, spec: DictConfig) -> list[str]:
    where = f"search.space.{key}"
    problems = [] if spec.choices else [f"{where} needs a non-empty choices list."]
    if spec.low is not None or spec.high is not None or spec.step is not None or spec.log:
        problems.append(f"{where}: low, high, step and log are not used by type: categorical; drop them.")
    return problems


def _suggest_float(trial: optuna.Trial, key: str, spec: DictConfig) -> float:
    value = trial.suggest_float(key, spec.low, spec.high, log=spec.log, step=spec.step)
    return round(value, 12) if spec.step is not None else value  # a grid point: 0.3, not 0.30000000000000004


def _suggest_int(trial: optuna.Trial, key: str, spec: DictConfig) -> int:
    return trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)


def _suggest_choice(trial: optuna.Trial, key: str, spec: DictConfig) -> Any:
    choices = OmegaConf.to_container(spec.choices)
    # Optuna stores only scalars; a list choice (model.hidden) travels as its JSON text and is decoded back.
    encoded = [c if c is None or isinstance(c, (bool, int, float, str)) else json.dumps(c) for c in choices]
    picked = trial.suggest_categorical(key, encoded)
    return choices[encoded.index(picked)]


DISTRIBUTIONS.register("float", "uniform (or log-uniform with log: true) between low and high; optional step")(
    Distribution(lambda k, s: _check_range(k, s, integer=False), _suggest_float)
)
DISTRIBUTIONS.register("int", "whole numbers from low to high in steps of step (default 1); log: true for decades")(
    Distribution(lambda k, s: _check_range(k, s, integer=True), _suggest_int)
)
DISTRIBUTIONS.register("categorical", "one of choices: numbers, names, lists, or a config group's members")(
    Distribution(_check_choices, _suggest_choice)
)


@SAMPLERS.register("tpe", "Tree-structured Parzen Estimator (Bergstra et al. 2011): models good vs bad draws")
def _tpe(seed: int, n_startup_trials: int) -> optuna.samplers.BaseSampler:
    # optuna is the optional `tune` extra
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)


@SAMPLERS.register("random", "independent uniform draws (Bergstra & Bengio 2012): the baseline to beat")
def _random(seed: int, n_startup_trials: int) -> optuna.samplers.BaseSampler:
    # optuna is the optional `tune` extra
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@PRUNERS.register("median", "stop a trial whose epoch value is worse than the median of earlier trials there")
def _median(n_startup_trials: int, n_warmup_steps: int, **_: int) -> optuna.pruners.BasePruner:
    # optuna is the optional `tune` extra
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)


@PRUNERS.register("successive_halving", "asynchronous successive halving (Li et al. 2020): keep the top 1/eta")
def _halving(min_resource: int, reduction_factor: int, **_: int) -> optuna.pruners.BasePruner:
    # optuna is the optional `tune` extra
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=reduction_factor)


@PRUNERS.register("none", "every trial runs all its epochs")
def _no_pruning(**_: int) -> optuna.pruners.BasePruner:
    # optuna is the optional `tune` extra
    import optuna

    return optuna.pruners.NopPruner()


def build_sampler(cfg: DictConfig, trials_done: int) -> optuna.samplers.BaseSampler:
    """The search's sampler. A resumed search seeds it past the trials already run, so a random sampler does
    not draw the first trials' values again."""
    return SAMPLERS.get(cfg.name)(seed=cfg.seed + trials_done, n_startup_trials=cfg.n_startup_trials)


def build_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    return PRUNERS.get(cfg.name)(
        n_startup_trials=cfg.n_startup_trials,
        n_warmup_steps=cfg.n_warmup_steps,
        min_resource=cfg.min_resource,
        reduction_factor=cfg.reduction_factor,
    )


def check_search(search: DictConfig, base: DictConfig, groups: dict[str, list[str]]) -> None:
    """Raise one DlzooError listing every problem of a search config, before any trial runs.

    Args:
        search: the composed `search` node.
        base: the train config every trial starts from (the search's overrides and the command line's).
        groups: each config group (model, optim, ...) and its members, which a categorical key may pick from.
    """
    problems: list[str] = []
    if search.metric not in METRICS:
        hint = " The test set is kept for the final report." if search.metric.startswith("test") else ""
        problems.append(f"search.metric={search.metric!r} is not one of {', '.join(METRICS)}.{hint}")
    if search.direction not in DIRECTIONS:
        problems.append(f"search.direction={search.direction!r} must be maximize or minimize.")
    elif search.metric in METRICS and search.direction != METRICS[search.metric][1]:
        problems.append(
            f"search.direction={search.direction} would pick the worst trials by {search.metric}; "
            f"use direction: {METRICS[search.metric][1]}."
        )
    if search.n_trials < 1:
        problems.append(f"search.n_trials={search.n_trials} must be >= 1.")
    for registry, name in ((SAMPLERS, search.sampler.name), (PRUNERS, search.pruner.name)):
        if name not in registry:
            problems.append(_unknown(registry, name, registry.config_key))
    p = search.pruner
    if p.n_startup_trials < 0 or p.n_warmup_steps < 0 or p.min_resource < 1 or p.reduction_factor < 2:
        problems.append(
            "search.pruner: n_startup_trials and n_warmup_steps must be >= 0, min_resource >= 1, reduction_factor >= 2."
        )
    if not search.space:
        problems.append("search.space is empty: name at least one config key and its distribution.")
    for key, spec in search.space.items():
        if key not in groups and OmegaConf.select(base, key, default=_MISSING) is _MISSING:
            problems.append(
                f"search.space has {key!r}, which is neither a config key nor a config group "
                "(see `dlzoo validate` for the keys, `dlzoo ls` for the groups)."
            )
        elif spec.type not in DISTRIBUTIONS:
            problems.append(_unknown(DISTRIBUTIONS, spec.type, f"search.space.{key}.type"))
        else:
            problems += DISTRIBUTIONS.get(spec.type).check(key, spec)
            if key in groups and spec.type != "categorical":
                problems.append(f"search.space.{key} picks a config group, so it must be type: categorical.")
            elif key in groups and (unknown := [c for c in spec.choices or [] if c not in groups[key]]):
                problems.append(f"search.space.{key}: no {key} config named {', '.join(map(str, unknown))}; "
                                f"choices: {', '.join(groups[key])}.")  # fmt: skip
    if base.data.val_size < 1:
        problems.append("data.val_size=0 leaves nothing to tune on; keep a validation split (e.g. 5000).")
    if base.trainer.resume is not None:
        problems.append("trainer.resume must be null in a search: each trial is a fresh run in its own folder.")
    if problems:
        raise DlzooError("Invalid search: " + " ".join(problems) + " Fix the search YAML or the command line.")


_MISSING = object()


def _unknown(registry: Registry[Any], name: str, key: str) -> str:
    return f"Unknown {registry.kind} {name!r} for {key}; choices: {', '.join(registry.names())}."


def suggest_overrides(trial: optuna.Trial, space: DictConfig) -> list[str]:
    """Draw every searched key for `trial`; return them as `dlzoo train` overrides (key=value)."""
    return [f"{key}={override_value(DISTRIBUTIONS.get(spec.type).suggest(trial, key, spec))}"
            for key, spec in space.items()]  # fmt: skip


def override_value(value: Any) -> str:
    """A Python value in Hydra's override syntax: floats exactly (repr), lists as [a,b], None as null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, str) and not re.fullmatch(r"[\w.\-/]+", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"  # Hydra's quoted string
    return repr(value) if isinstance(value, float) else str(value)
