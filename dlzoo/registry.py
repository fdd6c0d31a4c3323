"""Registry: every leaf choice (activation, initializer, optimizer, schedule, architecture, dataset) is a short
name mapped to a Python object here, so configs hold names, the CLI can list them and tests can loop over them."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from dlzoo.errors import DlzooError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of choices of one kind.

    Args:
        kind: what the entries are, used in messages ("activation", "optimizer", ...).
        config_key: the config key that selects an entry, used in messages ("model.activation").
    """

    def __init__(self, kind: str, config_key: str) -> None:
        self.kind = kind
        self.config_key = config_key
        self._entries: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str = "") -> Callable[[T], T]:
        """Decorator (or call) that adds ``obj`` under ``name``; the name must be new and lower_snake."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if name != name.lower() or " " in name or "-" in name:
                raise ValueError(f"{self.kind} name {name!r} must be lower_snake")
            self._entries[name] = obj
            self._docs[name] = doc or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            return obj

        return add

    def get(self, name: str) -> T:
        """Look up ``name``; an unknown name raises a DlzooError listing the valid choices."""
        if name not in self._entries:
            raise DlzooError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: object, key: str | None = None) -> str:
        """Why `name` is refused; `key` names where it was written when that is not the registry's config key
        (a block's own `name:` inside model.blocks, say)."""
        key = key or self.config_key
        hint = closest(str(name), self.names())
        did_you_mean = f" Did you mean {hint!r}?" if hint else ""
        return (
            f"Unknown {self.kind} {name!r} for {key}; choices: {', '.join(self.names())}."
            f"{did_you_mean} Fix: pass one of them, e.g. `{key}={hint or self.names()[0]}`, "
            f"or list them with `dlzoo ls {self.kind}`."
        )

    def names(self) -> list[str]:
        return sorted(self._entries)

    def doc(self, name: str) -> str:
        return self._docs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def closest(name: str, choices: list[str]) -> str | None:
    """The choice most like `name` (a typo's likely fix), or None when nothing is close."""
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return match[0] if match else None
