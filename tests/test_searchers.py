"""More searchers (#23 item 6): Optuna's samplers by name, BOHB, and a searcher of the user's own."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

import raytune_torch as rt
from raytune_torch import _ray
from raytune_torch.config import load_config
from tests.conftest import BASE

RANGES = {"optimizer__lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
          "module__hidden": {"type": "int", "low": 8, "high": 32}}


def _config(search: dict, space: dict | None = None, **sections):
    exp = copy.deepcopy(BASE)
    exp.update(space=space or RANGES, search=search, **sections)
    return exp


def _problems(exp: dict) -> list[str]:
    with pytest.raises(rt.ConfigError) as info:
        load_config(exp)
    return info.value.problems


@pytest.mark.parametrize("search, space, sections, message", [
    ({"algorithm": "optuna", "sampler": "nsgaii"}, None, {},
     "search.sampler: unknown sampler 'nsgaii'; did you mean 'nsga2'? (choose from tpe, nsga2, cmaes, gp, qmc, random)"),
    ({"algorithm": "random", "sampler": "tpe"}, None, {},
     "search.sampler: 'tpe' is an Optuna sampler, but the searcher is random; remove search.sampler, or set "
     "search.algorithm: optuna"),
    ({"algorithm": "optuna", "sampler": "cmaes"}, {"module__hidden": {"type": "choice", "values": [8, 16]}}, {},
     "search.sampler: cmaes models float and int ranges, and every searched parameter here is a choice "
     "(['module__hidden']), which it would draw at random; use tpe, or search ranges"),
    ({"algorithm": "optuna", "sampler": "gp"}, {"module__hidden": {"type": "grid", "values": [8, 16]}}, {},
     "search.sampler: an all-grid space runs as Optuna's GridSampler, not gp; remove search.sampler, or write the "
     "grids as `type: choice` for the sampler to choose"),
    ({"algorithm": "bohb"}, None, {},
     "scheduler: search: bohb runs with its own HyperBand scheduler, not fifo; set scheduler: hyperband (its "
     "reduction_factor applies)"),
    ({"algorithm": "bohb"}, {"module__hidden": {"type": "int", "low": 8, "high": 32, "step": 8}},
     {"scheduler": "hyperband"},
     "space: search: bohb ignores the `step` of ['module__hidden'] (its ConfigSpace has no quantized ranges); "
     "remove the step, or list the values as `type: choice`"),
    ({"algorithm": "bohb"}, {**RANGES, "batch_size": {"type": "grid", "values": [64, 128]}},
     {"scheduler": "hyperband"},
     "space: search: bohb cannot enumerate grid parameters ['batch_size']; write them as `type: choice` to let it "
     "choose, or use search: grid"),
    ({"algorithm": "ray.tune.search.hyperopt:HyperOptSearch"},
     {**RANGES, "batch_size": {"type": "grid", "values": [64, 128]}}, {},
     "space: a searcher of your own cannot be given grid parameters ['batch_size'] (only search: grid and random "
     "enumerate them); write them as `type: choice`"),
    ({"algorithm": "hyperopt_search:"}, None, {},
     "search.algorithm: 'hyperopt_search:' is not an import path; write `package.module:SearcherClass`"),
    ({"algorithm": 3}, None, {},
     "search.algorithm: must be a searcher name (grid, random, optuna, hyperopt, bohb), an import path "
     "`package.module:SearcherClass` or a ray.tune.search.Searcher object, got 3"),
], ids=["unknown", "not-optuna", "cmaes-choices-only", "sampler-on-grid", "bohb-fifo", "bohb-step", "bohb-grid",
        "own-grid", "bad-path", "not-a-searcher"])
def test_what_a_searcher_cannot_do_is_refused_before_launch(search, space, sections, message):
    assert _problems(_config(search, space, **sections)) == [message]


def test_a_searcher_object_gets_one_metric():
    from ray.tune.search.hyperopt import HyperOptSearch

    exp = _config({"algorithm": HyperOptSearch(), "metric": ["val_accuracy", "n_params"]})
    assert _problems(exp) == [
        "search.metric: 2 objectives ['val_accuracy', 'n_params'] run on search: optuna (its multi-objective "
        "samplers), not a HyperOptSearch object; set search.algorithm: optuna, or optimize one metric"]


@pytest.mark.parametrize("sampler, kind", [("tpe", "TPESampler"), ("nsga2", "NSGAIISampler"),
                                           ("cmaes", "CmaEsSampler"), ("gp", "GPSampler"), ("qmc", "QMCSampler"),
                                           ("random", "RandomSampler")])
def test_each_sampler_is_optuna_s_own_seeded_with_the_experiment(sampler, kind):
    import pickle

    if sampler == "cmaes":
        pytest.importorskip("cmaes")

    config = load_config(_config({"algorithm": "optuna", "sampler": sampler, "num_samples": 3}, seed=7))
    plan = _ray.build_search(config)
    built = plan.search_alg._sampler
    assert type(built).__name__ == kind
    pickle.loads(pickle.dumps(plan.search_alg))  # Tune pickles the searcher with its sampler
    # the seed reaches the sampler: two builds propose the same first point, another seed another
    import optuna

    def first(cfg) -> dict:
        study = optuna.create_study(sampler=_ray.search.optuna_sampler(cfg)[0])
        trial = study.ask()
        return {"lr": trial.suggest_float("lr", 1e-3, 3e-2, log=True), "h": trial.suggest_int("h", 8, 32)}

    assert first(config) == first(load_config(_config({"algorithm": "optuna", "sampler": sampler}, seed=7)))
    assert first(config) != first(load_config(_config({"algorithm": "optuna", "sampler": sampler}, seed=8)))


def test_a_searcher_s_notes_say_what_it_draws_at_random():
    pytest.importorskip("cmaes")
    space = {**RANGES, "batch_size": {"type": "choice", "values": [64, 128]}}
    cmaes = _ray.build_search(load_config(_config({"algorithm": "optuna", "sampler": "cmaes"}, space)))
    assert cmaes.note == ("Optuna's cmaes sampler; cmaes models two or more float/int ranges together; it draws "
                          "['batch_size'] at random")
    nsga2 = _ray.build_search(load_config(_config({"algorithm": "optuna", "sampler": "nsga2", "num_samples": 6})))
    assert nsga2.note == ("Optuna's nsga2 sampler; nsga2 breeds generations of 50 trials: the first 50 are drawn at "
                          "random, so 6 trial(s) are a random search")


def test_a_searcher_object_in_a_dict_is_the_user_s_own_not_a_copy():
    from ray.tune.search.hyperopt import HyperOptSearch

    searcher = HyperOptSearch()
    config = load_config(_config({"algorithm": searcher}))
    assert config.search.algorithm is searcher and _ray.build_search(config).search_alg is searcher
    assert load_config(config).search.algorithm is searcher  # and again from the ExperimentConfig


def test_an_import_path_names_a_searcher_class_built_without_arguments():
    from ray.tune.search.hyperopt import HyperOptSearch

    config = load_config(_config({"algorithm": "ray.tune.search.hyperopt:HyperOptSearch"}))
    assert isinstance(_ray.build_search(config).search_alg, HyperOptSearch)
    for path, message in [
        ("raytune_nowhere.mod:Searcher", "search.algorithm 'raytune_nowhere.mod:Searcher': cannot import module "
                                         "'raytune_nowhere.mod'"),
        ("collections:OrderedDict", "search.algorithm: 'collections:OrderedDict' is not a ray.tune.search.Searcher; give a "
                                    "searcher name (grid, random, optuna, hyperopt, bohb), a Searcher object or the "
                                    "import path of its class"),
    ]:
        with pytest.raises(rt.ConfigError) as info:
            _ray.build_search(load_config(_config({"algorithm": path})))
        assert info.value.problems[0].startswith(message)




@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("sampler", ["nsga2", "cmaes", "gp", "qmc", "random"])
def test_a_short_run_per_sampler(experiment, sampler):
    if sampler == "cmaes":
        pytest.importorskip("cmaes")
    experiment.update(space=RANGES, search={"algorithm": "optuna", "sampler": sampler, "num_samples": 3,
                                            "metric": "val_accuracy"})
    experiment["train"]["max_epochs"] = 1
    result = rt.run(experiment, quiet=True)
    trials = result.trials()
    assert len(trials) == 3 and set(trials["status"]) == {"completed"}
    assert trials["config/module__hidden"].between(8, 32).all()
    assert trials["config/optimizer__lr"].between(1e-3, 3e-2).all()
    assert trials["config/module__hidden"].map(type).eq(int).all()


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_bohb_runs_with_its_hyperband_scheduler(experiment):
    pytest.importorskip("hpbandster")
    from ray.tune.search.bohb import TuneBOHB

    experiment.update(space={**RANGES, "batch_size": {"type": "choice", "values": [64, 128]}},
                      search={"algorithm": "bohb", "num_samples": 4, "metric": "val_accuracy"},
                      scheduler={"name": "hyperband", "reduction_factor": 2})
    experiment["train"]["max_epochs"] = 2
    config = load_config(experiment)
    try:
        TuneBOHB.convert_search_space(_ray.param_space(config.space, "bohb"))
    except TypeError:  # an older Ray with ConfigSpace >= 1.0: refused before anything starts, with the fix
        with pytest.raises(rt.ConfigError, match=r"search: bohb: Ray .*'s TuneBOHB cannot build this space with "
                                              r"ConfigSpace .*; pip install 'ConfigSpace<1' for this Ray"):
            rt.run(experiment, quiet=True)
        return
    assert isinstance(_ray.build_search(config).search_alg, TuneBOHB)
    from ray.tune.schedulers import HyperBandForBOHB

    assert isinstance(_ray.build_scheduler(config), HyperBandForBOHB)  # settled (SettledHyperBand) on a verified Ray
    result = rt.run(experiment, quiet=True)
    trials = result.trials()
    assert len(trials) == 4 and "error" not in set(trials["status"])
    assert set(trials["config/batch_size"]) <= {64, 128}
    assert result.best_metrics["val_accuracy"] > 0.3


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_a_searcher_object_from_python_is_used_as_it_is(experiment):
    from ray.tune.search.hyperopt import HyperOptSearch

    searcher = HyperOptSearch(random_state_seed=3)
    experiment.update(space=RANGES, search={"algorithm": "random", "num_samples": 3, "metric": "val_accuracy"})
    experiment["train"]["max_epochs"] = 1
    result = rt.run(experiment, quiet=True, searcher=searcher)
    trials = result.trials()
    assert len(trials) == 3 and trials["config/module__hidden"].between(8, 32).all()
    # the object's own record of what it suggested: the trials it ran
    assert len(searcher._hpopt_trials.trials) == 3
    # experiment.yaml names its class, which reads back (and builds again on resume)
    saved = yaml.safe_load(Path(result.local_dir, "experiment.yaml").read_text())
    assert saved["search"]["algorithm"] == "ray.tune.search.hyperopt.hyperopt_search:HyperOptSearch"
    assert load_config(saved).search.algorithm == saved["search"]["algorithm"]
