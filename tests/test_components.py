"""Turning names, import paths and trial parameters into models, optimizers, losses (no Ray)."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from examples.models import MLP
from raytune_torch import components as comp
from raytune_torch.exceptions import PreflightError

MODULE_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, in_features, out_features, hidden=4):
            super().__init__()
            self.hidden = hidden
            self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.Linear(hidden, out_features))

        def forward(self, x):
            return self.body(x)

    class NoShape(nn.Module):
        def __init__(self, width=3):
            super().__init__()
            self.layer = nn.Linear(width, width)

    class Outer:
        class Inner:
            value = 42

    def not_a_module(**kwargs):
        return 3

    def make_optimizer(params, lr=0.5, damp=0.0):
        return torch.optim.SGD(params, lr=lr, dampening=damp)

    CONSTANT = "hello"
''')


@pytest.fixture
def user_module(write_module, tmp_path):
    """A module file in tmp_path with a unique name; sys.path and sys.modules are restored after."""
    return write_module(MODULE_SOURCE), (str(tmp_path),)


# --- resolve ------------------------------------------------------------------------------------


def test_resolve_builtin_names_case_insensitively():
    assert comp.resolve("adam", what="optimizer", names=comp.OPTIMIZERS) is torch.optim.Adam
    assert comp.resolve("SGD", what="optimizer", names=comp.OPTIMIZERS) is torch.optim.SGD
    assert comp.resolve("cross_entropy", what="loss", names=comp.LOSSES) is nn.CrossEntropyLoss
    assert comp.resolve("cosine", what="lr_scheduler", names=comp.LR_SCHEDULERS) is (
        torch.optim.lr_scheduler.CosineAnnealingLR)


def test_resolve_passes_callables_through():
    assert comp.resolve(MLP, what="model") is MLP
    fn = lambda: None  # noqa: E731
    assert comp.resolve(fn, what="model", names=comp.OPTIMIZERS) is fn


def test_resolve_unknown_name():
    with pytest.raises(PreflightError) as info:
        comp.resolve("adamx", what="optimizer", names=comp.OPTIMIZERS)
    assert str(info.value) == (
        "optimizer 'adamx' is not known (built in: adam, adamw, sgd, rmsprop, adagrad); "
        "or give an import path `package.module:Name`")
    with pytest.raises(PreflightError) as info:
        comp.resolve("MLP", what="model")
    assert str(info.value) == "model 'MLP' is not known; or give an import path `package.module:Name`"


def test_resolve_import_paths(user_module):
    name, paths = user_module
    assert name not in sys.modules
    net = comp.resolve(f"{name}:Net", what="model", import_paths=paths)
    assert net.__name__ == "Net" and net.__module__ == name
    assert comp.resolve(f"{name}:Outer.Inner", what="model", import_paths=paths).value == 42
    assert comp.resolve(f"{name}:CONSTANT", what="x", import_paths=paths) == "hello"
    # from the working directory (the repository root), without import paths
    assert comp.resolve("examples.models:MLP", what="model") is MLP
    # names are looked up before import paths
    assert comp.resolve("torch.optim:SGD", what="optimizer", names=comp.OPTIMIZERS) is torch.optim.SGD


def test_resolve_needs_the_import_path(user_module):
    name, _ = user_module
    with pytest.raises(PreflightError) as info:
        comp.resolve(f"{name}:Net", what="model")  # tmp_path not given
    assert str(info.value).startswith(f"model '{name}:Net': cannot import module '{name}' (No module named ")


def test_resolve_missing_module():
    with pytest.raises(PreflightError) as info:
        comp.resolve("no_such_pkg_rtt.models:Net", what="model")
    assert str(info.value) == (
        "model 'no_such_pkg_rtt.models:Net': cannot import module 'no_such_pkg_rtt.models' "
        "(No module named 'no_such_pkg_rtt'); check the path and that the module is importable "
        "from the working directory")
    assert isinstance(info.value.__cause__, ImportError)


def test_resolve_missing_attribute(user_module):
    name, paths = user_module
    with pytest.raises(PreflightError) as info:
        comp.resolve(f"{name}:Nett", what="model", import_paths=paths)
    assert str(info.value) == f"model '{name}:Nett': module '{name}' has no attribute 'Nett'"
    with pytest.raises(PreflightError) as info:
        comp.resolve(f"{name}:Outer.Missing", what="train.step", import_paths=paths)
    assert str(info.value) == f"train.step '{name}:Outer.Missing': module '{name}' has no attribute 'Outer.Missing'"


# --- params_for ---------------------------------------------------------------------------------


def test_params_for_routes_by_prefix():
    params = {
        "module__hidden": 32,
        "module__dropout": 0.1,
        "optimizer": "sgd",
        "optimizer__lr": 0.01,
        "optimizer__momentum": 0.9,
        "lr": 0.5,
        "loss__label_smoothing": 0.1,
        "lr_scheduler__gamma": 0.5,
        "batch_size": 32,
        "modulehidden": 1,
    }
    assert comp.params_for("module", params) == {"hidden": 32, "dropout": 0.1}
    assert comp.params_for("optimizer", params) == {"lr": 0.01, "momentum": 0.9}
    assert comp.params_for("loss", params) == {"label_smoothing": 0.1}
    assert comp.params_for("lr_scheduler", params) == {"gamma": 0.5}
    assert comp.params_for("lr", params) == {}
    assert comp.params_for("module", {}) == {}


# --- build_model --------------------------------------------------------------------------------


def test_build_model_fills_in_shapes(user_module):
    name, paths = user_module
    model = comp.build_model(f"{name}:Net", {}, {"module__hidden": 7}, in_features=5, out_features=3,
                             import_paths=paths)
    assert model.hidden == 7
    assert model(torch.zeros(2, 5)).shape == (2, 3)
    first, last = model.body[0], model.body[1]
    assert (first.in_features, first.out_features, last.out_features) == (5, 7, 3)


def test_build_model_keeps_given_shapes():
    # the file's args win over the data's shapes
    model = comp.build_model(MLP, {"out_features": 4, "hidden": 6}, {}, in_features=64, out_features=10)
    assert model.net[-1].out_features == 4 and model.net[0].in_features == 64
    # and so do trial parameters; a trial parameter overrides the file's args
    model = comp.build_model(MLP, {"hidden": 6}, {"module__in_features": 9, "module__hidden": 5},
                             in_features=64, out_features=10)
    assert model.net[0].in_features == 9 and model.net[0].out_features == 5 and model.net[-1].out_features == 10


def test_build_model_without_shape_parameters(user_module):
    name, paths = user_module
    model = comp.build_model(f"{name}:NoShape", {"width": 2}, {}, in_features=64, out_features=10,
                             import_paths=paths)
    assert model.layer.in_features == 2
    # an import path string for a built-in class works too
    linear = comp.build_model("torch.nn:Linear", {}, {}, in_features=3, out_features=2)
    assert (linear.in_features, linear.out_features) == (3, 2)


def test_build_model_unexpected_argument():
    with pytest.raises(PreflightError) as info:
        comp.build_model(MLP, {"hiden": 3}, {}, in_features=4, out_features=2)
    assert str(info.value) == (
        "module MLP: got an unexpected keyword argument 'hiden'; check the arguments "
        "(`args` in the file, `module__*` trial parameters)")
    with pytest.raises(PreflightError) as info:
        comp.build_model(MLP, {}, {"module__widht": 3}, in_features=4, out_features=2)
    assert "unexpected keyword argument 'widht'" in str(info.value)


def test_build_model_missing_argument():
    with pytest.raises(PreflightError) as info:
        comp.build_model(MLP, {}, {}, out_features=2)
    assert str(info.value).startswith("module MLP: missing a required argument: 'in_features'")


def test_build_model_that_is_not_a_module(user_module):
    name, paths = user_module
    with pytest.raises(PreflightError) as info:
        comp.build_model(f"{name}:not_a_module", {}, {}, import_paths=paths)
    assert str(info.value) == f"model '{name}:not_a_module' returned int, not a torch.nn.Module"


# --- optimizer, loss, LR scheduler --------------------------------------------------------------


def _model():
    return nn.Linear(3, 2)


def test_build_optimizer_by_name_and_args():
    opt = comp.build_optimizer("adamw", {"weight_decay": 0.1}, {}, _model())
    assert type(opt) is torch.optim.AdamW
    assert opt.param_groups[0]["weight_decay"] == 0.1
    assert opt.param_groups[0]["lr"] == 0.001  # torch's default


def test_build_optimizer_param_overrides_the_name():
    opt = comp.build_optimizer("adam", {}, {"optimizer": "sgd", "lr": 0.25}, _model())
    assert type(opt) is torch.optim.SGD
    assert opt.param_groups[0]["lr"] == 0.25


def test_build_optimizer_lr_routing():
    opt = comp.build_optimizer("sgd", {"lr": 0.1, "momentum": 0.9}, {"optimizer__lr": 0.2}, _model())
    assert opt.param_groups[0]["lr"] == 0.2 and opt.param_groups[0]["momentum"] == 0.9
    opt = comp.build_optimizer("sgd", {"lr": 0.1}, {"lr": 0.3}, _model())
    assert opt.param_groups[0]["lr"] == 0.3
    opt = comp.build_optimizer("rmsprop", {}, {"optimizer__alpha": 0.5, "module__hidden": 3}, _model())
    assert type(opt) is torch.optim.RMSprop and opt.param_groups[0]["alpha"] == 0.5


def test_build_optimizer_from_import_path(user_module):
    name, paths = user_module
    opt = comp.build_optimizer(f"{name}:make_optimizer", {}, {"optimizer__damp": 0.5}, _model(),
                               import_paths=paths)
    assert type(opt) is torch.optim.SGD
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["dampening"] == 0.5


def test_build_optimizer_unexpected_argument():
    with pytest.raises(PreflightError) as info:
        comp.build_optimizer("adam", {"momentum": 0.9}, {}, _model())
    assert str(info.value) == (
        "optimizer Adam: got an unexpected keyword argument 'momentum'; check the arguments "
        "(`args` in the file, `optimizer__*` trial parameters)")
    with pytest.raises(PreflightError) as info:
        comp.build_optimizer("adam", {}, {"optimizer": "adamz"}, _model())
    assert str(info.value).startswith("optimizer 'adamz' is not known (built in: adam, adamw, sgd")


def test_build_loss():
    assert type(comp.build_loss(None, {}, {}, "classification")) is nn.CrossEntropyLoss
    assert type(comp.build_loss(None, {}, {}, "regression")) is nn.MSELoss
    loss = comp.build_loss("cross_entropy", {"weight": [1.0, 2.0]}, {"loss__label_smoothing": 0.1},
                           "classification")
    assert torch.equal(loss.weight, torch.tensor([1.0, 2.0]))
    assert loss.weight.dtype == torch.float32
    assert loss.label_smoothing == 0.1
    assert type(comp.build_loss("huber", {"delta": 2.0}, {}, "regression")) is nn.HuberLoss
    with pytest.raises(PreflightError) as info:
        comp.build_loss("mse", {}, {"loss__smoothing": 1}, "regression")
    assert str(info.value).startswith("loss MSELoss: got an unexpected keyword argument 'smoothing'")


def test_build_lr_scheduler():
    opt = comp.build_optimizer("sgd", {"lr": 1.0}, {}, _model())
    assert comp.build_lr_scheduler(None, {}, {}, opt) is None
    sched = comp.build_lr_scheduler("step", {"step_size": 1}, {"lr_scheduler__gamma": 0.5}, opt)
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5
    with pytest.raises(PreflightError) as info:
        comp.build_lr_scheduler("step", {}, {}, opt)
    assert str(info.value).startswith("lr_scheduler StepLR: missing a required argument: 'step_size'")


def test_describe():
    assert comp.describe("examples.models:MLP") == "examples.models:MLP"
    assert comp.describe(MLP) == "examples.models:MLP"
    assert comp.describe(nn.Linear) == "torch.nn.modules.linear:Linear"

    def local():
        pass

    assert comp.describe(local) == repr(local)
