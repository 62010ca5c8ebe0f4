"""Name -> (function, params dataclass) registries used by every pluggable algorithm piece.

Why a registry and not if-chains: every choice (estimator, surrogate, aggregation, KL estimator,
off-policy correction, reward function) is looked up by name in exactly one place, an unknown name
fails loudly with the list of valid ones, and each entry owns the dataclass of its own knobs, so
one algorithm's parameters never leak into another's.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def suggest(name: str, options: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' hint for a misspelt name, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclasses.dataclass(frozen=True)
class NoParams:
    """Params dataclass for entries that take no knobs."""


@dataclasses.dataclass(frozen=True)
class Entry(Generic[F]):
    name: str
    fn: F
    params_cls: type


class Registry(Generic[F]):
    """A named collection of functions, each with the dataclass of its parameters.

    >>> R = Registry("estimator")
    >>> @R.register("x", params=NoParams)
    ... def x(...): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[F]] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, params: type = NoParams, aliases: Iterable[str] = ()) -> Callable[[F], F]:
        if not dataclasses.is_dataclass(params):
            raise TypeError(f"{self.kind} '{name}': params must be a dataclass, got {params!r}")

        def deco(fn: F) -> F:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} '{key}' is already registered")
            self._entries[name] = Entry(name, fn, params)
            for alias in aliases:
                self._aliases[alias] = name
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def canonical(self, name: str) -> str:
        """The registered name for `name` or one of its aliases; raises with the valid names."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        valid = sorted([*self._entries, *self._aliases])
        raise KeyError(
            f"unknown {self.kind} '{name}'{suggest(name, valid)}; valid names: {', '.join(valid)}"
        )

    def get(self, name: str) -> Entry[F]:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases

    def make_params(self, name: str, overrides: Mapping[str, Any] | None = None) -> Any:
        """Build the params dataclass of `name` from `overrides`; unknown keys are errors."""
        entry = self.get(name)
        return build_dataclass(entry.params_cls, overrides or {}, where=f"{self.kind} '{entry.name}'")


def build_dataclass(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """`cls(**values)` with an error that names the unknown key, suggests a fix and lists the valid ones."""
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "(none)"
            raise ValueError(f"{where} has no parameter '{key}'{suggest(key, fields)}; valid: {valid}")
    return cls(**values)
