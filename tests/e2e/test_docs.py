"""Every command of README.md and the docs site, checked as a user would paste it.

Fast tier: each `dlzoo` line parses and its config composes and validates in-process (Hydra compose + dlzoo's
validation, no training), every folder a line reads is one an earlier line of its page writes, and the other
programs' lines name extras, scripts, flags, markers and files that exist. Slow tier: every page's lines run for
real, in page order, with small budgets appended. The README's Quickstart block also runs for real in the fast
tier (tests/e2e/test_readme.py)."""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import importlib.util
import io
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import DictConfig

import dlzoo
from dlzoo import cli
from dlzoo.config import compose
from dlzoo.config.compose import compose_and_validate as _compose_and_validate
from dlzoo.config.compose import precheck, split_args
from dlzoo.data import datasets
from dlzoo.errors import DlzooError
from tests.docs_commands import DOCS, ROOT, Command, commands, files_written, pages
from tests.helpers import DLZOO

ENV = {"DLZOO_DATA": "/data"}  # what getting_started.md has a user export once, offline
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = set(PYPROJECT["project"]["optional-dependencies"])
MARKERS = {m.split(":")[0] for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
# Packages a page may tell a user to install beside dlzoo's own extras.
OTHER_PACKAGES = {"torch", "torchvision", "jupyterlab", "tensorflow-cpu", "keras", "mkdocs", "mkdocs-material"}
# Programs whose lines are checked only for existing files: the shell's own, and tools with nothing of ours to check.
PLAIN = {"python3", ".", "source", "apt-get", "mkdocs", "jupyter", "export", "sudo", "createdb"}
PLACEHOLDER = re.compile(r"<[^>]*>|^\.\.\.$|\[--")
OWN_FLAGS = {"train": {"-m", "--multirun", "--config-dir", "--config-name", "--cfg", "--hydra-help", "--help"},
             "validate": {"--config-dir", "--help"}}  # fmt: skip


def all_commands() -> list[Command]:
    return [c for page in pages() for c in commands(page, ENV)]


def test_the_docs_hold_commands_of_every_verb() -> None:
    verbs = {c.words[1] for c in all_commands() if c.words[0] == "dlzoo" and len(c.words) > 1}
    assert set(cli.VERBS) <= verbs, f"verbs no page shows: {set(cli.VERBS) - verbs}"


def test_every_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if p.relative_to(DOCS).as_posix() not in nav]
    assert not missing, f"pages mkdocs.yml's nav does not list: {missing}"


