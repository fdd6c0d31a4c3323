"""Hydra overrides -> a validated config, for every verb alike: compose conf/train.yaml (plus the user's own
--config-dir folders), translate Hydra's and OmegaConf's errors into one paragraph that names the fix, and check
every job of a sweep before Hydra makes any folder (`precheck`)."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dlzoo.config.schema import TrainConfig
from dlzoo.config.validate import register_configs, validate
from dlzoo.errors import DlzooError
from dlzoo.paths import conf_dir
from dlzoo.registry import closest

# Hydra flags that do not train (help, printing the config) or that change which config is composed.
SKIP_PRECHECK = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--config-name", "-cn",
                 "--config-path", "-cp", "--resolve", "--package", "-p", "--shell-completion", "-sc")  # fmt: skip
MAX_PRECHECKED_JOBS = 500
# Launchers that come from an optional extra, and the import that proves the extra is installed.
# dlzoo's own launcher configs and the plugins' own names (Hydra's docs use those).
LAUNCHER_PLUGINS = {
    "parallel": ("hydra_plugins.hydra_joblib_launcher", "launchers"),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "launchers"),
    "slurm_example": ("hydra_plugins.hydra_submitit_launcher", "launchers"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "launchers"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "launchers"),
}


@dataclass
class HydraArgs:
    """A command line split the way Hydra reads it: overrides, user config folders, and the rest of the flags."""

    overrides: list[str] = field(default_factory=list)
    config_dirs: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    @property
    def multirun(self) -> bool:
        return any(f in ("-m", "--multirun") for f in self.flags)


def split_args(args: list[str]) -> HydraArgs:
    """Split `args` into Hydra overrides, `--config-dir DIR` / `--config-dir=DIR` folders, and other flags."""
    out = HydraArgs()
    it = iter(args)
    for arg in it:
        if arg in ("--config-dir", "-cd"):
            out.config_dirs.append(next(it, ""))
        elif arg.startswith("--config-dir="):
            out.config_dirs.append(arg.split("=", 1)[1])
        elif arg.startswith("-"):
            out.flags.append(arg)
        else:
            out.overrides.append(arg)
    return out


def config_groups(config_dirs: list[str] | None = None) -> dict[str, list[str]]:
    """Each config group under conf/ and the user's folders (nested groups as a/b) and the config names in it."""
    groups: dict[str, list[str]] = {}
    for root in [conf_dir(), *(Path(d) for d in config_dirs or [])]:
        for path in sorted(root.rglob("*.yaml")):
            rel = path.relative_to(root)
            if rel.parent != Path(".") and rel.stem not in groups.get(rel.parent.as_posix(), []):
                groups.setdefault(rel.parent.as_posix(), []).append(rel.stem)
    return groups


def compose_config(overrides: list[str], config_dirs: list[str] | None = None) -> DictConfig:
    """Compose conf/train.yaml with `overrides` (and the user's config folders on the search path), unvalidated;
    any failure is one DlzooError paragraph."""
    register_configs()
    missing = [d for d in config_dirs or [] if not Path(d).is_dir()]
    if missing:
        raise DlzooError(f"--config-dir {missing[0]} is not a folder. Fix: point it at a folder of config groups "
                         "(e.g. my_conf/ holding model/<name>.yaml).")  # fmt: skip
    for override in overrides:
        if problem := _appended_unknown_key(override, config_dirs):
            raise DlzooError(problem)
    if problem := code_in_configs(config_dirs or []):  # before Hydra reads them (an alias cycle never returns)
        raise DlzooError(problem)
    if config_dirs:
        paths = ",".join(f"file://{Path(d).absolute()}" for d in config_dirs)
        overrides = [*overrides, f"hydra.searchpath=[{paths}]"]
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose("train", overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError, TypeError) as e:
        raise DlzooError(explain(e, config_dirs)) from None


def compose_and_validate(overrides: list[str], config_dirs: list[str] | None = None) -> DictConfig:
    """Compose conf/train.yaml with `overrides` and validate it; any failure is one DlzooError paragraph."""
    cfg = compose_config(overrides, config_dirs)
    validate(cfg)
    return cfg


_KINDS = {"Integer": "an integer (e.g. 15)", "Float": "a number (e.g. 0.001)", "String": "a string"}


