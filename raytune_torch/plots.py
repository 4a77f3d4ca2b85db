"""Pictures of a finished run: learning curves, each parameter against the metric, parameter importance.

    import raytune_torch as rt
    plots = rt.TuneResult("runs/digits-mlp").plot("runs/digits-mlp/plots")
    plots.paths          # the PNGs written, then the README.md index
    plots.importances    # {"optimizer__lr": 0.71, ...}: shares in [0, 1] that sum to 1

or ``raytune-torch results RUN_DIR --plots DIR``. The files (replaced when they exist):

* ``learning_curves.png``: the search metric per epoch (left) and the train/validation loss
  (right) of the top ``top`` trials, best first, in colour (at most :data:`MAX_HIGHLIGHTED`); the
  metric of every other trial as a faint grey line.
* ``params.png``: one panel per searched parameter: each trial's value of the metric against the
  parameter's value, on a log axis for a log range and one column per value of a choice or grid;
  a trial stopped before its last epoch (by the scheduler, or by a time budget, limit or
  stop_all_at) is a hollow dot, the best trial a red star.
* ``importance.png``: each parameter's share of the metric's variance by :data:`EVALUATOR`, over
  the trials with a finite metric rebuilt as an Optuna study whose distributions come from the
  experiment's space. Skipped, with the reason in :attr:`Plots.notes` and the index, with fewer
  than :data:`MIN_IMPORTANCE_TRIALS` such trials, when they all scored the same, or without Optuna.
* ``README.md``: what each file shows for this run, the importances, and what was skipped.

A trial's value is its best over its epochs, as ``best.json`` and ``TuneResult.trials()`` rank it.
matplotlib draws on ``Figure`` objects with the Agg canvas and never through ``pyplot``, so a
notebook's own backend and figures are left alone. Ray-free.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import space as sp
from .exceptions import DependencyError, ResultsError

if TYPE_CHECKING:
    from .results import TuneResult

__all__ = ["Plots", "write_plots", "param_importances", "require_matplotlib", "EVALUATOR",
           "MIN_IMPORTANCE_TRIALS", "MAX_HIGHLIGHTED"]

#: The importance method named in ``importance.png``'s title and the index.
EVALUATOR = "fANOVA (Optuna's FanovaImportanceEvaluator, seed 0)"
#: Trials with a finite metric that parameter importance needs (fewer: the picture is skipped).
MIN_IMPORTANCE_TRIALS = 4
#: The most trials drawn in colour in ``learning_curves.png`` (the colours of matplotlib's tab10).
MAX_HIGHLIGHTED = 10

_INSTALL = "pip install 'raytune-torch[plots]'"
_DPI = 110
_BEST = "crimson"


@dataclass(frozen=True)
class Plots:
    """What :func:`write_plots` wrote: each file with what it shows, the notes on what was skipped,
    and the parameter importances (empty when that picture was skipped)."""

    directory: str
    shows: Mapping[str, str]
    notes: tuple[str, ...] = ()
    importances: Mapping[str, float] = field(default_factory=dict)

    @property
    def paths(self) -> list[str]:
        """Every file written, the PNGs first and the ``README.md`` index last."""
        return list(self.shows)


class _Skip(Exception):
    """A picture that cannot be drawn for this run; ``error`` is what :func:`param_importances` raises."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class _Run:
    """The parts of a finished run the pictures read."""

    shown: str
    metric: str
    mode: str
    table: Any  # every trial and epoch (pandas)
    trials: Any  # one row per trial at its best epoch, best first
    space: dict[str, sp.Param]  # the searched parameters that the table has a column for

    @property
    def finite(self):
        """The trials with a finite metric, best first."""
        values = self.trials[self.metric].to_numpy(dtype=float) if self.metric in self.trials else np.array([])
        return self.trials[np.isfinite(values)] if len(values) else self.trials.iloc[0:0]

    @property
    def better(self) -> str:
        return "higher" if self.mode == "max" else "lower"


