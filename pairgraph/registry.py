"""Decorator registries (timm/torchdistill style) for models, mappers, measures and tasks."""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from pairgraph.errors import PairgraphError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → object table; ``@registry.register("name")`` adds, ``registry.get`` looks up.

    Lookups of unknown names raise a :class:`PairgraphError` that suggests the closest names.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None, *, overwrite: bool = False) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if key is None:
                raise ValueError(f"cannot infer a {self.kind} name for {obj!r}")
            if key in self._items and not overwrite:
                warnings.warn(f"{self.kind} {key!r} re-registered; the new one replaces the old", stacklevel=2)
            self._items[key] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> T:
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise PairgraphError(f"unknown {self.kind} {name!r}", self.suggest(name)) from None

    def suggest(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.4)
        if close:
            return "did you mean " + " or ".join(repr(c) for c in close) + "?"
        return "choose one of " + ", ".join(sorted(self._items))

    def names(self, include: str | list[str] = "*", exclude: str | list[str] = ()) -> list[str]:
        inc = [include] if isinstance(include, str) else list(include)
        exc = [exclude] if isinstance(exclude, str) else list(exclude)
        return sorted(
            n
            for n in self._items
            if any(fnmatch.fnmatch(n, p) for p in inc) and not any(fnmatch.fnmatch(n, p) for p in exc)
        )

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())
