"""Name -> factory tables that configs refer to (rewards, prompt sources), filled by decorators."""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def registrar(table: dict[str, T], kind: str) -> Callable[[str], Callable[[T], T]]:
    """A decorator factory that registers a function in ``table`` under a name; a second, different function
    under the same name is refused (two modules claiming one config name is a bug)."""

    def register_as(name: str) -> Callable[[T], T]:
        def register(factory: T) -> T:
            if table.get(name, factory) is not factory:
                raise ValueError(f"A {kind} named {name!r} is already registered ({table[name]}).")
            table[name] = factory
            return factory

        return register

    return register_as
