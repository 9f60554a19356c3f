"""The step: the train state, one jitted train step, one eval step, and the guard's device half.

A train step is ``(state, batch, metrics) -> (state, metrics)``: forward, loss, backward and the
optimizer update in ONE jit, the state donated, the metrics summed on the device (pulled to the
host only when the run logs). An eval step is ``(weights, batch, metrics) -> metrics`` over a
padded, masked batch. Both are pure: how they are jitted, donated and sharded is the
placement's business (``jaxnotes.parallel``), when they run is the run's (``jaxnotes.runs``).

Why each piece is as it is:

- Dropout keys are ``fold_in(key, step)``: a fresh key every step, the same one for step s however
  the steps are grouped, resumed or spread over devices (per example for stateless models, so
  the masks do not depend on how a batch is split).
- The loss is one function for training AND evaluation (``jaxnotes.losses``, or the user's
  ``loss_fn``): per-example values, averaged over the batch in training and summed over the real
  (unmasked) examples in evaluation.
- The non-finite guard (chapter 3's numerics) records the first bad step inside the step, as a
  code (:class:`BadKind`), so checking it costs no extra host sync and a bad state is never
  checkpointed (``jaxnotes.guard`` is its host half).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxnotes import losses, modules, parallel

LossFn = Callable[[Any, jax.Array], jax.Array]  # (outputs, labels (B,)) -> per-example (B,)
MetricFn = Callable[[jax.Array, jax.Array], jax.Array]  # (logits, labels) -> per-example (B,)

SUMS = ("loss_sum", "correct", "count")  # the sums every accumulator has
METRIC_PREFIX = "metric/"  # a user metric's sum: "metric/NAME"


class BadKind(enum.IntEnum):
    """What the guard recorded about a step's loss (the ``bad_kind`` metric)."""

    NONE = 0
    NON_FINITE = 1  # NaN or inf
    DIVERGED = 2  # over divergence_factor x the first loss


def _identity(x: jax.Array) -> jax.Array:
    return x


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue: a pure pytree of arrays (checkpointed as is).

    ``key`` is raw uint32 key data (shape (2,)), so checkpoints need no typed-key support.
    ``model_state`` holds the module's variable collections other than its parameters (e.g.
    ``{"batch_stats": ...}``; ``{}`` for most models), see ``jaxnotes.modules``. ``extras``
    holds what optional policies keep beside the weights (``{}`` when none is on).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array
    model_state: Any = struct.field(default_factory=dict)
    extras: Any = struct.field(default_factory=dict)


def create_train_state(
    model: Any,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, ...],
    seed: int,
    *,
    ema: bool = False,
    loss_scaling: bool = False,
) -> TrainState:
    """Initialise parameters, the module's other collections and the optimizer state.

    Args:
      model: a linen module (called as ``model.apply(variables, x, train=bool, rngs=...)``), an
        NNX module (its current weights are the initial ones) or a ``jaxnotes.modules.Model``.
      tx: the optimizer.
      input_shape: one example's shape as the model sees it, (height, width, channels).
      seed: the run's seed: parameters use ``fold_in(key, 0)``, dropout ``fold_in(key, 1)``.
      ema, loss_scaling: keep a moving average of the weights / a dynamic loss scale (fp16) in
        ``extras`` (see :func:`initial_state`).
    """
    fns = modules.as_model(model)
    dummy = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    # The seed stays inside the program: no separate seeding compile.
    init = functools.partial(initial_state, fns, tx, seed=seed, ema=ema, loss_scaling=loss_scaling)
    compiled = jax.jit(init).lower(dummy).compile(compiler_options=init_compiler_options())
    return compiled(np.zeros(dummy.shape, np.float32))


