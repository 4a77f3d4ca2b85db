"""The ``model:``, ``optimizer:``, ``loss:`` and ``lr_scheduler:`` sections: what to build."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._problems import Problems, field_names

__all__ = ["ComponentConfig"]


@dataclass(frozen=True)
class ComponentConfig:
    """A model, optimizer, loss or LR scheduler: a name or ``pkg.mod:Name`` plus fixed arguments."""

    name: str | Callable | None = None
    args: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Any, problems: Problems, *, where: str, required: bool = False,
                  builtins: bool = True) -> ComponentConfig | None:
        """Read a component written as a name or ``{name, args}``; None when absent and not required.

        Args:
            where: the key in the file (``model``, ``optimizer``, ...), for the messages.
            required: whether an absent (null) value is a problem.
            builtins: whether a bare name (``adam``) may stand for a built-in; if not (the model),
                ``name`` must be an import path ``package.module:ClassName`` or a callable.
        """
        if raw is None:
            if required:
                problems.add(f"{where}: missing; give e.g. `{where}: {{name: pkg.module:Name}}`")
            return None
        if isinstance(raw, str) or callable(raw):  # a callable: a class or factory from the Python API
            component = cls(raw, {})
        elif not isinstance(raw, Mapping):
            problems.add(f"{where}: must be a name or a mapping with `name` and `args`, got {raw!r}")
            return None
        else:
            problems.unknown(where, raw, field_names(cls))
            name = raw.get("name")
            if name is None or not (isinstance(name, str) or callable(name)):
                problems.add(f"{where}.name: must be a name or an import path like `pkg.module:Name`, got {name!r}")
            args = raw.get("args") or {}
            if not isinstance(args, Mapping):
                problems.add(f"{where}.args: must be a mapping of keyword arguments, got {args!r}")
                args = {}
            component = cls(name, dict(args))
        if isinstance(component.name, str) and (not builtins or ":" in component.name):
            problems.import_path(f"{where}.name", component.name, what="ClassName" if not builtins else "Name")
        return component

    def to_dict(self) -> dict[str, Any]:
        """The component as the file writes it: ``{name, args}``."""
        return {"name": self.name, "args": dict(self.args)}
