"""What `trainer.resume` continues: a run (or every member of an ensemble) from its last checkpoint, a sweep job
that already finished (kept, not retrained), or a run moved into a new folder (after a full disk, say)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from dlzoo.config.schema import TrainConfig, as_dict
from dlzoo.console import console, print_warning, redirect_file_logs, say
from dlzoo.engine.assembly.folders import (
    check_compatible,
    find_resume,
    identity,
    load_checkpoint,
    resumable_file,
    run_of,
    same_config,
)
from dlzoo.engine.assembly.pretraining import is_pretraining
from dlzoo.errors import DlzooError


@dataclass
class Start:
    """One model's starting point: a checkpoint to continue (None: train from scratch), or `finished`: its
    metrics.json and its final weights' checkpoint, kept as they are."""

    checkpoint: dict[str, Any] | None = None
    finished: dict[str, Any] | None = None


@dataclass
class Plan:
    """Where the run writes and where each of its `ensemble.size` members starts; `done`: the metrics of a run
    that had already finished in this folder, so there is nothing to train."""

    folder: Path
    members: list[Start] = field(default_factory=list)
    done: dict[str, Any] | None = None


STACK_FILE = "stack.pt"  # a stacked run's resumable state, in <run>/checkpoints/ beside its members' folders


def member_folder(folder: Path, index: int, size: int) -> Path:
    return folder if size == 1 else folder / f"member{index}"


def plan(cfg: TrainConfig, out_dir: Path) -> Plan:
    """Resolve trainer.resume for a run whose fresh folder would be `out_dir`: one planner for the three layouts
    (one model, an ensemble's member<i>/ folders, a stack's checkpoints/stack.pt)."""
    value, size = cfg.trainer.resume, cfg.ensemble.size
    fresh = Plan(out_dir, [Start() for _ in range(1 if cfg.trainer.stack > 1 else size)])
    if value is None:
        return fresh
    if cfg.trainer.stack > 1:
        return _plan_stack(cfg, out_dir, fresh)
    if value == "auto" and (done := _finished(out_dir, cfg)) is not None:
        return Plan(out_dir, done=done)
    file = find_resume(value, out_dir, cfg) if size == 1 else None
    if file is not None and run_of(file) is None:
        # A loose checkpoint (copied, downloaded): the folder it lies in is not a run, and nothing there is
        # read or written. Only the file is read; the run continues in its new folder.
        members = [_member(out_dir, file, cfg, 0, 1)]
        say(f"{file} is a loose checkpoint, not inside a run folder: the run continues in {out_dir}")
        return Plan(out_dir, members)
    folder = run_of(file) if file is not None else _find_ensemble(value, out_dir, cfg) if size > 1 else None
    if folder is None:
        console.print("trainer.resume=auto: no unfinished run of this config found; starting a new one")
        return fresh
    files = [file] if file is not None else [resumable_file(member_folder(folder, i, size)) for i in range(size)]
    moving = value != "auto" and folder != out_dir and _folder_chosen()
    if not moving:
        redirect_file_logs(folder / "train.log")  # the run continues in its own folder, and so does its log
    members = [_member(member_folder(folder, i, size), f, cfg, i, size) for i, f in enumerate(files)]
    if not moving:
        return Plan(folder, members)
    _copy_run(folder, out_dir)  # only once every checkpoint was found to fit the config
    say(f"copied {folder} into {out_dir} (hydra.run.dir); the run continues there")
    return Plan(out_dir, members)


def _plan_stack(cfg: TrainConfig, out_dir: Path, fresh: Plan) -> Plan:
    """A stacked run (trainer.stack > 1) continues from its folder's checkpoints/stack.pt, in place (auto: this
    run's own folder; a finished one is kept). Its one Start holds the stack's state for all its members."""
    value = cfg.trainer.resume
    folder = out_dir if value == "auto" else Path(value).expanduser()
    path = folder / "checkpoints" / STACK_FILE
    if not path.is_file():
        if value != "auto":
            raise DlzooError(
                f"trainer.resume={value!r}: no stacked run there (looked for checkpoints/{STACK_FILE}). Fix: point "
                "it at the folder printed when the stacked run stopped, or use auto."
            )
        console.print("trainer.resume=auto: no unfinished stacked run of this config found; starting a new one")
        return fresh
    state = load_checkpoint(path)
    saved = state["config"]["trainer"]["stack"], state["config"]["trainer"]["seed"]
    if saved != (cfg.trainer.stack, cfg.trainer.seed):
        raise DlzooError(f"{path} is a stack of {saved[0]} seeds from seed {saved[1]}; this config asks for "
                         f"{cfg.trainer.stack} from seed {cfg.trainer.seed}. Fix: resume with trainer.stack={saved[0]} "
                         f"trainer.seed={saved[1]}, or train into a new folder without trainer.resume.")  # fmt: skip
    if (folder / "metrics.json").is_file():
        if identity(state["config"]) != identity(as_dict(cfg)):
            raise DlzooError(f"{folder} holds a finished stacked run of another config. Fix: give this run its own "
                             "folder, or resume with the overrides that made it.")  # fmt: skip
        say(f"{folder} already finished (metrics.json); kept, not retrained")
        return Plan(folder, done=json.loads((folder / "metrics.json").read_text()))
    for change in check_compatible(state["config"], cfg):
        print_warning(f"resuming with a changed setting: {change}")
    redirect_file_logs(folder / "train.log")
    where = "mid-epoch" if state["partial"] is not None else f"after epoch {state['epoch']}"
    say(f"resuming the stacked run {folder} {where} (step {state['step']})")
    return Plan(folder, [Start(checkpoint=state)])


