"""The guarded module (raytune_torch._ray.internals) and the Ray version range.

What touches Ray's private internals must be guarded (version and attributes checked, Ray's stock
behaviour otherwise), scoped (never at import time, never for a user's other Tuners) and undone at
shutdown. Each check that needs a clean Ray runs in a fresh process: this test session's own
local instance has its tweaks applied.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import ray

from conftest import ROOT
from raytune_torch._ray import internals, version
from raytune_torch.exceptions import ClusterError, RayVersionError

# The attributes the tweaks replace, read by identity in a child process.
_TARGETS = """
import json, os
from ray._private import node, parameter, ray_constants
from ray.train._internal.storage import StorageContext
from ray.tune.execution import class_cache, tune_controller

def targets():
    return {
        "ENABLE_RAY_CLUSTER": repr(ray_constants.ENABLE_RAY_CLUSTER),
        "RayParams": id(parameter.RayParams),
        "start_api_server": id(node.Node.start_api_server),
        "_ActorClassCache.get": id(class_cache._ActorClassCache.get),
        "_checkpoint_trial_if_needed": id(tune_controller.TuneController._checkpoint_trial_if_needed),
        "persist_current_checkpoint": id(StorageContext.persist_current_checkpoint),
        "env": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"),
    }
"""


def _child(code: str, **env: str) -> dict:
    # A user's shell: none of what this session's own Ray instance set in this process.
    environ = {k: v for k, v in os.environ.items() if k not in (internals.ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    environ.update(env, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _TARGETS + code], capture_output=True, text=True, cwd=ROOT,
                          env=environ, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_library_replaces_nothing_in_ray():
    out = _child("""
before = targets()
import raytune_torch, raytune_torch._ray, raytune_torch.tuner, raytune_torch.search_cv, raytune_torch.trainable
import raytune_torch.cli, raytune_torch.jobs, raytune_torch.results
print(json.dumps({"same": before == targets()}))
""")
    assert out == {"same": True}


def test_every_tweak_applies_then_is_undone_exactly():
    out = _child("""
before = targets()
from raytune_torch._ray import internals
applied = {t.name: t.apply() for t in internals.ALL}
during = targets()
internals.undo_all()
print(json.dumps({"applied": applied, "changed": sorted(k for k in before if before[k] != during[k]),
                  "restored": before == targets(), "left": internals.in_effect()}))
""")
    # Every tweak verified on this Ray applies (Ray before 2.52 has no token warning to quiet).
    assert out["applied"] == {t.name: t.problem() is None for t in internals.ALL}, out
    assert all(v for k, v in out["applied"].items() if k != "quiet_token_auth"), out
    assert out["changed"] == ["ENABLE_RAY_CLUSTER", "RayParams", "_ActorClassCache.get", "_checkpoint_trial_if_needed",
                              "env", "start_api_server"], out
    assert out["restored"] is True and out["left"] == [], out


@pytest.mark.parametrize("chosen, applied", [
    ("off", ["loopback", "quiet_token_auth"]),
    ("preloaded_workers", ["loopback", "preloaded_workers", "quiet_token_auth"]),
    ("no_idle_daemons,checkpoint_from_result", ["checkpoint_from_result", "loopback", "no_idle_daemons",
                                                "quiet_token_auth"]),
])
def test_internals_can_be_turned_off_but_loopback(chosen, applied):
    out = _child("""
