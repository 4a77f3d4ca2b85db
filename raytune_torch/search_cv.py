"""``TorchSearchCV``: scikit-learn's search API, run on Ray Tune with k-fold CV inside each trial.

Each trial is one candidate configuration (:mod:`raytune_torch.cv_trial`). It trains all k folds of that configuration one epoch
at a time (``partial_fit``) and reports, after every epoch, the fold-mean and standard deviation
of every score, so ASHA, HyperBand or median stopping prune on the cross-validated score.

No leakage: when the estimator is a ``Pipeline``, its transformers are fitted on the training part
of each fold only; when the final estimator has ``early_stopping=True``, each fold stops on an
inner split of its *training* part, never on the fold's validation part.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import space as sp
from .cv_trial import CVSpec, run_cv_trial
from .exceptions import ConfigError

__all__ = ["TorchSearchCV", "run_cv_trial"]


# ------------------------------------------------------------------------------------------------
# Turning scikit-learn style parameters into the one search space


def _is_grid(params: Any) -> bool:
    grids = params if isinstance(params, (list, tuple)) else [params]
    return all(isinstance(g, Mapping) and all(isinstance(v, (list, tuple, np.ndarray)) and not isinstance(v, str)
                                              for v in g.values()) for g in grids)


def _from_distribution(name: str, value: Any) -> Any:
    """A scipy.stats frozen distribution as a Float/Int range (the common ones)."""
    dist = getattr(value, "dist", None)
    kind = getattr(dist, "name", None)
    args = list(getattr(value, "args", ()))
    kwds = dict(getattr(value, "kwds", {}))
    if kind in ("loguniform", "reciprocal"):
        a, b = (args + [kwds.get("a"), kwds.get("b")])[:2]
        return sp.Float(float(a), float(b), log=True)
    if kind == "uniform":
        loc = args[0] if args else kwds.get("loc", 0.0)
        scale = args[1] if len(args) > 1 else kwds.get("scale", 1.0)
        return sp.Float(float(loc), float(loc) + float(scale))
    if kind == "randint":
        low, high = (args + [kwds.get("low"), kwds.get("high")])[:2]
        return sp.Int(int(low), int(high) - 1)
    raise ConfigError([f"params.{name}: cannot use {value!r} as a search dimension; use scipy.stats loguniform, "
                       f"uniform or randint, a list, or raytune_torch Float/Int/Choice/Grid"])


def params_to_space(params: Mapping[str, Any], search: str) -> dict[str, Any]:
    """scikit-learn ``param_distributions`` (or the project's space) as the one search space."""
    space: dict[str, Any] = {}
    problems = []
    for name, value in params.items():
        if getattr(value, "when", None) or (isinstance(value, Mapping) and "when" in value):
            problems.append(f"params.{name}: TorchSearchCV takes no conditional parameters (`when`); search "
                            f"them with an experiment file (raytune_torch.run), or list the combinations as a "
                            f"list of grids")
            continue
        if isinstance(value, (sp.Float, sp.Int, sp.Choice, sp.Grid)):
            space[name] = value
        elif isinstance(value, Mapping) and "type" in value:
            parsed, errs = sp.parse_space({name: value})
            problems.extend(errs)
            space.update(parsed)
        elif isinstance(value, (list, tuple, np.ndarray)) and not isinstance(value, str):
            values = list(value)
            space[name] = sp.Grid(values) if search == "grid" else sp.Choice(values)
        elif hasattr(value, "rvs"):
            space[name] = _from_distribution(name, value)
        else:
            space[name] = value  # a constant
    problems.extend(sp.check_searcher(space, search))
    if problems:
        raise ConfigError(problems)
    return space


# ------------------------------------------------------------------------------------------------
# The estimator


def _rank(means: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    if np.isnan(means).all():
        return np.ones_like(means, dtype=np.int32)
    filled = np.nan_to_num(means, nan=np.nanmin(means) - 1)
    return rankdata(-filled, method="min").astype(np.int32, copy=False)


class TorchSearchCV:
    """Search over a PyTorch estimator's parameters on Ray Tune with k-fold CV in every trial.

    Args:
        estimator: a :class:`~raytune_torch.sklearn.TorchClassifier` / ``TorchRegressor``, or a
            ``Pipeline`` ending in one.
        params: a scikit-learn grid (dict of lists, or a list of them), ``param_distributions``
            (lists and scipy.stats loguniform/uniform/randint), or the project's search space
            (``Float``/``Int``/``Choice``/``Grid`` objects or their YAML dicts).
        cv, scoring, refit, error_score, return_train_score: as in ``GridSearchCV``.
        search: ``grid`` (default for a grid), ``random`` (default otherwise), ``optuna``, ``hyperopt``.
        n_iter: trials to sample for random/optuna/hyperopt (default 10).
        scheduler: ``fifo``, ``asha``, ``hyperband``, ``median`` (or a dict with options).
        n_jobs: trials running at once (None: as many as the resources allow).
        resources: per trial ``{"cpu": 1, "gpu": 0}``.
        max_epochs: epochs per fold (default: the estimator's ``max_epochs``).
        storage, name: where the run directory goes (``storage/name``).
        random_state: seeds the searcher and the early-stopping inner splits.
        loggers: experiment trackers that receive every candidate, as in the experiment file's
            ``loggers:`` (``["mlflow"]``, ``[{"name": "wandb", "mode": "offline"}]``); checked in
            ``fit``, before Ray starts.
    """

    def __init__(self, estimator: Any, params: Any, *, cv: Any = 5, scoring: Any = None, refit: Any = True,
                 search: str | None = None, n_iter: int = 10, scheduler: Any = "fifo", n_jobs: int | None = None,
                 resources: Mapping[str, float] | None = None, max_epochs: int | None = None,
                 error_score: Any = np.nan, return_train_score: bool = False, storage: str = "runs",
                 name: str | None = None, random_state: int = 0, tensorboard: bool = True,
                 verbose: int = 0, loggers: Any = None) -> None:
        self.estimator = estimator
        self.params = params
        self.cv = cv
        self.scoring = scoring
        self.refit = refit
        self.search = search
        self.n_iter = n_iter
        self.scheduler = scheduler
        self.n_jobs = n_jobs
        self.resources = resources
        self.max_epochs = max_epochs
        self.error_score = error_score
        self.return_train_score = return_train_score
        self.storage = storage
        self.name = name
        self.random_state = random_state
        self.tensorboard = tensorboard
        self.verbose = verbose
        self.loggers = loggers

    # scikit-learn's parameter API (plain, no nested estimators to clone)
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        import inspect

        return {k: getattr(self, k) for k in inspect.signature(type(self).__init__).parameters if k != "self"}

    def set_params(self, **params: Any) -> TorchSearchCV:
        for k, v in params.items():
            setattr(self, k, v)
        return self

    # -- set-up ------------------------------------------------------------------------------------
    def _scorers(self) -> tuple[dict[str, Any], bool]:
        from sklearn.metrics import check_scoring, get_scorer

        scoring = self.scoring
        if scoring is None or isinstance(scoring, str) or callable(scoring):
            return {"score": check_scoring(self.estimator, scoring=scoring)}, False
        if isinstance(scoring, (list, tuple, set)):
            return {name: get_scorer(name) for name in scoring}, True
        if isinstance(scoring, Mapping):
            return {k: get_scorer(v) if isinstance(v, str) else v for k, v in scoring.items()}, True
        raise ConfigError([f"scoring: must be a name, a callable, a list or a dict, got {scoring!r}"])

    def _refit_metric(self, scorers: dict, multimetric: bool) -> str:
        if not multimetric:
            return "score"
        if isinstance(self.refit, str):
            if self.refit not in scorers:
                raise ConfigError([f"refit: {self.refit!r} is not one of the scorers {sorted(scorers)}"])
            return self.refit
        if self.refit is True:
            raise ConfigError(["refit: with several metrics, refit must name the metric to pick the best "
                               f"candidate by (one of {sorted(scorers)}), be a callable, or be False"])
        return next(iter(scorers))

    def _experiment(self, space: dict, search: str, metric: str, max_epochs: int, num_samples: int) -> Any:
        """The search as an experiment: the searcher, scheduler and resources follow the
        experiment-file rules; the model and data are the estimator's and ``fit``'s (CVSpec)."""
        from .config import (CheckpointConfig, ComponentConfig, DataConfig, ExperimentConfig, Problems,
                             ResourcesConfig, SearchConfig, TrainConfig, parse_scheduler)
        from .config.loggers import parse_loggers

        problems = Problems()
        scheduler = parse_scheduler(self.scheduler, problems, max_epochs=max_epochs)
        loggers = parse_loggers(self.loggers, problems)
        if problems:
            raise ConfigError(list(problems))
        resources = dict(self.resources or {"cpu": 1, "gpu": 0})
        return ExperimentConfig(
            name=self.name or f"torchsearchcv-{time.strftime('%Y%m%d-%H%M%S')}",
            model=ComponentConfig("sklearn"), data=DataConfig(), seed=int(self.random_state or 0),
            storage=str(self.storage), train=TrainConfig(max_epochs=max_epochs), space=space,
            search=SearchConfig(algorithm=search, num_samples=num_samples, metric=metric, mode="max",
                                max_concurrent=self.n_jobs if self.n_jobs and self.n_jobs > 0 else None),
            scheduler=scheduler,
            resources=ResourcesConfig(cpu=float(resources.get("cpu", 1)), gpu=float(resources.get("gpu", 0))),
            checkpoint=CheckpointConfig(), max_failures=0, tensorboard=self.tensorboard, loggers=loggers,
        )

    def _space(self, search: str, grid: bool) -> tuple[dict, list[dict] | None, list[dict] | None]:
        """``(space, candidates, candidates the trials index)``: a grid's candidates in
        scikit-learn's order; a list of grids becomes one index dimension."""
        from sklearn.model_selection import ParameterGrid

        if grid and search == "grid":
            candidates = list(ParameterGrid(self.params))
            if isinstance(self.params, Mapping):  # one grid: trials carry the parameters themselves
                return {k: sp.Grid(list(v)) for k, v in self.params.items()}, candidates, None
            return {"__candidate__": sp.Grid(list(range(len(candidates))))}, candidates, candidates
        if not isinstance(self.params, Mapping):
            raise ConfigError([f"params: search {search!r} needs one dict of parameter distributions"])
        return params_to_space(self.params, search), None, None

    # -- fit ---------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, groups: Any = None, **fit_params: Any) -> TorchSearchCV:
        """Run the search on Ray (a private local instance unless Ray is already running)."""
        from sklearn.base import clone, is_classifier
        from sklearn.model_selection import check_cv
        from sklearn.utils import indexable

        X, y, groups = indexable(X, y, groups)
        final = self.estimator.steps[-1][1] if hasattr(self.estimator, "steps") else self.estimator
        if not hasattr(final, "partial_fit"):
            raise ConfigError(["estimator: the final estimator must support partial_fit (one epoch per call), "
                               "e.g. raytune_torch.TorchClassifier / TorchRegressor"])
        scorers, multimetric = self._scorers()
        refit_metric = self._refit_metric(scorers, multimetric)
        cv = check_cv(self.cv, y, classifier=is_classifier(self.estimator))
        splits = list(cv.split(X, y, groups))
        grid = _is_grid(self.params)
        search = self.search or ("grid" if grid else "random")
        space, candidates, candidates_for_trials = self._space(search, grid)
        max_epochs = int(self.max_epochs or getattr(final, "max_epochs", 10))
        num_samples = 1 if search == "grid" else int(self.n_iter)
        metric = f"mean_test_{refit_metric}"
        config = self._experiment(space, search, metric, max_epochs, num_samples)
        if _is_uri(config.storage):
            raise ValueError(f"storage={self.storage!r}: TorchSearchCV keeps its run directory on a path (local or "
                             f"shared); object-store URIs are for experiment files (raytune_torch.run)")
        classes = np.unique(np.asarray(y)) if is_classifier(self.estimator) else None
        spec = CVSpec(X=X, y=y, splits=splits, estimator=clone(self.estimator), scorers=scorers,
                      max_epochs=max_epochs, error_score=self.error_score,
                      return_train_score=self.return_train_score, candidates=candidates_for_trials,
                      classes=classes, random_state=int(self.random_state or 0))
        kinds = ["test", "train"] if self.return_train_score else ["test"]
        metric_names = tuple(f"{stat}_{kind}_{name}" for kind in kinds for name in scorers for stat in ("mean", "std"))
        storage = os.path.abspath(config.storage)
        result_grid = self._tune(config, spec, storage, metric_names)
        self.run_dir_ = os.path.join(storage, config.name)
        self._collect(result_grid, candidates, scorers, len(splits), metric_names)
        self.multimetric_ = multimetric
        self.scorer_ = scorers if multimetric else scorers["score"]
        self.n_splits_ = len(splits)
        if self.refit is not False:
            self._refit(X, y, refit_metric, fit_params)
        return self

    def _tune(self, config: Any, spec: CVSpec, storage: str, metric_names: tuple[str, ...]) -> Any:
        """One trial per candidate on Ray, each running :func:`run_cv_trial`."""
        import functools

        from . import _ray
        from .trackers import check_trackers

        trial_fn = functools.partial(run_cv_trial, cpus=config.resources.cpu, gpu_share=config.resources.gpu)
        check_trackers(config)
        owned = _ray.start_local()
        try:
            _ray.check_resources(config.resources.cpu, config.resources.gpu)
            plan = _ray.build_search(config)
            callbacks = [_ray.ConsoleCallback(config.search.primary_metric, plan.total)] if self.verbose else []
            shared, _ = _ray.share(spec)
            return _ray.run_tuner(config, shared, trial_fn, run_dir_parent=storage, callbacks=callbacks,
                                  metric_names=metric_names, plan=plan)
        finally:
            if owned:
                _ray.shutdown()

    def _refit(self, X: Any, y: Any, refit_metric: str, fit_params: dict) -> None:
        from sklearn.base import clone

        self.best_index_ = int(self.refit(self.cv_results_)) if callable(self.refit) else \
            int(np.asarray(self.cv_results_[f"rank_test_{refit_metric}"]).argmin())
        self.best_params_ = self.cv_results_["params"][self.best_index_]
        if not callable(self.refit):
            self.best_score_ = float(self.cv_results_[f"mean_test_{refit_metric}"][self.best_index_])
        start = time.perf_counter()
        self.best_estimator_ = clone(self.estimator).set_params(**clone(self.best_params_, safe=False))
        self.best_estimator_.fit(X, y, **fit_params)
        self.refit_time_ = time.perf_counter() - start

    def _collect(self, result_grid: Any, candidates: list[dict] | None, scorers: dict, n_splits: int,
                 metric_names: tuple[str, ...]) -> None:
        from numpy.ma import MaskedArray

        trials = []
        for result in result_grid:
            params = dict(result.config or {})
            if "__candidate__" in params:
                params = dict(candidates[params.pop("__candidate__")])
            trials.append((result, params))
        if candidates is not None:
            def position(p):
                for i, c in enumerate(candidates):
                    if c == p:
                        return i
                return len(candidates)
            trials.sort(key=lambda rp: position(rp[1]))
        else:
            trials.sort(key=lambda rp: rp[0].path)
        errors = [(p, r.error) for r, p in trials if r.error is not None]
        if errors and self.error_score == "raise":
            raise errors[0][1]
        n = len(trials)
        results: dict[str, Any] = {}
        for key in ("fit_time", "score_time"):
            results[f"mean_{key}"] = np.array([(r.metrics or {}).get(f"mean_{key}", np.nan) for r, _ in trials])
            results[f"std_{key}"] = np.array([(r.metrics or {}).get(f"std_{key}", np.nan) for r, _ in trials])
        names = sorted({k for _, p in trials for k in p})
        for name in names:
            column = MaskedArray(np.empty(n, dtype=object), mask=True)
            for i, (_, p) in enumerate(trials):
                if name in p:
                    column[i] = p[name]
            results[f"param_{name}"] = column
        results["params"] = [p for _, p in trials]
        kinds = ["test", "train"] if self.return_train_score else ["test"]
        for kind in kinds:
            for metric in scorers:
                for k in range(n_splits):
                    results[f"split{k}_{kind}_{metric}"] = np.array(
                        [_metric(r, f"split{k}_{kind}_{metric}", self.error_score) for r, _ in trials])
                results[f"mean_{kind}_{metric}"] = np.array(
                    [_metric(r, f"mean_{kind}_{metric}", self.error_score) for r, _ in trials])
                results[f"std_{kind}_{metric}"] = np.array(
                    [_metric(r, f"std_{kind}_{metric}", self.error_score) for r, _ in trials])
                if kind == "test":
                    results[f"rank_test_{metric}"] = _rank(results[f"mean_test_{metric}"].astype(float))
        failed = sum(1 for r, _ in trials if r.error is not None or (r.metrics or {}).get("fit_failed"))
        if failed and failed == n:
            first = next((r.error for r, _ in trials if r.error is not None), None)
            message = str(first).strip().splitlines()[-1] if first is not None else \
                next((r.metrics or {}).get("fit_error") for r, _ in trials if (r.metrics or {}).get("fit_error"))
            raise ValueError(f"All the {n} candidates failed to fit; the first error: {message}")
        if failed:
            from sklearn.exceptions import FitFailedWarning

            warnings.warn(f"{failed} of the {n} candidates failed to fit; their scores are set to "
                          f"error_score={self.error_score!r}", FitFailedWarning, stacklevel=3)
        self.cv_results_ = results
        self.trial_epochs_ = np.array([int((r.metrics or {}).get("epoch", 0)) for r, _ in trials])
        from .results import write_trial_table

        write_trial_table(trials, metric_names, self.run_dir_)

    # -- delegation to the best estimator ----------------------------------------------------------
    def _best(self) -> Any:
        if not hasattr(self, "best_estimator_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("this TorchSearchCV is not fitted with refit; call fit(X, y) with refit set")
        return self.best_estimator_

    def predict(self, X: Any) -> Any:
        return self._best().predict(X)

    def predict_proba(self, X: Any) -> Any:
        return self._best().predict_proba(X)

    def score(self, X: Any, y: Any = None) -> float:
        best = self._best()
        scorer = self.scorer_[self.refit] if self.multimetric_ else self.scorer_
        return float(scorer(best, X, y))

    @property
    def classes_(self) -> Any:
        return self._best().classes_


def _metric(result: Any, key: str, error_score: Any) -> float:
    value = (result.metrics or {}).get(key)
    if value is None:
        return float(error_score) if error_score != "raise" else np.nan
    return float(value)


def _is_uri(location: str) -> bool:
    from .storage import is_uri

    return is_uri(location)