def require_matplotlib() -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``; raises :class:`DependencyError` with the install command."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise DependencyError(f"plots need matplotlib, which is not installed; {_INSTALL}") from None
    return Figure, FigureCanvasAgg


def write_plots(run: TuneResult | str | os.PathLike, directory: str | os.PathLike, *, top: int = 5) -> Plots:
    """Write the pictures of a finished run (a run directory, a URI, or its :class:`TuneResult`)
    into the local ``directory`` (created when missing).

    Args:
        top: trials drawn in colour in the learning curves, 1 to :data:`MAX_HIGHLIGHTED` (a larger
            number draws that many).

    Raises:
        DependencyError: matplotlib is not installed.
        ResultsError: ``run`` is not a finished run, no trial has a finite metric, or
            ``directory`` cannot hold files.
    """
    Figure, Canvas = require_matplotlib()
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ValueError(f"top must be an integer >= 1 (the trials drawn in colour), got {top!r}")
    loaded = _load(run)
    if not len(loaded.finite):
        raise ResultsError(
            f"no trial of {loaded.shown!r} reported a finite {loaded.metric}; there is nothing to plot "
            f"(`raytune-torch results {loaded.shown}` lists the trials and their errors)")
    out = _directory(directory)
    shows: dict[str, str] = {}
    notes: list[str] = []
    importances: dict[str, float] = {}

    path, shown = _learning_curves(loaded, min(top, MAX_HIGHLIGHTED), Figure, Canvas, out)
    shows[path] = shown
    try:
        path, shown = _params_figure(loaded, Figure, Canvas, out)
        shows[path] = shown
    except _Skip as skip:
        notes.append(f"params.png skipped: {skip}")
    try:
        importances, left_out = _importances(loaded)
        path, shown = _importance_figure(loaded, importances, Figure, Canvas, out)
        shows[path] = shown
        notes.extend(f"importance.png leaves out {name}: {why}" for name, why in left_out.items())
    except _Skip as skip:
        notes.append(f"importance.png skipped: {skip}")
    for name in ("params.png", "importance.png"):
        stale = out / name
        if str(stale) not in shows and stale.is_file():
            stale.unlink()  # an older run's picture must not pass for this one's
    index = out / "README.md"
    index.write_text(_index(loaded, shows, notes, importances))
    shows[str(index)] = "this index: what each picture shows, the importances, and what was skipped"
    return Plots(directory=str(out), shows=shows, notes=tuple(notes), importances=importances)


def param_importances(run: TuneResult | str | os.PathLike) -> dict[str, float]:
    """Each searched parameter's share of the metric's variance by :data:`EVALUATOR`, highest
    first; every share is in [0, 1] and they sum to 1.

    Raises:
        DependencyError: Optuna is not installed.
        ResultsError: too few trials with a finite metric, no variance, or nothing searched.
    """
    try:
        return _importances(_load(run))[0]
    except _Skip as skip:
        raise skip.error from None


# -- reading the run -------------------------------------------------------------------------------

def _load(run: TuneResult | str | os.PathLike) -> _Run:
    import pandas as pd
    import yaml

    from .results import TuneResult
    from .storage import display

    result = run if isinstance(run, TuneResult) else TuneResult(run)
    shown = display(result.run_dir)
    with open(os.path.join(result.local_dir, "experiment.yaml")) as fh:
        raw = yaml.safe_load(fh) or {}
    space, _ = sp.parse_space(raw.get("space"))
    table = result.table
    trials = result.trials()
    for frame in (table, trials):
        if result.metric in frame:
            frame[result.metric] = pd.to_numeric(frame[result.metric], errors="coerce")
    searched = {name: param for name, param in sp.searched(space).items() if f"config/{name}" in table}
    return _Run(shown=shown, metric=result.metric, mode=result.mode, table=table, trials=trials, space=searched)