from raytune_torch._ray import internals
applied = {t.name: t.apply() for t in internals.ALL}
print(json.dumps({"applied": sorted(k for k, v in applied.items() if v)}))
internals.undo_all()
""", RAYTUNE_TORCH_RAY_INTERNALS=chosen)
    if internals.QUIET_TOKEN_AUTH.problem() is not None:  # a Ray without token authentication
        applied = [name for name in applied if name != "quiet_token_auth"]
    assert out["applied"] == applied


class _Unverified(internals.Tweak):
    name = "unverified"
    verified = ((1, 0), (1, 9))

    def _apply(self) -> None:  # pragma: no cover - never reached
        raise AssertionError("applied on an unverified Ray")


class _Missing(internals.Tweak):
    name = "missing"
    verified = ((0, 0), (99, 99))
    touches = (("ray.tune.execution.tune_controller", "TuneController._no_such_method"),)

    def _apply(self) -> None:  # pragma: no cover - never reached
        raise AssertionError("applied although its attribute is missing")


@pytest.mark.parametrize("tweak, reason", [
    (_Unverified(), f"verified on Ray 1.0-1.9, this is Ray {ray.__version__}"),
    (_Missing(), f"Ray {ray.__version__} has no ray.tune.execution.tune_controller.TuneController._no_such_method"),
])
def test_an_unverified_ray_or_a_missing_attribute_keeps_stock_behaviour_with_one_log_line(tweak, reason, caplog):
    with caplog.at_level(logging.INFO, logger="raytune_torch"):
        assert tweak.apply() is False
        assert tweak.apply() is False
    lines = [r.getMessage() for r in caplog.records if r.name == "raytune_torch"]
    assert lines == [f"raytune-torch: {tweak.name} left to Ray's stock behaviour ({reason})"]
    assert tweak.applied is False


def test_hyperband_is_settled_on_a_verified_ray_and_stock_elsewhere_with_one_log_line(monkeypatch, caplog):
    from ray.tune import schedulers

    settled = internals.SettledHyperBand()
    assert settled.problem() is None  # the Rays CI runs are verified
    assert issubclass(settled.scheduler_class(bohb=False), schedulers.HyperBandScheduler)
    assert settled.scheduler_class(bohb=False) is not schedulers.HyperBandScheduler
    assert issubclass(settled.scheduler_class(bohb=True), schedulers.HyperBandForBOHB)
    monkeypatch.setattr(type(settled), "verified", ((1, 0), (1, 9)))
    with caplog.at_level(logging.INFO, logger="raytune_torch"):
        assert settled.scheduler_class(bohb=False) is schedulers.HyperBandScheduler
        assert settled.scheduler_class(bohb=True) is schedulers.HyperBandForBOHB
    lines = [r.getMessage() for r in caplog.records if r.name == "raytune_torch"]
    assert lines == [f"raytune-torch: settled_hyperband left to Ray's stock behaviour "
                     f"(verified on Ray 1.0-1.9, this is Ray {ray.__version__})"]


def test_ray_outside_the_tested_range_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(version.ANY_RAY_ENV, raising=False)
    version.check(ray.__version__)
    low, high = version.OLDEST, version.NEWEST
    for outside in (f"{low[0]}.{low[1] - 1}.0", f"{high[0]}.{high[1] + 1}.0", "3.0.0"):
        with pytest.raises(RayVersionError) as err:
            version.check(outside)
        assert str(err.value) == (
            f"raytune-torch is tested with Ray {version.SUPPORTED}; this environment has ray {outside}. Install a "
            f"tested release (pip install 'ray[tune]>={low[0]}.{low[1]},<{high[0]}.{high[1] + 1}'), or set "
            f"RAYTUNE_TORCH_ANY_RAY=1 to try this one anyway")
    monkeypatch.setenv(version.ANY_RAY_ENV, "1")
    version.check("3.0.0")


def test_pyproject_requires_the_tested_range():
    text = (ROOT / "pyproject.toml").read_text()
    low, high = version.OLDEST, version.NEWEST
    assert f'"ray[tune]>={low[0]}.{low[1]},<{high[0]}.{high[1] + 1}"' in text


def test_a_driver_of_another_ray_version_is_told_plainly():
    assert version.driver_version_error("127.0.0.1:6379", ray.__version__) is None
    assert version.driver_version_error("127.0.0.1:6379", None) is None
    error = version.driver_version_error("10.0.0.5:6379", "2.55.1")
    assert isinstance(error, ClusterError)
    assert str(error).startswith(f"the Ray cluster at 10.0.0.5:6379 runs Ray 2.55.1 and this machine Ray "
                                 f"{ray.__version__}; a driver that joins a cluster must run the cluster's version: "
                                 f"pip install 'ray[tune]==2.55.1' here")


def test_a_job_for_a_cluster_of_another_ray_version(monkeypatch):
    monkeypatch.delenv(version.ANY_RAY_ENV, raising=False)
    assert version.job_version_note("http://h:8265", ray.__version__) is None
    low = version.OLDEST
    inside = f"{low[0]}.{low[1]}.99"
    if inside != ray.__version__:
        note = version.job_version_note("http://h:8265", inside)
        assert note.startswith(f"the cluster at http://h:8265 runs Ray {inside} and this machine Ray {ray.__version__}; "
                               f"the job runs on the cluster's own Ray")
    with pytest.raises(ClusterError, match=r"runs Ray 1\.13\.0, outside the range raytune-torch supports"):
        version.job_version_note("http://h:8265", "1.13.0")


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_the_gcs_probe_reads_the_clusters_ray_version():
    from raytune_torch.auth import auth_headers, find_token

    gcs = ray.get_runtime_context().gcs_address
    metadata = [(k.lower(), v) for k, v in auth_headers(find_token()).items()]
    assert internals.probe_gcs(gcs, metadata) == (None, ray.__version__)


def test_a_users_own_trainable_keeps_tunes_actor_environment():
    """The actor-cache tweak acts for this library's trial function only: any other trainable
    (a user's own Tuner in the same process) gets Tune's runtime environment as always."""
    out = _child("""
from ray.tune.execution import class_cache
from ray.tune.trainable import wrap_function
from raytune_torch._ray import internals, trial

def user_fn(config):
    pass

assert internals.PRELOADED_WORKERS.apply()
cache = class_cache._ActorClassCache()
user, ours = cache.get(wrap_function(user_fn)), cache.get(wrap_function(trial._trial))
internals.undo_all()
print(json.dumps({"user": user._default_options.get("runtime_env"), "ours": ours._default_options.get("runtime_env")}))
""")
    assert out["user"]["env_vars"]["PL_DISABLE_FORK"] == "1"
    assert out["ours"] is None


def test_a_genetic_sampler_gets_a_lock_that_pickles_and_nothing_else_changes():
    import pickle

    import optuna

    from raytune_torch._ray.internals import picklable_sampler

    sampler = optuna.samplers.NSGAIISampler(seed=0)
    with pytest.raises(TypeError):
        pickle.dumps(sampler)  # stock: the lock does not pickle
    assert picklable_sampler(sampler) is True
    again = pickle.loads(pickle.dumps(sampler))
    with again._thread_lock:  # a working lock after the round trip
        pass
    assert picklable_sampler(optuna.samplers.TPESampler(seed=0)) is False  # no such lock: left as it is
    assert optuna.samplers.NSGAIISampler(seed=0)._thread_lock.__class__.__name__ != "_PicklableLock"