def initial_state(
    fns: modules.Model, tx, x: jax.Array, seed: Any, *, ema: bool = False,
    loss_scaling: bool = False,
) -> TrainState:  # fmt: skip
    """The state ``create_train_state`` makes, as a traceable function (``seed`` may be traced:
    a population initialises every member in one vmapped program).

    ``extras``: "ema", the weights' moving average (starting at the initial weights);
    "loss_scale", float16's dynamic loss scale (``flax.training.dynamic_scale``: 2**15, halved
    on an overflow, doubled after 2,000 finite steps).
    """
    root = jax.random.key(seed)
    params, model_state = fns.init(jax.random.fold_in(root, 0), x)
    extras = {}
    if ema:
        extras["ema"] = jax.tree.map(jnp.copy, params)
    if loss_scaling:
        from flax.training.dynamic_scale import DynamicScale

        extras["loss_scale"] = DynamicScale(scale=jnp.float32(2.0**15))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        key=jax.random.key_data(jax.random.fold_in(root, 1)),
        model_state=model_state,
        extras=extras,
    )


def evaluation_weights(state: TrainState) -> TrainState:
    """The weights evaluation, the best checkpoint and prediction use: the moving average
    when the run keeps one, else the trained weights."""
    if isinstance(state, TrainState) and "ema" in state.extras:
        return state.replace(params=state.extras["ema"])
    return state


def init_compiler_options() -> dict | None:
    """Compile the one-off initialisation with less of LLVM's optimisation on CPU.

    It runs once, and its random-number code (one threefry hash per parameter) is what makes it
    slow to optimise. Measured: LeNet's init compiled in 0.31 s instead of 1.08 s and GoogLeNet's
    in 3.9 s instead of 7.3 s at level 1, with bit-identical parameters (level 0 changed
    truncated-normal draws by an ulp: the parameters must not depend on how init was compiled).
    """
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


# --- metric accumulators -------------------------------------------------------------------------


def empty_metrics(metric_names: tuple[str, ...] = ()) -> dict[str, jax.Array]:
    """A fresh training accumulator: the sums, and the guard's memory ("first_loss": the first
    loss since the run or resume started; "bad_step"/"bad_kind"/"bad_loss": the first step the
    guard flagged). Built on the host, so no tiny eager programs compile."""
    f32, i32 = np.float32, np.int32
    host = {name: np.zeros((), f32) for name in _sum_names(metric_names)}
    host.update(
        first_loss=np.full((), np.nan, f32),
        bad_step=np.full((), -1, i32),
        bad_kind=np.full((), BadKind.NONE, i32),
        bad_loss=np.zeros((), f32),
        skipped=np.zeros((), i32),  # steps whose update was skipped (fp16 overflow)
    )
    return jax.device_put(host)


def empty_eval_metrics(metric_names: tuple[str, ...] = ()) -> dict[str, jax.Array]:
    return jax.device_put({k: np.zeros((), np.float32) for k in _sum_names(metric_names)})


def _sum_names(metric_names: tuple[str, ...]) -> list[str]:
    return [*SUMS, *(METRIC_PREFIX + name for name in metric_names)]


def reset_sums(metrics: dict) -> dict:
    """Zero the sums, keep the guard's memory (works on host or device, stacked or not)."""
    sums = [k for k in metrics if k in SUMS or k.startswith(METRIC_PREFIX)]
    return {**metrics, **{k: np.zeros_like(np.asarray(metrics[k])) for k in sums}}


def means(sums: Mapping[str, Any]) -> dict[str, Any]:
    """Host sums -> {"loss", "acc", NAME...}: per-example means (float64; arrays when stacked)."""
    count = np.maximum(np.asarray(sums["count"], np.float64), 1.0)
    out = {"loss": np.asarray(sums["loss_sum"], np.float64) / count}
    out["acc"] = np.asarray(sums["correct"], np.float64) / count
    for key, value in sums.items():
        if key.startswith(METRIC_PREFIX):
            out[key[len(METRIC_PREFIX) :]] = np.asarray(value, np.float64) / count
    if np.ndim(count) == 0:
        out = {k: float(v) for k, v in out.items()}
    return out


