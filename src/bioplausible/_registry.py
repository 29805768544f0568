"""Name -> factory registries for rules, models, datasets and losses.

``@register("kp")`` on a :class:`~bioplausible.core.rule.Rule` subclass makes it available to
:func:`make` and to the CLI. Other registries (models, datasets, losses, presets) use the same
:class:`Registry` class so that every unknown name produces the same kind of error.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A case-insensitive mapping from names to objects with helpful unknown-name errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

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
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())


RULES: Registry[Any] = Registry("rule")


def register(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register("fa")`` registers a Rule subclass under ``name``."""
    return RULES.decorator(name)


def make(name: str, **config: Any):
    """Instantiate the rule registered as ``name`` with its hyperparameters ``config``."""
    from . import rules as _rules  # noqa: F401  (importing registers the built-in rules)

    cls = RULES.get(name)
    return cls(**config)


def list_rules() -> list[str]:
    """Names of every registered learning rule, sorted (the built-in rules are imported first)."""
    from . import rules as _rules  # noqa: F401

    return RULES.names()
