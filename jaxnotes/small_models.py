"""The chapters' small models trained as ONE traceable loop: minibatch SGD as a ``lax.scan``.

Chapters 1-3 train small linear models and MLPs on feature rows (polynomial features, the
weight-decay regression, the dropout MLP, logistic regression for class imbalance). They are not
runs of the engine (no folder, no checkpoints: each is one jitted program), but they share one
loop, :func:`train_loop`, with example weights so several runs of unequal size share one vmapped
program (padding has weight 0, and a batch of padding only is no step at all).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnotes.losses import masked_accuracy, masked_cross_entropy

# (params, x, y, w, key) -> mean loss over the examples with w = 1
LossFn = Callable[[Any, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
# (params, x, y, w) -> (mean loss, accuracy) over the examples with w = 1
EvalFn = Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


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


def _sgd_step(tx, loss_fn: LossFn, X, y, epoch_key) -> Callable:
    """``((params, opt_state, loss_sum), (idx, w, step)) -> (carry, None)``: one scanned step."""

    def run_step(carry, batch):
        params, opt_state, loss_sum = carry
        batch_idx, batch_w, step = batch
        key = jax.random.fold_in(epoch_key, step)
        loss, grads = jax.value_and_grad(loss_fn)(params, X[batch_idx], y[batch_idx], batch_w, key)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # An all-padding batch must not move anything: momentum or decay would still act.
        live = jnp.sum(batch_w) > 0
        params, opt_state = _select(live, (new_params, new_opt_state), (params, opt_state))
        return (params, opt_state, loss_sum + loss * jnp.sum(batch_w)), None

    return run_step


def train_loop(
    params: Any, tx: optax.GradientTransformation, loss_fn: LossFn, eval_fn: EvalFn,
    X: jax.Array, y: jax.Array, train_idx: jax.Array, train_w: jax.Array, val_idx: jax.Array,
    val_w: jax.Array, order_key: jax.Array, dropout_key: jax.Array,
    *, epochs: int, batch_size: int, history: str = "val",
) -> tuple[Any, dict[str, jax.Array], dict[str, jax.Array]]:  # fmt: skip
    """Minibatch training on ``X[train_idx]`` with example weights, as one traceable function.

    Args:
      params: initial parameters.
      tx: the optimizer (may close over traced hyper-parameters).
      loss_fn, eval_fn: see ``LossFn`` / ``EvalFn``.
      X: (n, ...) all examples; y: (n,) integer labels.
      train_idx, train_w: (n_train,) indices into X and weights (1 real, 0 padding).
      val_idx, val_w: (n_val,) the same for validation.
      order_key: shuffles the examples each epoch (``epoch_order``); dropout_key: the step
        (e, b) uses ``fold_in(fold_in(dropout_key, e), b)``.
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
        run_step = _sgd_step(tx, loss_fn, X, y, jax.random.fold_in(dropout_key, epoch))
        params, opt_state = carry
        (params, opt_state, loss_sum), _ = jax.lax.scan(
            run_step, (params, opt_state, jnp.zeros(())), (idx, w, jnp.arange(steps))
        )
        record = {"step_loss": loss_sum / total_weight}
        if history in ("val", "both"):
            record.update(_scores(eval_fn, params, X, y, val_idx, val_w, "val"))
        if history == "both":
            record.update(_scores(eval_fn, params, X, y, train_idx, train_w, "train"))
        return (params, opt_state), record

    (params, _), hist = jax.lax.scan(run_epoch, (params, tx.init(params)), jnp.arange(epochs))
    final = _scores(eval_fn, params, X, y, train_idx, train_w, "train")
    final.update(_scores(eval_fn, params, X, y, val_idx, val_w, "val"))
    return params, final, hist


def _scores(eval_fn: EvalFn, params, X, y, idx, w, prefix: str) -> dict:
    loss, acc = eval_fn(params, X[idx], y[idx], w)
    return {f"{prefix}_loss": loss, f"{prefix}_acc": acc}