def _directory(directory: str | os.PathLike) -> Path:
    from .storage import is_uri

    if is_uri(directory):
        raise ResultsError(f"plots are written to a local directory, not to {str(directory)!r}; give a path "
                           f"(the run itself may be a URI)")
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ResultsError(f"{str(out)!r} is a file, not a directory for the plots; give another path")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _finite(values: Any) -> np.ndarray:
    """Floats with NaN in place of inf, NaN and None (a gap in a line)."""
    array = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    array[~np.isfinite(array)] = np.nan
    return array


def _cell(value: Any) -> Any:
    """A parameter value as ``results.parquet`` stores it (a list or dict as JSON)."""
    return value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)


def _category(value: Any, values: tuple) -> int | None:
    """The position of a stored value among a choice's values (None when it is none of them)."""
    for i, option in enumerate(values):
        if value == _cell(option) or str(value) == str(_cell(option)):
            return i
    return None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# -- the pictures ----------------------------------------------------------------------------------

def _save(fig: Any, Canvas: Any, path: Path) -> str:
    Canvas(fig)
    fig.savefig(path, dpi=_DPI)
    return str(path)


def _learning_curves(run: _Run, top: int, Figure: Any, Canvas: Any, out: Path) -> tuple[str, str]:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    finite = run.finite
    chosen = list(finite["trial_id"])[:top]
    others = [t for t in dict.fromkeys(run.table["trial_id"]) if t not in chosen]
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    epochs = run.table[run.table["epoch"] >= 1]
    for trial_id in others:
        rows = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
        left.plot(rows["epoch"], _finite(rows[run.metric]), color="0.55", alpha=0.35, linewidth=1)
    colours = [f"C{i}" for i in range(top)]
    for colour, (_, trial) in zip(colours, finite.head(top).iterrows()):
        rows = epochs[epochs["trial_id"] == trial["trial_id"]].sort_values("epoch")
        status = "" if trial["status"] == "completed" else f", {trial['status']}"
        left.plot(rows["epoch"], _finite(rows[run.metric]), color=colour, marker="o", markersize=3, linewidth=1.8,
                  label=f"{trial['trial_id']}: {trial[run.metric]:.4g}{status}")
        for column, style in (("train_loss", "-"), ("val_loss", "--")):
            if column in rows:
                right.plot(rows["epoch"], _finite(rows[column]), color=colour, linestyle=style, linewidth=1.5)
    best = finite.iloc[0]
    left.plot([best["epoch"]], [best[run.metric]], marker="*", markersize=16, color=_BEST, linestyle="none",
              label=f"best: {best['trial_id']} at epoch {int(best['epoch'])}", zorder=5)
    if others:
        left.plot([], [], color="0.55", alpha=0.5, label=f"the other {len(others)} trial(s)")
    left.set(xlabel="epoch", ylabel=f"{run.metric} ({run.better} is better)",
             title=f"{run.metric} per epoch: top {len(chosen)} of {len(run.trials)} trials")
    left.legend(fontsize=8, loc="best")
    right.set(xlabel="epoch", ylabel="loss", title=f"loss of the top {len(chosen)} trials")
    right.legend(handles=[Line2D([], [], color="0.2", linestyle="-", label="train_loss"),
                          Line2D([], [], color="0.2", linestyle="--", label="val_loss")], fontsize=8)
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    path = _save(fig, Canvas, out / "learning_curves.png")
    rest = f"; the other {len(others)} in grey" if others else ""
    return path, (f"{run.metric} per epoch of the top {len(chosen)} of {len(run.trials)} trials in colour, best "
                  f"first{rest}; their train_loss (solid) and val_loss (dashed)")


