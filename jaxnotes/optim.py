"""Optimizers as optax chains, with weight decay that never touches biases (chapter 2).

Weight decay comes in two forms:

- coupled (``decoupled=False``): the L2 penalty ``wd/2 * ||w||^2`` added to the loss, i.e.
  ``wd * w`` added to the gradient *before* the optimizer transforms it (momentum, Adam's scaling);
- decoupled (the default): ``wd * w`` added to the update *after* the optimizer's transform and
  before the learning rate, as optax.adamw and SGDW do.

For plain SGD both give exactly gradient descent on ``loss + wd/2 * ||w||^2``; with momentum or
Adam they differ (Adam's per-coordinate scaling would shrink a coupled penalty's effect where
gradients are large). Either way a mask keeps biases and every other 1-D parameter undecayed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnotes.config import check_value

OPTIMIZERS = ("sgd", "momentum", "adam")


def decay_mask(params: Any) -> Any:
    """True for parameters weight decay applies to: every array with more than one dimension.

    Biases (and any other vector, such as a norm scale) are 1-D and stay undecayed.
    """
    return jax.tree.map(lambda p: p.ndim > 1, params)


def effective_momentum(name: str, momentum: Any) -> Any:
    """The momentum an optimizer uses: "momentum" means 0.9 when none is given (0)."""
    return 0.9 if name == "momentum" and momentum == 0.0 else momentum


def make_optimizer(
    name: str,
    learning_rate: float | optax.Schedule,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    decoupled: bool = True,
) -> optax.GradientTransformation:
    """An optax optimizer by name.

    Args:
      name: "sgd", "momentum" (SGD with momentum, 0.9 unless given) or "adam". "sgd" with
        ``momentum > 0`` is SGD with momentum too.
      learning_rate: a positive float or an optax schedule (step -> learning rate).
      momentum: heavy-ball momentum for SGD, in [0, 1).
      weight_decay: non-negative decay rate; 0 disables it.
      decoupled: add ``weight_decay * w`` after the optimizer's transform (default) or, with
        False, to the gradient before it (the classic L2 penalty).

    Raises:
      ValueError: unknown name or a value out of range (``jaxnotes.config.VALUE_RULES``).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    if not callable(learning_rate):
        check_value("learning_rate", learning_rate)
    check_value("momentum", momentum)
    check_value("weight_decay", weight_decay)
    momentum = effective_momentum(name, momentum)
    return chain(
        name,
        learning_rate,
        momentum,
        weight_decay,
        decoupled,
        with_momentum=momentum > 0,
        with_decay=weight_decay > 0,
    )


def cosine_decay(peak: Any, total_steps: Any) -> optax.Schedule:
    """``peak * (1 + cos(pi * min(t, T) / T)) / 2``: optax's cosine decay to 0 over T steps,
    written so ``peak`` and ``T`` may be traced (a population's members differ in both)."""

    def schedule(count):
        total = jnp.maximum(total_steps, 1)
        done = jnp.minimum(count, total)
        return peak * (0.5 * (1 + jnp.cos(jnp.pi * done / total)))

    return schedule


def chain(
    name: str,
    learning_rate: Any,
    momentum: Any,
    weight_decay: Any,
    decoupled: bool = True,
    *,
    with_momentum: bool = True,
    with_decay: bool = True,
) -> optax.GradientTransformation:
    """The optax chain behind :func:`make_optimizer`, unchecked: the rates may be traced arrays.

    A population (``jaxnotes.population``) builds it inside its traced step with each member's
    rates; which transforms exist must not depend on the values, so ``with_momentum`` and
    ``with_decay`` say it (momentum 0 and decay 0 then compute exactly what leaving them out
    does: ``g + 0 * v`` and ``u + 0 * w``). ``learning_rate`` may also be a schedule.
    """
    if name == "adam":
        transform = optax.scale_by_adam()
    elif with_momentum:
        transform = optax.trace(decay=momentum)
    else:
        transform = optax.identity()
    decay = [optax.add_decayed_weights(weight_decay, mask=decay_mask)] if with_decay else []
    steps = [transform, *decay] if decoupled else [*decay, transform]
    return optax.chain(*steps, optax.scale_by_learning_rate(learning_rate))


def learning_rate_schedule(
    peak: Any, total_updates: Any, kind: str = "constant", warmup_steps: int = 0
) -> Any:
    """The learning rate of a run: ``peak`` (constant) or cosine decay to 0 over the run, after
    ``warmup_steps`` of linear warm-up from 0. ``peak`` and ``total_updates`` may be traced."""
    if kind == "constant" and not warmup_steps:
        return peak
    decay = cosine_decay(peak, total_updates - warmup_steps) if kind == "cosine" else None

    def schedule(count):
        after = decay(count - warmup_steps) if decay is not None else peak
        if not warmup_steps:
            return after
        return jnp.where(count < warmup_steps, peak * count / warmup_steps, after)

    return schedule


def with_policies(
    tx: optax.GradientTransformation, clip_norm: float = 0.0, accumulate: int = 1
) -> optax.GradientTransformation:
    """``tx`` after global-norm clipping (``clip_norm`` > 0) and with ``accumulate`` > 1 batches'
    gradients averaged into one update (``optax.MultiSteps``: the inner optimizer, its schedule
    and its step count see updates, not batches)."""
    if clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
    if accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate).gradient_transformation()
    return tx


def config_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optimizer a ``TrainConfig`` describes: name, rates, schedule with warm-up over the
    run's updates (``epochs * steps_per_epoch / accumulate``), clipping, accumulation."""
    updates = config.epochs * steps_per_epoch // config.accumulate
    schedule = learning_rate_schedule(
        config.learning_rate, updates, config.schedule, config.warmup_steps
    )
    tx = make_optimizer(
        config.optimizer, schedule, momentum=config.momentum, weight_decay=config.weight_decay,
        decoupled=config.decoupled,
    )  # fmt: skip
    return with_policies(tx, config.clip_norm, config.accumulate)


def describe(tx: Any) -> str:
    """A short description of an optimizer for a checkpoint's metadata: the kinds of state it
    keeps, in order (a resumed run with another optimizer is refused by name)."""
    state = jax.eval_shape(tx.init, {"w": jax.ShapeDtypeStruct((2, 2), jnp.float32)})
    kinds: list[str] = []
    _state_kinds(state, kinds)
    return ", ".join(kinds) or "stateless"


def _state_kinds(node: Any, kinds: list[str]) -> None:
    name = type(node).__name__
    if hasattr(node, "_fields"):  # an optax state (a NamedTuple)
        if name not in ("EmptyState", "ShapeDtypeStruct"):
            kinds.append(name)
        children = [getattr(node, f) for f in node._fields]
    elif isinstance(node, tuple | list):
        children = list(node)
    elif isinstance(node, dict):
        children = list(node.values())
    else:
        return
    for child in children:
        _state_kinds(child, kinds)
