"""Model selection (chapter 1): under/over-fitting, K-fold cross-validation, random search.

Every experiment here is a pure function of its arguments and an integer seed, and each whole
training run (all epochs, all steps) is one jitted program (``lax.scan`` over epochs and steps),
so K folds or a group of search trials become ONE compiled program with ``jax.vmap``:

- ``k_fold_cv`` trains the k folds at once. Folds may differ in size by one, so every fold's
  training indices are padded to a common length and the padding carries weight 0: it adds
  nothing to a loss or a gradient, and a batch holding only padding is skipped (no optimizer
  step), so each fold trains exactly as it would alone (``train_on_indices``).
- ``random_search`` samples learning rate and weight decay log-uniformly, dropout uniformly and a
  width from a list; trials of the same width share shapes and are trained together, their
  hyper-parameters passed as traced arrays (the optimizer is built inside the traced function).

Keys: a run's key is split by purpose with ``fold_in`` (0: initialisation, 1: data order,
2: dropout; a search shares the data order and dropout draws between its trials) and per epoch
and step with ``fold_in`` again, so the same seed gives the same result whether runs are vmapped
or looped. The data order of an epoch is a sort of per-example random
scores that depend on the example's index in the data set only, so an example's place among the
real examples is the same with or without padding.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnotes import data as jdata
from jaxnotes import optim
from jaxnotes.models import get_model

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


# --- K-fold cross-validation ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """How one model is trained: a zoo MLP and a ``make_optimizer`` optimizer (hashable, static).

    The defaults: one hidden layer of 64, no dropout, SGD with momentum 0.9, lr 0.1, batch 32,
    20 epochs.
    """

    hidden: tuple[int, ...] = (64,)
    dropout: float = 0.0
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 20
    batch_size: int = 32

    def __post_init__(self):
        # lists would make the spec unhashable, and it is a static argument of jitted programs
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not isinstance(self.dropout, int | float):
            object.__setattr__(self, "dropout", tuple(float(r) for r in self.dropout))
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")

    def model(self, num_classes: int) -> nn.Module:
        return get_model("mlp", num_classes, hidden=tuple(self.hidden), dropout=self.dropout)

    def tx(self) -> optax.GradientTransformation:
        return optim.make_optimizer(
            self.optimizer, self.learning_rate, self.momentum, self.weight_decay
        )


def _fit_spec(X, y, train_idx, train_w, val_idx, val_w, key, *, spec, num_classes, history):
    """Train ``spec``'s model on weighted indices; see ``train_loop`` for shapes and outputs."""
    model = spec.model(num_classes)
    params = model.init(jax.random.fold_in(key, 0), X[:1], train=False)["params"]

    def logits_fn(params, x, dropout_key):
        if dropout_key is None:
            return model.apply({"params": params}, x, train=False)
        return model.apply({"params": params}, x, train=True, rngs={"dropout": dropout_key})

    loss_fn, eval_fn = classifier_fns(logits_fn)
    return train_loop(
        params,
        spec.tx(),
        loss_fn,
        eval_fn,
        X,
        y,
        train_idx,
        train_w,
        val_idx,
        val_w,
        jax.random.fold_in(key, 1),
        jax.random.fold_in(key, 2),
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        history=history,
    )


