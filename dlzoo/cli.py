"""`dlzoo <verb>`: the table of verbs, their short usage, and the one error boundary. `train` hands its arguments
untouched to the @hydra.main function, so overrides, `-m` multirun and `--cfg job` behave as in any Hydra app."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from dlzoo.config.compose import compose_and_validate, config_groups, precheck, split_args
from dlzoo.engine.assembly.folders import output_problem
from dlzoo.errors import DlzooError
from dlzoo.registry import closest

__all__ = ["compose_and_validate", "config_groups", "main", "precheck"]  # what scripts and tests import from here

USAGE = """usage: dlzoo <command> [args]          dlzoo <command> --help: that command's usage;  dlzoo --version

commands:
  train [overrides...]      train one config, or a sweep with -m (Hydra overrides, e.g. model=mlp_dropout)
  validate [overrides...]   compose and check a config without training; prints it
  ls [what]                 config groups and registries; `dlzoo ls activation` lists one
  eval ckpt=<run|.pt>       score a checkpoint on val/test (eval.mc_samples=N for MC dropout)
  predict ckpt=<run|.pt> input=<a.png,b.npy>   class and probabilities for new images
  tune search=<name> [--trials N] [--out DIR] [--resume] [overrides...]   Optuna search with pruning (conf/search/)
  report <folder> [--metric M] [--out DIR]      sweep/runs folder -> mean ± std table, report.md/csv, HParams
  compare <folders|globs> [--by K,..] [--baseline G]   groups on one axis: is B better than A beyond seed noise?
  ladder [--seeds N] [--epochs E] [--rungs a,b] [--resume --out DIR] [overrides...]   the lecture's accuracy ladder
  transfer [--seeds 5] [--out DIR] [overrides...]   Géron's transfer learning: model_A, model_B, model_B_on_A per seed

examples:
  dlzoo train model=mlp_dropout data=fashion_mnist
  dlzoo train -m model=softmax,mlp,mlp_xavier,mlp_deep,mlp_dropout
  dlzoo train debug=fast
  dlzoo train trainer.devices=2   (data parallel: 2 processes; -m hydra/launcher=parallel for jobs side by side)

data: MNIST and Fashion-MNIST download on first use; offline, set data.root=<folder> (or $DLZOO_DATA) to the
folder holding the four IDX files.
"""

# `dlzoo <verb> --help` for the verbs whose arguments are Hydra overrides (the others' usage comes from argparse).
# `train` leads with this instead of Hydra's whole config dump; `--cfg job` still prints the composed config.
VERB_USAGE = {
    "train": """usage: dlzoo train [-m] [--config-dir DIR] [overrides...]

Train one config, or with -m one run per combination (a Hydra multirun). Overrides pick a config from a
group (model=mlp_xavier, experiment=lab10_5_dropout) or set a key (trainer.epochs=5, model.activation=elu).

examples:
  dlzoo train model=mlp_dropout                       lecture lab 10-5 on MNIST
  dlzoo train experiment=lab10_7_bn trainer.epochs=5  a lecture rung, shorter
  dlzoo train -m model.activation=relu,elu,selu       a sweep, ending with its comparison
  dlzoo train debug=fast                              a seconds-long smoke run
  dlzoo train trainer.resume=auto                     continue the last unfinished run of this config

the config:
  dlzoo ls                    the config groups and every registry's names (dlzoo ls activation: one registry)
  dlzoo train --cfg job       print the composed config instead of training (add overrides to see their effect)
  dlzoo validate [overrides]  compose and check a config without training
  dlzoo train --hydra-help    Hydra's own flags (--multirun, --cfg, --config-dir, --info, ...)
""",
    "validate": """usage: dlzoo validate [--config-dir DIR] [overrides...]

Compose the config `dlzoo train` would run with these overrides, check every name and range, and print it
(with any warnings); a problem is one paragraph and exit 2. Nothing is trained and no folder is made.

example:
  dlzoo validate experiment=lab10_7_bn optim.lr=0.01
""",
    "eval": """usage: dlzoo eval ckpt=<run folder|.pt> [overrides...]

Score a checkpoint on its dataset's validation and test splits; writes eval-<checkpoint>.json beside it.
A run folder means its checkpoints/last.pt; an ensemble's folder scores the ensemble and its members.
Overrides apply to the run's own config (eval.mc_samples=20 for MC dropout, data.root=<folder>).

example:
  dlzoo eval ckpt=outputs/runs/first eval.mc_samples=20
""",
    "predict": """usage: dlzoo predict ckpt=<run folder|.pt> input=<a.png,b.npy,...> [format=json] [overrides...]

Class and probabilities for new images: image files (greyscale, resized to 28x28; MNIST digits are white on
black) or .npy arrays of shape (28, 28), (N, 28, 28) or (N, 784). A table, or one JSON line per image with
format=json.

example:
  dlzoo predict ckpt=outputs/runs/first input=digit.png
