"""`dlzoo train|validate|ls`. `train` hands its arguments untouched to the @hydra.main function, so overrides,
`-m` multirun, `--cfg job` and `--help` behave as in any Hydra app."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

USAGE = """usage: dlzoo <command> [args]

commands:
  train [overrides...]      train one config, or a sweep with -m (Hydra overrides, e.g. model=mlp_dropout)
  validate [overrides...]   compose and check a config without training; prints it
  ls [what]                 config groups and registries; `dlzoo ls activation` lists one
  eval ckpt=<run|.pt>       score a checkpoint on val/test (eval.mc_samples=N for MC dropout)
  predict ckpt=<run|.pt> input=<a.png,b.npy>   class and probabilities for new images
  tune search=<name> [--trials N] [--out DIR] [--resume] [overrides...]   Optuna search with pruning (conf/search/)
  report <folder> [--metric M] [--out DIR]      sweep/runs folder -> mean ± std table, report.md/csv, HParams
  ladder [--seeds N] [--epochs E] [--rungs a,b] [--resume --out DIR] [overrides...]   the lecture's accuracy ladder
  transfer [--seeds 5] [--out DIR] [overrides...]   Géron's transfer learning: model_A, model_B, model_B_on_A per seed

examples:
  dlzoo train model=mlp_dropout data=fashion_mnist data.root=/usr/share/datasets/fashion-mnist
  dlzoo train -m model=softmax,mlp,mlp_xavier,mlp_deep,mlp_dropout
  dlzoo train debug=fast
  dlzoo train trainer.devices=2   (data parallel: 2 processes; -m hydra/launcher=parallel for jobs side by side)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        problem = _output_problem(rest) or precheck(rest)
        if problem:
            from dlzoo.tracking import print_error

            print_error(problem)
            return 2
        from dlzoo import distributed
        from dlzoo.errors import DlzooError

        devices = distributed.requested_devices(rest)
        if devices > 1 and not distributed.launched() and not any(a.split("=")[0] in _SKIP_PRECHECK for a in rest):
            return distributed.spawn(rest, devices)  # DDP: the same command in `devices` torchrun processes
        try:
            extra = distributed.setup(rest)  # under torchrun: join the group and share rank 0's run folder
        except DlzooError as e:
            from dlzoo.tracking import print_error

            print_error(str(e))
            return 2
        from dlzoo import train

        sys.argv = ["dlzoo train", *rest, *extra]
        train.main()
        return 0
    if command == "validate":
        return _validate(rest)
    if command in ("eval", "predict"):
        from dlzoo import inference
        from dlzoo.errors import DlzooError
        from dlzoo.tracking import print_error

        try:
            (inference.eval_command if command == "eval" else inference.predict_command)(rest)
        except DlzooError as e:
            print_error(str(e))
            return 2
        return 0
    if command == "tune":
        from dlzoo.tune import tune_command

        return tune_command(rest)
    if command in ("report", "ladder"):
        from dlzoo.errors import DlzooError
        from dlzoo.tracking import print_error

        try:
            if command == "report":
                from dlzoo.report import report_command

                return report_command(rest)
            from dlzoo.ladder import ladder_command

            return ladder_command(rest)
        except DlzooError as e:
            print_error(str(e))
            return 2
    if command == "transfer":
        from dlzoo.errors import DlzooError
        from dlzoo.tracking import console, print_error
        from dlzoo.transfer_experiment import transfer_command

        try:
            console.print(f"report: {transfer_command(rest) / 'report.md'}")
        except DlzooError as e:
            print_error(str(e))
            return 2
        return 0
    if command == "ls":
        parser = argparse.ArgumentParser(prog="dlzoo ls")
        parser.add_argument("what", nargs="?", help="a config group or registry name")
        return _ls(parser.parse_args(rest).what)
    from dlzoo.tracking import print_error

    commands = "train, validate, ls, eval, predict, tune, report, ladder, transfer"
    print_error(f"unknown command {command!r}; choices: {commands}. See `dlzoo --help`.")
    return 2


def _output_problem(args: list[str]) -> str | None:
    """Hydra creates the run folder before dlzoo's code runs, so check where it will go first: the nearest
    existing parent of hydra.run.dir / hydra.sweep.dir (default outputs/) must be a writable folder."""
    import os

    keys = (
        ("hydra.sweep.dir=", "hydra.run.dir=") if any(a in ("-m", "--multirun") for a in args) else ("hydra.run.dir=",)
    )
    target = next((a.split("=", 1)[1] for a in args for k in keys if a.startswith(k)), "outputs")
    path = Path(target.split("$", 1)[0] or ".").expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    if path.is_dir() and os.access(path, os.W_OK):
        return None
    what = "is a file, not a folder" if path.exists() and not path.is_dir() else "is not writable"
    return (
        f"Cannot create the output folder {target}: {path} {what}. Fix: choose another with "
        "hydra.run.dir=<folder> (hydra.sweep.dir=<folder> for -m), or run dlzoo from a writable directory."
    )


