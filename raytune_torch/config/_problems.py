"""The problems collector every section parser writes to, and the checks they share."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import fields
from typing import Any

from .._names import suggest
from ..exceptions import ConfigError

__all__ = ["Problems", "given", "field_names"]


class Problems:
    """Every problem found in an experiment, each with its value and the fix.

    A parser never stops at the first problem: it records it here, carries on with the field's
    default, and the caller raises one :class:`ConfigError` listing them all (:meth:`raise_if_any`).
    """

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    def extend(self, messages: Iterable[str]) -> None:
        self.messages.extend(messages)

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[str]:
        return iter(self.messages)

    def raise_if_any(self, source: str | None = None) -> None:
        """Raise one :class:`ConfigError` ("N problems in SOURCE:") when anything was found."""
        if self.messages:
            raise ConfigError(self.messages, source=source)

    # -- shared checks: each records what is wrong and returns what could be read -----------------

    @staticmethod
    def suggest(name: str, options: Iterable[str]) -> str:
        """``"; did you mean 'x'?"`` for the option closest to ``name``, or ``""``."""
        match = suggest(name, options)
        return f"; did you mean {match!r}?" if match is not None else ""

    def mapping(self, where: str, value: Any) -> dict:
        """A section's keys: ``{}`` when it is absent (null) or not a mapping."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.add(f"{where}: must be a mapping, got {value!r}")
            return {}
        return dict(value)

    def unknown(self, where: str, got: Mapping, allowed: Iterable[str]) -> None:
        """Record each key of ``got`` that is not in ``allowed``, with the closest allowed one."""
        allowed = list(allowed)
        for key in got:
            if key not in allowed:
                self.add(f"{where}: unknown key {key!r}{self.suggest(str(key), allowed)} "
                         f"(allowed: {', '.join(allowed)})")

    def typed(self, where: str, value: Any, kind: type, *, minimum: float | None = None,
              maximum: float | None = None, exclusive_min: bool = False) -> Any:
        """``value`` as ``kind`` (int or float) within the bounds, or None after recording why not.

        Bounds are inclusive except ``minimum`` with ``exclusive_min``. A float may be written as an
        integer or a numeric string (YAML reads ``1e-4`` as a string); a bool is never a number.
        """
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if kind is float and isinstance(value, str):
            try:
                value, ok = float(value), True
            except ValueError:
                pass
        if not ok:
            noun = "an integer" if kind is int else "a number" if kind is float else kind.__name__
            self.add(f"{where}: must be {noun}, got {value!r}")
            return None
        if minimum is not None and (value <= minimum if exclusive_min else value < minimum):
            self.add(f"{where}: must be {'>' if exclusive_min else '>='} {minimum}, got {value!r}")
            return None
        if maximum is not None and value > maximum:
            self.add(f"{where}: must be <= {maximum}, got {value!r}")
            return None
        return value

    def boolean(self, where: str, value: Any) -> bool | None:
        """``value`` when it is true or false, else None after recording it."""
        if isinstance(value, bool):
            return value
        self.add(f"{where}: must be true or false, got {value!r}")
        return None

    def one_of(self, where: str, value: Any, options: Iterable[str], *, noun: str,
               listed: str = "choose from") -> bool:
        """Whether ``value`` is one of ``options``; if not, record it with the closest option."""
        options = list(options)
        if isinstance(value, str) and value in options:
            return True
        self.add(f"{where}: unknown {noun} {value!r}{self.suggest(str(value), options)} "
                 f"({listed} {', '.join(options)})")
        return False

    def import_path(self, where: str, value: Any, *, what: str = "Name") -> bool:
        """Whether ``value`` is a callable or an import path ``package.module:{what}``; records it if not."""
        if callable(value):
            return True
        if isinstance(value, str):
            module, _, attr = value.partition(":")
            if module and attr:
                return True
            self.add(f"{where}: {value!r} is not an import path; write `package.module:{what}`")
            return False
        self.add(f"{where}: must be an import path or a callable, got {value!r}")
        return False


def given(**values: Any) -> dict[str, Any]:
    """The values that were written and valid; a field left out takes its dataclass default."""
    return {key: value for key, value in values.items() if value is not None}


def field_names(cls: type) -> list[str]:
    """A section's keys in the file: its dataclass fields, in order."""
    return [f.name for f in fields(cls)]