""",
}


def _train(rest: list[str]) -> int:
    from dlzoo.config.compose import SKIP_PRECHECK, precheck
    from dlzoo.engine.training import distributed

    problem = output_problem(rest) or precheck(rest)
    if problem:
        raise DlzooError(problem)
    devices = distributed.requested_devices(rest)
    if devices > 1 and not distributed.launched() and not any(a.split("=")[0] in SKIP_PRECHECK for a in rest):
        return distributed.spawn(rest, devices)  # DDP: the same command in `devices` torchrun processes
    extra = distributed.setup(rest)  # under torchrun: join the group and share rank 0's run folder
    # The module, not `from dlzoo import train`: that name is the Python API's function (dlzoo/__init__.py).
    import dlzoo.train as train
    from dlzoo.engine.training.stopping import Interrupted, parallel_sweep_stop

    sys.argv = ["dlzoo train", *rest, *extra]
    if not _parallel_sweep(rest):
        with _named_run_lock(rest, devices):
            train.main()
        return 0
    with parallel_sweep_stop() as stop:
        train.main()
    if stop.signum is not None:
        raise Interrupted(None, stop.signum, "Resume the sweep with the command its jobs printed above.")
    return 0


def _named_run_lock(args: list[str], devices: int) -> AbstractContextManager[None]:
    """The lock of a single run's named folder (hydra.run.dir=...), taken before Hydra writes its .hydra/ there:
    of two runs started at once into one folder, the refused one changes nothing in it."""
    from contextlib import nullcontext

    from dlzoo.config.compose import SKIP_PRECHECK
    from dlzoo.engine.assembly.folders import run_lock
    from dlzoo.engine.training import distributed

    named = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    no_run = any(a in ("-m", "--multirun") or a.split("=")[0] in SKIP_PRECHECK for a in args)
    if no_run or devices > 1 or distributed.launched() or not named or "$" in named[-1]:
        return nullcontext()
    return run_lock(Path(named[-1]).expanduser())


def _parallel_sweep(args: list[str]) -> bool:
    """A -m sweep whose jobs run side by side in worker processes (Hydra's joblib launcher)."""
    multirun = any(a in ("-m", "--multirun") for a in args)
    return multirun and any(a in ("hydra/launcher=parallel", "hydra/launcher=joblib") for a in args)


def _eval(rest: list[str]) -> int:
    from dlzoo.engine import inference

    inference.eval_command(rest)
    return 0


def _predict(rest: list[str]) -> int:
    from dlzoo.engine import inference

    inference.predict_command(rest)
    return 0


def _tune(rest: list[str]) -> int:
    from dlzoo.sweeps.tune import tune_command

    return tune_command(rest)


def _report(rest: list[str]) -> int:
    from dlzoo.sweeps.report import report_command

    return report_command(rest)


def _compare(rest: list[str]) -> int:
    from dlzoo.sweeps.compare import compare_command

    return compare_command(rest)


def _ladder(rest: list[str]) -> int:
    from dlzoo.sweeps.ladder import ladder_command

    return ladder_command(rest)


def _transfer(rest: list[str]) -> int:
    from dlzoo.console import console
    from dlzoo.sweeps.transfer_study import transfer_command

    console.print(f"report: {transfer_command(rest) / 'report.md'}")
    return 0


def _ls_verb(rest: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dlzoo ls")
    parser.add_argument("what", nargs="?", help="a config group or registry name")
    return _ls(parser.parse_args(rest).what)


def _ls(what: str | None) -> int:
    from rich.table import Table

    from dlzoo.config.validate import registries
    from dlzoo.console import console

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
        console.print(f"{key}: " + ", ".join(groups[key]))
        return 0
    hint = closest(what, [*groups, *regs])
    raise DlzooError(
        f"nothing called {what!r} to list; config groups: {', '.join(groups)}; registries: {', '.join(regs)}."
        + (f" Did you mean `dlzoo ls {hint}`?" if hint else "")
    )


def _validate(args: list[str]) -> int:
    """`dlzoo validate [--config-dir DIR] [overrides...]`: the config `dlzoo train` would run, or its problem."""
    from omegaconf import OmegaConf

    from dlzoo.config.validate import warnings
    from dlzoo.console import console, print_warning

    parsed = split_args(args)
    if parsed.flags:
        raise DlzooError(f"dlzoo validate takes overrides and --config-dir DIR, not {' '.join(parsed.flags)}.")
    cfg = compose_and_validate(parsed.overrides, parsed.config_dirs)
    console.print(OmegaConf.to_yaml(cfg), highlight=False)
    for message in warnings(cfg):
        print_warning(message)
    console.print("config is valid")
    return 0


def _asks_help(args: list[str]) -> bool:
    """`-h`/`--help` as a word of its own, before any `--`; an override's value (`name=--help`) is not a flag."""
    return any(a in ("-h", "--help") for a in args)


VERBS: dict[str, Callable[[list[str]], int]] = {
    "train": _train,
    "validate": _validate,
    "ls": _ls_verb,
    "eval": _eval,
    "predict": _predict,
    "tune": _tune,
    "report": _report,
    "compare": _compare,
    "ladder": _ladder,
    "transfer": _transfer,
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a verb; the one error boundary: a DlzooError is one paragraph on stderr and exit 2, a stop
    request (Interrupted) exits 128 + its signal, a second Ctrl-C 130."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        from dlzoo import __version__

        print(f"dlzoo {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command in VERB_USAGE and _asks_help(rest):
        print(VERB_USAGE[command])
        return 0
    from dlzoo.console import print_error

    if command not in VERBS:
        hint = closest(command, list(VERBS))
        print_error(f"unknown command {command!r}; choices: {', '.join(VERBS)}."
                    + (f" Did you mean `dlzoo {hint}`?" if hint else "") + " See `dlzoo --help`.")  # fmt: skip
        return 2
    from dlzoo.engine.training.stopping import Interrupted, exit_status

    try:
        return VERBS[command](rest)
    except (DlzooError, Interrupted, KeyboardInterrupt) as e:
        return exit_status(e)


if __name__ == "__main__":
    sys.exit(main())
