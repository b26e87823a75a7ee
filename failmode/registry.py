"""A tiny name -> object registry with decorator registration (the timm `@register_model` pattern)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from failmode.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; `@registry.register("name")` adds one, `registry.get(name)` looks one up."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering `obj` under `name`; registering a name twice is an error."""

        def wrap(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return wrap

    def register_lazy(self, name: str, target: str) -> None:
        """Register `name` as "package.module:attribute", imported on first `get` (keeps heavy imports deferred)."""
        if name in self._items or name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._lazy[name] = target

    def get(self, name: str) -> T:
        """Return the object registered as `name`, or raise a one-line error listing the known names."""
        if name not in self._items and name in self._lazy:
            module, _, attr = self._lazy.pop(name).partition(":")
            self._items[name] = getattr(importlib.import_module(module), attr)
        try:
            return self._items[name]
        except KeyError:
            raise UsageError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names()) or 'none'})") from None

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted({*self._items, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
