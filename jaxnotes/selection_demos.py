"""Chapter 1's small-model demos: under- and over-fitting, class imbalance, standardization.

The polynomial demo of under- and over-fitting (the book's cubic with weights 5, 1.2, -3.4, 5.6
on x^i / i!), the class-imbalance demo (oversampling a 9:1 minority to 1:1) and the
standardization leak; each trains with ``jaxnotes.small_models.train_loop`` as one jitted
program. ``jaxnotes.selection`` re-exports them beside K-fold and random search.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnotes import data as jdata
from jaxnotes.losses import masked_mean
from jaxnotes.small_models import classifier_fns, train_loop

# --- under- and over-fitting: the polynomial demo ---------------------------------------------

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
        return masked_mean((x @ w - y) ** 2, weights)

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


def _pad_folds(index_lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged index arrays -> (k, max_len) indices (padding: 0) and weights (padding: 0)."""
    width = max(len(idx) for idx in index_lists)
    idx = np.zeros((len(index_lists), width), np.int32)
    w = np.zeros((len(index_lists), width), np.float32)
    for row, fold in enumerate(index_lists):
        idx[row, : len(fold)] = fold
        w[row, : len(fold)] = 1.0
    return idx, w


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
