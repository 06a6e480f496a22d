"""Name -> class registries, filled by decorators.

Every place that chooses a component by name goes through a Registry, so there is no
if/elif chain over names anywhere: registering a name twice and asking for an unknown
name both raise, the latter listing what exists.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of components of one role (e.g. 'likelihood')."""

    def __init__(self, role: str):
        self.role = role
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@REG.register("gaussian")` adds the decorated object under `name`."""
        def add(obj: T) -> T:
            if name in self:
                raise ValueError(f"{self.role} {name!r} is already registered "
                                 f"(by {self.get(name)!r})")
            self._entries[name] = obj
            return obj
        return add

    def alias(self, old: str, name: str) -> None:
        """Let the retired name `old` (still found in saved checkpoints and run folders)
        resolve to the registered `name`.  Aliases work in get() and `in`, but names()
        lists registered names only, so new choices never offer a retired one."""
        if old in self._entries or old in self._aliases:
            raise ValueError(f"{self.role} {old!r} is already registered or an alias")
        self.get(name)
        self._aliases[old] = name

    def get(self, name: str) -> T:
        try:
            return self._entries[self._aliases.get(name, name)]
        except KeyError:
            raise ValueError(f"unknown {self.role} {name!r}; available: "
                             f"{', '.join(sorted(self._entries)) or '(none)'}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases
