"""Weight decay (chapter 2) and dropout (chapter 3), the book's two demos, each a jitted program.

- ``weight_decay_sweep``: the d2l high-dimensional linear regression (d = 200 inputs, only 20
  training examples, so plain least squares interpolates the noise). The L2 penalty is written
  from scratch (``jaxnotes.ops.l2_penalty`` added to the loss) and, separately, as optax's
  decoupled weight decay (``jaxnotes.optim.make_optimizer``, biases masked out); for plain SGD the
  two are the same update, w <- w - lr * (grad + lambda * w). The sweep over lambda runs all
  values at once (``vmap`` over a traced lambda).
- ``dropout_demo``: the book's MLP (two hidden layers of 256) on a deliberately small slice of
  digits, trained without dropout, with from-scratch dropout (``jaxnotes.ops.dropout`` and an
  explicit key per layer and step) and with the zoo's ``nn.Dropout``; dropout narrows the gap
  between training and test accuracy.

Both reuse ``jaxnotes.small_models.train_loop`` (minibatch SGD as one ``lax.scan``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnotes import data as jdata
from jaxnotes import ops, optim
from jaxnotes.losses import masked_mean
from jaxnotes.models import get_model
from jaxnotes.small_models import classifier_fns, train_loop

# --- weight decay --------------------------------------------------------------------------------

LAMBDAS = (0.0, 1e-4, 1e-3, 1e-2, 1.0, 3.0)
WEIGHT_DECAY_METHODS = ("scratch", "optax")


@dataclasses.dataclass(frozen=True)
class LinearData:
    """X_train (n_train, d), y_train (n_train,), X_val (n_val, d), y_val (n_val,)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


def weight_decay_data(
    seed: int = 0, d: int = 200, n_train: int = 20, n_val: int = 100, noise: float = 0.01
) -> LinearData:
    """The book's data: x ~ N(0, I_d), y = 0.05 + sum_i 0.01 x_i + N(0, noise^2)."""
    if min(d, n_train, n_val) < 1:
        raise ValueError(f"d, n_train and n_val must be >= 1, got {d}, {n_train}, {n_val}")
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_train + n_val, d))
    y = 0.05 + X @ np.full(d, 0.01) + rng.normal(scale=noise, size=n_train + n_val)
    X, y = X.astype(np.float32), y.astype(np.float32)
    return LinearData(X[:n_train], y[:n_train], X[n_train:], y[n_train:])


def _squared_loss(params: dict, x: jax.Array, y: jax.Array, w: jax.Array) -> jax.Array:
    """The book's squared loss (y_hat - y)^2 / 2, mean over the weight-1 examples."""
    y_hat = (x @ params["w"])[:, 0] + params["b"][0]
    return masked_mean((y_hat - y) ** 2 / 2, w)


def _decoupled_sgd(learning_rate: Any, weight_decay: Any) -> optax.GradientTransformation:
    """``make_optimizer("sgd", lr, weight_decay=wd)`` for a *traced* wd (make_optimizer checks its
    arguments in Python, so it needs concrete numbers): decay, bias masked, then the rate."""
    return optim.chain("sgd", learning_rate, 0.0, weight_decay, with_momentum=False)