def explain(e: BaseException, config_dirs: list[str] | None = None) -> str:
    """Hydra's or OmegaConf's error (and its cause) as one paragraph that says what was wrong and how to fix it."""
    text, cause = str(e), str(e.__cause__ or "")
    if m := re.search(r"Could not find '([\w/]+)/([^']*)'", text):
        group, name = m.groups()
        choices = config_groups(config_dirs).get(group, [])
        hint = closest(name, choices)
        return (
            f"Unknown {group} config {name!r}; choices: {', '.join(choices)}." + (f" Did you mean {hint}?" if hint
            else "") + f" Fix: `{group}={hint or (choices[0] if choices else '<name>')}`, or list them with "
            f"`dlzoo ls {group}` (your own configs go in a --config-dir folder as {group}/<name>.yaml)."
        )  # fmt: skip
    if m := re.search(r"Could not override '([\w.]+)'", text):
        return _unknown_key(m.group(1))
    if m := re.search(r"Error merging override (\S+)", text):
        return bad_value(m.group(1), cause)
    if m := re.search(r"Environment variable '([^']+)' not found", text + cause):
        var = m.group(1)
        return (
            f"The config reads the environment variable {var} (${{oc.env:{var}}}), which is not set. Fix: "
            f"export {var}=<value> first, or give the interpolation a default: ${{oc.env:{var},<default>}}."
        )
    if "launcher" in text.lower() and "could not load" in text.lower():
        return text.split("\n")[0] + " Fix: pip install 'dlzoo[launchers]' (Hydra's joblib and submitit launchers)."
    return " ".join(text.split()) + " (see `dlzoo ls` for the groups and names)"


def bad_value(override: str, cause: str) -> str:
    """The message for `override` whose value OmegaConf refused with `cause` (a wrong type, mostly)."""
    key = re.search(r"full_key: (\S+)", cause)
    where = key.group(1) if key else override.split("=", 1)[0]
    if k := re.search(r"could not be converted to (\w+)", cause):
        expected = _KINDS.get(k.group(1), k.group(1).lower())
    elif "valid bool" in cause:
        expected = "true or false"
    elif "ListConfig" in cause:
        expected = "a list, e.g. [512, 512]"
    else:
        return f"Cannot apply {override}: {' '.join(cause.split())}."
    return f"{override}: {where} takes {expected}. Fix the value on the command line or in your YAML."


def _schema_node(dotted: str) -> DictConfig | None:
    """The schema's node at `dotted` (a config section), or None where the schema has no such section."""
    node: object = OmegaConf.structured(TrainConfig)
    for part in dotted.split(".") if dotted else []:
        node = node.get(part) if isinstance(node, DictConfig) and part in node else None
    return node if isinstance(node, DictConfig) else None


def _appended_unknown_key(override: str, config_dirs: list[str] | None) -> str | None:
    """`+trainer.epoch=1` (Hydra's own hint for the typo trainer.epoch) would add a key no code reads: refuse it."""
    key = override.split("=", 1)[0]
    if not key.startswith("+") or key.startswith("++") or key.lstrip("+").startswith("hydra"):
        return None
    dotted = key.lstrip("+")
    parent, _, leaf = dotted.rpartition(".")
    if not parent and dotted in config_groups(config_dirs):
        return None  # +group=name appends a config group, not a key
    node = _schema_node(parent)
    if node is None or leaf in node:
        return None
    return _unknown_key(dotted) + " (A leading + adds a key, but dlzoo reads only the keys its schema has.)"


def _unknown_key(dotted: str) -> str:
    parent, _, leaf = dotted.rpartition(".")
    node = _schema_node(parent)
    keys = sorted(node.keys()) if node is not None else []
    hint = closest(leaf, [str(k) for k in keys])
    fix = f"Did you mean {parent + '.' if parent else ''}{hint}? " if hint else ""
    listed = f" Keys of {parent or 'the config'}: {', '.join(map(str, keys))}." if keys else ""
    return (
        f"Unknown config key {dotted!r}.{listed} {fix}Fix the spelling; `dlzoo validate` prints every key with "
        "its value."
    )


def launcher_problem(overrides: list[str], config_dirs: Sequence[str] = ()) -> str | None:
    """A launcher that does not exist, or one from an optional extra that is not installed, named before Hydra
    fails on it. A user's own hydra/launcher/<name>.yaml in a --config-dir counts as existing."""
    for override in overrides:
        if override.split("=", 1)[0].lstrip("+") == "hydra/launcher":
            name = override.split("=", 1)[1]
            own = any((Path(d) / "hydra" / "launcher" / f"{name}.yaml").is_file() for d in config_dirs)
            if name not in LAUNCHER_PLUGINS and name != "basic" and not own:
                choices = ["basic", *LAUNCHER_PLUGINS]
                hint = closest(name, choices)
                return (f"Unknown hydra/launcher {name!r}; choices: {', '.join(choices)}." +
                        (f" Did you mean {hint}?" if hint else "") + " Fix: hydra/launcher=parallel for jobs side by "
                        "side on this machine, hydra/launcher=submitit_slurm for a cluster, or drop it.")  # fmt: skip
            module, extra = LAUNCHER_PLUGINS.get(name, (None, None))
            if module and not _importable(module):
                return (
                    f"hydra/launcher={name} needs Hydra's launcher plugins, which are not installed. "
                    f"Fix: pip install 'dlzoo[{extra}]' (or drop hydra/launcher=... to run the jobs one by one)."
                )
    return None


