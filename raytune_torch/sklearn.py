"""scikit-learn estimators around a PyTorch module: :class:`TorchClassifier`, :class:`TorchRegressor`.

They work wherever a scikit-learn estimator does (``GridSearchCV``, ``Pipeline``,
``cross_val_score``, ``clone``, pickle) and know nothing of Ray::

    from sklearn.model_selection import GridSearchCV
    from examples.models import MLP
    from raytune_torch.sklearn import TorchClassifier

    grid = {"module__hidden": [16, 64], "lr": [0.003, 0.03], "optimizer__weight_decay": [0.0, 1e-4]}
    search = GridSearchCV(TorchClassifier(MLP, max_epochs=20, random_state=0), grid, cv=5).fit(X, y)

Parameters are routed by name (skorch style), through :mod:`raytune_torch.components`:
``module__hidden=64`` becomes ``MLP(hidden=64)``; ``optimizer__*`` go to the optimizer (``lr`` is
the optimizer's ``lr`` unless ``optimizer__lr`` is given); ``criterion__*`` go to the loss.
``in_features`` and ``out_features`` are filled in from the data when the module's constructor
takes them and they are not given.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ._names import ESTIMATOR_PREFIXES as PREFIXES
from ._names import fix_prefix, is_routed, suggest
from .components import build_loss, build_model, build_optimizer, params_for
from .config.train import PRECISIONS
from .data import as_tensors, iterate_batches
from .loop import StepContext, evaluate, make_scaler, predict, train_epoch

__all__ = ["TorchClassifier", "TorchRegressor"]

# Names people write for a parameter of another library, and ours.
_ALIASES = {
    "learning_rate": "lr",
    "learning_rate_init": "lr",
    "eta": "lr",
    "epochs": "max_epochs",
    "n_epochs": "max_epochs",
    "num_epochs": "max_epochs",
    "max_iter": "max_epochs",
    "loss": "criterion",
    "seed": "random_state",
    "patience": "n_iter_no_change",
    "val_fraction": "validation_fraction",
    "validation_split": "validation_fraction",
}
# Prefixes people write (one underscore, or another library's word) and ours.
_PREFIX_STEMS = {"module": "module__", "model": "module__", "optimizer": "optimizer__",
                 "criterion": "criterion__", "loss": "criterion__"}
# Seed purposes: a fit draws one seed, and each use derives its own stream from it.
_INIT, _SPLIT, _EPOCH = 0, 1, 2


def _is_routed(key: str) -> bool:
    return is_routed(key, PREFIXES)


def _suggestion(key: str, names: list[str]) -> str | None:
    fixed = fix_prefix(key, _PREFIX_STEMS)
    if fixed is not None:
        return fixed
    if key.lower() in _ALIASES:
        return _ALIASES[key.lower()]
    return suggest(key, names)


def _unexpected(owner: str, keys: list[str], names: list[str]) -> str:
    lines = []
    for key in sorted(keys):
        hint = _suggestion(key, names)
        if hint is not None:
            lines.append(f"Got an unexpected argument {key}, did you mean {hint}?")
        else:
            lines.append(f"Got an unexpected argument {key}; {owner} takes {', '.join(names)}, "
                         f"and module__*, optimizer__* and criterion__* arguments.")
    return "\n".join(lines)


def _derive_seed(seed: int, purpose: int, step: int = 0) -> int:
    return int(np.random.SeedSequence([seed, purpose, step]).generate_state(1)[0])


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class _TorchEstimator(BaseEstimator):
    """What the classifier and the regressor share: parameters, training, pickling."""

    _task = ""
    _default_criterion = ""

    def __init__(self, module: type[nn.Module] | Callable[..., nn.Module] | str, *, max_epochs: int = 10,
                 batch_size: int = 64, lr: float = 0.01, optimizer: str | Callable = "adam",
                 criterion: str | Callable | None = None, device: str = "cpu", random_state: Any = None,
                 early_stopping: bool = False, validation_fraction: float = 0.1,
                 n_iter_no_change: int = 3, verbose: int = 0, precision: str = "32", **kwargs: Any) -> None:
        self.module = module
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.criterion = criterion
        self.device = device
        self.random_state = random_state
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.verbose = verbose
        self.precision = precision
        unexpected = [key for key in kwargs if not _is_routed(key)]
        if unexpected:
            raise TypeError(_unexpected(type(self).__name__, unexpected, self._get_param_names()))
        for key, value in kwargs.items():
            setattr(self, key, value)

    # --- parameters ------------------------------------------------------------------------------

    def _routed_params(self) -> dict[str, Any]:
        return {key: value for key, value in sorted(vars(self).items()) if _is_routed(key)}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The named parameters and every ``module__*``, ``optimizer__*``, ``criterion__*`` one."""
        return {**super().get_params(deep=deep), **self._routed_params()}

    def set_params(self, **params: Any) -> _TorchEstimator:
        """Set parameters; ``module__*``, ``optimizer__*``, ``criterion__*`` ones may be new.

        They take effect at the next ``fit`` (or first ``partial_fit``).
        """
        names = self._get_param_names()
        unknown = [key for key in params if not _is_routed(key) and key not in names]
        if unknown:
            raise ValueError(_unexpected(type(self).__name__, unknown, names))
        for key in [key for key in params if _is_routed(key)]:
            setattr(self, key, params.pop(key))
        super().set_params(**params)
        return self

    def _check_hyperparameters(self) -> None:
        problems = []
        for name, minimum in (("max_epochs", 1), ("batch_size", 1), ("n_iter_no_change", 1), ("verbose", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                problems.append(f"{name} must be an integer >= {minimum}, got {value!r}")
        fraction = self.validation_fraction
        if self.early_stopping and not (isinstance(fraction, numbers.Real) and 0 < fraction < 1):
            problems.append(f"validation_fraction must be a number in (0, 1), both ends exclusive, got {fraction!r}")
        if isinstance(self.precision, bool) or str(self.precision) not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {self.precision!r}")
        for name in ("module", "criterion"):
            if isinstance(getattr(self, name), nn.Module):
                problems.append(f"{name} must be a class or factory, not an instance of "
                                f"{type(getattr(self, name)).__name__}; pass the class and give its "
                                f"arguments as {name}__*")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))

    # --- building and training ---------------------------------------------------------------------

    def _torch_device(self) -> torch.device:
        return torch.device(self.device)

    @contextlib.contextmanager
    def _seeded(self, purpose: int, step: int = 0) -> Iterator[None]:
        """Seed torch's generator of ``device`` for one use, then restore the caller's state.

        Module initialization, batch order and dropout are reproducible from ``random_state``,
        and the process's global RNG streams are left as they were.
        """
        seed = _derive_seed(self._seed, purpose, step)
        device = self._torch_device()
        if device.type == "cpu":
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                yield
        elif device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            with torch.random.fork_rng(devices=[index], device_type="cuda"), torch.cuda.device(index):
                torch.default_generator.manual_seed(seed)
                torch.cuda.manual_seed(seed)
                yield
        else:  # other accelerators: seed them all (their state is not restored)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                yield

    def _initialize(self, n_features: int, n_outputs: int) -> None:
        """Build ``module_``, ``optimizer_``, ``criterion_`` afresh; no training."""
        self._seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        routed = self._routed_params()
        device = self._torch_device()
        with self._seeded(_INIT):
            module = build_model(self.module, {}, routed, in_features=n_features, out_features=n_outputs)
        self.module_ = module.to(device)
        self.criterion_ = build_loss(self.criterion or self._default_criterion,
                                     params_for("criterion", routed), {}, self._task).to(device)
        optimizer_args = params_for("optimizer", routed)
        optimizer_args.setdefault("lr", self.lr)
        self.optimizer_ = build_optimizer(self.optimizer, optimizer_args, {}, self.module_)
        self.scaler_ = make_scaler(device, str(self.precision))
        self.history_: list[dict[str, Any]] = []
        self.n_epochs_ = 0

    def _tensors(self, X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        device = self._torch_device()
        X_t, y_t = as_tensors(np.ascontiguousarray(X), np.ascontiguousarray(y))
        return X_t.to(device), y_t.to(device)

    def _epoch(self, X: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, Any], float]:
        """One epoch over (X, y), shuffled; appends to ``history_``, counts ``n_epochs_``.

        Returns the ``history_`` entry and the seconds it took.
        """
        start = time.perf_counter()
        ctx = StepContext(self.module_, self.optimizer_, self.criterion_, self._torch_device(),
                          precision=str(self.precision), scaler=self.scaler_)
        with self._seeded(_EPOCH, self.n_epochs_ + 1):
            loss = train_epoch(ctx, iterate_batches(X, y, self.batch_size, shuffle=True))
        self.n_epochs_ += 1
        entry = {"epoch": self.n_epochs_, "train_loss": loss}
        self.history_.append(entry)
        if not math.isfinite(loss):
            lr = self.optimizer_.param_groups[0].get("lr")
            raise ValueError(
                f"{type(self).__name__}: training diverged: the train loss is {loss} in epoch "
                f"{self.n_epochs_}; lower the learning rate (lr={lr}) or scale the inputs (StandardScaler)")
        return entry, time.perf_counter() - start

    def _report(self, entry: dict[str, Any], seconds: float, *, of: int | None = None) -> None:
        """The ``verbose`` line of one epoch (``of``: the epochs planned)."""
        if self.verbose:
            planned = f"/{of}" if of else ""
            valid = f" valid_loss={entry['valid_loss']:.4f}" if "valid_loss" in entry else ""
            print(f"{type(self).__name__}: epoch {entry['epoch']}{planned} train_loss={entry['train_loss']:.4f}"
                  f"{valid} ({seconds:.2f}s)", file=sys.stdout, flush=True)

    def _train(self, X: np.ndarray, y: np.ndarray) -> None:
        """``max_epochs`` epochs; with ``early_stopping``, on an inner split of (X, y) only."""
        if not self.early_stopping:
            X_t, y_t = self._tensors(X, y)
            for _ in range(self.max_epochs):
                self._report(*self._epoch(X_t, y_t), of=self.max_epochs)
            return
        X_tr, X_va, y_tr, y_va = self._inner_split(X, y)
        X_tr, y_tr = self._tensors(X_tr, y_tr)
        X_va, y_va = self._tensors(X_va, y_va)
        device = self._torch_device()
        best_loss, best_state, since_best = math.inf, None, 0
        for _ in range(self.max_epochs):
            entry, seconds = self._epoch(X_tr, y_tr)
            valid = iterate_batches(X_va, y_va, self.batch_size, shuffle=False)
            entry["valid_loss"] = evaluate(self.module_, valid, self.criterion_, device, self._task, [],
                                           precision=str(self.precision))["loss"]
            self._report(entry, seconds, of=self.max_epochs)
            if entry["valid_loss"] < best_loss:
                best_loss, since_best = entry["valid_loss"], 0
                best_state = (copy.deepcopy(self.module_.state_dict()), copy.deepcopy(self.optimizer_.state_dict()))
            else:
                since_best += 1
                if since_best >= self.n_iter_no_change:
                    break
        if best_state is not None:
            self.module_.load_state_dict(best_state[0])
            self.optimizer_.load_state_dict(best_state[1])

    def _inner_split(self, X: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
        seed = _derive_seed(self._seed, _SPLIT)
        stratify = y if self._task == "classification" else None
        try:
            return train_test_split(X, y, test_size=self.validation_fraction, random_state=seed, stratify=stratify)
        except ValueError as exc:
            if stratify is None:
                raise
            warnings.warn(f"{type(self).__name__}: early stopping's validation split is not stratified "
                          f"({exc})", UserWarning, stacklevel=4)
            return train_test_split(X, y, test_size=self.validation_fraction, random_state=seed)

    def _outputs(self, X: Any) -> np.ndarray:
        """The module's outputs for X, float64, in eval mode, in batches of ``batch_size``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        (X_t,) = as_tensors(np.ascontiguousarray(X))
        out = predict(self.module_, iterate_batches(X_t, X_t, self.batch_size, shuffle=False),
                      self._torch_device(), precision=str(self.precision))
        return out.numpy().astype(np.float64).reshape(len(X), -1)

    # --- pickling ------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Plain pickling (so cloudpickle can carry a module class defined in ``__main__``), with
        the fitted module, loss and optimizer state on the CPU: a GPU-fitted estimator loads anywhere."""
        state = dict(super().__getstate__())  # object.__getstate__ returns __dict__ itself
        if "module_" in state and self._torch_device().type != "cpu":
            parts = copy.deepcopy({key: state[key] for key in _TORCH_ATTRS})  # one copy keeps the links
            _move_fitted(parts, torch.device("cpu"))
            state.update(parts)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "module_" not in state:
            return
        device = self._torch_device()
        if device.type == "cuda" and not torch.cuda.is_available():
            warnings.warn(f"{type(self).__name__} was fitted on {self.device!r}, but CUDA is not available "
                          f"here; it stays on the CPU (device='cpu')", UserWarning, stacklevel=2)
            self.device = "cpu"
        elif device.type != "cpu":
            _move_fitted(self.__dict__, device)


_TORCH_ATTRS = ("module_", "optimizer_", "criterion_")


def _move_fitted(parts: dict[str, Any], device: torch.device) -> None:
    """Move ``module_`` and ``criterion_`` to ``device``, and the optimizer's state with them."""
    parts["module_"].to(device)
    parts["criterion_"].to(device)
    optimizer = parts["optimizer_"]
    optimizer.load_state_dict(optimizer.state_dict())  # casts its state to its parameters' device


class TorchClassifier(ClassifierMixin, _TorchEstimator):
    """A PyTorch classifier with the scikit-learn API.

    ``module`` builds a network that maps float32 features ``(n, n_features)`` to logits
    ``(n, n_classes)`` (two for a binary problem); it is a ``torch.nn.Module`` class, a factory
    returning one, or an import path ``package.module:Name``. Labels may be of any type (ints,
    strings); they are encoded to ``0..n_classes-1`` in the order of ``classes_``, which is also the
    order of ``criterion__weight``. ``criterion`` (default ``"cross_entropy"``) takes the logits and
    those indices.

    Args:
        module: the network's class or factory; ``module__*`` arguments go to it.
        max_epochs: epochs that ``fit`` trains (fewer when early stopping stops it), >= 1.
        batch_size: rows per optimizer step, and per forward pass when predicting, >= 1.
        lr: the optimizer's learning rate, unless ``optimizer__lr`` is given.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"``, ``"adagrad"``, a class or an import path.
        criterion: the loss: a name (``"cross_entropy"``, ``"nll"``, ...), a class or an import path.
        device: where the module trains and predicts (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        random_state: an int gives the same weights, batches and predictions on every fit.
        early_stopping: hold out ``validation_fraction`` of the data passed to ``fit`` (stratified),
            stop after ``n_iter_no_change`` epochs without a lower validation loss, and keep the
            weights of the best epoch. ``partial_fit`` never stops early.
        validation_fraction: in (0, 1), both ends exclusive.
        n_iter_no_change: epochs without improvement before stopping, >= 1.
        verbose: 1 prints one line per epoch.
        precision: ``"32"``, ``"bf16"`` or ``"fp16"``: the forward pass and loss run under autocast
            to that dtype, fp16 with a gradient scaler (``train.precision`` of an experiment file).
        **kwargs: ``module__*``, ``optimizer__*`` and ``criterion__*`` arguments only.

    Attributes:
        classes_: the labels, sorted.
        n_features_in_, feature_names_in_: as everywhere in scikit-learn.
        module_, optimizer_, criterion_: the trained network, its optimizer and its loss.
        scaler_: the ``torch.amp.GradScaler`` of fp16 (disabled at the other precisions).
        history_: one dict per epoch: ``epoch`` (from 1), ``train_loss``, and ``valid_loss`` with
            early stopping.
        n_epochs_: epochs trained since the last ``fit`` (or first ``partial_fit``).
    """

    _task = "classification"
    _default_criterion = "cross_entropy"

    def _targets(self, X: Any, y: Any, *, reset: bool, classes: Any = None) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, reset=reset, dtype=np.float32)
        check_classification_targets(y)
        if reset:
            self.classes_ = np.unique(y if classes is None else np.asarray(classes))
        unknown = np.setdiff1d(y, self.classes_)
        if len(unknown):
            raise ValueError(f"{type(self).__name__}: y has labels {unknown[:5].tolist()} that are not in "
                             f"classes_ {self.classes_.tolist()}; pass every label as classes= on the "
                             f"first call to partial_fit")
        return X, np.searchsorted(self.classes_, y).astype(np.int64)

    def fit(self, X: Any, y: Any) -> TorchClassifier:
        """Build the module afresh and train it ``max_epochs`` epochs (fewer with early stopping)."""
        self._check_hyperparameters()
        X, y = self._targets(X, y, reset=True)
        self._initialize(X.shape[1], len(self.classes_))
        self._train(X, y)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> TorchClassifier:
        """Train exactly one epoch over (X, y); the first call builds the module.

        ``classes`` (every label of every call, e.g. ``np.unique(y_all)``) is required on the first
        call, as for ``SGDClassifier``; later it may be left out, or must be the same labels.
        """
        self._check_hyperparameters()
        first = not hasattr(self, "module_")
        if first and classes is None:
            raise ValueError(f"{type(self).__name__}: classes must be passed on the first call to "
                             f"partial_fit, e.g. classes=np.unique(y_all)")
        if not first and classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"{type(self).__name__}: classes={np.unique(classes).tolist()} is not "
                             f"classes_={self.classes_.tolist()} of the first call to partial_fit")
        X, y = self._targets(X, y, reset=first, classes=classes)
        if first:
            self._initialize(X.shape[1], len(self.classes_))
        X_t, y_t = self._tensors(X, y)
        self._report(*self._epoch(X_t, y_t))
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """The logits ``(n, n_classes)``; binary: ``logit[1] - logit[0]`` ``(n,)``, > 0 for ``classes_[1]``."""
        logits = self._outputs(X)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X: Any) -> np.ndarray:
        """Softmax of the logits, ``(n, n_classes)`` in the order of ``classes_``."""
        return softmax(self._outputs(X), axis=1)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        return log_softmax(self._outputs(X), axis=1)

    def predict(self, X: Any) -> np.ndarray:
        """The label of the highest logit."""
        logits = self._outputs(X)
        return self.classes_[logits.argmax(axis=1)]


