"""Model selection (chapter 1): under/over-fitting, K-fold cross-validation, random search.

K-fold cross-validation and random search train any model (a zoo name or a user's module) as
one population (``jaxnotes.population``): the k folds, or the search's trials, are members of
ONE vmapped program through the engine's own train step, each member exactly the ``fit`` it
would be alone (same seed, same examples in the same order, its own rates). The fold ensemble
predicts with every fold's own parameters.

What stays here is what is specific to the chapter: the polynomial demo of under- and
over-fitting, the class-imbalance and standardization demos, and the small linear models they
train with ``train_loop`` (minibatch SGD on feature rows as one ``lax.scan``, with example weights
so several runs of unequal size share one vmapped program).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnotes import data as jdata
from jaxnotes import workdir as workdirs
from jaxnotes.config import TrainConfig
from jaxnotes.population import Member, PopulationResult, fit_population
from jaxnotes.training import fit

# --- the shared training loop --------------------------------------------------------------------

# (params, x, y, w, key) -> mean loss over the examples with w = 1
LossFn = Callable[[Any, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
# (params, x, y, w) -> (mean loss, accuracy) over the examples with w = 1
EvalFn = Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    # max(.., 1): an all-padding batch gives 0 rather than 0/0 = NaN (its step is skipped anyway)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the examples with weight 1: (N, C), (N,), (N,) -> ()."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return _masked_mean(losses, weights)


def masked_accuracy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Fraction of the weight-1 examples whose argmax is the label: (N, C), (N,), (N,) -> ()."""
    return _masked_mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32), weights)


def classifier_fns(logits_fn: Callable[..., jax.Array]) -> tuple[LossFn, EvalFn]:
    """``train_loop``'s (loss_fn, eval_fn) for a classifier: masked cross-entropy and accuracy.

    ``logits_fn(params, x, dropout_key) -> (batch, classes)`` logits; it gets a key when
    training and ``None`` when evaluating (no dropout).
    """

    def loss_fn(params, x, y, w, dropout_key):
        return masked_cross_entropy(logits_fn(params, x, dropout_key), y, w)

    def eval_fn(params, x, y, w):
        logits = logits_fn(params, x, None)
        return masked_cross_entropy(logits, y, w), masked_accuracy(logits, y, w)

    return loss_fn, eval_fn


def epoch_order(key: jax.Array, idx: jax.Array, weights: jax.Array, n: int) -> jax.Array:
    """A permutation of 0..len(idx)-1 putting the real examples (weight 1) first, shuffled.

    Every example of the data set (n of them) gets a random score from ``key``; the training
    examples ``idx`` are sorted by theirs. The score depends on the example's index in the data
    set, not on its position in ``idx``, so the real examples come out in the same relative order
    whatever padding surrounds them. Padding (weight 0) sorts last. (A repeated index, as after
    oversampling, gets one score, so its copies end up next to each other.)
    """
    scores = jax.random.uniform(key, (n,))[idx]
    return jnp.argsort(jnp.where(weights > 0, scores, 2.0))


def _select(live: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(live, a, b), new, old)