def _metric_sums(metrics: Mapping[str, MetricFn], logits, labels, weights) -> dict:
    sums = {"correct": jnp.sum((jnp.argmax(logits, -1) == labels) * weights)}
    for name, fn in metrics.items():
        values = fn(logits, labels).astype(jnp.float32)
        sums[METRIC_PREFIX + name] = jnp.sum(values * weights)
    return sums


# --- the train step ------------------------------------------------------------------------------


def _apply_train(fns, params, model_state, images, step_key, first_index, per_example_keys):
    """Forward pass in training mode: ``(outputs, new_model_state)``.

    With ``per_example_keys``, example i of the global batch draws its dropout mask from
    ``fold_in(step_key, i)``: the masks then depend on (key, step, example) only, never on how the
    batch is split over devices, so one device, a sharded mesh and pmap compute the same thing.
    The model runs vmapped over single examples, which XLA batches back into one computation;
    only stateless modules take this path (a BatchNorm must see the whole batch).
    """
    if not per_example_keys:
        return fns.apply(params, model_state, images, True, step_key)
    indices = first_index + jnp.arange(images.shape[0])
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(indices)

    def one(x, key):
        return fns.apply(params, model_state, x[None], True, key)[0]

    outputs = jax.vmap(one)(images, keys)
    return jax.tree.map(lambda out: out[:, 0], outputs), model_state


def _mean_over_devices(model_state: Any, axis_name: str) -> Any:
    """Average the floating collections (running statistics) over pmap's devices."""

    def one(x):
        return jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(one, model_state)


def guard_update(metrics: dict, loss: jax.Array, step: jax.Array, factor: float) -> dict:
    """The guard's device half: remember the first loss and the first bad step's code."""
    first_loss = jnp.where(jnp.isnan(metrics["first_loss"]), loss, metrics["first_loss"])
    finite = jnp.isfinite(loss)
    # "x times the first loss" means something only for a positive first loss (a user's loss
    # may be negative or start at 0): then only a non-finite loss is bad.
    bad = ~finite | ((first_loss > 0) & (loss > factor * first_loss))
    first_bad = bad & (metrics["bad_step"] < 0)
    kind = jnp.where(finite, BadKind.DIVERGED, BadKind.NON_FINITE)
    return {
        **metrics,
        "first_loss": first_loss,
        "bad_step": jnp.where(first_bad, step, metrics["bad_step"]),
        "bad_kind": jnp.where(first_bad, kind, metrics["bad_kind"]),
        "bad_loss": jnp.where(first_bad, loss, metrics["bad_loss"]),
    }


