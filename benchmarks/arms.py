"""The arms. Each runs in a fresh child process (``run.py --child arm --name NAME``) and returns

    {"wall_s": ..., "trials": N, "runs": [{"lr":, SIZE:, "epochs":, "best_val_accuracy":}, ...],
     "best_val_accuracy": ..., ...}

``wall_s`` starts when the arm function is entered: after the child's common prelude (Python,
numpy and torch imported, the digits split loaded) and until the arm has its results; it includes
importing the arm's own framework (ray, skorch, optuna, raytune_torch) and starting and stopping
Ray. Removing temporary storage and stopping joblib's workers come after the timer.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any, Callable

from . import workloads as wl

PEERS = ("loop", "skorch_gridsearchcv", "optuna", "ray_tune_raw")
OURS = ("raytune_torch_grid", "raytune_torch_random", "raytune_torch_asha", "raytune_torch_grid_ckpt_end")
# Peers that train every epoch of every grid point, as the grid arms do (Optuna prunes).
FULL_GRID_PEERS = ("loop", "skorch_gridsearchcv", "ray_tune_raw")
ALL_ARMS = PEERS + OURS
# ASHA: grace period 2 epochs (1 when a trial has fewer than 8 epochs), reduction factor 2.
# raytune_torch's default (`scheduler: asha` alone gets 3). With 2, ASHA's asynchronous cut-offs
# let 74-126 of the mlp grid's 256 epochs run in four runs here; with 3, 72-100 (cnn 78-82).
ASHA_REDUCTION_FACTOR = 3


def asha_grace_period(epochs: int) -> int:
    return 2 if epochs >= 8 else 1


def _cores() -> int:
    return os.cpu_count() or 1


def _best(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return max(finite) if finite else float("nan")


def _summary(workload: wl.Workload, runs: list[dict[str, Any]], wall: float, **extra: Any) -> dict[str, Any]:
    return {"wall_s": wall, "trials": len(runs), "runs": runs,
            "best_val_accuracy": _best(r["best_val_accuracy"] for r in runs), **extra}


# ------------------------------------------------------------------------------------------------
# loop: one model at a time, one thread


def arm_loop(workload: wl.Workload, storage: str) -> dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    data = wl.tensors()
    runs = []
    for i, cfg in enumerate(workload.grid()):
        torch.manual_seed(wl.SEED + i)
        gen = torch.Generator().manual_seed(wl.SEED + i)
        model = wl.build_model(workload, cfg[workload.size_param])
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        accs = [wl.plain_epoch(model, opt, data, workload.batch_size, gen) for _ in range(workload.epochs)]
        runs.append({**cfg, "epochs": len(accs), "best_val_accuracy": max(accs)})
    return _summary(workload, runs, time.perf_counter() - t0, torch_threads=torch.get_num_threads())


# ------------------------------------------------------------------------------------------------
# skorch + GridSearchCV


def arm_skorch_gridsearchcv(workload: wl.Workload, storage: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    import numpy as np
    import torch
    from sklearn.model_selection import GridSearchCV, PredefinedSplit
    from skorch import NeuralNetClassifier

    from ._skorch import OneTorchThread

    torch.set_num_threads(1)
    d = wl.digits_splits()
    (X_tr, y_tr), (X_va, y_va) = d["train"], d["val"]
    X = np.concatenate([X_tr, X_va])
    y = np.concatenate([y_tr, y_va])
    # -1: always in the training fold; 0: the single validation fold. Exactly the shared split.
    test_fold = np.concatenate([np.full(len(X_tr), -1), np.zeros(len(X_va), dtype=int)])
    fixed = {f"module__{k}": v for k, v in wl.model_kwargs(workload, workload.sizes[0]).items()
             if k != workload.size_param}
    net = NeuralNetClassifier(
        wl.model_class(workload), **fixed, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.Adam,
        lr=workload.lrs[0], batch_size=workload.batch_size, max_epochs=workload.epochs,
        train_split=None,                 # GridSearchCV's PredefinedSplit validates
        iterator_train__shuffle=True, verbose=0, callbacks=[("one_thread", OneTorchThread())],
    )
    grid = {"lr": list(workload.lrs), f"module__{workload.size_param}": list(workload.sizes)}
    search = GridSearchCV(net, grid, cv=PredefinedSplit(test_fold), scoring="accuracy", refit=False,
                          n_jobs=_cores(), error_score="raise")
    search.fit(X, y)
    runs = []
    for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]):
        runs.append({"lr": params["lr"], workload.size_param: params[f"module__{workload.size_param}"],
                     "epochs": workload.epochs, "best_val_accuracy": float(score)})
    wall = time.perf_counter() - t0
    try:  # stop joblib's reusable workers now rather than at interpreter exit
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    except Exception:
        pass
    return _summary(workload, runs, wall, accuracy_is="final epoch (GridSearchCV score)")


# ------------------------------------------------------------------------------------------------
# Optuna in-process


def arm_optuna(workload: wl.Workload, storage: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    data = wl.tensors()
    runs: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_categorical("lr", list(workload.lrs))
        size = trial.suggest_categorical(workload.size_param, list(workload.sizes))
        torch.manual_seed(wl.SEED + trial.number)
        gen = torch.Generator().manual_seed(wl.SEED + trial.number)
        model = wl.build_model(workload, size)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        run = {"lr": lr, workload.size_param: size, "epochs": 0, "best_val_accuracy": float("nan")}
        runs.append(run)
        accs = []
        for epoch in range(1, workload.epochs + 1):
            accs.append(wl.plain_epoch(model, opt, data, workload.batch_size, gen))
            run["epochs"], run["best_val_accuracy"] = epoch, max(accs)
            trial.report(accs[-1], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return max(accs)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=wl.SEED),
                                pruner=optuna.pruners.MedianPruner())
    study.optimize(objective, n_trials=workload.grid_size, n_jobs=1)
    pruned = sum(1 for t in study.trials if t.state == optuna.trial.TrialState.PRUNED)
    return _summary(workload, runs, time.perf_counter() - t0, pruned_trials=pruned)


# ------------------------------------------------------------------------------------------------
# Raw Ray Tune, the way Ray's PyTorch tutorial writes it


def _make_raw_trainable(workload: wl.Workload, arrays: tuple):
    """A function trainable closing over the numpy arrays (as a tutorial script would)."""
    X_tr, y_tr, X_va, y_va = arrays
    size_param = workload.size_param

    def train_digits(config):
        import torch
        from ray import tune
        from torch.utils.data import DataLoader, TensorDataset

        train_loader = DataLoader(TensorDataset(torch.tensor(X_tr), torch.tensor(y_tr)),
                                  batch_size=workload.batch_size, shuffle=True)
        val_loader = DataLoader(TensorDataset(torch.tensor(X_va), torch.tensor(y_va)),
                                batch_size=workload.batch_size)
        model = wl.build_model(workload, config[size_param])
        criterion = torch.nn.CrossEntropyLoss()
        optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
        start = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as d:
                state = torch.load(os.path.join(d, "checkpoint.pt"))
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start = state["epoch"]
        for epoch in range(start, workload.epochs):
            model.train()
            for xb, yb in train_loader:
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
            model.eval()
            correct, total, val_loss = 0, 0, 0.0
            with torch.no_grad():
                for xb, yb in val_loader:
                    out = model(xb)
                    val_loss += float(criterion(out, yb)) * len(yb)
                    correct += int((out.argmax(1) == yb).sum())
                    total += len(yb)
            with tempfile.TemporaryDirectory() as d:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1},
                           os.path.join(d, "checkpoint.pt"))
                tune.report({"epoch": epoch + 1, "loss": val_loss / total, "accuracy": correct / total,
                             "torch_threads": torch.get_num_threads()},
                            checkpoint=tune.Checkpoint.from_directory(d))

    return train_digits


def arm_ray_tune_raw(workload: wl.Workload, storage: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    import ray
    from ray import tune

    d = wl.digits_splits()
    trainable = _make_raw_trainable(workload, (*d["train"], *d["val"]))
    ray.init(address="local", num_cpus=_cores(), include_dashboard=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"lr": tune.grid_search(list(workload.lrs)),
                         workload.size_param: tune.grid_search(list(workload.sizes))},
            tune_config=tune.TuneConfig(metric="accuracy", mode="max"),
            run_config=tune.RunConfig(name="ray_tune_raw", storage_path=storage),
        )
        grid = tuner.fit()
        runs, threads = [], set()
        for result in grid:
            if result.error is not None:
                raise RuntimeError(f"a raw Ray Tune trial failed: {result.error}")
            df = result.metrics_dataframe
            threads.update(int(t) for t in df["torch_threads"].unique())
            runs.append({"lr": result.config["lr"], workload.size_param: result.config[workload.size_param],
                         "epochs": int(df["epoch"].nunique()), "best_val_accuracy": float(df["accuracy"].max())})
    finally:
        ray.shutdown()
    return _summary(workload, runs, time.perf_counter() - t0, torch_threads=sorted(threads))


# ------------------------------------------------------------------------------------------------
# raytune_torch


def experiment(workload: wl.Workload, storage: str, arm: str) -> dict[str, Any]:
    """The raytune_torch experiment dict of ``arm`` (grid / random / asha) for ``workload``."""
    kind = "choice" if arm == "raytune_torch_random" else "grid"
    exp: dict[str, Any] = {
        "name": arm,
        "seed": wl.SEED,
        "storage": storage,
        "data": {"factory": "benchmarks.workloads:digits_splits"},
        "model": {"name": workload.model, "args": dict(workload.model_args)},
        "optimizer": "adam",
        "loss": "cross_entropy",
        "train": {"max_epochs": workload.epochs, "batch_size": workload.batch_size, "metrics": ["accuracy"]},
        "space": {"optimizer__lr": {"type": kind, "values": list(workload.lrs)},
                  f"module__{workload.size_param}": {"type": kind, "values": list(workload.sizes)}},
        "search": {"algorithm": "random" if arm == "raytune_torch_random" else "grid",
                   "metric": "val_accuracy", "mode": "max"},
        "resources": {"cpu": 1},
    }
    if arm == "raytune_torch_random":
        exp["search"]["num_samples"] = workload.grid_size
    if arm == "raytune_torch_grid_ckpt_end":
        # The grid with one checkpoint per trial (at its end) instead of one per epoch: the
        # difference to raytune_torch_grid is what per-epoch full-state checkpoints cost.
        exp["checkpoint"] = {"every": workload.epochs}
    if arm == "raytune_torch_asha":
        exp["scheduler"] = {"name": "asha", "grace_period": asha_grace_period(workload.epochs),
                            "reduction_factor": ASHA_REDUCTION_FACTOR}
    return exp


def arm_raytune_torch(workload: wl.Workload, storage: str, arm: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    import raytune_torch as rt

    result = rt.run(experiment(workload, storage, arm), quiet=True)
    wall = time.perf_counter() - t0
    table = result.table
    table = table[table["epoch"] > 0]
    lr_col, size_col = "config/optimizer__lr", f"config/module__{workload.size_param}"
    runs = []
    for _, group in table.groupby("trial_id", sort=False):
        runs.append({"lr": float(group[lr_col].iloc[0]), workload.size_param: int(group[size_col].iloc[0]),
                     "epochs": int(group["epoch"].nunique()),
                     "best_val_accuracy": float(group["val_accuracy"].max())})
    statuses = table.groupby("trial_id")["status"].last().value_counts().to_dict()
    return _summary(workload, runs, wall, status_counts={str(k): int(v) for k, v in statuses.items()})


def get_arm(name: str) -> Callable[[wl.Workload, str], dict[str, Any]]:
    if name in OURS:
        return lambda workload, storage: arm_raytune_torch(workload, storage, name)
    arms = {"loop": arm_loop, "skorch_gridsearchcv": arm_skorch_gridsearchcv, "optuna": arm_optuna,
            "ray_tune_raw": arm_ray_tune_raw}
    if name not in arms:
        raise ValueError(f"unknown arm {name!r} (choose from {', '.join(ALL_ARMS)})")
    return arms[name]


# ------------------------------------------------------------------------------------------------
# Data sharing: one big dataset, 1 vs 4 concurrent raytune_torch trials, each against a baseline
# that runs as many trials on a small dataset


DATA_CASES = ("baseline_one", "one", "baseline", "four")
BIG_ROWS = 290_000
# The baseline's trials train on full-size batches (batch size 8192) like the big runs', so their
# working memory (a batch, its activations and gradients) is the same and the difference in peak
# memory is the dataset's; its own 34 MB of data are subtracted from the dataset bytes.
BASELINE_ROWS = 32_768
FEATURES = 256
DATA_EPOCHS = 10


def data_experiment(case: str, storage: str) -> dict[str, Any]:
    rows = BASELINE_ROWS if case.startswith("baseline") else BIG_ROWS
    lrs = [1e-3] if case in ("one", "baseline_one") else [1e-3, 2e-3, 5e-3, 1e-2]
    return {
        "name": f"data-{case}",
        "seed": wl.SEED,
        "storage": storage,
        "data": {"factory": "benchmarks.workloads:big_blobs", "factory_args": {"rows": rows, "features": FEATURES}},
        "model": {"name": "examples.models:MLP", "args": {"hidden": 32}},
        # Long enough that all four trials are alive at once: two start in the workers Ray starts
        # with the instance, two wait for workers started for them (a few seconds). Shorter
        # trials (3 epochs) ended first, Tune gave their workers to the waiting trials and
        # stopped the workers being started, and the run went through two processes: a
        # different set of processes from the baseline's, each holding torch (about 280 MB, a
        # copy of the dataset). The baseline's trials train as many batches (more epochs of
        # fewer rows), so they overlap as much.
        "train": {"max_epochs": DATA_EPOCHS * BIG_ROWS // rows, "batch_size": 8192, "metrics": ["accuracy"]},
        "space": {"optimizer__lr": {"type": "grid", "values": lrs}},
        "search": {"algorithm": "grid", "metric": "val_accuracy", "mode": "max", "max_concurrent": 4},
        "resources": {"cpu": 0.5},
    }


def data_case(case: str, storage: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    import raytune_torch as rt

    result = rt.run(data_experiment(case, storage), quiet=True)
    wall = time.perf_counter() - t0
    table = result.table
    rows = BASELINE_ROWS if case.startswith("baseline") else BIG_ROWS
    n_val = max(4, int(rows * 0.05))
    nbytes = rows * FEATURES * 4 + rows * 8
    return {"wall_s": wall, "trials": int(table["trial_id"].nunique()), "rows": rows, "n_val": n_val,
            "dataset_bytes": nbytes, "best_val_accuracy": float(table["val_accuracy"].max())}
