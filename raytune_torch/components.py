"""The only place that turns a trial's parameters into objects.

Routing (skorch style): ``module__hidden=64`` becomes ``Model(hidden=64)``; ``optimizer__lr`` and
``lr`` go to the optimizer; ``loss__*`` to the loss; ``lr_scheduler__*`` to the LR scheduler;
``optimizer`` (a name) picks the optimizer; ``batch_size`` sizes the loaders.

Names: optimizers ``adam, adamw, sgd, rmsprop, adagrad``; losses ``cross_entropy, nll, mse, l1,
huber, smooth_l1, bce_with_logits``; LR schedulers ``step, multistep, exponential, cosine,
plateau``; or any ``package.module:Name`` import path, or a Python callable.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .exceptions import PreflightError

__all__ = [
    "resolve",
    "params_for",
    "build_model",
    "build_optimizer",
    "build_loss",
    "build_lr_scheduler",
    "OPTIMIZERS",
    "LOSSES",
    "LR_SCHEDULERS",
]

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}
LOSSES = {
    "cross_entropy": nn.CrossEntropyLoss,
    "nll": nn.NLLLoss,
    "mse": nn.MSELoss,
    "l1": nn.L1Loss,
    "huber": nn.HuberLoss,
    "smooth_l1": nn.SmoothL1Loss,
    "bce_with_logits": nn.BCEWithLogitsLoss,
}
LR_SCHEDULERS = {
    "step": torch.optim.lr_scheduler.StepLR,
    "multistep": torch.optim.lr_scheduler.MultiStepLR,
    "exponential": torch.optim.lr_scheduler.ExponentialLR,
    "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
    "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau,
}


def resolve(target: str | Callable, *, what: str, names: Mapping[str, Any] | None = None,
            import_paths: tuple[str, ...] = ()) -> Any:
    """Turn a name, an import path ``pkg.mod:Name`` or a callable into the object it names."""
    if not isinstance(target, str):
        return target
    if names is not None and target.lower() in names:
        return names[target.lower()]
    if ":" not in target:
        known = f" (built in: {', '.join(names)})" if names else ""
        raise PreflightError(f"{what} {target!r} is not known{known}; or give an import path `package.module:Name`")
    for path in (os.getcwd(), *import_paths):  # like `python -m`: the working directory first
        if path not in sys.path:
            sys.path.append(path)
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PreflightError(
            f"{what} {target!r}: cannot import module {module_name!r} ({exc}); check the path and that "
            f"the module is importable from the working directory"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PreflightError(f"{what} {target!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


def params_for(prefix: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that start with ``prefix__``, with the prefix removed."""
    head = prefix + "__"
    return {k[len(head):]: v for k, v in params.items() if k.startswith(head)}


def _call(factory: Callable, what: str, *args: Any, **kwargs: Any) -> Any:
    try:
        inspect.signature(factory).bind(*args, **kwargs)
    except TypeError as exc:
        name = getattr(factory, "__qualname__", repr(factory))
        raise PreflightError(f"{what} {name}: {exc}; check the arguments (`args` in the file, `{what}__*` trial parameters)") from None
    except ValueError:
        pass  # no signature (builtins): just call it
    return factory(*args, **kwargs)


def build_model(target: str | Callable, args: Mapping[str, Any], params: Mapping[str, Any], *,
                in_features: int | None = None, out_features: int | None = None,
                import_paths: tuple[str, ...] = ()) -> nn.Module:
    """Instantiate the model from fixed ``args`` and ``module__*`` trial parameters.

    ``in_features`` / ``out_features`` (from the data) are passed when the constructor takes
    arguments of those names and neither the file nor the trial sets them.
    """
    factory = resolve(target, what="model", import_paths=import_paths)
    kwargs = {**dict(args), **params_for("module", params)}
    for key, value in (("in_features", in_features), ("out_features", out_features)):
        if value is not None and key not in kwargs and _has_param(factory, key):
            kwargs[key] = value
    model = _call(factory, "module", **kwargs)
    if not isinstance(model, nn.Module):
        raise PreflightError(f"model {target!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _has_param(factory: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def build_optimizer(spec_name: str | Callable, args: Mapping[str, Any], params: Mapping[str, Any],
                    model: nn.Module, *, import_paths: tuple[str, ...] = ()) -> torch.optim.Optimizer:
    """The optimizer: ``optimizer`` param (a name) overrides the file; ``lr`` and ``optimizer__*`` add."""
    name = params.get("optimizer", spec_name)
    factory = resolve(name, what="optimizer", names=OPTIMIZERS, import_paths=import_paths)
    kwargs = {**dict(args), **params_for("optimizer", params)}
    if "lr" in params:
        kwargs["lr"] = params["lr"]
    return _call(factory, "optimizer", model.parameters(), **kwargs)


def default_loss(task: str) -> str:
    return "cross_entropy" if task == "classification" else "mse"


def build_loss(spec_name: str | Callable | None, args: Mapping[str, Any], params: Mapping[str, Any],
               task: str, *, import_paths: tuple[str, ...] = ()) -> nn.Module:
    factory = resolve(spec_name or default_loss(task), what="loss", names=LOSSES, import_paths=import_paths)
    kwargs = {**dict(args), **params_for("loss", params)}
    if "weight" in kwargs and isinstance(kwargs["weight"], (list, tuple)):
        kwargs["weight"] = torch.tensor(kwargs["weight"], dtype=torch.float32)
    return _call(factory, "loss", **kwargs)


def build_lr_scheduler(spec_name: str | Callable | None, args: Mapping[str, Any],
                       params: Mapping[str, Any], optimizer: torch.optim.Optimizer, *,
                       import_paths: tuple[str, ...] = ()) -> Any:
    if spec_name is None:
        return None
    factory = resolve(spec_name, what="lr_scheduler", names=LR_SCHEDULERS, import_paths=import_paths)
    kwargs = {**dict(args), **params_for("lr_scheduler", params)}
    return _call(factory, "lr_scheduler", optimizer, **kwargs)


def describe(target: str | Callable) -> str:
    """A printable (and re-importable, where possible) name for a component."""
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if module and qualname and module != "__main__" and "<locals>" not in qualname:
        return f"{module}:{qualname}"
    return repr(target)
