"""Train/test split, then k-fold CV on the training part with TorchSearchCV, then a held-out score.

Preprocessing lives in the Pipeline, so every fold fits it on its own training part (no leakage),
and the held-out test set is touched once, by the refitted best model.

    python -m examples.search_cv_holdout        (from the repository root)
"""

from __future__ import annotations

from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import raytune_torch as rt
from examples.models import MLP

X, y = load_breast_cancer(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)

pipe = Pipeline([("scale", StandardScaler()),
                 ("net", rt.TorchClassifier(MLP, max_epochs=15, random_state=0, early_stopping=True))])
search = rt.TorchSearchCV(
    pipe,
    {"net__lr": [1e-3, 1e-2], "net__module__hidden": [16, 64], "net__module__dropout": [0.0, 0.3]},
    cv=StratifiedKFold(5, shuffle=True, random_state=0),
    scoring=["roc_auc", "accuracy", "f1"],
    refit="roc_auc",
    scheduler={"name": "asha", "grace_period": 3, "reduction_factor": 2},
    storage="runs", name="cv-holdout",
)

if __name__ == "__main__":
    search.fit(X_train, y_train)
    print("best parameters:", search.best_params_)
    print(f"cross-validated ROC-AUC: {search.best_score_:.4f}")
    print(f"held-out ROC-AUC:        {search.score(X_test, y_test):.4f}")
