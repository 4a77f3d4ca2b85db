"""The command line: run (with overrides), validate, results, exit codes, a real console run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from raytune_torch.cli import main

pytestmark = pytest.mark.ray


@pytest.fixture
def experiment_file(tmp_path, experiment):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


def test_validate_ok(experiment_file, capsys):
    assert main(["validate", str(experiment_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK: {experiment_file}: t; about 2 trial(s), search=grid")
    assert "one batch trained and evaluated" in out


def test_validate_lists_every_problem_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "name": "bad",
        "data": {"dataset": "digitz"},
        "model": "examples.models:MLP",
        "train": {"max_epochs": 0, "metrics": ["acuracy"]},
        "space": {"optimizer_lr": {"type": "float", "low": 1.0, "high": 0.1}},
        "search": {"algorithm": "tpe"},
    }))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raytune-torch: invalid experiment: 6 problems in {bad}:")
    for text in [
        "data.dataset: unknown bundled dataset 'digitz'; did you mean 'digits'?",
        "train.max_epochs: must be >= 1, got 0",
        "train.metrics: 'acuracy' is not a classification metric; did you mean 'accuracy'?",
        "space.optimizer_lr: `low <= high` must hold, but got (low=1.0, high=0.1); swap them.",
        "space.optimizer_lr: unknown trial parameter; did you mean 'optimizer__lr'?",
        "search.algorithm: unknown searcher 'tpe'",
    ]:
        assert text in err, text


def test_validate_refuses_a_model_that_does_not_fit_the_data(experiment_file, experiment, capsys):
    experiment["model"]["args"]["out_features"] = 3
    experiment_file.write_text(yaml.safe_dump(experiment))
    assert main(["validate", str(experiment_file)]) == 2
    assert "raytune-torch: the trial would fail: the model examples.models:MLP outputs shape (128, 3)" in capsys.readouterr().err


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "experiment file" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_session")
def test_run_with_overrides_then_results(experiment_file, tmp_path, capsys):
    storage = tmp_path / "elsewhere"
    code = main(["run", str(experiment_file), "--search", "random", "--num-samples", "2", "--max-epochs", "1",
                 "--storage", str(storage), "--name", "cli", "--seed", "3", "--scheduler", "asha",
                 "--max-concurrent", "2", "--cpus-per-trial", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "raytune-torch: cli: 4 trial(s), search=random, scheduler=asha" in out  # 2 grid points x 2
    assert out.count(" done after 1 epoch(s)") == 4
    run_dir = storage / "cli"
    saved = yaml.safe_load((run_dir / "experiment.yaml").read_text())
    assert saved["seed"] == 3 and saved["search"]["algorithm"] == "random" and saved["train"]["max_epochs"] == 1

    assert main(["results", str(run_dir), "--top", "2", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["top"]) == 2
    assert data["top"][0]["trial_id"] == data["best"]["trial_id"]
    assert data["top"][0]["val_accuracy"] >= data["top"][1]["val_accuracy"]

    assert main(["results", str(run_dir), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("trial_id,status,epochs,epoch,val_accuracy")
    assert len(lines) == 5  # header + 4 trials (--top defaults to 5)

    assert main(["results", str(run_dir)]) == 0
    table = capsys.readouterr().out
    assert f"best trial {data['best']['trial_id']} at epoch 1: val_accuracy=" in table


def test_results_of_a_missing_or_foreign_directory(tmp_path, capsys):
    assert main(["results", str(tmp_path / "none")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["results", str(tmp_path)]) == 1
    assert "is not a finished raytune_torch run (missing best.json, results.parquet, experiment.yaml)" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_console_script_starts_a_private_loopback_instance(tmp_path):
    """The real console script, as a user runs it, beside this session's Ray instance."""
    import ray

    gcs = ray.get_runtime_context().gcs_address
    jobs_before = len(ray._private.state.jobs())
    # A cluster is running here (this session's, at `gcs`): without --address or RAY_ADDRESS it
    # must not be joined (plain `ray.init()` would attach to it).
    # Nor RAY_AUTH_MODE: Ray set it in this process when the session's instance started, and a
    # user's shell has none (Ray then turns token authentication on itself, with a warning).
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    assert gcs
    proc = subprocess.run(
        [sys.executable, "-m", "raytune_torch.cli", "run", "examples/digits_mlp.yaml", "--num-samples", "2",
         "--max-epochs", "2", "--storage", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines[0].startswith("raytune-torch: digits-mlp: 2 trial(s), search=random, scheduler=asha")
    assert len(lines) <= 8, proc.stdout  # header, Ray line, one line per trial, summary
    assert (tmp_path / "digits-mlp" / "best.json").is_file()
    assert len(ray._private.state.jobs()) == jobs_before  # nothing joined this session's cluster
    # Token authentication is the private instance's default, not a warning on every run.
    assert "Token authentication is enabled" not in proc.stderr, proc.stderr[-3000:]


def _ray_has_token_auth() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray._private.authentication") is not None


@pytest.mark.skipif(not _ray_has_token_auth(), reason="this Ray has no token authentication (Ray 2.52 added it)")
@pytest.mark.usefixtures("ray_session")
def test_local_instance_requires_the_token():
    """The private instance uses Ray's token authentication: a client without the token, or with
    another one, is refused; with the token in ~/.ray/auth_token it is answered."""
    import ray

    from raytune_torch import _ray
    from raytune_torch.auth import Token, find_token
    from raytune_torch.exceptions import ClusterError

    gcs = ray.get_runtime_context().gcs_address
    with pytest.raises(ClusterError, match="requires token authentication and no token was found"):
        _ray.cluster._probe_gcs(gcs, Token())
    with pytest.raises(ClusterError, match="refused the token"):
        _ray.cluster._probe_gcs(gcs, Token("0" * 32, "a wrong token"))
    _ray.cluster._probe_gcs(gcs, find_token())


@pytest.mark.usefixtures("ray_session")
def test_local_instance_listens_on_loopback_only():
    import psutil
    import ray

    host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    gcs = [c for c in psutil.net_connections(kind="tcp") if c.status == "LISTEN" and c.laddr.port == int(port)]
    assert gcs and all(c.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1") for c in gcs)
    pid = gcs[0].pid
    listening = [c for c in psutil.net_connections(kind="tcp") if c.status == "LISTEN" and c.pid == pid]
    assert all(c.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1") for c in listening), listening


def test_every_override_has_a_flag():
    from raytune_torch.cli import _OVERRIDE_FLAGS
    from raytune_torch.config import OVERRIDES

    assert sorted(dest for _, dest, _, _ in _OVERRIDE_FLAGS) == sorted(OVERRIDES)