def _member(folder: Path, path: Path | None, cfg: TrainConfig, index: int, size: int) -> Start:
    if size > 1 and (folder / "metrics.json").is_file() and path is not None:
        return Start(finished=json.loads((folder / "metrics.json").read_text()), checkpoint=load_checkpoint(path))
    if path is None:
        return Start()  # an ensemble member that had not started
    state = load_checkpoint(path)
    for change in check_compatible(state["config"], cfg):
        print_warning(f"resuming with a changed setting: {change}")
    if "rng" not in state:
        raise DlzooError(f"{path} holds weights only (a best-*.pt); resume from checkpoints/last.pt.")
    where = "in pretraining" if is_pretraining(state) else f"after epoch {state['epoch']}, step {state['step']}"
    say(f"resuming {folder} {where}" + (f" (ensemble member {index + 1}/{size})" if size > 1 else ""))
    return Start(checkpoint=state)


def _finished(out_dir: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The metrics of a run of this very config that already finished in `out_dir` (a resumed sweep's job)."""
    metrics = out_dir / "metrics.json"
    saved = resumable_file(out_dir) or resumable_file(out_dir / "member0")
    if not metrics.is_file() or saved is None:
        return None
    theirs, ours = identity(load_checkpoint(saved)["config"]), identity(as_dict(cfg))
    if theirs != ours:
        differ = ", ".join(k for k in ours if theirs.get(k) != ours[k])
        raise DlzooError(
            f"{out_dir} holds a finished run of another config (it differs in {differ}), and "
            "trainer.resume=auto will not overwrite it. Fix: give this sweep its own folder "
            "(hydra.sweep.dir=<new folder>), or resume with the same overrides as the sweep that made it."
        )
    say(f"{out_dir} already finished (metrics.json); kept, not retrained")
    return json.loads(metrics.read_text())


def _find_ensemble(value: str, out_dir: Path, cfg: TrainConfig) -> Path | None:
    """The ensemble folder trainer.resume names (auto: this job's folder or the newest unfinished sibling
    ensemble of this config); its members' checkpoints live in member<i>/checkpoints."""

    def started(folder: Path) -> bool:
        return resumable_file(folder / "member0") is not None and not (folder / "metrics.json").is_file()

    if value != "auto":
        folder = Path(value).expanduser()
        if not started(folder):
            raise DlzooError(
                f"trainer.resume={value!r}: no unfinished ensemble there (looked for member0/checkpoints/last.pt "
                "and no metrics.json). Fix: point it at the ensemble folder printed when it stopped, or use auto."
            )
        return folder
    if started(out_dir):
        return out_dir
    wanted = identity(as_dict(cfg))
    siblings = [p for p in out_dir.parent.iterdir() if p != out_dir and started(p)] if out_dir.parent.is_dir() else []
    for folder in sorted(siblings, key=lambda p: p.stat().st_mtime, reverse=True):
        path = resumable_file(folder / "member0")
        if path is not None and same_config(path, wanted):
            return folder
    return None


def _folder_chosen() -> bool:
    """Whether this single run's folder was named on the command line (hydra.run.dir=...): with a named run to
    resume (trainer.resume=<folder>) that asks for the run to continue there. Otherwise, and always with auto
    (which finds the run wherever Hydra's new folder is), it continues in its own folder."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.RUN:
        return False
    return any(o.startswith("hydra.run.dir=") for o in HydraConfig.get().overrides.hydra)


def _copy_run(source: Path, target: Path) -> None:
    """Copy a run's results so far (checkpoints, TensorBoard events, train.log, members) into `target`: never a
    link (what it points at is no part of the run), never into itself."""
    src, dst = source.resolve(), target.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise DlzooError(
            f"Cannot continue the run {source} in {target}: one folder lies inside the other, so copying the run "
            "there would copy it into itself. Fix: choose a hydra.run.dir outside the run, or resume in place "
            "(trainer.resume without hydra.run.dir)."
        )
    skip = shutil.ignore_patterns(".lock", ".hydra", "*.tmp*", ".write-test")

    def ignore(folder: str, names: list[str]) -> set[str]:
        return set(skip(folder, names)) | {n for n in names if os.path.islink(os.path.join(folder, n))}

    try:
        shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
    except (OSError, shutil.Error) as e:
        raise DlzooError(
            f"Could not copy the run {source} into {target} to continue it there: {e}. Fix: choose a "
            "hydra.run.dir on a disk with space, or resume in place (trainer.resume without hydra.run.dir)."
        ) from None
