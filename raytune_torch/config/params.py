"""The ``space:`` section: the trial parameters searched over, and the names they may have."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .. import space as sp
from .._names import PREFIXES, fix_prefix, is_routed
from ._problems import Problems

__all__ = ["PLAIN_PARAMS", "PREFIXES", "parse_space", "check_param_names"]

# Trial parameters that are not routed by a prefix.
PLAIN_PARAMS = ("batch_size", "lr", "optimizer", "seed")
# A prefix written with one underscore: `module_hidden` means `module__hidden`.
_STEMS = {prefix.removesuffix("__"): prefix for prefix in PREFIXES}


def parse_space(raw: Any, problems: Problems) -> dict[str, Any]:
    """Read the ``space:`` value into :mod:`raytune_torch.space` objects; names are checked as written."""
    space, found = sp.parse_space(raw)
    problems.extend(found)
    # the names as written: a parameter whose range is wrong still gets its name checked
    problems.extend(check_param_names(raw if isinstance(raw, Mapping) else space))
    return space


def check_param_names(names: Iterable[Any]) -> list[str]:
    """One problem for each name that is neither a plain parameter nor ``prefix__name``."""
    targets = [*PLAIN_PARAMS, *(p + "<name>" for p in PREFIXES)]
    problems = []
    for name in names:
        if not isinstance(name, str) or name in PLAIN_PARAMS or is_routed(name, PREFIXES):
            continue  # a name that is not a string is reported by the space parser
        fixed = fix_prefix(name, _STEMS)
        hint = f"; did you mean {fixed!r}?" if fixed else Problems.suggest(name, PLAIN_PARAMS) or "."
        problems.append(f"space.{name}: unknown trial parameter{hint} A trial parameter is one of "
                        f"{', '.join(targets)}")
    return problems