def config_groups() -> dict[str, list[str]]:
    """Each config group under conf/ (nested groups as a/b) and the config names in it."""
    from dlzoo.paths import conf_dir

    root = conf_dir()
    groups: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.yaml")):
        rel = path.relative_to(root)
        if rel.parent != Path("."):
            groups.setdefault(rel.parent.as_posix(), []).append(rel.stem)
    return groups


def _ls(what: str | None) -> int:
    from rich.table import Table

    from dlzoo.config import registries
    from dlzoo.tracking import console, print_error

    groups, regs = config_groups(), registries()
    if what is None:
        table = Table(title="config groups (conf/): pick one with group=name", title_justify="left")
        table.add_column("group")
        table.add_column("configs")
        for group, names in groups.items():
            table.add_row(group, ", ".join(names))
        console.print(table)
        table = Table(title="registries: the names config values may take", title_justify="left")
        table.add_column("registry")
        table.add_column("config keys")
        table.add_column("names")
        for name, (registry, keys) in regs.items():
            table.add_row(name, ", ".join(keys), ", ".join(registry.names()))
        console.print(table)
        return 0
    key = what if what in groups or what in regs else what.rstrip("s")
    if key in regs:
        registry, keys = regs[key]
        table = Table(title=f"{key} ({', '.join(keys)})", title_justify="left")
        table.add_column("name")
        table.add_column("what it is")
        for name in registry.names():
            table.add_row(name, registry.doc(name))
        console.print(table)
        return 0
    if key in groups:
        console.print(f"[bold]{key}[/]: " + ", ".join(groups[key]))
        return 0
    print_error(f"nothing called {what!r} to list; config groups: {', '.join(groups)}; registries: {', '.join(regs)}.")
    return 2


def compose_and_validate(overrides: list[str]) -> DictConfig:
    """Compose conf/train.yaml with `overrides` and validate it; any failure is one DlzooError paragraph."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dlzoo.config import register_configs, validate
    from dlzoo.errors import DlzooError
    from dlzoo.paths import conf_dir

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError, TypeError) as e:
        raise DlzooError(" ".join(str(e).split()) + " (see `dlzoo ls` for the groups and names)") from None
    validate(cfg)
    return cfg


# Hydra flags that do not train (help, printing the config) or that change which config is composed.
_SKIP_PRECHECK = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--config-name", "-cn",
                  "--config-path", "-cp", "--resolve", "--package", "-p", "--shell-completion", "-sc")  # fmt: skip
MAX_PRECHECKED_JOBS = 500


def precheck(args: list[str]) -> str | None:
    """Validate every job a `dlzoo train` command will run before Hydra starts (and makes folders): a typo in
    job 7 of a sweep fails at once, and no run ever starts with an invalid config."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from dlzoo.errors import DlzooError

    if any(a.split("=")[0] in _SKIP_PRECHECK for a in args):
        return None
    # A user's own config folder (--config-dir my_conf) joins the search path, as Hydra will do for the run.
    extra_dirs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config-dir", "-cd")]
    extra_dirs += [a.split("=", 1)[1] for a in args if a.startswith("--config-dir=")]
    dir_args = {a for i, a in enumerate(args) if i > 0 and args[i - 1] in ("--config-dir", "-cd")}
    overrides = [
        a for a in args
        if not a.startswith("-") and a not in dir_args
        and (a.startswith("hydra.searchpath=") or not a.startswith(("hydra.", "hydra/", "+hydra")))
    ]  # fmt: skip
    if extra_dirs:
        overrides.append("hydra.searchpath=[" + ",".join(f"file://{Path(d).absolute()}" for d in extra_dirs) + "]")
    try:
        if any(a in ("-m", "--multirun") for a in args):
            parsed = OverridesParser.create().parse_overrides(overrides)
            jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        else:
            jobs = [overrides]
        for job in jobs[:MAX_PRECHECKED_JOBS]:
            try:
                compose_and_validate(list(job))
            except DlzooError as e:
                prefix = f"job {' '.join(job)}: " if len(jobs) > 1 else ""
                return prefix + str(e)
    except (HydraException, ValueError) as e:
        return " ".join(str(e).split())
    return None


def _validate(overrides: list[str]) -> int:
    from omegaconf import OmegaConf

    from dlzoo.config import warnings
    from dlzoo.errors import DlzooError
    from dlzoo.tracking import console, print_error, print_warning

    try:
        cfg = compose_and_validate(overrides)
    except DlzooError as e:
        print_error(str(e))
        return 2
    console.print(OmegaConf.to_yaml(cfg), highlight=False)
    for message in warnings(cfg):
        print_warning(message)
    console.print("[green]config is valid[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