def _params_figure(run: _Run, Figure: Any, Canvas: Any, out: Path) -> tuple[str, str]:
    from matplotlib.ticker import MaxNLocator

    if not run.space:
        raise _Skip(ResultsError("the experiment searched no parameters (its space holds only constants)"))
    finite = run.finite
    best_id = finite["trial_id"].iloc[0]
    names = list(run.space)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.4 * cols, 3.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    y_all = finite[run.metric].to_numpy(dtype=float)
    is_best = (finite["trial_id"] == best_id).to_numpy()
    pruned = finite["status"].isin(("pruned", "time_limit", "time_budget", "stopped_all")).to_numpy()
    for ax, name in zip(axes, names):
        param = run.space[name]
        values = list(finite[f"config/{name}"])
        present = np.array([not _missing(v) for v in values])
        title = name
        if isinstance(param, (sp.Choice, sp.Grid)):
            options = list(param.values)
            positions = []
            for v in values:
                index = None if _missing(v) else _category(v, tuple(options))
                if index is None and not _missing(v):
                    options.append(v)  # a value outside the space (an edited file): its own column
                    index = len(options) - 1
                positions.append(np.nan if index is None else index)
            spread = np.array([((i * 0.618) % 1 - 0.5) * 0.3 for i in range(len(values))])
            x = np.asarray(positions, dtype=float) + spread
            ax.set_xticks(range(len(options)), [str(_cell(o)) for o in options],
                          rotation=30 if len(options) > 4 else 0)
            ax.set_xlim(-0.5, len(options) - 0.5)
            title += f" ({'grid' if isinstance(param, sp.Grid) else 'choice'})"
        else:
            x = np.asarray([np.nan if _missing(v) else float(v) for v in values])
            if param.log:
                ax.set_xscale("log")
                title += " (log)"
            elif isinstance(param, sp.Int):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        shown = present & ~is_best
        ax.scatter(x[shown & ~pruned], y_all[shown & ~pruned], s=28, color="C0", alpha=0.75, edgecolors="white",
                   linewidths=0.5, label="a trial")
        if (shown & pruned).any():
            ax.scatter(x[shown & pruned], y_all[shown & pruned], s=28, facecolors="none", edgecolors="C0",
                       linewidths=1.2, label="stopped early (scheduler or budget)")
        ax.scatter(x[present & is_best], y_all[present & is_best], s=220, marker="*", color=_BEST, zorder=5,
                   label=f"best ({best_id})")
        if not present.all():
            title += f"; not set in {int((~present).sum())} trial(s)"
        ax.set(title=title, xlabel=name, ylabel=run.metric)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"{run.metric} ({run.better} is better) of {len(finite)} trials, each at its best epoch")
    path = _save(fig, Canvas, out / "params.png")
    return path, (f"{run.metric} of each trial (at its best epoch) against {', '.join(names)}: log axis for log "
                  f"ranges, one column per choice; hollow dots were stopped early (scheduler or budget); the best trial "
                  f"{best_id} is the red star")


