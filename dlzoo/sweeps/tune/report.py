"""The end of a `dlzoo tune` search: the table of trials, the best one, and best.yaml, a config that
`dlzoo train --config-dir <out> --config-name best` runs as it stands."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from dlzoo.config.schema import TrainConfig
from dlzoo.console import console, print_table
from dlzoo.paths import inert
from dlzoo.sweeps.tune.study import superseded

if TYPE_CHECKING:
    import optuna

BEST_HEADER = """\
# dlzoo tune: the best of {trials} complete trials of search={name} (trial {number}, {metric} {value:.4f}, done {date}).
# Run it:  dlzoo train --config-dir {out} --config-name best [more overrides, e.g. trainer.seed=1]
# The trial's overrides: {overrides}
defaults:
  - train  # conf/train.yaml; everything below replaces its values
  - _self_
hydra:
  run:
    dir: outputs/runs/${{now:%Y-%m-%d_%H-%M-%S}}_tune_{name}
"""


def own_keys(config: object) -> dict[str, object]:
    """Only dlzoo's own sections of a trial's config (data, model, optim, ...): best.yaml is run as a config, so
    nothing else from the trial's folder (a `hydra:` section with callbacks, say) gets into it."""
    keys = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "search"]
    return {k: inert(v) for k, v in (config.items() if isinstance(config, dict) else []) if k in keys}


def report(
    study: optuna.Study, metric: str, out: Path, name: str, storage: str | None = None, scored: str | None = None
) -> None:
    """Print every trial and the best one; write `out`/best.yaml from the best trial's composed config.

    Every worker of a shared study calls this as it leaves, so best.yaml is computed from the study alone (no
    clock, no worker's own state) and written to a temporary file renamed over the old one: whichever worker
    finishes last, the file is whole and names the same best trial. `scored` names a trial's value when it is not
    the metric itself (the seeds' mean or lower bound)."""
    # optuna is the optional `tune` extra
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = superseded(trials)
    seeds = any(len(t.user_attrs.get("seed_scores", [])) > 1 for t in trials)
    rows = []
    for t in trials:
        state = t.state.name.lower() + (" (retried)" if t.number in retried else "")
        value = "" if t.value is None else f"{t.value:.4f}"
        each = " ".join("diverged" if v is None else f"{v:.4f}" for v in t.user_attrs.get("seed_scores", []))
        rows.append([str(t.number), state, value, *([each] if seeds else []), str(len(t.intermediate_values)),
                     " ".join(t.user_attrs.get("overrides", []))])  # fmt: skip
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    where = storage or str(out / "study.db")
    caption = "  ·  ".join(f"{n} {s}" for s, n in counts.items() if n) + f"  ·  study {study.study_name}: {where}"
    columns = ["trial", "state", "value" if seeds else metric, *([f"{metric} per seed"] if seeds else []),
               "steps", "params"]  # fmt: skip
    print_table(f"dlzoo tune search={name}: {metric} per trial", columns, rows, caption,
                right=(0, 2, 4 if seeds else 3))  # fmt: skip
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        console.print("no trial completed, so there is no best config yet")
        return
    best = study.best_trial
    config = own_keys(OmegaConf.to_container(OmegaConf.load(out / f"trial_{best.number}" / "config.yaml")))
    done = best.datetime_complete.strftime("%Y-%m-%d %H:%M") if best.datetime_complete else "unknown"
    drawn = " ".join(best.user_attrs.get("overrides", []))
    header = BEST_HEADER.format(trials=len(complete), name=name, number=best.number, metric=scored or metric,
                                value=best.value,
                                date=done, out=out, overrides=drawn)  # fmt: skip
    write_atomic(out / "best.yaml", header + OmegaConf.to_yaml(config))
    console.print(f"best: trial {best.number}, {scored or metric} {best.value:.4f}, "
                  f"{' '.join(best.user_attrs.get('overrides', []))}")  # fmt: skip
    console.print(f"best config: {out / 'best.yaml'}; train it with: "
                  f"dlzoo train --config-dir {out} --config-name best")  # fmt: skip


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path` (atomic on POSIX): a reader, or
    a second worker writing at the same moment, sees one whole file or the other."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