def make_train_step(
    model: Any,
    tx: optax.GradientTransformation,
    preprocess: Callable[[jax.Array], jax.Array] = _identity,
    aux_weight: float = 0.3,
    divergence_factor: float = 1e3,
    *,
    loss_fn: LossFn | None = None,
    metrics: Mapping[str, MetricFn] | None = None,
    ema_decay: float = 0.0,
    per_example_keys: bool | None = None,
    axis_name: str | None = None,
) -> Callable:
    """The un-jitted train step ``(state, batch, metrics) -> (state, metrics)``.

    ``model``: a linen or NNX module, or a ``modules.Model``. ``batch``: {"image": (B, H, W,
    C) uint8 or float, "label": (B,) int}; ``preprocess`` runs inside the step. ``loss_fn(outputs,
    labels) -> (B,)`` (default: cross-entropy plus ``aux_weight`` x each auxiliary head's, in
    float32) is averaged over the batch; ``metrics``: name -> ``fn(logits, labels) -> (B,)``,
    summed like accuracy. ``extras["ema"]`` moves by ``ema_decay``; with ``extras["loss_scale"]``
    (fp16) a step whose gradients overflow changes only the scale (counted in ``skipped``).
    per_example_keys: dropout keys per example (None: by the model, see :func:`_apply_train`);
    axis_name: pmap's device axis (gradients, loss and running statistics averaged over it).
    """
    fns = modules.as_model(model)
    per_example_loss = loss_fn or functools.partial(losses.per_example_loss, aux_weight=aux_weight)
    metric_fns = dict(metrics or {})

    def train_step(state: TrainState, batch: dict, sums: dict) -> tuple[TrainState, dict]:
        images, labels = preprocess(batch["image"]), batch["label"]
        device = 0 if axis_name is None else jax.lax.axis_index(axis_name)
        forward = _training_forward(fns, state, images, device, per_example_keys, axis_name)

        def objective(params):
            outputs, model_state = forward(params)
            loss = jnp.mean(per_example_loss(outputs, labels).astype(jnp.float32))
            return loss, (losses.logits_of(outputs).astype(jnp.float32), model_state)

        scale, finite, (loss, (logits, model_state)), grads = _gradients(
            objective, state.params, state.extras.get("loss_scale"), axis_name
        )
        batch_sums = _metric_sums(metric_fns, logits, labels, 1.0)
        count = jnp.asarray(labels.shape[0], jnp.float32)
        if axis_name is not None:
            loss = jax.lax.pmean(loss, axis_name)
            batch_sums, count = jax.lax.psum((batch_sums, count), axis_name)
            model_state = _mean_over_devices(model_state, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = (optax.apply_updates(state.params, updates), opt_state)
        new = _keep_if(finite, new, (state.params, state.opt_state))
        extras = _updated_extras(state.extras, new[0], scale, ema_decay)
        sums = guard_update(sums, loss, state.step, divergence_factor)
        batch_sums.update(loss_sum=loss * count, count=count, skipped=(~finite).astype(jnp.int32))
        sums = {**sums, **{k: sums[k] + v for k, v in batch_sums.items()}}
        new_state = {"params": new[0], "opt_state": new[1], "model_state": model_state}
        return state.replace(step=state.step + 1, extras=extras, **new_state), sums

    return train_step


def _gradients(objective, params, scale, axis_name):
    """(scale, finite, (loss, aux), grads) of ``objective``; with a dynamic loss ``scale``
    (fp16) the loss is scaled and the gradients come back unscaled, averaged over pmap's
    devices, with whether they are finite."""
    if scale is None:
        out, grads = jax.value_and_grad(objective, has_aux=True)(params)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
        return None, jnp.asarray(True), out, grads
    return scale.value_and_grad(objective, has_aux=True, axis_name=axis_name)(params)


def _keep_if(finite: jax.Array, new: Any, old: Any) -> Any:
    """``new`` where the step's gradients were finite, else ``old`` (a skipped fp16 step)."""
    return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)


def _updated_extras(extras: dict, params: Any, scale: Any, ema_decay: float) -> dict:
    extras = dict(extras)
    if "ema" in extras:
        decay = jnp.float32(ema_decay)
        extras["ema"] = jax.tree.map(
            lambda e, p: decay * e + (1 - decay) * p, extras["ema"], params
        )
    if scale is not None:
        extras["loss_scale"] = scale
    return extras


def _training_forward(fns, state, images, device, per_example_keys, axis_name) -> Callable:
    """``params -> (outputs, new_model_state)`` in training mode, with this step's dropout keys
    (per example where the model allows it, see :func:`_apply_train`)."""
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    per_example = per_example_keys
    if per_example is None:
        example = jax.ShapeDtypeStruct((1, *images.shape[1:]), images.dtype)
        per_example = not jax.tree.leaves(state.model_state) and fns.keys_per_example(example)
    if axis_name is not None and not per_example:
        step_key = jax.random.fold_in(step_key, device)
    first_index = device * images.shape[0]

    def forward(params):
        return _apply_train(
            fns, params, state.model_state, images, step_key, first_index, per_example
        )

    return forward


def jit_train_step(step_fn: Callable) -> Callable:
    """Jit a train step on one device, donating the state and the metrics (updated in place)."""
    return parallel.SingleDevice().jit_train(step_fn)


