"""Data factories for the examples: each returns ``(X, y)`` (or a dict of splits)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_diabetes


def diabetes_scaled() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's diabetes data with the target divided by its standard deviation."""
    X, y = load_diabetes(return_X_y=True)
    return X, (y - y.mean()) / y.std()


def blobs(n: int = 600, n_features: int = 16, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated Gaussian blobs: a dataset of any size for tests and benchmarks."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(n_classes, n_features))
    y = rng.integers(0, n_classes, size=n)
    X = centers[y] + rng.normal(size=(n, n_features))
    return X.astype(np.float32), y
