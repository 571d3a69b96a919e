"""A tiny registry: a dict filled by explicit registration, refusing duplicate names.

Used for checks (``datacheck.checks.CHECKS``), source kinds (``datacheck.sources.SOURCES``), feature
extractors (``datacheck.features.FEATURES``), models (``generative.MODELS``) and data factors
(``reports.factors.FACTORS``). Lookups of an unknown name raise a
`UserError` that lists the allowed names, so CLIs can print it as a one-line error.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object mapping for one kind of thing (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        if name in self._items:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def remove(self, name: str) -> T:
        """Unregister ``name`` (a plugin or a test that is done with it); returns what it held."""
        try:
            return self._items.pop(name)
        except KeyError:
            raise UserError(f"unknown {self.kind} {name!r}; expected one of: {', '.join(sorted(self._items))}") from None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""
        def deco(obj: T) -> T:
            return self.add(name, obj)
        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} {name!r}; expected one of: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