def _distribution(param: sp.Param) -> Any:
    """The Optuna distribution of a space parameter (``step`` left out: fANOVA splits on values)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(param, sp.Float):
        return FloatDistribution(param.low, param.high, log=param.log)
    if isinstance(param, sp.Int):
        return IntDistribution(param.low, param.high, log=param.log)
    return CategoricalDistribution([str(_cell(v)) for v in param.values])


def _contained(param: sp.Param, value: Any) -> Any:
    """The value as the distribution holds it, or None when it lies outside the space."""
    if isinstance(param, (sp.Float, sp.Int)):
        number = float(value)
        if not param.low <= number <= param.high:
            return None
        if isinstance(param, sp.Int):
            return int(number) if number == int(number) else None
        return number
    index = _category(value, tuple(param.values))
    return None if index is None else str(_cell(param.values[index]))


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines and experimental warnings off while the study is rebuilt, then as they were."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(before)


def _importances(run: _Run) -> tuple[dict[str, float], dict[str, str]]:
    """``(importance of each parameter, highest first; parameters left out and why)``."""
    try:
        import optuna
        from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    except ImportError:
        raise _Skip(DependencyError(f"parameter importance needs optuna, which is not installed; {_INSTALL}")) from None
    if not run.space:
        raise _Skip(ResultsError("the experiment searched no parameters (its space holds only constants)"))
    finite = run.finite
    if len(finite) < MIN_IMPORTANCE_TRIALS:
        raise _Skip(ResultsError(
            f"{len(finite)} trial(s) of {run.shown!r} reported a finite {run.metric}; parameter importance needs "
            f"at least {MIN_IMPORTANCE_TRIALS} (run more trials)"))
    scores = finite[run.metric].to_numpy(dtype=float)
    if np.ptp(scores) == 0:
        raise _Skip(ResultsError(f"every trial scored the same {run.metric} ({scores[0]:.4g}); there is no "
                                 f"variance for a parameter to explain"))
    left_out: dict[str, str] = {}
    names = []
    for name, param in run.space.items():
        column = finite[f"config/{name}"]
        if any(_missing(v) for v in column):
            left_out[name] = "not set in every trial (a conditional parameter)"
        elif any(_contained(param, v) is None for v in column):
            left_out[name] = "a trial's value lies outside the space in experiment.yaml"
        elif _distribution(param).single():
            left_out[name] = "it can take only one value"
        else:
            names.append(name)
    if not names:
        reasons = "; ".join(f"{name}: {why}" for name, why in left_out.items())
        raise _Skip(ResultsError(f"no searched parameter can be rated ({reasons})"))
    distributions = {name: _distribution(run.space[name]) for name in names}
    with _quiet_optuna():
        study = optuna.create_study(direction="maximize" if run.mode == "max" else "minimize")
        study.add_trials([
            optuna.trial.create_trial(
                params={name: _contained(run.space[name], trial[f"config/{name}"]) for name in names},
                distributions=distributions, value=float(trial[run.metric]))
            for _, trial in finite.iterrows()])
        values = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), params=names,
                                       normalize=True)
    values = {name: float(v) for name, v in values.items()}
    total = sum(values.values())
    if not math.isfinite(total) or total <= 0:
        raise _Skip(ResultsError(f"{EVALUATOR} found no parameter that explains {run.metric}"))
    return values, left_out


def _importance_figure(run: _Run, importances: dict[str, float], Figure: Any, Canvas: Any,
                       out: Path) -> tuple[str, str]:
    names = list(importances)[::-1]  # highest at the top
    shares = [importances[n] for n in names]
    fig = Figure(figsize=(8, 1.6 + 0.5 * len(names)), layout="constrained")
    ax = fig.subplots()
    bars = ax.barh(names, shares, color="C0")
    ax.bar_label(bars, labels=[f"{s:.2f}" for s in shares], padding=3, fontsize=9)
    ax.set_xlim(0, 1.1)
    ax.set(xlabel=f"share of the variance of {run.metric} (sums to 1)",
           title=f"Parameter importance for {run.metric}\n{EVALUATOR}, over {len(run.finite)} trials")
    ax.grid(axis="x", alpha=0.3)
    path = _save(fig, Canvas, out / "importance.png")
    return path, (f"each parameter's share of the variance of {run.metric} over {len(run.finite)} trials, by "
                  f"{EVALUATOR}")


def _index(run: _Run, shows: dict[str, str], notes: list[str], importances: dict[str, float]) -> str:
    lines = [f"# Plots of {run.shown}", "",
             f"Metric: {run.metric} ({run.better} is better); {len(run.trials)} trial(s), "
             f"{len(run.finite)} with a finite {run.metric}. A trial's value is its best over its epochs.", "",
             "| file | what it shows |", "|---|---|"]
    lines += [f"| [{Path(p).name}]({Path(p).name}) | {text} |" for p, text in shows.items()]
    if importances:
        lines += ["", f"Parameter importance ({EVALUATOR}):", "", "| parameter | importance |", "|---|---|"]
        lines += [f"| {name} | {value:.3f} |" for name, value in importances.items()]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