def _fit_linear_wd(
    data: tuple, lambd, key, *, method: str, learning_rate: float, epochs: int, batch_size: int
):
    """One run: returns (params, final metrics, per-epoch history); see ``train_loop``."""
    X_train, y_train, X_val, y_val = data
    n_train, d = X_train.shape
    # The book initialises w ~ N(0, 1): large weights that only the decay pulls back.
    params = {"w": jax.random.normal(jax.random.fold_in(key, 0), (d, 1)), "b": jnp.zeros(1)}
    if method == "scratch":
        # the penalty in the loss, on w only (the book's l2_penalty(w)); plain SGD
        def loss_fn(p, x, y, w, _key):
            return _squared_loss(p, x, y, w) + lambd * ops.l2_penalty(p["w"])

        tx = optax.sgd(learning_rate)
    else:

        def loss_fn(p, x, y, w, _key):
            return _squared_loss(p, x, y, w)

        if isinstance(lambd, int | float):
            tx = optim.make_optimizer("sgd", learning_rate, weight_decay=float(lambd))
        else:
            tx = _decoupled_sgd(learning_rate, lambd)

    def eval_fn(p, x, y, w):
        return _squared_loss(p, x, y, w), jnp.zeros(())

    n_val = X_val.shape[0]
    return train_loop(
        params,
        tx,
        loss_fn,
        eval_fn,
        jnp.concatenate([X_train, X_val]),
        jnp.concatenate([y_train, y_val]),
        jnp.arange(n_train),
        jnp.ones(n_train),
        n_train + jnp.arange(n_val),
        jnp.ones(n_val),
        jax.random.fold_in(key, 1),
        jax.random.fold_in(key, 2),
        epochs=epochs,
        batch_size=batch_size,
        history="both",
    )


_WD_STATIC = ("method", "learning_rate", "epochs", "batch_size")


@functools.partial(jax.jit, static_argnames=_WD_STATIC)
def _sweep_traced(data, lambdas, key, **static):
    """All lambdas at once: vmap over a traced lambda, the same data, init and batch order."""
    fit = functools.partial(_fit_linear_wd, **static)
    return jax.vmap(fit, in_axes=(None, 0, None))(data, lambdas, key)


@functools.partial(jax.jit, static_argnames=("lambd", *_WD_STATIC))
def _fit_static(data, key, *, lambd, **static):
    """One lambda as a Python number, so optax's chain comes from ``make_optimizer`` itself."""
    return _fit_linear_wd(data, lambd, key, **static)


def weight_decay_sweep(
    lambdas: Sequence[float] = LAMBDAS,
    *,
    method: str = "scratch",
    seed: int = 0,
    data: LinearData | None = None,
    learning_rate: float = 0.003,
    epochs: int = 100,
    batch_size: int = 5,
    vectorize: bool = True,
) -> dict[str, np.ndarray]:
    """Train the book's linear model once per lambda (the book: lr 0.003, batch 5, 100 epochs).

    Args:
      lambdas: weight-decay strengths, each >= 0.
      method: "scratch" (``lambda * l2_penalty(w)`` added to the loss) or "optax" (decoupled
        decay in the optimizer, biases masked).
      seed: data (when ``data`` is None), initialisation and batch order (shared by all lambdas).
      vectorize: all lambdas in one vmapped program (True) or one ``make_optimizer`` optimizer
        per lambda, compiled each (False; only for method "optax").

    Returns:
      lambdas (L,), w_norm (L,) (the Euclidean norm ||w||, as the book prints), train_loss,
      val_loss (L,) (final squared loss, without the penalty), w (L, d), b (L,), and
      train_curve, val_curve (L, epochs).
    """
    if method not in WEIGHT_DECAY_METHODS:
        raise ValueError(f"method must be one of {WEIGHT_DECAY_METHODS}, got {method!r}")
    lambdas = np.asarray(lambdas, np.float64)
    if lambdas.ndim != 1 or lambdas.size == 0 or not np.all(lambdas >= 0):
        raise ValueError(f"lambdas must be a non-empty list of numbers >= 0, got {lambdas}")
    if not learning_rate > 0 or epochs < 1 or batch_size < 1:
        raise ValueError("learning_rate must be > 0 and epochs, batch_size >= 1")
    data = weight_decay_data(seed) if data is None else data
    arrays = tuple(jnp.asarray(a) for a in dataclasses.astuple(data))
    key = jax.random.key(seed)
    static = dict(method=method, learning_rate=learning_rate, epochs=epochs, batch_size=batch_size)
    if vectorize:
        params, final, hist = _sweep_traced(
            arrays, jnp.asarray(lambdas, jnp.float32), key, **static
        )
    else:
        if method != "optax":
            raise ValueError("vectorize=False is for method='optax' (one optimizer per lambda)")
        runs = [_fit_static(arrays, key, lambd=float(lam), **static) for lam in lambdas]
        params, final, hist = jax.tree.map(lambda *xs: jnp.stack(xs), *runs)
    w = np.asarray(params["w"])[..., 0]
    return {
        "lambdas": lambdas,
        "w_norm": np.linalg.norm(w, axis=-1),
        "train_loss": np.asarray(final["train_loss"]),
        "val_loss": np.asarray(final["val_loss"]),
        "w": w,
        "b": np.asarray(params["b"])[:, 0],
        "train_curve": np.asarray(hist["train_loss"]),
        "val_curve": np.asarray(hist["val_loss"]),
    }


