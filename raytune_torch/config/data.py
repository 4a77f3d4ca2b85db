"""The ``data:`` section: where the data comes from and how it is split."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ._problems import Problems, field_names, given

__all__ = ["DataConfig", "BUNDLED_DATASETS"]

# Datasets that ship with scikit-learn, and the task each one is for.
BUNDLED_DATASETS = {
    "digits": "classification",
    "breast_cancer": "classification",
    "iris": "classification",
    "wine": "classification",
    "diabetes": "regression",
}
_SOURCES = ("dataset", "factory", "parquet")


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is split (once, with the experiment's seed).

    Exactly one of ``dataset`` (bundled: digits, breast_cancer, iris, wine, diabetes),
    ``factory`` (``pkg.mod:fn`` returning ``(X, y)``) or ``parquet`` (a file or directory) is set.
    ``val_fraction`` is in (0, 0.9], ``test_fraction`` in [0, 0.9], and together below 0.95.
    """

    dataset: str | None = None
    factory: str | None = None
    factory_args: Mapping[str, Any] = field(default_factory=dict)
    parquet: str | None = None
    features: tuple[str, ...] | None = None
    label: str | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    standardize: bool = False

    @classmethod
    def from_dict(cls, raw: Any, problems: Problems) -> DataConfig:
        """Read the ``data:`` value; what is wrong goes to ``problems``."""
        data = problems.mapping("data", raw)
        problems.unknown("data", data, field_names(cls))
        sources = [k for k in _SOURCES if data.get(k) is not None]
        if len(sources) != 1:
            problems.add(
                "data: set exactly one of `dataset` (bundled: "
                f"{', '.join(BUNDLED_DATASETS)}), `factory` (pkg.module:function returning (X, y)) or "
                f"`parquet` (a file or directory), got {sources or 'none'}"
            )
        dataset, factory, parquet = (data.get(k) for k in _SOURCES)
        if dataset is not None:
            problems.one_of("data.dataset", dataset, BUNDLED_DATASETS, noun="bundled dataset", listed="bundled:")
        if factory is not None:
            problems.import_path("data.factory", factory, what="function")
        if parquet is not None and not data.get("label"):
            problems.add("data.label: a parquet source needs `label` (the target column)")
        features = data.get("features")
        if features is not None and (not isinstance(features, (list, tuple))
                                     or not all(isinstance(f, str) for f in features)):
            problems.add(f"data.features: must be a list of column names, got {features!r}")
            features = None
        val = problems.typed("data.val_fraction", data.get("val_fraction", cls.val_fraction), float,
                             minimum=0.0, maximum=0.9, exclusive_min=True)
        test = problems.typed("data.test_fraction", data.get("test_fraction", cls.test_fraction), float,
                              minimum=0.0, maximum=0.9)
        if val is not None and test is not None and val + test >= 0.95:
            problems.add(f"data: val_fraction + test_fraction must leave data to train on, got {val} + {test}")
        return cls(**given(
            dataset=dataset, factory=factory,
            factory_args=problems.mapping("data.factory_args", data.get("factory_args")),
            parquet=None if parquet is None else str(parquet),
            features=tuple(features) if features else None, label=data.get("label"),
            val_fraction=val, test_fraction=test,
            standardize=problems.boolean("data.standardize", data.get("standardize", cls.standardize)),
        ))

    def to_dict(self) -> dict[str, Any]:
        """The section as the file writes it: unset sources and empty ``factory_args`` left out."""
        data = {k: v for k, v in asdict(self).items() if v is not None}
        if self.features is not None:
            data["features"] = list(self.features)
        if not data.get("factory_args"):
            data.pop("factory_args", None)
        return data
