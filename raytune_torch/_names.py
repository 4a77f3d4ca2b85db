"""Names people type: the one close-match suggestion, and ``prefix__name`` parameter routing.

Shared by the experiment file (:mod:`raytune_torch.config`) and the scikit-learn estimators
(:mod:`raytune_torch.sklearn`); it imports nothing of ours, so either can import it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

__all__ = ["PREFIXES", "ESTIMATOR_PREFIXES", "suggest", "is_routed", "fix_prefix"]

# Trial parameters in an experiment file: each prefix names the object it is passed to
# (`components.params_for`).
PREFIXES = ("module__", "optimizer__", "loss__", "lr_scheduler__")
# The scikit-learn estimators keep skorch's word for the loss and have no LR scheduler.
ESTIMATOR_PREFIXES = ("module__", "optimizer__", "criterion__")

# One cutoff for every "did you mean": difflib's own, which still finds 'gird' -> 'grid'.
_CUTOFF = 0.6


def suggest(name: str, options: Iterable[str]) -> str | None:
    """The option closest to ``name`` (difflib ratio >= 0.6), or None when none is close."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=_CUTOFF)
    return match[0] if match else None


def is_routed(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``key`` is one of ``prefixes`` followed by a non-empty name."""
    return any(key.startswith(p) and len(key) > len(p) for p in prefixes)


def fix_prefix(key: str, stems: Mapping[str, str]) -> str | None:
    """``key`` with a mistyped prefix written right (``module_hidden`` -> ``module__hidden``), or None.

    ``stems`` maps a word people write before the name to the prefix it means (``"loss": "criterion__"``).
    """
    for stem, prefix in stems.items():
        rest = key[len(stem):]
        if key.startswith(stem + "_") and rest.strip("_"):
            return prefix + rest.lstrip("_")
    return None