def plot_weight_decay(sweep: Mapping[str, np.ndarray], path=None):
    """||w|| and the train / validation losses against lambda (symlog x: lambda = 0 included)."""
    from jaxnotes import plots

    return plots.sweep_panels(
        sweep["lambdas"],
        {
            "||w||": {"||w||": sweep["w_norm"]},
            "loss": {"train": sweep["train_loss"], "validation": sweep["val_loss"]},
        },
        xlabel="lambda",
        path=path,
        symlog_x=True,
        log_y=True,
    )


# --- dropout -------------------------------------------------------------------------------------

DROPOUT_VARIANTS = ("none", "scratch", "flax")


def scratch_mlp_apply(
    params: dict, x: jax.Array, rates: Sequence[float], key: jax.Array | None = None
) -> jax.Array:
    """The zoo MLP's forward pass by hand, on the zoo's own parameters (``Dense_i``).

    (N, ...) -> (N, classes). With a ``key`` (training), ``jaxnotes.ops.dropout`` follows every
    hidden layer, with the key ``fold_in(key, layer)``; without one it is the identity, as at
    inference.
    """
    x = x.reshape(x.shape[0], -1)
    n_layers = len(params)
    for i in range(n_layers):
        x = x @ params[f"Dense_{i}"]["kernel"] + params[f"Dense_{i}"]["bias"]
        if i < n_layers - 1:
            x = jax.nn.relu(x)
            if key is not None:
                x = ops.dropout(jax.random.fold_in(key, i), x, rates[i])
    return x


def _fit_dropout(
    X, y, train_idx, test_idx, key, *, variant, hidden, rates, learning_rate, epochs, batch_size
):
    """One variant on X[train_idx], evaluated on X[test_idx]; see ``train_loop``."""
    num_classes = 10
    flax_rates = rates if variant == "flax" else 0.0
    model = get_model("mlp", num_classes, hidden=tuple(hidden), dropout=flax_rates)
    # every variant starts from the same initial weights (the zoo model's init, same key)
    params = model.init(jax.random.fold_in(key, 0), X[:1], train=False)["params"]

    if variant == "scratch":

        def logits_fn(p, x, dropout_key):
            return scratch_mlp_apply(p, x, rates, dropout_key)
    else:

        def logits_fn(p, x, dropout_key):
            train = dropout_key is not None
            rngs = {"dropout": dropout_key} if train else {}
            return model.apply({"params": p}, x, train=train, rngs=rngs)

    loss_fn, eval_fn = classifier_fns(logits_fn)
    return train_loop(
        params,
        optim.make_optimizer("sgd", learning_rate),
        loss_fn,
        eval_fn,
        X,
        y,
        train_idx,
        jnp.ones(train_idx.shape[0]),
        test_idx,
        jnp.ones(test_idx.shape[0]),
        jax.random.fold_in(key, 1),
        jax.random.fold_in(key, 2),
        epochs=epochs,
        batch_size=batch_size,
        history="both",
    )


_fit_dropout_jit = jax.jit(
    _fit_dropout,
    static_argnames=("variant", "hidden", "rates", "learning_rate", "epochs", "batch_size"),
)


