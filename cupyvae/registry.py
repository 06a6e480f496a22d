"""Name -> class registries, filled by decorators.

Every place that chooses a component by name goes through a Registry, so there is no
if/elif chain over names anywhere: registering a name twice and asking for an unknown
name both raise, the latter listing what exists.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterable, TypeVar

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
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.role} {name!r}{did_you_mean(name, self._entries)}; "
                             f"available: {', '.join(sorted(self._entries)) or '(none)'}") from None

    def canonical(self, name: str) -> str:
        """The registered name `name` stands for: itself, or what the alias `name` resolves
        to; ValueError (listing the registered names) when it is neither."""
        self.get(name)
        return self._aliases.get(name, name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases


def did_you_mean(key, names: Iterable[str]) -> str:
    """' (did you mean 'species'?)' for a near miss of one of `names`, else '': case and
    '_' for '-' are forgiven first, then difflib's closest match (ratio >= 0.6)."""
    if not isinstance(key, str):
        return ""
    normalised = {name.lower().replace("_", "-"): name for name in names}
    wanted = key.strip().lower().replace("_", "-")
    exact = normalised.get(wanted)
    close = [exact] if exact else [normalised[match] for match in difflib.get_close_matches(
        wanted, list(normalised), n=1, cutoff=0.6)]
    return f" (did you mean {close[0]!r}?)" if close else ""