def train_loop(
    params: Any,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    eval_fn: EvalFn,
    X: jax.Array,
    y: jax.Array,
    train_idx: jax.Array,
    train_w: jax.Array,
    val_idx: jax.Array,
    val_w: jax.Array,
    order_key: jax.Array,
    dropout_key: jax.Array,
    *,
    epochs: int,
    batch_size: int,
    history: str = "val",
) -> tuple[Any, dict[str, jax.Array], dict[str, jax.Array]]:
    """Minibatch training on ``X[train_idx]`` with example weights, as one traceable function.

    Args:
      params: initial parameters.
      tx: the optimizer (may close over traced hyper-parameters).
      loss_fn, eval_fn: see ``LossFn`` / ``EvalFn``.
      X: (n, ...) all examples; y: (n,) integer labels.
      train_idx, train_w: (n_train,) indices into X and weights (1 real, 0 padding).
      val_idx, val_w: (n_val,) the same for validation.
      order_key: shuffles the examples each epoch (``epoch_order``).
      dropout_key: the step (e, b) uses ``fold_in(fold_in(dropout_key, e), b)``.
      epochs, batch_size: static. An epoch is ceil(n_train / batch_size) steps; the last batch is
        padded with weight-0 examples, and a batch of padding only is no step at all.
      history: what to evaluate after every epoch: "none", "val" (the validation set) or
        "both" (the training set too, in inference mode, as the book's curves do).

    Returns:
      (params, final, hist): ``final`` holds train_loss, train_acc, val_loss, val_acc of the
      trained parameters in inference mode (scalars); ``hist`` per-epoch arrays (epochs,):
      step_loss (the mean training loss over the epoch's steps, dropout on) and, as
      ``history`` asks, val_loss, val_acc, train_loss, train_acc.
    """
    if history not in ("none", "val", "both"):
        raise ValueError(f"history must be 'none', 'val' or 'both', got {history!r}")
    n_slots = train_idx.shape[0]
    steps = -(-n_slots // batch_size)
    pad = steps * batch_size - n_slots
    total_weight = jnp.maximum(jnp.sum(train_w), 1.0)

    def run_epoch(carry, epoch):
        order = epoch_order(jax.random.fold_in(order_key, epoch), train_idx, train_w, X.shape[0])
        idx = jnp.pad(train_idx[order], (0, pad)).reshape(steps, batch_size)
        w = jnp.pad(train_w[order], (0, pad)).reshape(steps, batch_size)
        epoch_key = jax.random.fold_in(dropout_key, epoch)

        def run_step(carry, batch):
            params, opt_state, loss_sum = carry
            batch_idx, batch_w, step = batch
            key = jax.random.fold_in(epoch_key, step)
            loss, grads = jax.value_and_grad(loss_fn)(
                params, X[batch_idx], y[batch_idx], batch_w, key
            )
            updates, new_opt_state = tx.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            # An all-padding batch must not move anything: momentum or decay would still act.
            live = jnp.sum(batch_w) > 0
            params, opt_state = _select(live, (new_params, new_opt_state), (params, opt_state))
            return (params, opt_state, loss_sum + loss * jnp.sum(batch_w)), None

        params, opt_state = carry
        (params, opt_state, loss_sum), _ = jax.lax.scan(
            run_step, (params, opt_state, jnp.zeros(())), (idx, w, jnp.arange(steps))
        )
        record = {"step_loss": loss_sum / total_weight}
        if history in ("val", "both"):
            record["val_loss"], record["val_acc"] = eval_fn(params, X[val_idx], y[val_idx], val_w)
        if history == "both":
            record["train_loss"], record["train_acc"] = eval_fn(
                params, X[train_idx], y[train_idx], train_w
            )
        return (params, opt_state), record

    (params, _), hist = jax.lax.scan(run_epoch, (params, tx.init(params)), jnp.arange(epochs))
    final = {}
    final["train_loss"], final["train_acc"] = eval_fn(params, X[train_idx], y[train_idx], train_w)
    final["val_loss"], final["val_acc"] = eval_fn(params, X[val_idx], y[val_idx], val_w)
    return params, final, hist


# --- under- and over-fitting: the polynomial demo -----------------------------------------------

TRUE_POLY_WEIGHTS = (5.0, 1.2, -3.4, 5.6)


@dataclasses.dataclass(frozen=True)
class PolynomialData:
    """The book's data: ``features[:, i] = x**i / i!`` (n, max_degree), ``labels`` (n,).

    The first ``n_train`` rows are the training set, the rest the test set; ``true_w``
    (max_degree,) is [5, 1.2, -3.4, 5.6, 0, ...].
    """

    features: np.ndarray
    labels: np.ndarray
    true_w: np.ndarray
    n_train: int


def polynomial_data(
    seed: int = 0,
    n_train: int = 100,
    n_test: int = 100,
    max_degree: int = 20,
    noise: float = 0.1,
) -> PolynomialData:
    """y = 5 + 1.2x - 3.4x^2/2! + 5.6x^3/3! + N(0, noise^2), x ~ N(0, 1).

    Dividing x^i by i! keeps the high powers (and their gradients) from exploding.
    """
    if n_train < 1 or n_test < 1 or max_degree < len(TRUE_POLY_WEIGHTS):
        raise ValueError(
            f"need n_train, n_test >= 1 and max_degree >= 4, got {n_train}, {n_test}, {max_degree}"
        )
    rng = np.random.default_rng(seed)
    true_w = np.zeros(max_degree)
    true_w[: len(TRUE_POLY_WEIGHTS)] = TRUE_POLY_WEIGHTS
    x = rng.normal(size=(n_train + n_test, 1))
    factorials = np.array([math.factorial(i) for i in range(max_degree)], np.float64)
    features = x ** np.arange(max_degree) / factorials
    labels = features @ true_w + rng.normal(scale=noise, size=n_train + n_test)
    return PolynomialData(features.astype(np.float32), labels.astype(np.float32), true_w, n_train)


@dataclasses.dataclass(frozen=True)
class PolynomialFit:
    """weights: (num_features,); train_loss, test_loss: (epochs,) mean squared error per epoch."""

    weights: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray


@functools.partial(jax.jit, static_argnames=("epochs", "batch_size"))
def _fit_linear(key, X_train, y_train, X_test, y_test, learning_rate, *, epochs, batch_size):
    """Linear least squares by minibatch SGD: (n, d) features -> weights (d,) and history."""
    n, d = X_train.shape

    def loss_fn(w, x, y, weights, _key):
        return _masked_mean((x @ w - y) ** 2, weights)

    def eval_fn(w, x, y, weights):
        return loss_fn(w, x, y, weights, None), jnp.zeros(())

    # The book's linear layer has no bias: the x^0 / 0! = 1 feature is the intercept.
    w, _, hist = train_loop(
        jnp.zeros(d),
        optax.sgd(learning_rate),
        loss_fn,
        eval_fn,
        jnp.concatenate([X_train, X_test]),
        jnp.concatenate([y_train, y_test]),
        jnp.arange(n),
        jnp.ones(n),
        n + jnp.arange(X_test.shape[0]),
        jnp.ones(X_test.shape[0]),
        key,
        key,
        epochs=epochs,
        batch_size=batch_size,
        history="both",
    )
    return w, hist["train_loss"], hist["val_loss"]


def polynomial_fit(
    num_features: int,
    *,
    n_train: int | None = None,
    epochs: int = 400,
    batch_size: int = 10,
    learning_rate: float = 0.01,
    seed: int = 0,
    data: PolynomialData | None = None,
) -> PolynomialFit:
    """Fit the first ``num_features`` polynomial features by minibatch SGD (the book's setup).

    Args:
      num_features: 4 recovers the cubic (normal fit), 2 a line (underfit), 20 every degree up to
        19 (overfit, with few training points).
      n_train: use only the first n_train training points (default: all of them).
      epochs, batch_size, learning_rate: the book's 400 epochs, batch 10, lr 0.01.
      seed: data (when ``data`` is None) and the SGD order.
      data: a ``polynomial_data`` set to share between fits.

    Returns:
      ``PolynomialFit`` with the learned weights and per-epoch train / test mean squared error
      (both measured after the epoch, on the whole set).
    """
    data = polynomial_data(seed) if data is None else data
    max_degree = data.features.shape[1]
    if not 1 <= num_features <= max_degree:
        raise ValueError(f"num_features must be in [1, {max_degree}], got {num_features}")
    n_train = data.n_train if n_train is None else n_train
    if not 1 <= n_train <= data.n_train:
        raise ValueError(f"n_train must be in [1, {data.n_train}], got {n_train}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    features = data.features[:, :num_features]
    w, train_loss, test_loss = _fit_linear(
        jax.random.key(seed),
        features[:n_train],
        data.labels[:n_train],
        features[data.n_train :],
        data.labels[data.n_train :],
        learning_rate,
        epochs=epochs,
        batch_size=batch_size,
    )
    return PolynomialFit(np.asarray(w), np.asarray(train_loss), np.asarray(test_loss))


# The book's three fits. The overfit one keeps only 10 training points (d2l's first edition
# showed over-fitting with 2): with all 100, SGD on x^i / i! barely moves the tiny high-degree
# weights and the 20-feature fit ends almost like the normal one (train loss ~ test loss).
POLYNOMIAL_FITS: dict[str, dict[str, int]] = {
    "normal (4 features)": {"num_features": 4, "epochs": 400},
    "underfit (2 features)": {"num_features": 2, "epochs": 400},
    "overfit (20 features, 10 points)": {"num_features": 20, "n_train": 10, "epochs": 1500},
}


def polynomial_demo(seed: int = 0) -> dict[str, PolynomialFit]:
    """The three fits of ``POLYNOMIAL_FITS`` on one data set: name -> ``PolynomialFit``."""
    data = polynomial_data(seed)
    return {
        name: polynomial_fit(**kw, seed=seed, data=data) for name, kw in POLYNOMIAL_FITS.items()
    }


def plot_polynomial_fits(fits: Mapping[str, PolynomialFit], path=None):
    """The three learning curves (train and test loss vs epoch, log scale), one panel each."""
    from jaxnotes import plots

    return plots.loss_panels(
        {name: {"train": fit.train_loss, "test": fit.test_loss} for name, fit in fits.items()},
        path=path,
        log_y=True,
    )


# --- K-fold cross-validation and random search: populations of any model ----------------------


def _pad_folds(index_lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged index arrays -> (k, max_len) indices (padding: 0) and weights (padding: 0)."""
    width = max(len(idx) for idx in index_lists)
    idx = np.zeros((len(index_lists), width), np.int32)
    w = np.zeros((len(index_lists), width), np.float32)
    for row, fold in enumerate(index_lists):
        idx[row, : len(fold)] = fold
        w[row, : len(fold)] = 1.0
    return idx, w


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


_RENAME = {"eval_loss": "val_loss", "eval_acc": "val_acc"}


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
    names = ("train_loss", "train_acc", "eval_loss", "eval_acc")
    metrics = {_RENAME.get(m, m): np.array([r[m] for r in result.rows]) for m in names}
    history = {
        _RENAME.get(m, m): np.array([[h[m] for h in rows] for rows in result.history])
        for m in names
    }
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
    dev, test = _subset(dataset, dev_idx), _subset(dataset, test_idx)
    cv = k_fold_cv(model, dev, k, config=config, seed=seed)
    final_config, module = _config(model, config, dataset)
    final_config = dataclasses.replace(final_config, progress=False)
    final = fit(final_config, model=module, train_data=dev, test_data=test, log=lambda s: None)
    ensemble = ensemble_predict(cv, test.images)
    ensemble_acc = float(np.mean(ensemble.argmax(-1) == test.labels))
    return ProtocolResult(dev_idx, test_idx, cv, final, ensemble_acc)


def _subset(dataset, idx: np.ndarray):
    return jdata.from_arrays(
        dataset.images[idx], dataset.labels[idx], dataset.num_classes, dataset.name
    )


# --- random hyper-parameter search ---------------------------------------------------------------

SEARCH_PARAMS = ("learning_rate", "weight_decay", "momentum", "dropout")
LOG_PARAMS = ("learning_rate", "weight_decay")
ARCHITECTURE_PARAMS = ("width",)  # each value is its own population (other shapes)

# name -> ("log", low, high) | ("uniform", low, high) | [choices] | a fixed number
DEFAULT_SPACE: dict[str, Any] = {
    "learning_rate": ("log", 1e-3, 1.0),
    "weight_decay": ("log", 1e-6, 1e-1),
    "dropout": ("uniform", 0.0, 0.8),
}
RULES = {
    "learning_rate": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: (v >= 0) & (v < 1), "in [0, 1)"),
    "dropout": (lambda v: (v >= 0) & (v < 1), "in [0, 1)"),
    "width": (lambda v: (v >= 1) & (v == np.round(v)), "a positive integer"),
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
    which matter by orders of magnitude), ("uniform", low, high), a list of choices or a fixed
    number. Left out: the config's value. None means ``DEFAULT_SPACE``.

    Raises:
      ValueError: n_trials < 1, an empty, unknown or malformed entry, or a sampled value out of
        its domain (learning rate <= 0, negative weight decay, dropout or momentum outside
        [0, 1), width not a positive integer), naming the rule.
    """
    if isinstance(n_trials, bool) or not isinstance(n_trials, numbers.Integral) or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    space = DEFAULT_SPACE if space is None else space
    if not space:
        raise ValueError("search space is empty; give some of " + ", ".join(RULES))
    unknown = sorted(set(space) - set(RULES))
    if unknown:
        raise ValueError(f"search space: unknown parameter(s) {unknown}; known: {', '.join(RULES)}")
    rng = np.random.default_rng(seed)
    sample = {}
    for name in RULES:  # a fixed order: the same seed draws the same values
        if name not in space:
            continue
        values = _sample_one(name, space[name], n_trials, rng)
        ok, rule = RULES[name]
        bad = np.flatnonzero(~ok(values))
        if bad.size:
            raise ValueError(
                f"search space: {name} must be {rule}, but trial {bad[0]} got {values[bad[0]]:g}"
            )
        sample[name] = values.astype(int) if name == "width" else values
    return sample


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
        layer of that width, the chapter's MLP).
      dataset: a ``jaxnotes.data.Dataset``.
      space: see ``sample_space`` (None: ``DEFAULT_SPACE``); n_trials: the notes' "try 100
        random settings".
      config: what the trials share (epochs, batch size, optimizer kind...).
      seed: the settings, the validation split and every trial's training seed (the trials
        share the data order and differ by their settings: common random numbers).
      workdir, resume, overwrite, log: as ``population.fit_population`` (``trials.jsonl``; one
        sub-folder ``width-W`` per width when the space has several).

    Returns:
      One dict per trial, best first (highest val_acc, then lowest val_loss; diverged trials
      last): trial, the sampled settings, train_loss, train_acc, val_loss, val_acc, diverged.
    """
    sample = sample_space(space, n_trials, seed)
    config, module = _config(model, config, dataset)
    if "width" in sample and (module is not None or config.model != "mlp"):
        raise ValueError("search space: 'width' applies to the chapter's MLP (model 'mlp') only")
    train_idx, val_idx = jdata.holdout_split(len(dataset), validation_fraction, seed)
    widths = sample.get("width", np.zeros(n_trials, int))
    rows: list[dict[str, Any]] = []
    for width in sorted(set(widths.tolist())):
        trials = np.flatnonzero(widths == width)
        group_config = config
        if "width" in sample:
            # one hidden layer: one dropout rate (the trial's, when the space has "dropout")
            kwargs = {"dropout": 0.0, **config.model_kwargs, "hidden": (int(width),)}
            group_config = dataclasses.replace(config, model_kwargs=kwargs)
        members = [
            Member(
                seed=config.seed, train_indices=train_idx, eval_indices=val_idx,
                **{name: float(sample[name][t]) for name in SEARCH_PARAMS if name in sample},
            )
            for t in trials
        ]  # fmt: skip
        folder = workdir
        if workdir is not None and "width" in sample:  # one population (and folder) per width
            if isinstance(workdir, workdirs.NewRun):
                workdir = workdir.create()
            folder = Path(workdir) / f"width-{int(width)}"
        result = fit_population(
            group_config, members, folder, model=module, train_data=dataset, eval_data=dataset,
            devices=devices, rows_file="trials.jsonl", resume=resume, overwrite=overwrite,
            log=log,
        )  # fmt: skip
        for t, row in zip(trials, result.rows, strict=True):
            rows.append(_trial_row(int(t), sample, row, group_config))
    return sorted(rows, key=_sort_key)


def _trial_row(trial: int, sample: dict, row: dict, config: TrainConfig) -> dict:
    settings = Member(**{k: float(v[trial]) for k, v in sample.items() if k in SEARCH_PARAMS})
    out = {"trial": trial, **settings.settings(config)}
    if "width" in sample:
        out["width"] = int(sample["width"][trial])
    out.update(
        {_RENAME.get(k, k): row[k] for k in ("train_loss", "train_acc", "eval_loss", "eval_acc")}
    )
    out["diverged"] = bool(row["diverged"])
    return out


def plot_search(rows: Sequence[Mapping[str, Any]], path=None, score: str = "val_acc"):
    """Validation score against each searched hyper-parameter (log axes for the log ones)."""
    from jaxnotes import plots

    finite = [row for row in rows if not row.get("diverged")]
    names = [n for n in (*SEARCH_PARAMS, "width") if n in rows[0] and rows[0][n] is not None]
    return plots.scatter_scores(finite, names, score, path, log_params=LOG_PARAMS)


# --- class imbalance and standardization ----------------------------------------------------------


def imbalance_data(
    seed: int = 0, n_majority: int = 900, n_minority: int = 100, separation: float = 1.5
) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping 2-D Gaussian classes, 0 (majority) and 1 (minority), unit covariance.

    Returns X (n, 2) float32 and y (n,) int32, the minority's mean ``separation`` away along the
    diagonal. Shuffled.
    """
    if n_majority < 1 or n_minority < 1:
        raise ValueError(f"both classes need examples, got {n_majority} and {n_minority}")
    rng = np.random.default_rng(seed)
    shift = separation / np.sqrt(2.0)
    X = np.concatenate([rng.normal(size=(n_majority, 2)), rng.normal(shift, size=(n_minority, 2))])
    y = np.concatenate([np.zeros(n_majority, np.int32), np.ones(n_minority, np.int32)])
    order = rng.permutation(len(y))
    return X[order].astype(np.float32), y[order]


def per_class_recall(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """recall[c] = fraction of class-c examples predicted as c: (n,), (n,) -> (num_classes,)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return np.array(
        [np.mean(predictions[labels == c] == c) for c in range(num_classes)], np.float64
    )


def _logistic_logits(params: dict, x: jax.Array) -> jax.Array:
    """(N, d) -> (N, 2) logits of a linear layer, kernel (2, d) as PyTorch stores it."""
    layer = params["Dense_0"]
    return x @ layer["kernel"].T + layer["bias"]


@functools.partial(jax.jit, static_argnames=("epochs",))
def _fit_logistic(X, y, train_idx, train_w, key, learning_rate, *, epochs):
    """Full-batch logistic regression (2-class softmax), one run per leading axis of idx / w."""

    def fit(idx, w):
        params = {"Dense_0": {"kernel": jnp.zeros((2, X.shape[1])), "bias": jnp.zeros(2)}}

        loss_fn, eval_fn = classifier_fns(lambda p, x, _key: _logistic_logits(p, x))
        params, _, _ = train_loop(
            params, optax.sgd(learning_rate), loss_fn, eval_fn, X, y, idx, w, idx, w, key, key,
            epochs=epochs, batch_size=idx.shape[0], history="none",
        )  # fmt: skip
        return params

    return jax.vmap(fit)(train_idx, train_w)


def imbalance_demo(
    seed: int = 0,
    *,
    ratio: int = 9,
    n_minority: int = 50,
    separation: float = 1.5,
    learning_rate: float = 0.5,
    epochs: int = 200,
) -> dict[str, dict[str, float]]:
    """A ``ratio``:1 binary task, trained as is and with the minority oversampled to 1:1.

    A plain fit minimises the average loss, which a rare class hardly moves: the boundary slides
    into the minority and its recall drops. ``jaxnotes.data.oversample_indices`` repeats minority
    examples until both classes count the same. Both models are full-batch logistic regressions
    trained in one vmapped program (the plain index list padded, with weight 0, to the length of
    the oversampled one), and evaluated on a fresh test set with the same ratio.

    Returns:
      {"plain": {...}, "oversampled": {...}}, each with minority_recall, majority_recall,
      balanced_accuracy (their mean) and accuracy on the test set.
    """
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    X_train, y_train = imbalance_data(seed, ratio * n_minority, n_minority, separation)
    X_test, y_test = imbalance_data(seed + 1, ratio * 10 * n_minority, 10 * n_minority, separation)
    balanced = jdata.oversample_indices(y_train, seed)
    plain = np.arange(len(y_train))
    idx, w = _pad_folds([plain, balanced])
    params = _fit_logistic(
        jnp.asarray(X_train), jnp.asarray(y_train), jnp.asarray(idx), jnp.asarray(w),
        jax.random.key(seed), learning_rate, epochs=epochs,
    )  # fmt: skip
    results = {}
    for row, name in enumerate(("plain", "oversampled")):
        logits = _logistic_logits(jax.tree.map(lambda leaf, r=row: leaf[r], params), X_test)
        predictions = np.asarray(jnp.argmax(logits, -1))
        majority, minority = per_class_recall(predictions, y_test, 2)
        results[name] = {
            "minority_recall": float(minority),
            "majority_recall": float(majority),
            "balanced_accuracy": float((minority + majority) / 2),
            "accuracy": float(np.mean(predictions == y_test)),
        }
    return results


def standardization_demo(seed: int = 0) -> dict[str, dict[str, float]]:
    """Standardization fit on the training split vs on all data, on a series whose level drifts.

    Uses ``jaxnotes.data.standardization_leak_demo`` (the last 30% is the test set). Fit on the
    training part, the standardized test set sits well above mean 0: the shift a deployed model
    really meets. Fit on all data, the test set's own statistics pull it back to about mean 0,
    std 1: the evaluation quietly peeked at the test set.

    Returns:
      {"fit_on_train": {"test_mean", "test_std"}, "fit_on_all": {...}}.
    """
    leak = jdata.standardization_leak_demo(seed=seed)
    return {name: {"test_mean": mean, "test_std": std} for name, (mean, std) in leak.items()}