def _noisy_digits(n_train: int, label_noise: float, seed: int):
    """(X, y, train_idx, test_idx): a seeded slice of digits' training split with a
    ``label_noise`` fraction of labels redrawn, then the whole clean test split."""
    train, test = jdata.load("digits", "train"), jdata.load("digits", "test")
    if not 1 <= n_train <= len(train):
        raise ValueError(f"n_train must be in [1, {len(train)}], got {n_train}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    rng = np.random.default_rng(seed)
    subset = rng.permutation(len(train))[:n_train]
    labels = train.labels[subset].copy()
    noisy = rng.random(n_train) < label_noise
    labels[noisy] = rng.integers(train.num_classes, size=int(noisy.sum()))
    X = jnp.asarray(np.concatenate([train.images[subset], test.images]))
    y = jnp.asarray(np.concatenate([labels, test.labels]))
    return X, y, jnp.arange(n_train), n_train + jnp.arange(len(test))


def dropout_demo(
    *,
    n_train: int = 200,
    hidden: tuple[int, ...] = (256, 256),
    rates: tuple[float, ...] = (0.5, 0.5),
    variants: Sequence[str] = DROPOUT_VARIANTS,
    learning_rate: float = 0.1,
    epochs: int = 100,
    batch_size: int = 20,
    label_noise: float = 0.4,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Over-fitting on purpose: a wide MLP on few, partly mislabelled digits, with and without
    dropout.

    The training set is the first ``n_train`` images of a seeded shuffle of digits' training
    split, with a ``label_noise`` fraction of their labels redrawn at random; the test set is
    digits' whole (clean) test split, 540 images. Why the noise: on clean digits a 256-256 MLP
    fits 200 images and generalises about as well with dropout as without (the gap moves by
    noise only), whereas mislabelled examples can only be fitted by memorising them, which is
    exactly what dropout resists. "none" trains the zoo MLP without dropout, "scratch" with
    ``ops.dropout`` written into the forward pass, "flax" with the zoo's ``nn.Dropout``; all
    start from the same weights and see the same batches (SGD, lr 0.1, batch 20, 100 epochs).

    Returns:
      variant -> {train_acc (on the noisy training labels, inference mode), test_acc,
      gap (= train_acc - test_acc), train_loss, test_loss, history: per-epoch train / test loss
      and accuracy}.
    """
    unknown = sorted(set(variants) - set(DROPOUT_VARIANTS))
    if unknown:
        raise ValueError(f"unknown dropout variants {unknown}; valid: {DROPOUT_VARIANTS}")
    if len(rates) != len(hidden):
        raise ValueError(f"one dropout rate per hidden layer: hidden={hidden}, rates={rates}")
    X, y, train_idx, test_idx = _noisy_digits(n_train, label_noise, seed)
    results = {}
    for variant in variants:
        _, final, hist = _fit_dropout_jit(
            X, y, train_idx, test_idx, jax.random.key(seed),
            variant=variant, hidden=tuple(hidden), rates=tuple(float(r) for r in rates),
            learning_rate=learning_rate, epochs=epochs, batch_size=batch_size,
        )  # fmt: skip
        final = {name: float(v) for name, v in final.items()}
        results[variant] = {
            "train_acc": final["train_acc"],
            "test_acc": final["val_acc"],
            "gap": final["train_acc"] - final["val_acc"],
            "train_loss": final["train_loss"],
            "test_loss": final["val_loss"],
            "history": {
                name.replace("val_", "test_"): np.asarray(v)
                for name, v in hist.items()
                if name != "step_loss"
            },
        }
    return results


def plot_dropout(results: Mapping[str, Mapping[str, Any]], path=None):
    """Train and test accuracy per epoch for each variant (the gap is the space between)."""
    from jaxnotes import plots

    return plots.loss_panels(
        {
            variant: {"train acc": r["history"]["train_acc"], "test acc": r["history"]["test_acc"]}
            for variant, r in results.items()
        },
        path=path,
        ylabel="accuracy",
    )
