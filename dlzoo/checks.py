"""Range checks for one config section, collected rather than raised, so validation reports every problem at once.
Each registry's module checks its own section's numbers with it (optimizers, schedules, models, ...)."""

from __future__ import annotations

from typing import Any


class Checks:
    """Collects `<prefix>.<key>=<value> is out of range: it must be <rule>.` for each failed check."""

    def __init__(self, section: Any, prefix: str) -> None:
        self.section, self.prefix = section, prefix
        self.problems: list[str] = []

    def check(self, key: str, ok: bool, rule: str) -> None:
        if not ok:
            node: Any = self.section
            for part in key.split("."):
                node = node[part]
            self.problems.append(f"{self.prefix}.{key}={node!r} is out of range: it must be {rule}.")
