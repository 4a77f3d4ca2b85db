"""The ``loggers:`` section and the trackers' checks before launch, without Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import raytune_torch as rt
from raytune_torch import trackers
from raytune_torch.config import ExperimentConfig, MLflowLogger, Problems, WandbLogger, load_config
from raytune_torch.config.loggers import dump_loggers, parse_loggers
from raytune_torch.exceptions import ConfigError

MINIMAL = {"name": "mini", "data": {"dataset": "digits"}, "model": {"name": "examples.models:MLP"}}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("loggers", [
    (MLflowLogger(),),
    (WandbLogger(),),
    (MLflowLogger(tracking_uri="sqlite:////x/mlflow.db", experiment_name="e", tags={"team": "a"}, save_artifact=True),
     WandbLogger(project="p", entity="me", group="g", mode="offline", dir="/w", api_key_file="~/.key",
                 tags=("a", "b"), upload_checkpoints=True)),
], ids=repr)
def test_loggers_round_trip(loggers):
    problems = Problems()
    assert parse_loggers(dump_loggers(loggers), problems) == loggers
    assert list(problems) == []


def test_a_tracker_with_every_default_is_written_as_its_name():
    assert dump_loggers((MLflowLogger(), WandbLogger(mode="offline"))) == ["mlflow", {"name": "wandb", "mode": "offline"}]
    assert dump_loggers(()) is None


def test_experiment_round_trip_keeps_the_loggers():
    cfg = load_config({**MINIMAL, "loggers": ["mlflow", {"name": "wandb", "project": "p", "tags": ["x"]}]})
    assert cfg.loggers == (MLflowLogger(), WandbLogger(project="p", tags=("x",)))
    problems = Problems()
    assert ExperimentConfig.from_dict(cfg.to_dict(), problems) == cfg
    assert list(problems) == []
    assert load_config(MINIMAL).loggers == () and "loggers" not in load_config(MINIMAL).to_dict()


def test_every_bad_entry_is_named_with_its_fix():
    with pytest.raises(ConfigError) as err:
        load_config({**MINIMAL, "loggers": [
            "mlfow", {"name": "wandb", "mode": "ofline", "projet": "p", "tags": "one"}, "wandb", 3,
            {"name": "mlflow", "tags": [1], "save_artifact": "yes", "tracking_uri": ""}, {"project": "p"},
        ]})
    assert err.value.problems == [
        "loggers[0]: unknown logger 'mlfow'; did you mean 'mlflow'? (choose from mlflow, wandb)",
        "loggers[1]: unknown key 'projet'; did you mean 'project'? (allowed: name, project, entity, group, mode, "
        "dir, api_key_file, tags, upload_checkpoints)",
        "loggers[1].mode: unknown mode 'ofline'; did you mean 'offline'? (choose from online, offline, disabled)",
        "loggers[1].tags: must be a list of strings, got 'one'",
        "loggers[2]: wandb is listed twice; keep one entry",
        "loggers[3]: must be a tracker's name or a mapping with `name:`, got 3",
        "loggers[4].tracking_uri: must be a non-empty string, got ''",
        "loggers[4].tags: must be a mapping of tag names to values, got [1]",
        "loggers[4].save_artifact: must be true or false, got 'yes'",
        "loggers[5]: must be a tracker's name or a mapping with `name:`, got {'project': 'p'}",
    ]


def test_loggers_must_be_a_list():
    with pytest.raises(ConfigError) as err:
        load_config({**MINIMAL, "loggers": "mlflow"})
    assert err.value.problems == ["loggers: must be a list such as [mlflow, wandb], got 'mlflow'"]


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_missing_package_names_the_extra_before_anything_starts(tmp_path, name):
    """The package is hidden from a fresh interpreter the way Python documents (None in
    sys.modules: its import fails); `validate --no-data` reads the file only."""
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: mini
        data: {{dataset: digits}}
        model: {{name: examples.models:MLP}}
        loggers: [{name}]
    """))
    code = (f"import sys; sys.modules[{name!r}] = None; from raytune_torch.cli import main; "
            f"sys.exit(main(['validate', '--no-data', {str(path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == (f"raytune-torch: invalid experiment: 1 problem in {path}:\n"
                           f"  - loggers[0]: {name} is not installed; pip install 'raytune-torch[{name}]'\n")


