"""Tune from Python: the same experiment as a dict, the search space as objects.

    python -m examples.python_api        (from the repository root)
"""

from __future__ import annotations

import raytune_torch as rt
from examples.models import MLP

experiment = {
    "name": "digits-python-api",
    "storage": "runs",
    "seed": 0,
    "data": {"dataset": "digits", "standardize": True, "test_fraction": 0.2},
    "model": {"name": MLP},                       # a class (or any factory) works as well as a path
    "train": {"max_epochs": 5, "metrics": ["accuracy"]},
    "space": {
        "optimizer__lr": rt.Float(1e-3, 3e-2, log=True),
        "module__hidden": rt.Choice([32, 64]),
        "module__layers": rt.Grid([1, 2]),
    },
    "search": {"algorithm": "random", "num_samples": 2, "metric": "val_accuracy"},
    "scheduler": {"name": "asha", "grace_period": 2},
}

if __name__ == "__main__":
    result = rt.run(experiment)
    print("best parameters:", result.best_config)
    print("best metrics:", result.best_metrics)
    model = result.load_model()                   # the best checkpoint, in eval mode
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    # predict() prepares raw features the way the trials saw them (train-split standardization).
    predicted = result.predict(X[:10], model=model)
    print("first 10 digits:", y[:10].tolist(), "predicted:", predicted.tolist())
    try:  # learning curves, each parameter against the metric, parameter importance (docs/results.md#plots)
        plots = result.plot("runs/digits-python-api/plots")
        print("plots:", *plots.paths, *plots.notes, sep="\n  ")
    except rt.DependencyError as exc:  # matplotlib is an extra: pip install 'raytune-torch[plots]'
        print(exc)
