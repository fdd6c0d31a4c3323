"""What `dlzoo compare` compares: the runs under the folders and globs it is given, grouped into arms by the
config keys that differ between them (seeds pooled), an ensemble's members as an arm of their own, and the runs
that cannot count (failed, unfinished, a non-finite metric) set apart with the reason."""

from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dlzoo.engine.recording.hparams import CHOICE_GROUPS, NOT_HPARAMS, flatten
from dlzoo.errors import DlzooError
from dlzoo.registry import closest
from dlzoo.sweeps.report import NOT_SWEPT, Run, find_runs, swept_keys

MEMBERS = "members"  # the label suffix of an ensemble's members' arm


@dataclass
class Arm:
    """One side of a comparison: runs that differ only in their seed, keyed by the values of the compared keys."""

    label: str
    key: tuple[tuple[str, Any], ...]
    runs: list[Run] = field(default_factory=list)
    excluded: list[tuple[Run, str]] = field(default_factory=list)  # (run, why it does not count)

    def values(self, metric: str) -> list[float]:
        """The metric of every counted run, in seed order (runs without it are skipped)."""
        found = ((r.metrics or {}).get(metric) for r in self.runs)
        return [float(v) for v in found if _number(v)]

    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


def expand(targets: list[str]) -> list[Path]:
    """Folders named on the command line, with glob patterns expanded here (a quoted `'outputs/runs/*xor*'`
    reaches dlzoo unexpanded); each must exist."""
    folders: list[Path] = []
    for target in targets:
        matches = sorted(glob.glob(str(Path(target).expanduser()))) if glob.has_magic(target) else [target]
        if not matches:
            raise DlzooError(f"No folder matches {target!r}. Fix: give run, sweep or ladder folders, or a glob "
                             "that matches some (e.g. 'outputs/multirun/*').")  # fmt: skip
        folders += [Path(m) for m in matches]
    return folders


def collect(folders: list[Path]) -> list[Run]:
    """Every run under the folders (report.find_runs), each once, in the order given; an ensemble's members come
    just before it as runs of their own (`member<i>/metrics.json`, the ensemble's config with the member's seed),
    so by default the ensemble is compared with its members."""
    runs: dict[Path, Run] = {}
    for folder in folders:
        for run in find_runs(folder):
            for member in ensemble_members(run):
                runs.setdefault(member.folder.resolve(), member)
            runs.setdefault(run.folder.resolve(), run)
    return list(runs.values())


def ensemble_members(run: Run) -> list[Run]:
    """An ensemble run's members (`member<i>/` holding metrics.json), as runs carrying the ensemble's config."""
    size = OmegaConf.select(run.config, "ensemble.size", default=1)
    if not isinstance(size, int) or size < 2:
        return []
    members = []
    for i, folder in enumerate(sorted(run.folder.glob("member*"), key=lambda p: p.name)):
        metrics = _read_json(folder / "metrics.json")
        config = OmegaConf.merge(run.config, {"trainer": {"seed": (metrics or {}).get("seed", run.seed + i)}})
        error = None if metrics is not None else "no readable metrics.json"
        members.append(Run(folder, run.overrides, config, {**run.choices, MEMBERS: True}, metrics, error))  # type: ignore[arg-type]
    return members


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def compared_keys(runs: list[Run], by: list[str] | None) -> list[str]:
    """The keys that tell the arms apart: `by` when given (each checked), else the overridden keys whose value
    differs (report.swept_keys), else the config groups or config keys that differ between the runs."""
    if by:
        known = set(CHOICE_GROUPS) | {k for r in runs for k in flatten(_config(r))}
        for key in by:
            if key not in known and not any(key in r.choices for r in runs):
                hint = closest(key, sorted(known))
                raise DlzooError(
                    f"--by {key!r} is no config key or group of these runs." + (f" Did you mean {hint!r}?" if hint
                    else "") + " Fix: name a key such as model.activation or experiment (`dlzoo validate` prints "
                    "a run's config)."
                )  # fmt: skip
        return by
    real = [r for r in runs if MEMBERS not in r.choices]
    keys = swept_keys(real)
    if keys or len(real) < 2:
        return keys
    groups = [g for g in CHOICE_GROUPS if len({repr(r.choices.get(g)) for r in real}) > 1]
    if groups:
        return groups
    flat = [flatten(_config(r)) for r in real]
    names = dict.fromkeys(k for f in flat for k in f)
    skip = (*NOT_SWEPT, *NOT_HPARAMS)
    return [k for k in names if not k.startswith(skip) and len({repr(f.get(k)) for f in flat}) > 1]


def _config(run: Run) -> dict[str, Any]:
    return OmegaConf.to_container(run.config, resolve=False)  # type: ignore[return-value]


def arms(runs: list[Run], keys: list[str], metric: str) -> list[Arm]:
    """One arm per distinct value of `keys`, in the order the runs came; an ensemble's members form the arm
    `<ensemble's label> members`. A run that failed or has no finite `metric` is kept aside with the reason."""
    out: dict[tuple[Any, ...], Arm] = {}
    for run in runs:
        is_member = MEMBERS in run.choices
        key = tuple((k, run.value(k)) for k in keys)
        ensemble = OmegaConf.select(run.config, "ensemble.size", default=1) not in (None, 1)
        label = ", ".join(_label(k, v, len(keys)) for k, v in key) or ("ensemble" if ensemble else "all runs")
        if is_member:
            key, label = (*key, (MEMBERS, True)), (f"{label} {MEMBERS}" if keys else MEMBERS)
        arm = out.setdefault(tuple((k, _hashable(v)) for k, v in key), Arm(label, key))
        value = (run.metrics or {}).get(metric)
        if run.metrics is None:
            arm.excluded.append((run, run.error or "failed or unfinished"))
        elif not _number(value) or not math.isfinite(float(value)):
            arm.excluded.append((run, f"{metric} is {value}" if value is not None else f"no {metric}"))
        else:
            arm.runs.append(run)
    return list(out.values())


def pick_baseline(found: list[Arm], name: str | None) -> Arm:
    """The arm named `name` (its label, or the value of its one key), else the first arm with runs."""
    usable = [a for a in found if a.runs]
    if not usable:
        raise DlzooError(
            "No run here has a finished, finite result to compare. Fix: wait for the runs to finish, or look at "
            "why they failed (listed above; `dlzoo report <folder>` shows each error)."
        )
    if name is None:
        return usable[0]
    for arm in found:
        names = {arm.label} | ({str(arm.key[0][1])} if len(arm.key) == 1 else set())
        if name in names:
            if not arm.runs:
                raise DlzooError(
                    f"The baseline {name!r} has no finished run to compare against. Fix: choose another with "
                    f"--baseline (one of: {', '.join(a.label for a in usable)})."
                )
            return arm
    hint = closest(name, [a.label for a in found])
    raise DlzooError(f"No group called {name!r} to use as the baseline; groups: {', '.join(a.label for a in found)}."
                     + (f" Did you mean --baseline {hint!r}?" if hint else ""))  # fmt: skip


def _label(key: str, value: Any, count: int) -> str:
    text = "null" if value is None else str(value)
    return text if count == 1 or key in CHOICE_GROUPS else f"{key}={text}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (list, dict)) else value