# --- settings: the file, then the environment, then the defaults -----------------------------------

def test_the_file_wins_over_the_environment_and_the_environment_over_the_defaults():
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "MLFLOW_EXPERIMENT_NAME": "env-exp",
           "WANDB_PROJECT": "env-project", "WANDB_MODE": "offline", "WANDB_ENTITY": "team"}
    assert MLflowLogger(tracking_uri="sqlite:////db", experiment_name="mine").settings("run", env) == {
        "tracking_uri": "sqlite:////db", "experiment_name": "mine", "tags": {}, "save_artifact": False}
    assert MLflowLogger().settings("run", env)["tracking_uri"] == "http://127.0.0.1:5000"
    assert MLflowLogger().settings("run", env)["experiment_name"] == "env-exp"
    assert MLflowLogger().settings("run", {}) == {"tracking_uri": None, "experiment_name": "run", "tags": {},
                                                  "save_artifact": False}
    assert WandbLogger(project="mine", mode="disabled").settings("run", env) == {
        "project": "mine", "entity": "team", "group": "run", "mode": "disabled", "dir": None, "api_key_file": None,
        "tags": [], "upload_checkpoints": False}
    assert WandbLogger().settings("run", env)["project"] == "env-project"
    assert WandbLogger().settings("run", {"WANDB_PROJECT_NAME": "ray-var"})["project"] == "ray-var"
    assert WandbLogger().settings("run", {})["project"] == "run"
    assert WandbLogger().settings("run", {})["mode"] == "online"


@pytest.mark.parametrize("uri, expected", [
    ("mlruns", "file:///work/mlruns"),
    ("file:mlruns", "file:///work/mlruns"),
    ("file:///abs/mlruns", "file:///abs/mlruns"),
    ("sqlite:///runs/mlflow.db", "sqlite:////work/runs/mlflow.db"),
    ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("databricks", "databricks"),
])
def test_a_relative_local_tracking_uri_is_made_absolute(uri, expected):
    assert trackers.absolute_tracking_uri(uri, cwd="/work") == expected


# --- checks made before Ray starts ------------------------------------------------------------------

