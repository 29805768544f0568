"""The generic name -> object registry behind rules, models, datasets, losses and metrics.

Every registry is a :class:`Registry`, so every unknown name produces the same kind of error
(:class:`~bioplausible.errors.UnknownNameError` with a "did you mean" hint). The rule registry
and its ``make`` are in :mod:`bioplausible.rules.registry`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A case-insensitive mapping from names to objects with helpful unknown-name errors."""

    def __init__(self, kind: str, discover: bool = False) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        #: look the rule families up (:func:`discover_families`) before an unknown name is an error
        self.discover = discover

    def add(self, name: str, obj: T) -> T:
        key = name.lower()
        if key in self._items and self._items[key] is not obj:
            raise RuntimeError(f"{self.kind} {name!r} is registered twice")
        self._items[key] = obj
        return obj

    def decorator(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if hasattr(obj, "__dict__") and isinstance(obj, type):
                obj.name = name  # type: ignore[attr-defined]
            return self.add(name, obj)

        return wrap

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key not in self._items and self.discover:
            discover_families()
        if key not in self._items:
            close = difflib.get_close_matches(key, list(self._items), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}"
            )
        return self._items[key]

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        if self.discover:
            discover_families()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        if self.discover:
            discover_families()
        return sorted(self._items.items())

    def registered(self) -> list[tuple[str, T]]:
        """What is registered so far, without looking for the families (:meth:`items` looks)."""
        return sorted(self._items.items())


#: entry-point group of installed rule families (``[project.entry-points."bioplausible.families"]``)
FAMILY_GROUP = "bioplausible.families"
BUILTIN_FAMILIES = "bioplausible.rules"
_loaded: set[str] = set()


def discover_families() -> list[str]:
    """Import the built-in rule families and every installed family; returns the new ones.

    A family registers its rules, losses, metrics, plots and commands when it is imported, so a
    registry of those (``Registry(..., discover=True)``) calls this before it reports an unknown
    name or lists its names. Families are found by name, as plugins are: the built-in ones in
    :mod:`bioplausible.rules` (one subpackage each), others through the entry-point group
    ``bioplausible.families`` of installed distributions. Each is imported once.
    """
    from importlib.metadata import entry_points

    new = []
    for name in [BUILTIN_FAMILIES, *(ep.value for ep in entry_points(group=FAMILY_GROUP))]:
        if name not in _loaded:
            _loaded.add(name)  # first: a family that looks a name up while importing does not recurse
            importlib.import_module(name.partition(":")[0])
            new.append(name)
    return new


__all__ = ["BUILTIN_FAMILIES", "FAMILY_GROUP", "Registry", "discover_families"]
