"""Pictures of a finished run (``raytune-torch results RUN_DIR --plots DIR``, ``TuneResult.plot``).

One real random search (digits MLP, 6 trials, 2 epochs) is run once for the module; the inputs
with too few trials are copies of its files with rows left out, and the run whose metric is NaN
for every trial is a second real run whose trials all diverge.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

import raytune_torch as rt
from raytune_torch import plots as rplots
from raytune_torch.cli import main

from tests.conftest import BASE

matplotlib_image = pytest.importorskip("matplotlib.image")

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # the run fixtures start the shared Ray instance

SPACE = {
    "optimizer__lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True},
    "module__hidden": {"type": "choice", "values": [8, 16, 32]},
    "module__dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "module__layers": {"type": "int", "low": 1, "high": 2},
}
PNGS = ("learning_curves.png", "params.png", "importance.png")
INSTALL = "pip install 'raytune-torch[plots]'"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ray_session) -> str:
    """A finished random search: 6 trials over a log float, a choice, a float and an int range."""
    exp = copy.deepcopy(BASE)
    exp.update(name="plots", storage=str(tmp_path_factory.mktemp("runs")), space=SPACE,
               search={"algorithm": "random", "num_samples": 6, "metric": "val_accuracy"})
    return rt.run(exp, quiet=True).run_dir


@pytest.fixture(scope="module")
def diverged_dir(tmp_path_factory, ray_session) -> str:
    """A finished run whose every trial diverges in its first epoch: no finite val_loss anywhere."""
    exp = copy.deepcopy(BASE)
    exp.update(name="nan", storage=str(tmp_path_factory.mktemp("runs")), optimizer="sgd",
               space={"optimizer__lr": {"type": "grid", "values": [1.0e6, 3.0e6]}},
               search={"algorithm": "grid", "metric": "val_loss"})
    exp["train"]["max_epochs"] = 1
    return rt.run(exp, quiet=True).run_dir


def _copy_with_trials(run_dir: str, target: Path, keep: int) -> str:
    """The run's result files with only its ``keep`` best trials' rows in ``results.parquet``."""
    target.mkdir()
    for name in ("experiment.yaml", "best.json"):
        shutil.copy(Path(run_dir, name), target / name)
    ids = list(rt.TuneResult(run_dir).trials()["trial_id"])[:keep]
    table = pq.read_table(Path(run_dir, "results.parquet")).to_pandas()
    table[table["trial_id"].isin(ids)].to_parquet(target / "results.parquet", index=False)
    return str(target)


def _image_shape(path: str) -> tuple[int, ...]:
    return matplotlib_image.imread(path).shape


def test_every_picture_is_written_and_decodes(run_dir, tmp_path):
    out = tmp_path / "plots"
    plots = rplots.write_plots(run_dir, out)
    assert plots.paths == [str(out / name) for name in (*PNGS, "README.md")]
    assert plots.notes == ()
    # figure inches x 110 dpi: 12 x 4.8; three panels across and two down; 1.6 + 0.5 per parameter high
    assert _image_shape(plots.paths[0]) == (528, 1320, 4)
    assert _image_shape(plots.paths[1]) == (792, 1452, 4)
    assert _image_shape(plots.paths[2]) == (396, 880, 4)
    for path in plots.paths[:3]:
        pixels = matplotlib_image.imread(path)[..., :3]
        assert pixels.std() > 0.05  # something is drawn, not a blank canvas


def test_importances_are_shares_of_every_searched_parameter(run_dir, tmp_path):
    plots = rt.TuneResult(run_dir).plot(tmp_path / "plots")
    assert set(plots.importances) == set(SPACE)
    values = list(plots.importances.values())
    assert all(0.0 <= v <= 1.0 for v in values)
    assert sum(values) == pytest.approx(1.0)
    assert values == sorted(values, reverse=True)
    assert rplots.param_importances(run_dir) == plots.importances  # seeded: the same numbers again


def test_index_says_what_each_file_shows(run_dir, tmp_path):
    plots = rplots.write_plots(run_dir, tmp_path / "plots", top=3)
    best = rt.TuneResult(run_dir).best_trial_id
    index = (tmp_path / "plots" / "README.md").read_text()
    assert index.startswith(f"# Plots of {run_dir}\n\nMetric: val_accuracy (higher is better); 6 trial(s), 6 with "
                            f"a finite val_accuracy.")
    assert ("| [learning_curves.png](learning_curves.png) | val_accuracy per epoch of the top 3 of 6 trials in "
            "colour, best first; the other 3 in grey; their train_loss (solid) and val_loss (dashed) |") in index
    assert (f"the best trial {best} is the red star |") in index
    assert (f"| [importance.png](importance.png) | each parameter's share of the variance of val_accuracy over 6 "
            f"trials, by {rplots.EVALUATOR} |") in index
    for name, value in plots.importances.items():
        assert f"| {name} | {value:.3f} |" in index


def test_cli_results_lists_the_plots(run_dir, tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["results", run_dir, "--plots", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"\nplots in {out}:\n" in printed
    for name in (*PNGS, "README.md"):
        assert f"  {out / name}: " in printed
        assert (out / name).is_file()
    assert "note:" not in printed


def test_cli_json_and_csv_keep_their_format(run_dir, tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["results", run_dir, "--plots", str(out), "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert list(shown["plots"]["files"]) == [str(out / n) for n in (*PNGS, "README.md")]
    assert shown["plots"]["notes"] == []
    assert sum(shown["plots"]["importances"].values()) == pytest.approx(1.0)
    assert main(["results", run_dir, "--plots", str(out), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("trial_id,status,epochs,epoch,val_accuracy,")
    assert "plots in" not in captured.out and f"  {out / 'params.png'}: " in captured.err


def test_a_run_on_a_uri_is_read_through_storage(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTUNE_TORCH_CACHE", str(tmp_path / "cache"))
    plots = rplots.write_plots(Path(run_dir).as_uri(), tmp_path / "plots")
    assert [Path(p).name for p in plots.paths] == [*PNGS, "README.md"]
    assert (tmp_path / "plots" / "README.md").read_text().startswith(f"# Plots of {Path(run_dir).as_uri()}\n")


def test_too_few_trials_skip_importance_and_say_so(run_dir, tmp_path, capsys):
    few = _copy_with_trials(run_dir, tmp_path / "few", keep=3)
    out = tmp_path / "plots"
    rplots.write_plots(run_dir, out)  # an importance.png of the whole run first: it must not stay
    message = (f"3 trial(s) of {few!r} reported a finite val_accuracy; parameter importance needs at least 4 "
               f"(run more trials)")
    plots = rplots.write_plots(few, out)
    assert plots.notes == (f"importance.png skipped: {message}",)
    assert plots.importances == {}
    assert [Path(p).name for p in plots.paths] == ["learning_curves.png", "params.png", "README.md"]
    assert not (out / "importance.png").exists()
    assert (out / "README.md").read_text().endswith(f"Notes:\n\n- importance.png skipped: {message}\n")
    assert main(["results", few, "--plots", str(out)]) == 0
    assert f"note: importance.png skipped: {message}\n" in capsys.readouterr().out
    with pytest.raises(rt.ResultsError) as info:
        rplots.param_importances(few)
    assert str(info.value) == message


def test_a_parameter_outside_the_saved_space_is_left_out_of_the_importance(run_dir, tmp_path):
    edited = _copy_with_trials(run_dir, tmp_path / "edited", keep=6)
    path = Path(edited, "experiment.yaml")
    experiment = yaml.safe_load(path.read_text())
    experiment["space"]["module__dropout"] = {"type": "float", "low": 0.5, "high": 0.9}
    path.write_text(yaml.safe_dump(experiment))
    plots = rplots.write_plots(edited, tmp_path / "plots")
    assert plots.notes == ("importance.png leaves out module__dropout: a trial's value lies outside the space in "
                           "experiment.yaml",)
    assert set(plots.importances) == set(SPACE) - {"module__dropout"}
    assert sum(plots.importances.values()) == pytest.approx(1.0)


def test_a_run_whose_metric_is_nan_for_every_trial(diverged_dir, tmp_path, capsys):
    assert set(rt.TuneResult(diverged_dir).trials()["status"]) == {"diverged"}
    out = tmp_path / "plots"
    message = (f"no trial of {diverged_dir!r} reported a finite val_loss; there is nothing to plot "
               f"(`raytune-torch results {diverged_dir}` lists the trials and their errors)")
    with pytest.raises(rt.ResultsError) as info:
        rplots.write_plots(diverged_dir, out)
    assert str(info.value) == message
    assert not out.exists()
    assert main(["results", diverged_dir, "--plots", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"raytune-torch: error: {message}\n"
    assert captured.out == ""


def test_a_directory_that_is_not_a_finished_run(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "experiment.yaml").write_text("name: half\n")
    half = str(tmp_path / "half")
    message = (f"{half!r} is not a finished raytune_torch run (missing best.json, results.parquet); an interrupted "
               f"run has no results yet")
    with pytest.raises(rt.ResultsError) as info:
        rplots.write_plots(half, tmp_path / "plots")
    assert str(info.value) == message
    assert main(["results", half, "--plots", str(tmp_path / "plots")]) == 1
    assert capsys.readouterr().err == f"raytune-torch: error: {message}\n"
    missing = str(tmp_path / "nowhere")
    assert main(["results", missing, "--plots", str(tmp_path / "plots")]) == 1
    assert capsys.readouterr().err == (f"raytune-torch: error: run directory {missing!r} does not exist; give "
                                       f"STORAGE/NAME of a run\n")
    assert not (tmp_path / "plots").exists()


def test_a_plots_directory_that_cannot_hold_files(run_dir, tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(rt.ResultsError) as info:
        rplots.write_plots(run_dir, tmp_path / "taken")
    assert str(info.value) == f"{str(tmp_path / 'taken')!r} is a file, not a directory for the plots; give another path"
    with pytest.raises(rt.ResultsError) as info:
        rplots.write_plots(run_dir, "s3://bucket/plots")
    assert str(info.value) == ("plots are written to a local directory, not to 's3://bucket/plots'; give a path (the "
                               "run itself may be a URI)")
    with pytest.raises(ValueError, match=r"^top must be an integer >= 1 \(the trials drawn in colour\), got 0$"):
        rplots.write_plots(run_dir, tmp_path / "plots", top=0)


@pytest.fixture
def without_matplotlib(monkeypatch):
    """matplotlib made unimportable the way Python documents it: ``None`` in ``sys.modules``."""
    for name in [n for n in sys.modules if n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_missing_matplotlib_names_the_install_command(run_dir, tmp_path, capsys, without_matplotlib):
    message = f"plots need matplotlib, which is not installed; {INSTALL}"
    with pytest.raises(rt.DependencyError) as info:
        rplots.write_plots(run_dir, tmp_path / "plots")
    assert str(info.value) == message
    assert isinstance(info.value, ImportError)
    assert main(["results", run_dir, "--plots", str(tmp_path / "plots")]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"raytune-torch: error: {message}\n"
    assert captured.out == ""  # nothing printed before the error
    assert not (tmp_path / "plots").exists()
    assert main(["results", run_dir]) == 0  # the table itself needs no matplotlib


def test_missing_optuna_skips_only_the_importance(run_dir, tmp_path, monkeypatch):
    for name in [n for n in sys.modules if n.startswith("optuna.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "optuna", None)
    plots = rplots.write_plots(run_dir, tmp_path / "plots")
    assert plots.notes == (f"importance.png skipped: parameter importance needs optuna, which is not installed; "
                           f"{INSTALL}",)
    assert [Path(p).name for p in plots.paths] == ["learning_curves.png", "params.png", "README.md"]
    with pytest.raises(rt.DependencyError):
        rplots.param_importances(run_dir)
