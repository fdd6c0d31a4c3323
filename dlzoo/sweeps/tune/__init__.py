"""`dlzoo tune`: Optuna searches whose trials are ordinary dlzoo runs, on one machine or many workers sharing one
study database (command: the CLI verb; study: storage, budget and heartbeat; trial: one trial over K seeds;
workers: local worker processes; search: the search file's vocabulary; report: the table and best.yaml)."""

from dlzoo.sweeps.tune.command import tune_command

__all__ = ["tune_command"]
