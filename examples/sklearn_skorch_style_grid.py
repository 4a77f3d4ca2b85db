"""A skorch-style parameter grid: ``module__*`` and ``optimizer__*`` keys inside a Pipeline.

    python -m examples.sklearn_skorch_style_grid   (from the repository root; no Ray, ~20 s on 2 CPUs)

In a Pipeline, ``net__module__hidden`` reaches ``MLP(hidden=...)``, ``net__optimizer__momentum``
reaches ``torch.optim.SGD(momentum=...)`` and ``net__criterion__label_smoothing`` reaches
``nn.CrossEntropyLoss(label_smoothing=...)``. A list of grids keeps optimizer-specific arguments
with their optimizer. Early stopping holds out 15% of each training fold (never the fold's test
rows) and keeps the best epoch's weights.
"""

from __future__ import annotations

import time

from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from examples.models import MLP
from raytune_torch.sklearn import TorchClassifier

GRID = [
    {   # Adam: width, dropout and weight decay
        "net__optimizer": ["adam"],
        "net__lr": [0.003],
        "net__module__hidden": [16, 64],
        "net__module__dropout": [0.0, 0.3],
        "net__optimizer__weight_decay": [0.0, 1e-3],
    },
    {   # SGD with momentum: its own learning rate and momentum
        "net__optimizer": ["sgd"],
        "net__lr": [0.03],
        "net__module__hidden": [64],
        "net__optimizer__momentum": [0.0, 0.9],
        "net__criterion__label_smoothing": [0.0, 0.1],
    },
]


def main() -> GridSearchCV:
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)

    pipe = Pipeline([
        ("scale", StandardScaler()),
        ("net", TorchClassifier(MLP, max_epochs=60, batch_size=32, early_stopping=True,
                                validation_fraction=0.15, n_iter_no_change=5, random_state=0)),
    ])
    search = GridSearchCV(pipe, GRID, scoring=["roc_auc", "accuracy"], refit="roc_auc", cv=3,
                          error_score="raise")
    start = time.perf_counter()
    search.fit(X_train, y_train)
    n = len(search.cv_results_["params"])
    print(f"{n} configurations x 3 folds in {time.perf_counter() - start:.1f}s")

    order = search.cv_results_["rank_test_roc_auc"].argsort()
    for i in order[:5]:
        params = {k.removeprefix("net__"): v for k, v in search.cv_results_["params"][i].items()}
        print(f"  roc_auc {search.cv_results_['mean_test_roc_auc'][i]:.4f}  "
              f"accuracy {search.cv_results_['mean_test_accuracy'][i]:.4f}  {params}")

    net = search.best_estimator_.named_steps["net"]
    print(f"best: {search.best_params_} -> {type(net.optimizer_).__name__}, {net.criterion_}")
    print(f"refit stopped after {net.n_epochs_} of {net.max_epochs} epochs; best validation loss "
          f"{min(e['valid_loss'] for e in net.history_):.4f}")
    print(f"held-out test ({len(X_test)} rows): roc_auc {search.score(X_test, y_test):.4f}, "
          f"accuracy {search.best_estimator_.score(X_test, y_test):.4f}")
    return search


if __name__ == "__main__":
    main()
