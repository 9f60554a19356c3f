"""Model selection (chapter 1): K-fold cross-validation, the holdout protocol, random search.

K-fold cross-validation and random search train any model (a zoo name or a user's module) as
one population (``jaxnotes.population``): the k folds, or the search's trials, are members of
ONE vmapped program through the engine's own train step, each member the ``fit`` it would be
alone (same seed, same examples in the same order, its own rates, its own training statistics).
The fold ensemble predicts with every fold's own parameters and preprocessing. The held-out
metric is ``val_loss`` / ``val_acc`` throughout (a fold's held-out part, a search's validation
split); the test split is for the protocol's one final look.

The chapter's small-model demos (under/over-fitting with polynomials, class imbalance,
standardization) live in ``jaxnotes.selection_demos`` and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxnotes import data as jdata
from jaxnotes import runs
from jaxnotes import workdir as workdirs
from jaxnotes.config import VALUE_RULES, TrainConfig
from jaxnotes.population import Member, PopulationResult, fit_population
from jaxnotes.selection_demos import (  # noqa: F401 -- re-exported: the chapter's demos
    POLYNOMIAL_FITS,
    TRUE_POLY_WEIGHTS,
    PolynomialData,
    PolynomialFit,
    imbalance_data,
    imbalance_demo,
    per_class_recall,
    plot_polynomial_fits,
    polynomial_data,
    polynomial_demo,
    polynomial_fit,
    standardization_demo,
)
from jaxnotes.training import fit

HELD_OUT = ("train_loss", "train_acc", "val_loss", "val_acc")


def _config(model, config: TrainConfig | None, dataset) -> tuple[TrainConfig, Any]:
    """(config, module): a zoo name sets ``config.model``; a module is passed through."""
    config = config or TrainConfig(dataset=getattr(dataset, "name", "arrays"))
    if isinstance(model, str):
        return dataclasses.replace(config, model=model), None
    return config, model


@dataclasses.dataclass(frozen=True)
class KFoldResult:
    """K-fold cross-validation: one population member per fold.

    folds: k pairs (train_idx, val_idx) into the data set. metrics: train_loss, train_acc,
    val_loss, val_acc, each (k,), of each fold's model after its last epoch (val: its held-out
    fold). history: per-epoch (k, epochs) arrays of the same four. population: the trained
    population (every fold's parameters, stacked).
    """

    folds: list[tuple[np.ndarray, np.ndarray]]
    metrics: dict[str, np.ndarray]
    history: dict[str, np.ndarray]
    population: PopulationResult

    @property
    def k(self) -> int:
        return len(self.folds)

    @property
    def mean(self) -> dict[str, float]:
        return {name: float(np.mean(v)) for name, v in self.metrics.items()}

    @property
    def std(self) -> dict[str, float]:
        """Spread over the folds (population std, ddof=0)."""
        return {name: float(np.std(v)) for name, v in self.metrics.items()}

    def fold_state(self, fold: int):
        """The TrainState of fold ``fold``'s model alone."""
        return self.population.member_state(fold)

    def fold_params(self, fold: int) -> Any:
        return self.fold_state(fold).params


def k_fold_cv(
    model: Any,
    dataset,
    k: int = 5,
    *,
    config: TrainConfig | None = None,
    seed: int = 0,
    devices: int = 1,
    workdir=None,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> KFoldResult:
    """K-fold cross-validation of any model, the k folds trained at once as one population.

    Args:
      model: a zoo name ("mlp", "lenet", ...) or any module ``training.fit`` accepts.
      dataset: a ``jaxnotes.data.Dataset`` (the development part: the notes' 70%).
      k: number of folds, 2 <= k <= n (``jaxnotes.data.k_fold_indices(n, k, seed)``).
      config: epochs, batch size, optimizer, rates... (default ``TrainConfig()``); every fold
        trains with ``config.seed`` (the folds differ by their data only).
      seed: the fold split.
      devices: split the folds over this many devices.
      workdir, resume, overwrite, log: as ``population.fit_population`` (``folds.jsonl``).

    Returns:
      ``KFoldResult``: fold i equals ``training.fit`` on fold i's training part alone.
    """
    n = len(dataset)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 2 <= k <= n:
        raise ValueError(f"k must be an integer with 2 <= k <= n, got k={k!r}, n={n}")
    config, module = _config(model, config, dataset)
    folds = jdata.k_fold_indices(n, int(k), seed)
    members = [Member(seed=config.seed, train_indices=tr, eval_indices=va) for tr, va in folds]
    result = fit_population(
        config, members, workdir, model=module, train_data=dataset, eval_data=dataset,
        devices=devices, rows_file="folds.jsonl", resume=resume, overwrite=overwrite, log=log,
    )  # fmt: skip
    metrics = {m: np.array([r[m] for r in result.rows]) for m in HELD_OUT}
    history = {m: np.array([[h[m] for h in rows] for rows in result.history]) for m in HELD_OUT}
    return KFoldResult(folds, metrics, history, result)


def fold_probabilities(result: KFoldResult, images) -> np.ndarray:
    """Every fold model's class probabilities: (n, H, W, C) -> (k, n, classes)."""
    return result.population.predict(np.asarray(images))


def ensemble_predict(result: KFoldResult, images) -> np.ndarray:
    """The fold ensemble: each fold's OWN model's probabilities averaged, -> (n, classes)."""
    return fold_probabilities(result, images).mean(axis=0)


def plot_k_fold(result: KFoldResult, path=None, metric: str = "val_acc"):
    """Each fold's per-epoch ``metric`` (a key of ``result.history``), one curve per fold."""
    from jaxnotes import plots

    curves = {f"fold {i}": values for i, values in enumerate(result.history[metric])}
    return plots.curves(curves, path, ylabel=metric.replace("_", " "))


@dataclasses.dataclass(frozen=True)
class ProtocolResult:
    """The notes' protocol: K-fold on the development part, one final test.

    dev_idx, test_idx: the holdout split. cv: K-fold on dev. final: ``fit`` on all of dev, its
    summary's test numbers the held-out test set's. ensemble_test_acc: the k fold models averaged.
    """

    dev_idx: np.ndarray
    test_idx: np.ndarray
    cv: KFoldResult
    final: Any
    ensemble_test_acc: float

    @property
    def test_acc(self) -> float:
        return self.final.summary["test_acc"]


def holdout_kfold(
    model: Any,
    dataset,
    *,
    k: int = 5,
    test_fraction: float = 0.3,
    config: TrainConfig | None = None,
    seed: int = 0,
) -> ProtocolResult:
    """Hold out ``test_fraction`` as test set, K-fold on the rest, retrain on all of it, test once.

    The test set is looked at exactly once (by the final model, and by the fold ensemble for
    comparison): model choices are to be made on ``cv`` alone.
    """
    dev_idx, test_idx = jdata.holdout_split(len(dataset), test_fraction, seed)
    dev, test = subset(dataset, dev_idx), subset(dataset, test_idx)
    cv = k_fold_cv(model, dev, k, config=config, seed=seed)
    final_config, module = _config(model, config, dataset)
    final_config = dataclasses.replace(final_config, progress=False)
    final = fit(final_config, model=module, train_data=dev, test_data=test, log=lambda s: None)
    ensemble = ensemble_predict(cv, test.images)
    ensemble_acc = float(np.mean(ensemble.argmax(-1) == test.labels))
    return ProtocolResult(dev_idx, test_idx, cv, final, ensemble_acc)


def subset(dataset, idx: np.ndarray):
    """The examples ``idx`` of ``dataset`` as a data set of their own."""
    return jdata.from_arrays(
        dataset.images[idx], dataset.labels[idx], dataset.num_classes, dataset.name
    )


# --- random hyper-parameter search ---------------------------------------------------------------

SEARCH_PARAMS = ("learning_rate", "weight_decay", "momentum", "dropout")
LOG_PARAMS = ("learning_rate", "weight_decay")
SPACE_PARAMS = (*SEARCH_PARAMS, "width")  # width: each value is its own population (shapes)

# name -> ("log", low, high) | ("uniform", low, high) | [choices] | a fixed number
DEFAULT_SPACE: dict[str, Any] = {
    "learning_rate": ("log", 1e-3, 1.0),
    "weight_decay": ("log", 1e-6, 1e-1),
    "dropout": ("uniform", 0.0, 0.8),
}


def _sample_one(name: str, spec: Any, n: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(spec, numbers.Real) and not isinstance(spec, bool):
        return np.full(n, spec, np.float64)
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"search space: {name!r} has an empty list of choices")
        return np.asarray(spec)[rng.integers(len(spec), size=n)]
    if not (isinstance(spec, tuple) and len(spec) == 3 and spec[0] in ("log", "uniform")):
        raise ValueError(
            f"search space: {name!r} must be ('log', low, high), ('uniform', low, high), a list "
            f"of choices or a number, got {spec!r}"
        )
    kind, low, high = spec
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise ValueError(f"search space: {name!r} needs finite low <= high, got {spec!r}")
    if kind == "log":
        if low <= 0:
            raise ValueError(f"search space: {name!r} is log-uniform, so low must be > 0: {spec!r}")
        return np.exp(rng.uniform(np.log(low), np.log(high), size=n))
    return rng.uniform(low, high, size=n)


def sample_space(
    space: Mapping[str, Any] | None, n_trials: int, seed: int
) -> dict[str, np.ndarray]:
    """Draw ``n_trials`` settings: name -> (n_trials,) values, reproducible from ``seed``.

    ``space`` maps any of ``SEARCH_PARAMS`` (and "width", the chapter MLP's hidden width) to
    ("log", low, high) (log-uniform: the natural scale for learning rates and decay rates,
    which matter by orders of magnitude), ("uniform", low, high) (low == high is that one
    value), a list of choices or a fixed number. Left out: the config's value. None means
    ``DEFAULT_SPACE``.

    Raises:
      ValueError: n_trials < 1, an empty, unknown or malformed entry, or a sampled value out of
        its domain (``jaxnotes.config.VALUE_RULES``), naming the rule and the trial.
    """
    if isinstance(n_trials, bool) or not isinstance(n_trials, numbers.Integral) or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    space = DEFAULT_SPACE if space is None else space
    if not space:
        raise ValueError("search space is empty; give some of " + ", ".join(SPACE_PARAMS))
    unknown = sorted(set(space) - set(SPACE_PARAMS))
    if unknown:
        raise ValueError(
            f"search space: unknown parameter(s) {unknown}; known: {', '.join(SPACE_PARAMS)}"
        )
    rng = np.random.default_rng(seed)
    sample = {}
    for name in SPACE_PARAMS:  # a fixed order: the same seed draws the same values
        if name not in space:
            continue
        values = _sample_one(name, space[name], n_trials, rng)
        rule = VALUE_RULES[name]
        bad = np.flatnonzero(~np.asarray(rule.holds(values), bool))
        if bad.size:
            raise ValueError(
                f"search space: {name} must be {rule.text}, but trial {bad[0]} got "
                f"{values[bad[0]]:g}"
            )
        sample[name] = values.astype(int) if name == "width" else values
    return sample


def check_searchable(sample: Mapping[str, np.ndarray], config: TrainConfig, module) -> None:
    """Refuse a searched setting the run would ignore (its trials would be identical)."""
    if "width" in sample and (module is not None or config.model != "mlp"):
        raise ValueError("search space: 'width' applies to the chapter's MLP (model 'mlp') only")
    if "momentum" in sample and config.optimizer == "adam":
        raise ValueError(
            "search space: momentum is not used by the adam optimizer (every trial would train "
            "the same); search it with --optimizer sgd or momentum, or drop it from the space"
        )


def _sort_key(row: dict) -> tuple:
    # best first: highest val_acc, then lowest val_loss; diverged trials (NaN / inf) last
    if row["diverged"]:
        return (True, 0.0, 0.0, row["trial"])
    return (False, -row["val_acc"], row["val_loss"], row["trial"])


def random_search(
    model: Any,
    dataset,
    space: Mapping[str, Any] | None = None,
    n_trials: int = 20,
    *,
    config: TrainConfig | None = None,
    seed: int = 0,
    validation_fraction: float = 0.3,
    devices: int = 1,
    workdir=None,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> list[dict[str, Any]]:
    """Random search over a model's learning rate, weight decay, momentum and dropout.

    The trials are one population (one compiled program; trials of different "width" are one
    population per width), trained on ``dataset`` minus a held-out validation part and scored on
    that part (the test set is not touched by a search).

    Args:
      model: a zoo name or any module ``training.fit`` accepts ("width" needs "mlp": one hidden
        layer of that width, the chapter's MLP); dataset: a ``jaxnotes.data.Dataset``.
      space: see ``sample_space`` (None: ``DEFAULT_SPACE``); n_trials: the notes' "try 100
        random settings"; config: what the trials share (epochs, batch size, optimizer...).
      seed: the settings, the validation split and every trial's training seed (the trials
        share the data order and differ by their settings: common random numbers).
      workdir, resume, overwrite, log: as ``population.fit_population``; ``trials.jsonl``
        (best first) goes there, with each width's population in a sub-folder ``width-W``.

    Returns:
      One dict per trial, best first (highest val_acc, then lowest val_loss; diverged trials
      last): trial, the sampled settings, train_loss, train_acc, val_loss, val_acc, diverged.
    """
    sample = sample_space(space, n_trials, seed)
    config, module = _config(model, config, dataset)
    config.validate()
    check_searchable(sample, config, module)
    train_idx, val_idx = jdata.holdout_split(len(dataset), validation_fraction, seed)
    widths = sample.get("width", np.zeros(n_trials, int))
    if "width" in sample and isinstance(workdir, workdirs.NewRun):
        workdir = workdir.create()  # the widths' sub-folders go in it
    if workdir is not None and "width" in sample and not resume:
        workdirs.check_reusable(workdir, resume=False, overwrite=overwrite)
    rows: list[dict[str, Any]] = []
    for width in sorted(set(widths.tolist())):
        trials = np.flatnonzero(widths == width)
        group_config, result = _search_population(
            sample, trials, int(width), config, module, dataset, (train_idx, val_idx), workdir,
            dict(devices=devices, log=log), resume, overwrite,
        )  # fmt: skip
        for t, row in zip(trials, result.rows, strict=True):
            rows.append(_trial_row(int(t), sample, row, group_config))
    rows = sorted(rows, key=_sort_key)
    if isinstance(workdir, workdirs.NewRun):
        workdir = workdir.path  # made by the population
    if workdir is not None:
        runs.write_json_lines(Path(workdir) / "trials.jsonl", runs.json_safe(rows))
    return rows


def _search_population(
    sample, trials, width, config, module, dataset, split, workdir, options, resume, overwrite
) -> tuple[TrainConfig, PopulationResult]:
    """The trials of one width as one population (in ``workdir/width-W`` when widths vary)."""
    train_idx, val_idx = split
    folder = workdir
    if "width" in sample:  # one population (and sub-folder) per width
        # one hidden layer: one dropout rate (the trial's, when the space has "dropout")
        kwargs = {"dropout": 0.0, **config.model_kwargs, "hidden": (width,)}
        config = dataclasses.replace(config, model_kwargs=kwargs)
        folder = None if workdir is None else Path(workdir) / f"width-{width}"
    members = [
        Member(
            seed=config.seed, train_indices=train_idx, eval_indices=val_idx,
            **{name: float(sample[name][t]) for name in SEARCH_PARAMS if name in sample},
        )
        for t in trials
    ]  # fmt: skip
    group_resume = resume and folder is not None and workdirs.has_checkpoint(folder)
    result = fit_population(
        config, members, folder, model=module, train_data=dataset, eval_data=dataset,
        rows_file=None, resume=group_resume, overwrite=overwrite or (resume and not group_resume),
        **options,
    )  # fmt: skip
    return config, result


def _trial_row(trial: int, sample: dict, row: dict, config: TrainConfig) -> dict:
    settings = Member(**{k: float(v[trial]) for k, v in sample.items() if k in SEARCH_PARAMS})
    out = {"trial": trial, **settings.settings(config)}
    if "width" in sample:
        out["width"] = int(sample["width"][trial])
    out.update({k: row[k] for k in HELD_OUT})
    out["diverged"] = bool(row["diverged"])
    return out


def plot_search(rows: Sequence[Mapping[str, Any]], path=None, score: str = "val_acc"):
    """Validation score against each searched hyper-parameter (log axes for the log ones)."""
    from jaxnotes import plots

    finite = [row for row in rows if not row.get("diverged")]
    names = [n for n in SPACE_PARAMS if n in rows[0] and rows[0][n] is not None]
    return plots.scatter_scores(finite, names, score, path, log_params=LOG_PARAMS)