def unparsable(overrides: list[str]) -> str | None:
    """An override Hydra's grammar cannot read (hydra.* ones included, which compose never sees), said with the
    quoting that fixes it rather than as a lexer error."""
    for override in overrides:
        try:
            OverridesParser.create().parse_overrides([override])
        except HydraException as e:
            key, _, value = override.partition("=")
            return (f"Cannot read the override {override!r}: {' '.join(str(e).split())[:200]} Fix: quote the value "
                    f"for Hydra inside quotes for the shell, e.g. '{key}=\"{value}\"' (letters outside A-Z, digits, "
                    "and characters such as spaces, commas or brackets need Hydra's quotes).")  # fmt: skip
    return None


def _importable(module: str) -> bool:
    """Whether `module` can be imported; find_spec raises, rather than answering None, when its parent package
    (hydra_plugins, on a plain `pip install .`) is missing too."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def code_in_configs(config_dirs: list[str]) -> str | None:
    """A user config (a --config-dir, a tune folder's best.yaml) that would make Hydra run code: a `_target_`
    import path anywhere, or `hydra.callbacks`. dlzoo's configs name registry entries, never code."""
    for root in config_dirs:
        for path in sorted(Path(root).rglob("*.yaml"))[:1000] if Path(root).is_dir() else []:
            try:
                data = yaml.safe_load(path.read_text(errors="replace"))
            except (yaml.YAMLError, OSError, RecursionError):
                continue  # Hydra reports a broken file itself when it is used
            hydra = data.get("hydra") if isinstance(data, dict) else None
            found = "hydra.callbacks" if isinstance(hydra, dict) and "callbacks" in hydra else _target_key(data)
            if found:
                if not found.endswith("_target_") and found != "hydra.callbacks":
                    return f"{path} holds {found}, which no config can be read from. Fix: write it out plainly."
                return (
                    f"{path} sets {found}, which makes Hydra import and run code when the config loads; dlzoo "
                    "configs name registry entries (`dlzoo ls`), never import paths. Fix: remove it from the file "
                    "(a tune folder's best.yaml holds only dlzoo's own keys)."
                )
    return None


def _target_key(node: object, where: str = "", ancestors: tuple[int, ...] = ()) -> str | None:
    """The first `_target_` key under `node`, or an alias that holds itself (a YAML `&a [*a]`), which
    OmegaConf would recurse into until the stack ends."""
    if isinstance(node, dict | list) and id(node) in ancestors:
        return f"a YAML alias that contains itself (at {where or 'the top'})"
    if len(ancestors) > 100:
        return f"nesting deeper than 100 levels (at {where})"
    inner = (*ancestors, id(node))
    if isinstance(node, dict):
        for key, value in node.items():
            dotted = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                return dotted
            if found := _target_key(value, dotted, inner):
                return found
    if isinstance(node, list):
        for i, value in enumerate(node):
            if found := _target_key(value, f"{where}[{i}]", inner):
                return found
    return None


def precheck(args: list[str]) -> str | None:
    """Validate every job a `dlzoo train` command will run before Hydra starts (and makes folders): a typo in
    job 7 of a sweep fails at once, and no run ever starts with an invalid config."""
    parsed_args = split_args(args)
    searched = [o.split("file://", 1)[1].rstrip("]") for o in parsed_args.overrides
                if o.startswith("hydra.searchpath=") and "file://" in o]  # fmt: skip
    if problem := code_in_configs([*parsed_args.config_dirs, *searched]):  # whatever the flags: Hydra loads them
        return problem
    if any(a.split("=")[0] in SKIP_PRECHECK for a in args):
        return None
    if problem := launcher_problem(parsed_args.overrides, parsed_args.config_dirs) or unparsable(parsed_args.overrides):
        return problem
    overrides = [a for a in parsed_args.overrides
                 if a.startswith("hydra.searchpath=") or not a.startswith(("hydra.", "hydra/", "+hydra"))]  # fmt: skip
    try:
        if parsed_args.multirun:
            parsed = OverridesParser.create().parse_overrides(overrides)
            jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        else:
            jobs = [overrides]
        for job in jobs[:MAX_PRECHECKED_JOBS]:
            try:
                compose_and_validate(list(job), parsed_args.config_dirs)
            except DlzooError as e:
                prefix = f"job {' '.join(job)}: " if len(jobs) > 1 else ""
                return prefix + str(e)
    except (HydraException, ValueError) as e:
        return explain(e)
    return None