def test_the_readmes_links_and_images_exist() -> None:
    """The README is outside the docs site, so mkdocs' --strict does not check its links; this does."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    missing = [t for t in targets if not t.startswith("http") and not (ROOT / t).exists()]
    assert targets and not missing, f"README links to missing files: {missing}"


def test_the_technique_catalogue_is_generated_from_the_registries() -> None:
    spec = importlib.util.spec_from_file_location("docs_catalogue", ROOT / "scripts" / "docs_catalogue.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PAGE.read_text() == module.render(), "docs/catalogue.md is stale: python scripts/docs_catalogue.py"


_COMPOSED: dict[tuple[tuple[str, ...], tuple[str, ...]], DictConfig | DlzooError] = {}


def _same_config(overrides: list[str], config_dirs: list[str] | None = None) -> DictConfig:
    """compose_and_validate, once per config: jobs that differ only in their seed or output folder (a sweep's
    seeds, a ladder's runs) are one config to check, and composing costs half a second."""
    key = (tuple(o for o in overrides if not o.startswith(("trainer.seed=", "hydra.run.dir=", "hydra.sweep.dir="))),
           tuple(config_dirs or ()))  # fmt: skip
    if key not in _COMPOSED:
        try:
            _COMPOSED[key] = _compose_and_validate(list(key[0]), config_dirs)
        except DlzooError as e:
            _COMPOSED[key] = e
    if isinstance(result := _COMPOSED[key], DlzooError):
        raise result
    return result


_split_arguments = BasicSweeper.split_arguments


def _covering_jobs(overrides: list[Any], max_batch_size: int | None) -> list[list[list[str]]]:
    """A sweep's jobs cut to a set in which every swept value appears at least once: the product is the slow
    tier's to run, and each job's compose costs half a second."""
    seen: set[str] = set()
    kept = []
    for job in [job for batch in _split_arguments(overrides, max_batch_size) for job in batch]:
        if set(job) - seen:
            kept.append(job)
            seen |= set(job)
    return [kept]


def _patch_everywhere(monkeypatch: pytest.MonkeyPatch, function: Any, replacement: Any) -> None:
    """Replace `function` in its own module and in every dlzoo module that imported it by name: a module-level
    `from x import f` binds its own reference, which patching x.f alone does not reach (and then the data a line
    names is looked up for real, and downloaded where it is missing)."""
    for info in pkgutil.walk_packages(dlzoo.__path__, "dlzoo."):  # the verbs import theirs when run: import now
        with contextlib.suppress(ImportError):  # an optional extra that is not installed
            importlib.import_module(info.name)
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "dlzoo" and getattr(module, function.__name__, None) is function:
            monkeypatch.setattr(module, function.__name__, replacement)
    assert getattr(sys.modules[function.__module__], function.__name__) is replacement


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_of_the_page_parses_and_validates(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for rel, body in files_written(page).items():  # the page's own config files, as a user saves them
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(body)
    monkeypatch.chdir(tmp_path)
    _patch_everywhere(monkeypatch, compose.compose_and_validate, _same_config)
    # Data is the slow tier's; this one reads none.
    _patch_everywhere(monkeypatch, datasets.locate, lambda *a, **k: None)
    monkeypatch.setattr(BasicSweeper, "split_arguments", staticmethod(_covering_jobs))
    written: list[str] = []
    failures = []
    for command in commands(page, ENV):
        try:
            problem = check(command, written)
        except DlzooError as e:
            problem = str(e)
        if problem:
            failures.append(f"{command.where()}\n    {problem}")
    assert not failures, "docs commands that fail:\n" + "\n".join(failures)


def check(command: Command, written: list[str]) -> str | None:
    """What is wrong with one command, or None; `written` collects the folders the page's lines write."""
    words = list(command.words)
    if placeholders := [w for w in words if PLACEHOLDER.search(w)]:
        return f"placeholder {placeholders[0]!r}: a copied block must run as written (sketches go in a text block)"
    program = words[0]
    if program == "dlzoo":
        return check_dlzoo(words[1:], written)
    if "=" in program and len(words) == 1:
        return None  # a variable the block sets (S="...")
    if program in ("pip", "tfenv/bin/pip"):
        return check_pip(words[1:])
    if program == "python" and len(words) > 1 and words[1].startswith("scripts/"):
        return check_script(words[1], words[2:])
    if program == "pytest":
        marker = words[words.index("-m") + 1] if "-m" in words else None
        return None if marker is None or marker in MARKERS else f"no pytest marker {marker!r}"
    if program == "tensorboard":
        return None if words[1:2] == ["--logdir"] else "tensorboard takes --logdir <folder>"
    if program == "torchrun":
        module = words.index("-m") if "-m" in words else None
        if module is None or words[module + 1] != "dlzoo.train":
            return "torchrun lines start dlzoo.train (-m dlzoo.train)"
        return precheck(words[module + 2 :])
    if program in PLAIN or program.startswith("tfenv/") or program == "python3":
        missing = [w for w in words[1:] if re.search(r"\.(ipynb|py|yaml)$", w) and not (ROOT / w).exists()]
        return f"no file {missing[0]}" if missing else None
    return f"no check for {program!r}: teach tests/e2e/test_docs.py, or show it in a text block"


def check_pip(args: list[str]) -> str | None:
    if args[:1] != ["install"]:
        return "pip lines install"
    for arg in args[1:]:
        if arg.startswith("-") or arg.startswith("https://"):
            continue
        extras = re.fullmatch(r"(?:\.|dlzoo|-e)?\[([\w,-]+)\]", arg.replace('"', ""))
        if extras:
            unknown = set(extras.group(1).split(",")) - EXTRAS
            if unknown:
                return f"no extra {sorted(unknown)[0]!r} in pyproject.toml"
        elif arg not in OTHER_PACKAGES and arg not in (".", "-e"):
            return f"pip installs {arg!r}: not an extra of dlzoo nor a package these docs expect"
    return None


def check_script(script: str, args: list[str]) -> str | None:
    path = ROOT / script
    if not path.is_file():
        return f"no script {script}"
    source = "".join(p.read_text() for p in path.parent.glob("*.py"))  # --peers and --stack hand over to siblings
    for flag in [a.split("=")[0] for a in args if a.startswith("--")]:
        if f'"{flag}"' not in source:
            return f"{script} has no flag {flag}"
    return None


def _help_flags(verb: str) -> set[str]:
    """The flags a verb's own `--help` names."""
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        cli.main([verb, "--help"])
    return set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", out.getvalue()))


def _reads(path: str, written: list[str]) -> str | None:
    """None when an earlier line writes `path` (or a folder holding it); else what is wrong."""
    head = path.split("*", 1)[0]  # a glob is read from the folder its pattern starts in
    folder = head[: head.rfind("/")] if "*" in path else path.rstrip("/")
    for w in written:
        if folder == w or folder.startswith(w + "/") or fnmatch.fnmatch(w, path):
            return None
    return f"{path} is written by no earlier line of this page (add the line that makes it, with its folder)"


def check_dlzoo(words: list[str], written: list[str]) -> str | None:
    verb, rest = words[0], words[1:]
    if verb not in cli.VERBS:
        return f"no verb {verb!r}"
    if "--help" in rest or "-h" in rest:
        return None
    if verb in ("train", "validate"):
        parsed = split_args(rest)
        unknown = [f for f in parsed.flags if f not in OWN_FLAGS[verb]]
        if unknown:
            return f"dlzoo {verb} takes no flag {unknown[0]}"
        if "--config-name" in rest:  # a config a tune search wrote: its folder must come from an earlier line
            return _reads(parsed.config_dirs[0], written)
        if "--cfg" in rest:
            rest = [w for w in rest if w not in ("--cfg", "job", "hydra", "all")]
        named = [w.split("=", 1)[1] for w in rest if w.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
        written += named or (["outputs/multirun"] if parsed.multirun else ["outputs/runs"])
        if verb == "train":
            return precheck(rest)
        compose.compose_and_validate(parsed.overrides, parsed.config_dirs)
        return None
    if verb == "ls":
        with contextlib.redirect_stdout(io.StringIO()):
            return None if cli.main(words) == 0 else f"dlzoo ls {' '.join(rest)} failed"
    if verb in ("eval", "predict"):
        own = {w.split("=", 1)[0]: w.split("=", 1)[1] for w in rest if w.startswith(("ckpt=", "input=", "format="))}
        if "ckpt" not in own:
            return f"dlzoo {verb} needs ckpt=<run folder>"
        overrides = [w for w in rest if w.split("=", 1)[0] not in ("ckpt", "input", "format")]
        compose.compose_and_validate(overrides)
        return _reads(own["ckpt"], written)
    if verb in ("report", "compare"):
        flags = _help_flags(verb)
        unknown = [w.split("=")[0] for w in rest if w.startswith("-") and w.split("=")[0] not in flags]
        if unknown:
            return f"dlzoo {verb} has no flag {unknown[0]}"
        values = {rest[i + 1] for i, w in enumerate(rest[:-1]) if w.startswith("--") and "=" not in w}
        folders = [w for w in rest if not w.startswith("-") and w not in values]
        if verb == "report" and "--out" in rest:
            written.append(rest[rest.index("--out") + 1])
        return next((p for p in (_reads(f, written) for f in folders) if p), None)
    return check_study(verb, rest, written)


class _Planned(Exception):
    """Raised where a study would start training: everything before it (flags, plans, configs) was checked."""


def check_study(verb: str, rest: list[str], written: list[str]) -> str | None:
    """ladder, transfer and tune through their own argument parsing and planning, stopped before any training."""
    from dlzoo.sweeps import ladder, transfer_study
    from dlzoo.sweeps.tune import command as tune

    out = rest[rest.index("--out") + 1] if "--out" in rest else f"outputs/{verb}"
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        if verb == "ladder":
            real_check = ladder.check
            # Rungs are checked by name in plan(); one job's config carries the line's overrides (the slow tier
            # composes every rung, and a compose costs half a second).
            mp.setattr(ladder, "check", lambda jobs: (real_check(jobs[:1]), _raise()))
            if "--resume" in rest and (problem := _reads(out, written)):
                return problem
            run = lambda: ladder.ladder_command(rest)  # noqa: E731
        elif verb == "transfer":
            mp.setattr(transfer_study, "_run_arm", lambda *a: _raise())
            run = lambda: transfer_study.transfer_command(rest)  # noqa: E731
        else:
            if "--resume" in rest:
                return _reads(out, written)
            mp.setattr(tune, "_tune", lambda args: (compose.compose_and_validate(args.overrides), _raise()))
            run = lambda: tune.tune_command(rest)  # noqa: E731
        try:
            run()
        except _Planned:
            written.append(out)
            return None
        except SystemExit as e:
            return f"dlzoo {verb}: its arguments do not parse (exit {e.code})"
    return f"dlzoo {verb} did not reach its training"


def _raise() -> None:
    raise _Planned


# Slow tier: the same lines, run. Appended to each verb's words: seconds instead of minutes.
BUDGET = {
    "train": ["debug=fast", "trainer.threads=1", "trainer.max_loss=null", "pretrain.epochs=1",
              "pretrain.unlabeled=false"],
    "ladder": ["--seeds", "1", "--epochs", "1", "debug=fast", "trainer.threads=1"],
    "transfer": ["--seeds", "1", "trainer.epochs=2", "trainer.max_steps=10", "transfer.freeze_epochs=1",
                 "trainer.threads=1", "data.val_size=500"],
    "tune": ["--trials", "2", "debug=fast", "trainer.threads=1"],
}  # fmt: skip
# Lines that need what a test machine lacks: a SLURM cluster, GPUs, more processes than 2 cores carry.
NOT_RUN = ("hydra/launcher=slurm_example", "gpu_per_job", "trainer.devices=4", "--nproc_per_node=4",
           "--device cuda", "trainer.compile=true", "postgresql")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_training_command_of_the_page_runs(page: Path, tmp_path: Path, mnist_root: Path) -> None:
    data = mnist_root.parent  # holds mnist/ and fashion-mnist/, as the export in getting_started.md says
    for rel, body in files_written(page).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(body)
    np.save(tmp_path / "batch.npy", np.zeros((2, 28, 28), dtype=np.uint8))
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "digit.png")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"DLZOO_DATA": str(data)}
    failures = []
    for command in commands(page, {"DLZOO_DATA": str(data)}):
        words = list(command.words)
        if words[0] != "dlzoo" or any(n in command.text for n in NOT_RUN) or {"--help", "--cfg"} & set(words):
            continue
        budget = BUDGET.get(words[1], [])
        if "--rung-seeds" in words:  # the budget's --seeds replaces a full ladder's per-rung seeds
            at = words.index("--rung-seeds")
            del words[at : at + 2]
        if words[1] == "ladder" and "--rungs" not in words and "--resume" not in words:
            budget = [*budget, "--rungs", "lab10_4_deep,lab10_5_dropout"]  # two MLP rungs the pages compare
        if words[1] == "tune" and "--resume" in words:
            budget = ["--trials", "3"]
        proc = subprocess.run([*DLZOO, *words[1:], *budget], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        if proc.returncode != 0 or "Traceback" in proc.stderr:
            failures.append(f"{command.where()}\n  exit {proc.returncode}: {proc.stderr.strip()[-800:]}")
    assert not failures, "docs commands that fail when run:\n" + "\n".join(failures)