class TorchRegressor(RegressorMixin, _TorchEstimator):
    """A PyTorch regressor with the scikit-learn API.

    ``module`` maps float32 features ``(n, n_features)`` to ``(n, n_targets)`` outputs
    (``out_features`` is ``n_targets``: 1 for a 1-D y). ``criterion`` defaults to ``"mse"``. A 1-D
    y gives 1-D predictions; a 2-D y gives 2-D ones. Scale y for the network (e.g. with
    ``TransformedTargetRegressor``). Parameters and attributes are those of
    :class:`TorchClassifier`, with ``n_outputs_`` (targets) instead of ``classes_``; early
    stopping's validation split is not stratified.
    """

    _task = "regression"
    _default_criterion = "mse"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _targets(self, X: Any, y: Any, *, reset: bool) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, reset=reset, dtype=np.float32, multi_output=True, y_numeric=True)
        y = np.asarray(y, dtype=np.float32)
        y2 = y.reshape(-1, 1) if y.ndim == 1 else y
        if reset:
            self.n_outputs_ = y2.shape[1]
            self._y_1d = y.ndim == 1
        elif y2.shape[1] != self.n_outputs_:
            raise ValueError(f"{type(self).__name__}: y has {y2.shape[1]} target(s), but the model was "
                             f"built for {self.n_outputs_}; pass the same targets on every call")
        return X, y2

    def fit(self, X: Any, y: Any) -> TorchRegressor:
        """Build the module afresh and train it ``max_epochs`` epochs (fewer with early stopping)."""
        self._check_hyperparameters()
        X, y = self._targets(X, y, reset=True)
        self._initialize(X.shape[1], self.n_outputs_)
        self._train(X, y)
        return self

    def partial_fit(self, X: Any, y: Any) -> TorchRegressor:
        """Train exactly one epoch over (X, y); the first call builds the module."""
        self._check_hyperparameters()
        first = not hasattr(self, "module_")
        X, y = self._targets(X, y, reset=first)
        if first:
            self._initialize(X.shape[1], self.n_outputs_)
        X_t, y_t = self._tensors(X, y)
        self._report(*self._epoch(X_t, y_t))
        return self

    def predict(self, X: Any) -> np.ndarray:
        """The module's outputs, float64: ``(n,)`` when fitted on a 1-D y, else ``(n, n_targets)``."""
        out = self._outputs(X)
        return out.ravel() if self._y_1d else out
