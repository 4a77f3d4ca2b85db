"""Grid vs random vs Optuna TPE over the same space, with TorchSearchCV (k-fold CV inside each trial).

    python -m examples.search_cv_compare        (from the repository root; about a minute on 2 CPUs)
"""

from __future__ import annotations

from sklearn.datasets import load_digits
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import raytune_torch as rt
from examples.models import MLP

X, y = load_digits(return_X_y=True)
pipe = Pipeline([("scale", StandardScaler()),
                 ("net", rt.TorchClassifier(MLP, max_epochs=6, batch_size=64, random_state=0))])

# One space, three searchers. For the grid searcher the ranges are enumerated with their step.
space = {
    "net__lr": rt.Float(1e-3, 3e-2, log=True),
    "net__module__hidden": rt.Choice([16, 32, 64]),
}
grid = {"net__lr": [1e-3, 3e-3, 1e-2, 3e-2], "net__module__hidden": [16, 32, 64]}

if __name__ == "__main__":
    runs = {
        "grid": rt.TorchSearchCV(pipe, grid, cv=3, storage="runs", name="cv-grid"),
        "random": rt.TorchSearchCV(pipe, space, search="random", n_iter=6, cv=3, storage="runs", name="cv-random"),
        "optuna": rt.TorchSearchCV(pipe, space, search="optuna", n_iter=6, cv=3, storage="runs", name="cv-tpe",
                                   scheduler={"name": "asha", "grace_period": 2, "reduction_factor": 2}),
    }
    for name, search in runs.items():
        search.fit(X, y)
        print(f"{name:7s} {len(search.cv_results_['params']):2d} candidates  best CV accuracy "
              f"{search.best_score_:.4f}  {search.best_params_}")
