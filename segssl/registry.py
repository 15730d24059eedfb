"""Flat, strict registries: a duplicate name raises, an unknown name lists the known ones."""
from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes.

    ``get`` also accepts ``"package.module:ClassName"`` so a user's own class can be used from a
    config without editing the library; import errors in that module are not swallowed.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise RegistryError(
                    f"{self.kind} '{name}' is already registered (by {self._entries[name]!r})"
                )
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return self._import(name)
        known = ", ".join(sorted(self._entries)) or "(none)"
        raise RegistryError(f"unknown {self.kind} '{name}'; registered: {known}")

    def _import(self, spec: str) -> T:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name or (exc.name and module_name.startswith(exc.name + ".")):
                raise RegistryError(
                    f"{self.kind} '{spec}': module '{module_name}' not found (is it on PYTHONPATH?)"
                ) from exc
            raise  # an import error inside the user's module: show it whole
        try:
            return getattr(module, attr)
        except AttributeError:
            raise RegistryError(f"{self.kind} '{spec}': module '{module_name}' has no '{attr}'") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
