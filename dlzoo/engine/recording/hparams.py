"""A run's row in TensorBoard's HParams table: its config-group choices, the lessons' knobs and whatever its
command line set, flattened to the scalar types HParams accepts; and which columns to show first."""

from __future__ import annotations

from typing import Any

# The config keys a reader compares runs by, in the HParams table's column order (after the config-group choices):
# the lessons' knobs, not all ~110 keys of the config.
HPARAM_KEYS = (
    "model.arch", "model.hidden", "model.activation", "model.init", "model.dropout", "model.norm", "optim.name",
    "optim.lr", "optim.weight_decay", "sched.name", "reg.l1", "reg.l2", "pretrain.method", "ensemble.size",
    "trainer.epochs", "trainer.batch_size", "trainer.seed", "trainer.precision", "data.name", "data.train_subset",
)  # fmt: skip
CHOICE_GROUPS = ("experiment", "model", "data", "optim", "sched")


def run_hparams(
    config: dict[str, Any], choices: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> dict[str, bool | int | float | str]:
    """The run's HParams row: its config-group choices (`experiment` first: the lecture rung), then HPARAM_KEYS,
    then any other key the command line set. Booleans stay booleans and numbers numbers; lists and null become
    text, which HParams accepts."""
    flat = flatten(config)
    row: dict[str, bool | int | float | str] = {}
    for group in CHOICE_GROUPS:
        value = (choices or {}).get(group)
        row[group] = str(value) if value is not None else "none"
    for key in (*HPARAM_KEYS, *overridden(overrides or [])):
        if key in flat:
            row[key] = flat[key]
    return row


def overridden(overrides: list[str]) -> list[str]:
    """The config keys and groups a command line set (`model=mlp`, `+trainer.x=1`, `optim.lr=0.1` -> model,
    trainer.x, optim.lr); Hydra's own keys and paths (data.root, hydra.*) are not hyperparameters."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    return [k for k in keys if not k.startswith(NOT_HPARAMS)]


# Settings of where and how a run is watched, not of what it learns: never HParams columns.
NOT_HPARAMS = ("hydra", "debug", "data.root", "trainer.resume", "trainer.threads", "trainer.progress", "trainer.device",
               "trainer.checkpoint", "trainer.layer_stats", "trainer.histogram", "trainer.log_every",
               "trainer.hparams_experiment", "trainer.detect_anomaly", "trainer.stack",
               "ensemble.stack")  # fmt: skip


def chosen_columns(hparams: dict[str, Any], overrides: list[str] | None) -> list[str]:
    """The columns HParams shows first for one run: what its command line chose, and its experiment (the rung)."""
    first = [k for k in overridden(overrides or []) if k in hparams]
    return (["experiment"] if hparams.get("experiment") not in (None, "none") else []) + first


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and None become strings so TensorBoard's HParams accepts them."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out |= flatten(value, f"{prefix}{key}.")
        return out
    value = tree if isinstance(tree, (bool, int, float, str)) else str(tree)
    return {prefix.rstrip("."): value}
