"""A PyTorch model in scikit-learn's GridSearchCV: 5-fold CV, several metrics, refit on the best.

    python -m examples.sklearn_gridsearchcv        (from the repository root; no Ray, ~15 s on 2 CPUs)

TorchClassifier is a scikit-learn estimator, so everything in sklearn.model_selection works on it:
here a grid over the network's width (``module__hidden``, routed to ``MLP(hidden=...)``) and the
learning rate, scored on accuracy, macro F1, one-vs-rest ROC AUC and log loss, refitted on all the
training data with the most accurate configuration and scored once on a held-out test split.
"""

from __future__ import annotations

import time

import pandas as pd
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split

from examples.models import MLP
from raytune_torch.sklearn import TorchClassifier

SCORING = {"accuracy": "accuracy", "f1": "f1_macro", "roc_auc": "roc_auc_ovr", "log_loss": "neg_log_loss"}
GRID = {"module__hidden": [32, 64], "lr": [0.003, 0.01]}


def main() -> GridSearchCV:
    X, y = load_digits(return_X_y=True)
    X = X / 16.0  # pixel intensities 0..16 -> 0..1
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)

    net = TorchClassifier(MLP, max_epochs=15, batch_size=64, random_state=0)
    search = GridSearchCV(net, GRID, scoring=SCORING, refit="accuracy",
                          cv=StratifiedKFold(5, shuffle=True, random_state=0), error_score="raise")
    start = time.perf_counter()
    search.fit(X_train, y_train)
    print(f"{len(search.cv_results_['params'])} configurations x 5 folds in {time.perf_counter() - start:.1f}s")

    table = pd.DataFrame(search.cv_results_["params"])
    for name in SCORING:
        sign = -1 if name == "log_loss" else 1  # scikit-learn maximizes the negated log loss
        table[name] = sign * search.cv_results_[f"mean_test_{name}"]
    table["rank"] = search.cv_results_["rank_test_accuracy"]
    print(table.sort_values("rank").to_string(index=False, float_format="{:.4f}".format))

    print(f"best (refitted on all {len(X_train)} training rows): {search.best_params_}, "
          f"CV accuracy {search.best_score_:.4f}")
    predicted = search.predict(X_test)
    print(f"held-out test ({len(X_test)} rows): accuracy {accuracy_score(y_test, predicted):.4f}, "
          f"macro F1 {f1_score(y_test, predicted, average='macro'):.4f}")
    return search


if __name__ == "__main__":
    main()