def test_a_file_store_that_mlflow_refuses_is_named_with_two_fixes(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    config = load_config({**MINIMAL, "loggers": [{"name": "mlflow", "tracking_uri": uri}]})
    try:
        trackers.check_trackers(config)
    except ConfigError as err:
        assert err.problems == [
            f"loggers[0].tracking_uri: {uri!r} is an MLflow file store, which MLflow {mlflow.__version__} refuses "
            f"by default; use a database (sqlite:///PATH/mlflow.db) or set MLFLOW_ALLOW_FILE_STORE=true"]
    else:  # an MLflow that still takes file stores
        assert os.path.isdir(tmp_path / "mlruns")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    trackers.check_trackers(config)


def test_a_database_store_is_created_before_launch(tmp_path):
    pytest.importorskip("mlflow")
    config = load_config({**MINIMAL, "loggers": [{"name": "mlflow", "tracking_uri": f"sqlite:///{tmp_path}/a/b.db"}]})
    trackers.check_trackers(config)
    assert (tmp_path / "a" / "b.db").is_file()


def test_wandb_online_without_an_api_key_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SETUP_API_KEY_HOOK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    online = load_config({**MINIMAL, "loggers": ["wandb"]})
    with pytest.raises(ConfigError) as err:
        trackers.check_trackers(online)
    assert err.value.problems == [
        "loggers[0]: W&B runs online but finds no API key; set WANDB_API_KEY, run `wandb login`, give api_key_file, "
        "or use `mode: offline` (sync later with `wandb sync`)"]
    missing = load_config({**MINIMAL, "loggers": [{"name": "wandb", "api_key_file": str(tmp_path / "no-key")}]})
    with pytest.raises(ConfigError) as err:
        trackers.check_trackers(missing)
    assert err.value.problems == [f"loggers[0].api_key_file: {str(tmp_path / 'no-key')!r} does not exist; give the "
                                  f"file holding your W&B API key"]
    trackers.check_trackers(load_config({**MINIMAL, "loggers": [{"name": "wandb", "mode": "offline"}]}))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    trackers.check_trackers(online)


# --- submit: the file's loggers travel; what would be lost on a cluster is refused -----------------

def test_submit_passes_the_trackers_variables_but_no_secrets():
    config = load_config({**MINIMAL, "loggers": ["mlflow", "wandb"]})
    env = {"MLFLOW_TRACKING_URI": "http://10.0.0.1:5000", "WANDB_PROJECT": "p", "WANDB_API_KEY": "secret",
           "MLFLOW_TRACKING_TOKEN": "secret", "HOME": "/root"}
    assert trackers.job_env(config, env) == {"MLFLOW_TRACKING_URI": "http://10.0.0.1:5000", "WANDB_PROJECT": "p"}
    assert trackers.job_env(load_config(MINIMAL), env) == {}


def test_submit_refuses_tracker_files_that_would_be_lost(tmp_path, monkeypatch):
    from raytune_torch.jobs import submit

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: mini
        storage: {tmp_path}/runs
        data: {{dataset: digits}}
        model: {{name: examples.models:MLP}}
        loggers: [mlflow, {{name: wandb, dir: wandb-files}}]
    """))
    with pytest.raises(ConfigError) as err:  # before the (unreachable) cluster is asked anything
        submit(str(path), "http://127.0.0.1:9", working_dir=str(tmp_path), wait=False)
    assert err.value.problems == [
        "loggers[0].tracking_uri: not set (nor MLFLOW_TRACKING_URI here); on the cluster MLflow would write into the "
        "job's temporary working directory and lose it. Set it to a server (http://HOST:5000) or a location every "
        "node sees (sqlite:////mnt/shared/mlflow.db)",
        "loggers[1].dir: 'wandb-files' is a relative path; on the cluster it would land in the job's temporary "
        "working directory and be lost. Leave it out (W&B's files go to the run directory) or give an absolute path "
        "every node sees",
    ]
    relative = load_config({**MINIMAL, "loggers": [{"name": "mlflow", "tracking_uri": "sqlite:///mlflow.db"}]})
    assert trackers.job_problems(relative) == [
        "loggers[0].tracking_uri: 'sqlite:///mlflow.db' is a relative path; on the cluster it would land in the "
        "job's temporary working directory and be lost. Use a server (http://HOST:5000) or an absolute location "
        "every node sees (sqlite:////mnt/shared/mlflow.db)"]
    assert trackers.job_problems(load_config({**MINIMAL, "loggers": [
        {"name": "mlflow", "tracking_uri": "http://10.0.0.1:5000"}, {"name": "wandb", "dir": "/shared/w"}]})) == []


# --- TorchSearchCV ----------------------------------------------------------------------------------

def test_torch_search_cv_stores_loggers_and_checks_them_in_fit(tmp_path):
    import numpy as np

    from examples.models import MLP

    search = rt.TorchSearchCV(rt.TorchClassifier(MLP, max_epochs=1), {"optimizer__lr": [0.01]}, cv=2,
                              storage=str(tmp_path), loggers=["mlfow"])  # __init__ only stores
    assert search.get_params()["loggers"] == ["mlfow"]
    X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    y = np.arange(40) % 2
    with pytest.raises(ConfigError) as err:
        search.fit(X, y)
    assert err.value.problems == ["loggers[0]: unknown logger 'mlfow'; did you mean 'mlflow'? (choose from mlflow, "
                                  "wandb)"]
    assert not os.listdir(tmp_path)  # nothing was started or written