def make_multi_step(step_fn: Callable) -> Callable:
    """``(state, batches, metrics) -> (state, metrics)``: one train step per leading slice.

    ``batches`` holds k batches stacked on a new leading axis; ``lax.scan`` runs the k steps in
    one dispatch, which pays off where a step is shorter than the host's launch overhead (LeNet
    on a GPU). Step s still uses ``fold_in(key, s)``: the result equals k separate steps.
    """

    def multi_step(state: TrainState, batches: dict, metrics: dict) -> tuple[TrainState, dict]:
        def body(carry, batch):
            state, metrics = carry
            return step_fn(state, batch, metrics), None

        (state, metrics), _ = jax.lax.scan(body, (state, metrics), batches)
        return state, metrics

    return multi_step


# --- the eval step -------------------------------------------------------------------------------


def variables_of(weights: Any) -> tuple[Any, Any]:
    """(params, model_state) from a TrainState, or from bare parameters (no other state)."""
    if isinstance(weights, TrainState):
        return weights.params, weights.model_state
    return weights, {}


def make_eval_step(
    model: Any,
    preprocess: Callable[[jax.Array], jax.Array] = _identity,
    *,
    loss_fn: LossFn | None = None,
    metrics: Mapping[str, MetricFn] | None = None,
    axis_name: str | None = None,
) -> Callable:
    """The un-jitted eval step ``(weights, batch, metrics) -> metrics``.

    ``weights``: a ``TrainState`` (parameters and running statistics, e.g. BatchNorm's) or bare
    parameters for a model without other state. ``batch`` has a "mask" (1 real, 0 padding):
    padded examples count for nothing. The loss and metrics are the training step's. Under
    ``jax.pmap`` pass the device ``axis_name``: the sums are then totalled over devices.
    """
    fns = modules.as_model(model)
    per_example_loss = loss_fn or losses.per_example_loss
    metric_fns = dict(metrics or {})

    def eval_step(weights: Any, batch: dict, sums: dict) -> dict:
        params, model_state = variables_of(weights)
        outputs, _ = fns.apply(params, model_state, preprocess(batch["image"]), False)
        logits = losses.logits_of(outputs).astype(jnp.float32)
        labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
        batch_sums = {
            "loss_sum": jnp.sum(per_example_loss(outputs, labels).astype(jnp.float32) * mask),
            "count": jnp.sum(mask),
            **_metric_sums(metric_fns, logits, labels, mask),
        }
        if axis_name is not None:
            batch_sums = jax.lax.psum(batch_sums, axis_name)
        return {k: sums[k] + v for k, v in batch_sums.items()}

    return eval_step


def jit_eval_step(step_fn: Callable) -> Callable:
    """Jit an eval step on one device, donating the metrics."""
    return parallel.SingleDevice().jit_eval(step_fn)


@functools.partial(
    jax.jit,
    static_argnames=("model", "tx", "preprocess", "aux_weight", "divergence_factor"),
    donate_argnums=(0, 2),
)
def train_step(
    state: TrainState,
    batch: dict,
    metrics: dict,
    *,
    model: Any,
    tx: optax.GradientTransformation,
    preprocess: Callable[[jax.Array], jax.Array] = _identity,
    aux_weight: float = 0.3,
    divergence_factor: float = 1e3,
) -> tuple[TrainState, dict]:
    """One jitted training step for notebooks and custom loops (see :func:`make_train_step`).

    ``model``, ``tx`` and ``preprocess`` are static: pass the same objects every call (one
    compilation). ``fit`` jits its own copy per run.
    """
    step = make_train_step(model, tx, preprocess, aux_weight, divergence_factor)
    return step(state, batch, metrics)


@functools.partial(jax.jit, static_argnames=("model", "preprocess"), donate_argnums=(2,))
def eval_step(
    weights: Any,
    batch: dict,
    metrics: dict,
    *,
    model: Any,
    preprocess: Callable[[jax.Array], jax.Array] = _identity,
) -> dict:
    """One jitted evaluation step (see :func:`make_eval_step`); ``weights``: state or params."""
    return make_eval_step(model, preprocess)(weights, batch, metrics)