_STATIC = ("spec", "num_classes", "history")
_fit_one = jax.jit(_fit_spec, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _fit_folds(X, y, train_idx, train_w, val_idx, val_w, keys, *, spec, num_classes, history):
    """k trainings as one program: every argument but X and y has a leading fold axis."""
    fit = functools.partial(_fit_spec, spec=spec, num_classes=num_classes, history=history)
    return jax.vmap(fit, in_axes=(None, None, 0, 0, 0, 0, 0))(
        X, y, train_idx, train_w, val_idx, val_w, keys
    )


def fold_key(seed: int, fold: int) -> jax.Array:
    """The key fold ``fold`` of ``k_fold_cv(..., seed=seed)`` trains with."""
    return jax.random.fold_in(jax.random.key(seed), fold)


@dataclasses.dataclass(frozen=True)
class FitResult:
    """One trained model: params, final metrics (train/val loss and acc), per-epoch history."""

    params: Any
    metrics: dict[str, float]
    history: dict[str, np.ndarray]


def _check_arrays(X, y) -> tuple[jax.Array, jax.Array, int]:
    X, y = np.asarray(X, np.float32), np.asarray(y)
    if X.ndim < 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (n, ...) and y (n,), got shapes {X.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    return jnp.asarray(X), jnp.asarray(y, jnp.int32), int(y.max()) + 1 if y.size else 0


def train_on_indices(
    X,
    y,
    train_idx,
    val_idx,
    *,
    key: jax.Array,
    spec: TrainSpec = TrainSpec(),
    num_classes: int | None = None,
    history: str = "val",
) -> FitResult:
    """Train one model on ``X[train_idx]`` and evaluate on ``X[val_idx]``, no padding.

    X: (n, ...) float inputs (images NHWC or feature rows); y: (n,) integer labels.
    """
    X, y, found = _check_arrays(X, y)
    train_idx, val_idx = np.asarray(train_idx), np.asarray(val_idx)
    if train_idx.size == 0 or val_idx.size == 0:
        raise ValueError("train_idx and val_idx must be non-empty")
    params, final, hist = _fit_one(
        X,
        y,
        jnp.asarray(train_idx),
        jnp.ones(train_idx.size),
        jnp.asarray(val_idx),
        jnp.ones(val_idx.size),
        key,
        spec=spec,
        num_classes=num_classes or found,
        history=history,
    )
    return FitResult(
        params,
        {name: float(v) for name, v in final.items()},
        {name: np.asarray(v) for name, v in hist.items()},
    )


def _pad_folds(index_lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged index arrays -> (k, max_len) indices (padding: 0) and weights (padding: 0)."""
    width = max(len(idx) for idx in index_lists)
    idx = np.zeros((len(index_lists), width), np.int32)
    w = np.zeros((len(index_lists), width), np.float32)
    for row, fold in enumerate(index_lists):
        idx[row, : len(fold)] = fold
        w[row, : len(fold)] = 1.0
    return idx, w


@dataclasses.dataclass(frozen=True)
class KFoldResult:
    """K-fold cross-validation results.

    folds: k pairs (train_idx, val_idx). params: the k models, every leaf stacked on a leading
    fold axis (k, ...). metrics: train_loss, train_acc, val_loss, val_acc, each (k,).
    history: per-epoch arrays (k, epochs) (see ``train_loop``).
    """

    folds: list[tuple[np.ndarray, np.ndarray]]
    params: Any
    metrics: dict[str, np.ndarray]
    history: dict[str, np.ndarray]
    spec: TrainSpec
    num_classes: int

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

    def fold_params(self, fold: int) -> Any:
        """The parameters of fold ``fold``'s model alone."""
        return jax.tree.map(lambda leaf: leaf[fold], self.params)

    @property
    def model(self) -> nn.Module:
        return self.spec.model(self.num_classes)


def k_fold_cv(
    X,
    y,
    k: int = 5,
    *,
    spec: TrainSpec = TrainSpec(),
    seed: int = 0,
    num_classes: int | None = None,
    history: str = "val",
) -> KFoldResult:
    """K-fold cross-validation, the k folds trained at once (one vmapped, jitted program).

    Args:
      X: (n, ...) float inputs; y: (n,) integer labels.
      k: number of folds, 2 <= k <= n (folds from ``jaxnotes.data.k_fold_indices(n, k, seed)``).
      spec: model and optimizer.
      seed: the fold split and, through ``fold_key(seed, i)``, fold i's training.
      num_classes: default max(y) + 1.
      history: per-epoch evaluation (see ``train_loop``).

    Returns:
      ``KFoldResult``; fold i equals ``train_on_indices(X, y, *folds[i], key=fold_key(seed, i))``.
    """
    X, y, found = _check_arrays(X, y)
    n = X.shape[0]
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 2 <= k <= n:
        raise ValueError(f"k must be an integer with 2 <= k <= n, got k={k!r}, n={n}")
    folds = jdata.k_fold_indices(n, int(k), seed)
    train_idx, train_w = _pad_folds([tr for tr, _ in folds])
    val_idx, val_w = _pad_folds([va for _, va in folds])
    keys = jnp.stack([fold_key(seed, i) for i in range(k)])
    num_classes = num_classes or found
    params, final, hist = _fit_folds(
        X, y, train_idx, train_w, val_idx, val_w, keys,
        spec=spec, num_classes=num_classes, history=history,
    )  # fmt: skip
    return KFoldResult(
        folds=folds,
        params=params,
        metrics={name: np.asarray(v) for name, v in final.items()},
        history={name: np.asarray(v) for name, v in hist.items()},
        spec=spec,
        num_classes=num_classes,
    )


@functools.partial(jax.jit, static_argnames=("model",))
def _fold_probabilities(params, X, *, model):
    apply = lambda p: jax.nn.softmax(model.apply({"params": p}, X, train=False), axis=-1)
    return jax.vmap(apply)(params)


def plot_k_fold(result: KFoldResult, path=None, metric: str = "val_acc"):
    """Each fold's per-epoch ``metric`` (a key of ``result.history``), one curve per fold."""
    from jaxnotes import plots

    curves = {f"fold {i}": values for i, values in enumerate(result.history[metric])}
    return plots.curves(curves, path, ylabel=metric.replace("_", " "))


def fold_probabilities(result: KFoldResult, X) -> np.ndarray:
    """Every fold model's predicted class probabilities: (n, ...) -> (k, n, num_classes)."""
    X = jnp.asarray(np.asarray(X, np.float32))
    return np.asarray(_fold_probabilities(result.params, X, model=result.model))


def ensemble_predict(result: KFoldResult, X) -> np.ndarray:
    """The fold ensemble: the k models' probabilities averaged, (n, ...) -> (n, num_classes)."""
    return fold_probabilities(result, X).mean(axis=0)


@dataclasses.dataclass(frozen=True)
class ProtocolResult:
    """The notes' protocol: K-fold on the development part, one final test.

    dev_idx, test_idx: the holdout split. cv: K-fold on dev. final: the model trained on all of
    dev (its "val_*" metrics are the test metrics). ensemble_test_acc: the k fold models averaged.
    """

    dev_idx: np.ndarray
    test_idx: np.ndarray
    cv: KFoldResult
    final: FitResult
    ensemble_test_acc: float

    @property
    def test_acc(self) -> float:
        return self.final.metrics["val_acc"]


def holdout_kfold(
    X,
    y,
    *,
    k: int = 5,
    test_fraction: float = 0.3,
    spec: TrainSpec = TrainSpec(),
    seed: int = 0,
) -> ProtocolResult:
    """Hold out ``test_fraction`` as test set, K-fold on the rest, retrain on all of it, test once.

    The test set is looked at exactly once (by the final model, and by the fold ensemble for
    comparison): model choices are to be made on ``cv`` alone.
    """
    X, y, num_classes = _check_arrays(X, y)
    dev_idx, test_idx = jdata.holdout_split(X.shape[0], test_fraction, seed)
    cv = k_fold_cv(X[dev_idx], y[dev_idx], k, spec=spec, seed=seed, num_classes=num_classes)
    final = train_on_indices(
        X, y, dev_idx, test_idx, key=fold_key(seed, k), spec=spec, num_classes=num_classes
    )
    ensemble = ensemble_predict(cv, X[test_idx])
    ensemble_acc = float(np.mean(ensemble.argmax(-1) == np.asarray(y)[test_idx]))
    return ProtocolResult(dev_idx, test_idx, cv, final, ensemble_acc)


# --- random hyper-parameter search ---------------------------------------------------------------

SEARCH_PARAMS = ("learning_rate", "weight_decay", "dropout", "width")
LOG_PARAMS = ("learning_rate", "weight_decay")

# name -> ("log", low, high) | ("uniform", low, high) | [choices] | a fixed number
DEFAULT_SPACE: dict[str, Any] = {
    "learning_rate": ("log", 1e-3, 1.0),
    "weight_decay": ("log", 1e-6, 1e-1),
    "dropout": ("uniform", 0.0, 0.8),
    "width": [32, 64, 128],
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


def _check_sample(name: str, values: np.ndarray) -> None:
    checks = {
        "learning_rate": (lambda v: v > 0, "> 0"),
        "weight_decay": (lambda v: v >= 0, ">= 0"),
        "dropout": (lambda v: (v >= 0) & (v < 1), "in [0, 1)"),
        "width": (lambda v: (v >= 1) & (v == np.round(v)), "a positive integer"),
    }
    ok, rule = checks[name]
    bad = np.flatnonzero(~ok(values))
    if bad.size:
        raise ValueError(
            f"search space: {name} must be {rule}, but trial {bad[0]} got {values[bad[0]]!r}"
        )


def sample_space(
    space: Mapping[str, Any] | None, n_trials: int, seed: int
) -> dict[str, np.ndarray]:
    """Draw ``n_trials`` settings: name -> (n_trials,) values, reproducible from ``seed``.

    ``space`` maps each of ``SEARCH_PARAMS`` to ("log", low, high) (log-uniform: the natural
    scale for learning rates and decay rates, which matter by orders of magnitude), ("uniform",
    low, high), a list of choices or a fixed number. None means ``DEFAULT_SPACE``.

    Raises:
      ValueError: n_trials < 1, a missing, unknown or malformed entry, or a sampled value out of
        its domain (learning rate <= 0, negative weight decay, dropout outside [0, 1), width not a
        positive integer).
    """
    if isinstance(n_trials, bool) or not isinstance(n_trials, numbers.Integral) or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    space = DEFAULT_SPACE if space is None else space
    if not space:
        raise ValueError("search space is empty; give " + ", ".join(SEARCH_PARAMS))
    missing = [name for name in SEARCH_PARAMS if name not in space]
    unknown = sorted(set(space) - set(SEARCH_PARAMS))
    if missing or unknown:
        raise ValueError(
            f"search space must define exactly {', '.join(SEARCH_PARAMS)}; "
            f"missing {missing}, unknown {unknown}"
        )
    rng = np.random.default_rng(seed)
    sample = {}
    for name in SEARCH_PARAMS:  # a fixed order: the same seed draws the same values
        sample[name] = _sample_one(name, space[name], n_trials, rng)
        _check_sample(name, sample[name])
    sample["width"] = sample["width"].astype(int)
    return sample


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> dict[str, dict[str, jax.Array]]:
    """Dense layers (Xavier-uniform kernels as the zoo's, zero biases) for ``sizes`` =
    (d_in, hidden..., classes); named like Flax's ``Dense_i`` so ``optim.decay_mask`` applies.

    Kernels are (n_out, n_in), PyTorch's layout, applied as ``x @ kernel.T``: vmapped over
    trials, the gradient then comes out of XLA:CPU's matmul in the kernels' own layout, and the
    update reads it without a transpose (about 1.3x faster search steps on a 2-core CPU).
    """
    init = nn.initializers.xavier_uniform()
    keys = jax.random.split(key, len(sizes) - 1)
    return {
        f"Dense_{i}": {"kernel": init(keys[i], (n_out, n_in)), "bias": jnp.zeros(n_out)}
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    }


def traced_dropout(key: jax.Array, x: jax.Array, rate: jax.Array) -> jax.Array:
    """``jaxnotes.ops.dropout`` (the same mask for the same key) with a traced ``rate`` in [0, 1).

    A traced rate lets trials with different dropout rates share one vmapped program. The
    uniform draws depend on the key only, so under ``vmap`` with a shared key they are made once
    for all trials (random bits are the costliest part of a small MLP's step on a CPU), and each
    trial compares them with its own rate.
    """
    keep = jax.random.uniform(key, x.shape, x.dtype) < 1.0 - rate
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


def mlp_apply(params: dict, x: jax.Array, rate: jax.Array = 0.0, key: jax.Array | None = None):
    """(N, d_in) -> (N, classes) logits: ReLU hidden layers, dropout after each when ``key``."""
    n_layers = len(params)
    for i in range(n_layers):
        layer = params[f"Dense_{i}"]
        x = x @ layer["kernel"].T + layer["bias"]
        if i < n_layers - 1:
            x = jax.nn.relu(x)
            if key is not None:
                x = traced_dropout(jax.random.fold_in(key, i), x, rate)
    return x


def _search_trial(
    X, y, train_idx, val_idx, order_key, dropout_key, trial_key, learning_rate, weight_decay,
    dropout, *, width, depth, momentum, epochs, batch_size, num_classes,
):  # fmt: skip
    """One trial; X (n, d) features. The hyper-parameters are traced scalars.

    ``order_key`` and ``dropout_key`` are the search's (common random numbers: every trial sees
    the same batches and the same uniform draws behind its dropout masks, so trials differ by
    their settings and their initialisation, ``trial_key``, only).
    """
    params = init_mlp(
        jax.random.fold_in(trial_key, 0), (X.shape[1], *([width] * depth), num_classes)
    )
    # make_optimizer's "sgd" with decoupled decay, built here because its rates are traced.
    tx = optax.chain(
        optax.trace(decay=momentum),
        optax.add_decayed_weights(weight_decay, mask=optim.decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )

    # mlp_apply drops out only when given a key, i.e. in training.
    loss_fn, eval_fn = classifier_fns(lambda params, x, key: mlp_apply(params, x, dropout, key))
    _, final, _ = train_loop(
        params,
        tx,
        loss_fn,
        eval_fn,
        X,
        y,
        train_idx,
        jnp.ones(train_idx.shape[0]),
        val_idx,
        jnp.ones(val_idx.shape[0]),
        order_key,
        dropout_key,
        epochs=epochs,
        batch_size=batch_size,
        history="none",
    )
    return final


_TRIAL_STATIC = ("width", "depth", "momentum", "epochs", "batch_size", "num_classes")
_trial_one = jax.jit(_search_trial, static_argnames=_TRIAL_STATIC)


@functools.partial(jax.jit, static_argnames=_TRIAL_STATIC)
def _trial_group(X, y, train_idx, val_idx, order_key, dropout_key, keys, lrs, wds, rates, **static):
    """Trials of one width as one program: keys and settings have a leading trial axis.

    The data, its order and the dropout draws are shared (not vmapped), so one batch gather and
    one set of random numbers per step serve every trial of the group.
    """
    trial = functools.partial(_search_trial, **static)
    in_axes = (None,) * 6 + (0,) * 4
    return jax.vmap(trial, in_axes=in_axes)(
        X, y, train_idx, val_idx, order_key, dropout_key, keys, lrs, wds, rates
    )


def _search_data(data, seed: int):
    if data is None:
        digits = jdata.load("digits", "train")
        X, y = digits.images.reshape(len(digits), -1), digits.labels
        train_idx, val_idx = jdata.holdout_split(len(y), 0.3, seed)
        return X, y, train_idx, val_idx
    X_train, y_train, X_val, y_val = data
    X_train, y_train, _ = _check_arrays(X_train, y_train)
    X_val, y_val, _ = _check_arrays(X_val, y_val)
    X = np.concatenate([np.asarray(X_train).reshape(len(y_train), -1),
                        np.asarray(X_val).reshape(len(y_val), -1)])  # fmt: skip
    y = np.concatenate([np.asarray(y_train), np.asarray(y_val)])
    return X, y, np.arange(len(y_train)), len(y_train) + np.arange(len(y_val))


def _sort_key(row: dict) -> tuple:
    # best first: highest val_acc, then lowest val_loss; diverged trials (NaN / inf) last
    if row["diverged"]:
        return (True, 0.0, 0.0, row["trial"])
    return (False, -row["val_acc"], row["val_loss"], row["trial"])


def random_search(
    n_trials: int,
    space: Mapping[str, Any] | None = None,
    seed: int = 0,
    *,
    data: tuple | None = None,
    depth: int = 1,
    momentum: float = 0.9,
    epochs: int = 20,
    batch_size: int = 64,
    vectorize: bool = True,
) -> list[dict[str, Any]]:
    """Random search over an MLP's learning rate, weight decay, dropout and width.

    Args:
      n_trials: how many settings to try (the notes: "try 100 random settings").
      space: see ``sample_space`` (None: ``DEFAULT_SPACE``).
      seed: the settings, the validation split (digits), the data order and dropout draws
        (shared by all trials) and each trial's initialisation (trial t uses
        ``fold_in(fold_in(key(seed), 1), t)``).
      data: (X_train, y_train, X_val, y_val) arrays; default: digits' training split, 30% of it
        held out for validation (the test split is not touched by a search).
      depth: hidden layers, all of the trial's width; momentum, epochs, batch_size: fixed.
      vectorize: train each width's trials together under ``vmap`` (True) or one by one with the
        same jitted single-trial function (False: the baseline; same results).

    Returns:
      One dict per trial, best first (highest val_acc, then lowest val_loss; diverged trials
      last): trial, learning_rate, weight_decay, dropout, width, train_loss, train_acc,
      val_loss, val_acc, diverged.
    """
    sample = sample_space(space, n_trials, seed)
    if depth < 1 or epochs < 1 or batch_size < 1 or not 0 <= momentum < 1:
        raise ValueError(
            f"need depth, epochs, batch_size >= 1 and momentum in [0, 1), got {depth}, {epochs}, "
            f"{batch_size}, {momentum}"
        )
    X, y, train_idx, val_idx = _search_data(data, seed)
    X = jnp.asarray(np.asarray(X, np.float32))
    y, train_idx, val_idx = (jnp.asarray(np.asarray(a), jnp.int32) for a in (y, train_idx, val_idx))
    root = jax.random.key(seed)
    order_key, dropout_key = jax.random.fold_in(root, 0), jax.random.fold_in(root, 2)
    trial_root = jax.random.fold_in(root, 1)
    trial_keys = [jax.random.fold_in(trial_root, t) for t in range(n_trials)]
    # host float32 arrays: the loop passes plain scalars (no device indexing per trial)
    hyper = {name: sample[name].astype(np.float32) for name in (*LOG_PARAMS, "dropout")}
    common = (X, y, train_idx, val_idx, order_key, dropout_key)
    num_classes = int(np.asarray(y).max()) + 1
    results: dict[str, np.ndarray] = {
        name: np.zeros(n_trials) for name in ("train_loss", "train_acc", "val_loss", "val_acc")
    }
    for width in sorted(set(sample["width"].tolist())):
        static = dict(width=width, depth=depth, momentum=momentum, epochs=epochs,
                      batch_size=batch_size, num_classes=num_classes)  # fmt: skip
        members = np.flatnonzero(sample["width"] == width)
        if vectorize:
            keys = jnp.stack([trial_keys[t] for t in members])
            settings = [values[members] for values in hyper.values()]
            out = jax.device_get(_trial_group(*common, keys, *settings, **static))
            for name, values in out.items():
                results[name][members] = values
        else:
            for t in members:
                settings = [values[t] for values in hyper.values()]
                out = jax.device_get(_trial_one(*common, trial_keys[t], *settings, **static))
                for name, value in out.items():
                    results[name][t] = value
    rows = []
    for t in range(n_trials):
        row = {"trial": t, **{name: float(sample[name][t]) for name in LOG_PARAMS + ("dropout",)}}
        row["width"] = int(sample["width"][t])
        row.update({name: float(values[t]) for name, values in results.items()})
        row["diverged"] = not (np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"]))
        rows.append(row)
    return sorted(rows, key=_sort_key)


def plot_search(rows: Sequence[Mapping[str, Any]], path=None, score: str = "val_acc"):
    """Validation score against each hyper-parameter (log axes for the log-uniform ones)."""
    from jaxnotes import plots

    finite = [row for row in rows if not row.get("diverged")]
    return plots.scatter_scores(finite, SEARCH_PARAMS, score, path, log_params=LOG_PARAMS)


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


@functools.partial(jax.jit, static_argnames=("epochs",))
def _fit_logistic(X, y, train_idx, train_w, key, learning_rate, *, epochs):
    """Full-batch logistic regression (2-class softmax), one run per leading axis of idx / w."""

    def fit(idx, w):
        params = {"Dense_0": {"kernel": jnp.zeros((2, X.shape[1])), "bias": jnp.zeros(2)}}

        loss_fn, eval_fn = classifier_fns(lambda p, x, _key: mlp_apply(p, x))
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
        logits = mlp_apply(jax.tree.map(lambda leaf, r=row: leaf[r], params), jnp.asarray(X_test))
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
