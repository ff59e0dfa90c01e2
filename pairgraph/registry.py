"""The one registry idiom (timm/torchdistill style) for models, model sources, mappers, measures,
tasks, optimizers, tap types and leaf modules.

``@REGISTRY.register("name")`` adds a function, class or instance; a second registration of a
name warns and replaces the first (``overwrite=True`` says it is meant). ``REGISTRY.get(name)``
looks up, and an unknown name raises a one-line :class:`PairgraphError` with did-you-mean
suggestions. A registry may name ``builtins``: modules imported the first time the registry is
read, so that the built-in entries register themselves without the registry's layer importing
them (the spec layer checks names against registries whose implementations live higher up).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from pairgraph.errors import PairgraphError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → object table with a decorator to add, did-you-mean lookups and lazy built-ins."""

    def __init__(self, kind: str, builtins: Sequence[str] = ()):
        self.kind = kind
        self._builtins = tuple(builtins)
        self._loaded = not self._builtins
        self._items: dict[str, T] = {}

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # set first: the modules register into this registry while importing
            for module in self._builtins:
                importlib.import_module(module)

    def register(self, name: str | None = None, *, overwrite: bool = False) -> Callable[[Any], Any]:
        """Decorator adding ``obj`` under ``name`` (default ``obj.__name__``); returns ``obj`` unchanged."""

        def deco(obj: Any) -> Any:
            key = name or getattr(obj, "__name__", None)
            if key is None:
                raise ValueError(f"cannot infer a {self.kind} name for {obj!r}; pass register(name)")
            if key in self._items and not overwrite:
                warnings.warn(f"{self.kind} {key!r} re-registered; the new one replaces the old", stacklevel=2)
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise PairgraphError(f"unknown {self.kind} {name!r}", self.suggest(str(name))) from None

    def suggest(self, name: str) -> str:
        self._load()
        close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.4)
        if close:
            return "did you mean " + " or ".join(repr(c) for c in close) + "?"
        return "choose one of " + ", ".join(sorted(self._items))

    def names(self, include: str | Sequence[str] = "*", exclude: str | Sequence[str] = ()) -> list[str]:
        """Registered names matching any fnmatch ``include`` pattern and no ``exclude`` pattern."""
        self._load()
        inc = [include] if isinstance(include, str) else list(include)
        exc = [exclude] if isinstance(exclude, str) else list(exclude)
        return sorted(
            n
            for n in self._items
            if any(fnmatch.fnmatch(n, p) for p in inc) and not any(fnmatch.fnmatch(n, p) for p in exc)
        )

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._items))

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._items.items())

    def values(self) -> list[T]:
        return [v for _, v in self.items()]
