"""The training engine: one jitted step, metrics kept on the device, checkpoints, resume, guard.

How a run flows (``fit``): set-up (the model, any linen or NNX module, wrapped by
``jaxnotes.modules``; the optimizer; every check that can fail, before a file is written) ->
resume (the latest checkpoint, its tree and settings checked first) -> the epoch loop: host
batches (``jaxnotes.data``) -> device -> ``train_step`` (forward, loss, backward and optimizer
update in ONE jit, the state donated) -> a metrics accumulator that stays on the device and is
pulled to the host once per ``log_every`` steps and at each epoch's end -> evaluation ->
history, ``metrics.jsonl``, checkpoints -> outputs (plot, summary).

Why it is built this way (the d2l JAX code's known weaknesses, each avoided here):

- The whole step is jitted and the state donated, so XLA updates parameters in place. The state
  carries the module's other collections (BatchNorm's ``batch_stats``) beside the parameters:
  updated in training, read in evaluation, checkpointed and placed like them.
- Dropout keys are ``fold_in(key, step)``: a fresh key every step, the same one for step s
  however the steps are grouped, resumed or spread over devices.
- Examples, not batches, are shuffled, by a permutation that depends on (seed, epoch) only, so a
  resumed run sees exactly the batches the uninterrupted one would have.
- Every training batch has the same shape (the remainder is dropped) and evaluation pads its last
  batch and masks the padding out, so the step compiles once.
- Weight decay skips biases (``jaxnotes.optim``).
- The non-finite guard (chapter 3's numerics: NaN from 0/0, inf from a too-large learning rate or
  initialisation) lives inside the step: it records the first bad step on the device, so checking
  it costs no extra host sync, and a bad state is never checkpointed.

How a step is jitted, donated and sharded is the placement's business (``jaxnotes.parallel``);
what it computes is this module's. No zoo module is imported here: a model name is looked up at
the edge (the runner, or ``fit`` when handed only a name).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxnotes import guard, modules, optim, parallel, profiling
from jaxnotes import workdir as workdirs
from jaxnotes.checkpoints import CheckpointError, Checkpoints
from jaxnotes.config import TrainConfig
from jaxnotes.guard import TrainingDivergedError, TrainingInterrupted, check_guard
from jaxnotes.losses import classification_loss, logits_of

PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
# Re-exported: the engine's public names (DESIGN's API contract) stay importable from here.
__all__ = [
    "CheckpointError",
    "Checkpoints",
    "FitResult",
    "TrainConfig",
    "TrainState",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "build",
    "check_guard",
    "create_train_state",
    "empty_eval_metrics",
    "empty_metrics",
    "eval_step",
    "evaluate",
    "fit",
    "jit_eval_step",
    "jit_train_step",
    "make_eval_step",
    "make_multi_step",
    "make_train_step",
    "train_step",
]


def _identity(x: jax.Array) -> jax.Array:
    return x


# --- state and steps ---------------------------------------------------------------------------


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue: a pure pytree of arrays (checkpointed as is).

    ``key`` is raw uint32 key data (shape (2,)), so checkpoints need no typed-key support.
    ``model_state`` holds the module's variable collections other than its parameters (e.g.
    ``{"batch_stats": ...}``; ``{}`` for most models), see ``jaxnotes.modules``.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array
    model_state: Any = struct.field(default_factory=dict)


def create_train_state(
    model: Any,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, ...],
    seed: int,
) -> TrainState:
    """Initialise parameters, the module's other collections and the optimizer state.

    Args:
      model: a linen module (called as ``model.apply(variables, x, train=bool, rngs=...)``), an
        NNX module (its current weights are the initial ones) or a ``jaxnotes.modules.Model``.
      tx: the optimizer.
      input_shape: one example's shape as the model sees it, (height, width, channels).
      seed: the run's seed: parameters use ``fold_in(key, 0)``, dropout ``fold_in(key, 1)``.
    """
    fns = modules.as_model(model)
    dummy = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    # The seed stays inside the program: no separate seeding compile.
    init = functools.partial(initial_state, fns, tx, seed=seed)
    compiled = jax.jit(init).lower(dummy).compile(compiler_options=init_compiler_options())
    return compiled(np.zeros(dummy.shape, np.float32))


def initial_state(fns: modules.Model, tx, x: jax.Array, seed: Any) -> TrainState:
    """The state ``create_train_state`` makes, as a traceable function (``seed`` may be traced:
    a population initialises every member in one vmapped program)."""
    root = jax.random.key(seed)
    params, model_state = fns.init(jax.random.fold_in(root, 0), x)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        key=jax.random.key_data(jax.random.fold_in(root, 1)),
        model_state=model_state,
    )


def init_compiler_options() -> dict | None:
    """Compile the one-off initialisation with less of LLVM's optimisation on CPU.

    It runs once, and its random-number code (one threefry hash per parameter) is what makes it
    slow to optimise. Measured here: LeNet's init compiled in 0.31 s instead of 1.08 s and
    GoogLeNet's in 3.9 s instead of 7.3 s at level 1, with bit-identical parameters (level 0
    was faster still but changed truncated-normal draws by an ulp, and with them GoogLeNet's
    digits results: the parameters must not depend on how init was compiled).
    """
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


# The metrics accumulator: sums that stay on the device between host pulls, plus the guard's
# memory. "first_loss" is the first loss seen since the run (or resume) started; "bad_step" is the
# first step whose loss was not finite (kind 1) or over divergence_factor x first_loss (kind 2).
def empty_metrics() -> dict[str, jax.Array]:
    """A fresh training-metrics accumulator (device arrays; built on the host, so eager array
    code compiles no tiny programs of its own)."""
    f32, i32 = np.float32, np.int32
    return jax.device_put(
        {
            "loss_sum": np.zeros((), f32),
            "correct": np.zeros((), f32),
            "count": np.zeros((), f32),
            "first_loss": np.full((), np.nan, f32),
            "bad_step": np.full((), -1, i32),
            "bad_kind": np.zeros((), i32),
            "bad_loss": np.zeros((), f32),
        }
    )


def reset_sums(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Zero the sums, keep the guard's memory (first loss, first bad step)."""
    fresh = empty_metrics()
    return {**metrics, **{k: fresh[k] for k in ("loss_sum", "correct", "count")}}


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


def make_train_step(
    model: Any,
    tx: optax.GradientTransformation,
    preprocess: Callable[[jax.Array], jax.Array] = _identity,
    aux_weight: float = 0.3,
    divergence_factor: float = 1e3,
    *,
    per_example_keys: bool | None = None,
    axis_name: str | None = None,
) -> Callable:
    """The un-jitted train step ``(state, batch, metrics) -> (state, metrics)``.

    ``model``: a linen or NNX module, or a ``jaxnotes.modules.Model``. ``batch``: {"image":
    (B, H, W, C) uint8 or float, "label": (B,) int}. ``preprocess`` (resize, normalize) runs
    inside the step, on the device. The loss is ``jaxnotes.losses.classification_loss`` (mean
    cross-entropy, plus ``aux_weight`` x each auxiliary head's), computed in float32. Jit it with
    :func:`jit_train_step` (or a placement's ``jit_train``, see ``jaxnotes.parallel``).

    per_example_keys: dropout keys per example (see :func:`_apply_train`); None decides by the
      model (stateless linen modules that use dropout; see ``Model.keys_per_example``).
    axis_name: under ``jax.pmap``, the device axis: gradients and the loss are averaged and the
      counts summed over it, so every device applies the global batch's update. A BatchNorm
      there normalises with its own device's slice (unless the module names the axis itself);
      its running statistics are averaged over the devices after each step. Batch-level dropout
      keys are folded with the device index so the devices draw different masks.
    """
    fns = modules.as_model(model)

    def train_step(state: TrainState, batch: dict, metrics: dict) -> tuple[TrainState, dict]:
        images, labels = preprocess(batch["image"]), batch["label"]
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        local_batch = labels.shape[0]
        device = 0 if axis_name is None else jax.lax.axis_index(axis_name)
        per_example = per_example_keys
        if per_example is None:
            example = jax.ShapeDtypeStruct((1, *images.shape[1:]), images.dtype)
            per_example = not jax.tree.leaves(state.model_state) and fns.keys_per_example(example)
        if axis_name is not None and not per_example:
            step_key = jax.random.fold_in(step_key, device)

        def loss_fn(params):
            outputs, model_state = _apply_train(
                fns, params, state.model_state, images, step_key, device * local_batch, per_example
            )
            loss = classification_loss(outputs, labels, aux_weight)
            return loss, (logits_of(outputs), model_state)

        (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        count = jnp.asarray(local_batch, jnp.float32)
        if axis_name is not None:
            grads, loss = jax.lax.pmean((grads, loss), axis_name)
            correct, count = jax.lax.psum((correct, count), axis_name)
            model_state = _mean_over_devices(model_state, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        first_loss = jnp.where(jnp.isnan(metrics["first_loss"]), loss, metrics["first_loss"])
        finite = jnp.isfinite(loss)
        bad = ~finite | (loss > divergence_factor * first_loss)
        is_first_bad = bad & (metrics["bad_step"] < 0)
        metrics = {
            "loss_sum": metrics["loss_sum"] + loss * count,
            "correct": metrics["correct"] + correct,
            "count": metrics["count"] + count,
            "first_loss": first_loss,
            "bad_step": jnp.where(is_first_bad, state.step, metrics["bad_step"]),
            "bad_kind": jnp.where(is_first_bad, jnp.where(finite, 2, 1), metrics["bad_kind"]),
            "bad_loss": jnp.where(is_first_bad, loss, metrics["bad_loss"]),
        }
        state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state
        )
        return state, metrics

    return train_step


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


def _crossed(previous: int, step: int, every: int) -> bool:
    """Whether going from step ``previous`` to ``step`` passed a multiple of ``every`` (0: no)."""
    return bool(every) and step // every > previous // every


def _group(batches: Iterator[dict], k: int) -> Iterator[dict]:
    """Stack every k consecutive batches (leading axis k); a shorter tail comes one by one."""
    if k == 1:
        yield from batches
        return
    pending: list[dict] = []
    for batch in batches:
        pending.append(batch)
        if len(pending) == k:
            yield {key: np.stack([b[key] for b in pending]) for key in batch}
            pending = []
    yield from pending


def empty_eval_metrics() -> dict[str, jax.Array]:
    return jax.device_put({k: np.zeros((), np.float32) for k in ("loss_sum", "correct", "count")})


def _variables(weights: Any) -> tuple[Any, Any]:
    """(params, model_state) from a TrainState, or from bare parameters (no other state)."""
    if isinstance(weights, TrainState):
        return weights.params, weights.model_state
    return weights, {}


def make_eval_step(
    model: Any,
    preprocess: Callable[[jax.Array], jax.Array] = _identity,
    *,
    axis_name: str | None = None,
) -> Callable:
    """The un-jitted eval step ``(weights, batch, metrics) -> metrics``.

    ``weights``: a ``TrainState`` (parameters and running statistics, e.g. BatchNorm's) or bare
    parameters for a model without other state. ``batch`` has a "mask" (1 real, 0 padding):
    padded examples count for nothing. Under ``jax.pmap`` pass the device ``axis_name``: the sums
    are then totalled over devices.
    """
    fns = modules.as_model(model)

    def eval_step(weights: Any, batch: dict, metrics: dict) -> dict:
        params, model_state = _variables(weights)
        outputs, _ = fns.apply(params, model_state, preprocess(batch["image"]), False)
        logits = logits_of(outputs).astype(jnp.float32)
        labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        sums = {
            "loss_sum": jnp.sum(losses * mask),
            "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
            "count": jnp.sum(mask),
        }
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        return jax.tree.map(jnp.add, metrics, sums)

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


# --- the loop ------------------------------------------------------------------------------------


@dataclasses.dataclass
class FitResult:
    """What ``fit`` returns: the final state, the per-epoch history and the summary line."""

    state: TrainState
    history: list[dict]
    summary: dict
    compilations: int | None  # times the train step compiled (1 in a healthy run; None: pmap)
    workdir: Path | None = None


def _mean(sums: dict) -> tuple[float, float]:
    """(mean loss, accuracy) as Python floats from host sums."""
    count = max(float(sums["count"]), 1.0)
    return float(sums["loss_sum"]) / count, float(sums["correct"]) / count


def _learning_rate(config: TrainConfig, total_steps: int) -> float | optax.Schedule:
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, max(total_steps, 1))
    return config.learning_rate


def config_preprocess(config: TrainConfig, train_data) -> Callable[[jax.Array], jax.Array]:
    """The on-device preprocessing of ``config``: resize, then normalization, with
    "standardize" statistics of the training split only (no leak from the test set)."""
    from jaxnotes import data as jdata

    mean = std = None
    if config.normalization == "standardize":
        mean, std = jdata.channel_stats(train_data)
    return jdata.make_preprocess(config.resize, config.normalization, mean, std)


def model_label(config: TrainConfig, model: Any = None) -> str:
    """The name a run reports: ``config.model``, else the module's class name, else "lenet"."""
    if config.model is not None:
        return config.model
    return type(model).__name__ if model is not None else "lenet"


def resolve_model(config: TrainConfig, model: Any, num_classes: int) -> Any:
    """The module a run trains: ``model`` itself, or the zoo's model called ``config.model``.

    The zoo model is built for ``num_classes`` in the configured precision; a user's linen module
    with a ``dtype`` field is cloned with it (other modules must be built in fp32 for "fp32").
    """
    dtype = PRECISIONS[config.precision]
    if model is None:
        from jaxnotes.models import get_model  # the name lookup happens here, at the edge

        return get_model(
            model_label(config), num_classes=num_classes, dtype=dtype, **config.model_kwargs
        )
    modules.as_model(model)  # TypeError for anything that is not a Flax module
    if config.model_kwargs:
        raise ValueError(
            f"model_kwargs {sorted(config.model_kwargs)} configure zoo models; set the fields "
            f"of your {type(model).__name__} when you build it"
        )
    if config.precision == "fp32":
        return model
    if "dtype" in getattr(model, "__dataclass_fields__", {}):
        return model.clone(dtype=dtype)
    raise ValueError(
        f"precision {config.precision!r} needs a module with a dtype field to set; build your "
        f"{type(model).__name__} in that dtype and keep precision='fp32'"
    )


def _input_shape(config: TrainConfig, train_data, test_data=None) -> tuple[int, int, int]:
    """One example's shape as the model sees it (after ``resize``); train and test must agree."""
    height, width, channels = train_data.images.shape[1:]
    if test_data is not None and test_data.images.shape[1:] != train_data.images.shape[1:]:
        if config.resize is None or test_data.images.shape[3] != channels:
            raise ValueError(
                f"train images are {height}x{width}x{channels} but test images are "
                f"{'x'.join(map(str, test_data.images.shape[1:]))}; give both splits the same "
                "size, or a resize (--resize N) so the model sees N x N from both"
            )
    side = config.resize
    return (side, side, channels) if side else (height, width, channels)


def _num_classes(*datasets) -> int:
    """Logits the model needs: the data sets' class count, or more if a label is larger."""
    needed = 0
    for dataset in datasets:
        if dataset is None:
            continue
        needed = max(needed, int(dataset.num_classes))
        if len(dataset):
            needed = max(needed, int(np.max(dataset.labels)) + 1)
    return needed


def build(config: TrainConfig, train_data, placement=None, *, model: Any = None, test_data=None):
    """Model, optimizer, preprocessing and the jitted steps for a config and its data.

    ``model``: any linen or NNX module (None: the zoo's ``config.model``). It is traced once on
    the data's input shape (no compute) so a shape it cannot take, outputs that are not logits
    or too few logits for the labels fail here, with the module's own message, before anything
    compiles. ``placement`` (``jaxnotes.parallel``) decides how the steps are compiled: one
    device, a mesh or pmap; by default it follows ``config.devices`` / ``config.parallel``.
    """
    from jaxnotes import data as jdata

    if placement is None:
        if config.devices > 1:
            parallel.check_devices(config.devices, config.batch_size)
        placement = parallel.make_placement(config.devices, config.parallel)
    steps_per_epoch = jdata.steps_per_epoch(len(train_data), config.batch_size)
    num_classes = _num_classes(train_data, test_data)
    module = resolve_model(config, model, train_data.num_classes)
    input_shape = _input_shape(config, train_data, test_data)
    fns = modules.as_model(module)
    num_logits = modules.check_outputs(fns, input_shape, num_classes)
    modules.check_memory(fns, input_shape, config.batch_size // placement.num_devices)
    tx = optim.make_optimizer(
        config.optimizer,
        _learning_rate(config, config.epochs * steps_per_epoch),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        decoupled=config.decoupled,
    )
    preprocess = config_preprocess(config, train_data)
    axis = placement.axis_name
    train_step = make_train_step(
        fns, tx, preprocess, config.aux_weight, config.divergence_factor, axis_name=axis
    )
    return {
        "model": module,
        "fns": fns,
        "tx": tx,
        "preprocess": preprocess,
        "input_shape": input_shape,
        "num_logits": num_logits,
        "steps_per_epoch": steps_per_epoch,
        "placement": placement,
        "train_step": placement.jit_train(train_step),
        "multi_step": placement.jit_train(make_multi_step(train_step)),
        "eval_step": placement.jit_eval(make_eval_step(fns, preprocess, axis_name=axis)),
    }


def evaluate(eval_step: Callable, weights: Any, dataset, batch_size: int, placement=None) -> dict:
    """Mean loss and accuracy over every example of ``dataset`` (one host pull at the end).

    ``weights``: the ``TrainState`` (or bare parameters, for a model without other state).
    ``batch_size`` is rounded up to a multiple of the placement's device count (more padding,
    same result).
    """
    from jaxnotes import data as jdata

    placement = placement or parallel.SingleDevice()
    devices = placement.num_devices
    batch_size = -(-batch_size // devices) * devices
    batches = jdata.eval_batches(
        dataset, batch_size, num_shards=placement.process_count, shard_index=placement.process_index
    )
    metrics = placement.put(empty_eval_metrics())
    for batch in placement.batches(batches):
        metrics = eval_step(weights, batch, metrics)
    loss, acc = _mean(placement.host(metrics))
    return {"loss": loss, "acc": acc}


def _progress(config: TrainConfig, total: int, epoch: int, enabled: bool):
    if not (config.progress and enabled):
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="ex",
        unit_scale=True,
        leave=False,
        dynamic_ncols=True,
        disable=None,  # off when stderr is not a terminal (CI logs, notebooks' captured output)
    )


@dataclasses.dataclass
class _Run:
    """What stays fixed during a run: made by :func:`_set_up` before any file is touched."""

    config: TrainConfig
    train_data: Any
    test_data: Any
    parts: dict
    log: Callable[[str], None]

    @property
    def placement(self):
        return self.parts["placement"]

    @property
    def steps_per_epoch(self) -> int:
        return self.parts["steps_per_epoch"]

    @property
    def primary(self) -> bool:
        return self.placement.process_index == 0


@dataclasses.dataclass
class _Session:
    """What a run changes as it goes: the state, the device metrics, the record of epochs."""

    state: TrainState
    metrics: dict
    step: int
    history: list[dict]
    workdir: Path | None = None
    checkpoints: Checkpoints | None = None
    lock: workdirs.Lock | None = None
    last_checkpoint: str | None = None
    saved_step: int = -1  # step of the newest checkpoint of this run (-1: none)
    clear_before_writing: bool = False  # overwrite: the old run's files go at the first write
    # Throughput: training steps only, without the calls that compiled and the saves.
    timed_steps: int = 0
    train_seconds: float = 0.0
    warm: set = dataclasses.field(default_factory=set)  # compiled step functions already run
    phases: profiling.Phases = dataclasses.field(default_factory=profiling.Phases)


def _set_up(config, model, train_data, test_data, log, phases) -> _Run:
    from jaxnotes import data as jdata

    config.validate()
    config = dataclasses.replace(config, model=model_label(config, model))
    with phases("data"):
        if train_data is None:
            train_data = jdata.load(config.dataset, "train")
        if test_data is None:
            test_data = jdata.load(config.dataset, "test")
    with phases("build"):
        parts = build(config, train_data, model=model, test_data=test_data)
    primary = parts["placement"].process_index == 0
    return _Run(config, train_data, test_data, parts, log if primary else (lambda line: None))


def _open(run: _Run, workdir, resume: bool, overwrite: bool, phases) -> _Session:
    """The run's folder (locked) and the initial state, or the latest intact checkpoint's."""
    config, parts, placement = run.config, run.parts, run.placement
    state = create_train_state(parts["fns"], parts["tx"], parts["input_shape"], config.seed)
    session = _Session(state=state, metrics=empty_metrics(), step=0, history=[], phases=phases)
    if workdir is None:
        if resume:
            raise FileNotFoundError("--resume: no checkpoint found in (no workdir given)")
    else:
        try:
            _open_workdir(run, session, workdir, resume, overwrite)
            if resume:
                _restore(run, session)
        except BaseException:
            _close(session, failing=True)
            raise
    session.step = int(session.state.step)
    session.state, session.metrics = placement.put(session.state), placement.put(session.metrics)
    return session


def _open_workdir(run: _Run, session: _Session, workdir, resume: bool, overwrite: bool) -> None:
    path = workdirs.open_folder(workdir, resume=resume)
    if run.primary:
        session.lock = workdirs.Lock(path).acquire()
    workdirs.check_reusable(path, resume=resume, overwrite=overwrite)  # under the lock
    session.workdir = path
    session.clear_before_writing = overwrite and not resume and workdirs.holds_run(path)
    if resume:
        _checkpoints(run, session)
    elif run.primary:
        _import_in_background()  # orbax and matplotlib, needed only at the first save and end


def _restore(run: _Run, session: _Session) -> None:
    """Continue from the newest intact checkpoint: settings and tree checked before arrays."""
    checkpoints = session.checkpoints
    found = checkpoints.latest_intact_meta()
    if found is None:
        raise FileNotFoundError(f"--resume: no intact checkpoint in {checkpoints.directory}")
    _check_resume_config(found[1]["config"], run.config)
    state, meta = checkpoints.restore(session.state)
    # Host copies, placed below like a fresh state: orbax's arrays come back committed to a
    # device, which jit would compile a second program for.
    session.state = jax.device_get(state)
    step = int(session.state.step)
    session.history = [h for h in meta["history"] if h["step"] <= step]
    if "metrics" in meta:  # the epoch's running sums and the guard's memory
        session.metrics = {
            k: np.asarray(v, empty_metrics()[k].dtype) for k, v in meta["metrics"].items()
        }
    session.last_checkpoint, session.saved_step = checkpoints.path(step), step
    run.log(f"resumed from step {step} ({session.last_checkpoint})")


def _prepare_to_write(session: _Session, run: _Run) -> None:
    """Before the run's first write: with overwrite, the earlier run's files go now."""
    if session.clear_before_writing:
        workdirs.clear_run(session.workdir)
        session.clear_before_writing = False


def _checkpoints(run: _Run, session: _Session) -> Checkpoints:
    """The run's checkpoints, opened at first need (after an overwrite's clearing)."""
    _prepare_to_write(session, run)
    if session.checkpoints is None:
        directory = session.workdir / "checkpoints"
        session.checkpoints = Checkpoints(directory, run.config.keep_checkpoints, run.log)
    return session.checkpoints


def _import_in_background() -> None:
    """Import what the run needs only later (orbax at the first save, matplotlib at the end) in
    a thread: the imports then overlap the first step's compilation, which releases the GIL.
    Measured on the default job: about 0.3 s of its wall time."""
    import importlib
    import threading

    def work() -> None:
        try:
            importlib.import_module("orbax.checkpoint")
            from jaxnotes import plots

            plots.pyplot()
        except Exception:  # noqa: BLE001 -- the main thread imports again and reports errors
            pass

    threading.Thread(target=work, name="jaxnotes-imports", daemon=True).start()


def _save(run: _Run, session: _Session, epoch: int, host_metrics: dict) -> None:
    """Checkpoint the state with the epoch's sums and the guard (checked just before)."""
    if session.workdir is None or session.saved_step == session.step:
        return
    with session.phases("checkpoint"):
        checkpoints = _checkpoints(run, session)
        meta = _meta(run, epoch, session.history, host_metrics)
        state = run.placement.unplace(session.state)
        if run.placement.process_count == 1:
            # Host copies: the device buffers are donated to the next step while orbax writes.
            state = jax.device_get(state)
        multi_host = run.placement.process_count > 1  # orbax's collective save: no overlap
        session.last_checkpoint = checkpoints.save(state, meta, wait=multi_host)
        session.saved_step = session.step


def _diagnose(run: _Run):
    """``step -> causes`` for the guard: the bad step's own batch, then the optimizer."""

    def causes(step: int) -> list[str]:
        epoch, index = divmod(step, run.steps_per_epoch)
        found = []
        if epoch < run.config.epochs:
            batch = next(iter(_epoch_batches(run, epoch, index)), None)
            if batch is not None:
                found += guard.batch_causes(batch, run.parts["num_logits"])
        config = run.config
        return found + guard.optimizer_causes(
            config.learning_rate, config.weight_decay, config.decoupled
        )

    return causes


def _check(run: _Run, session: _Session, host: dict) -> None:
    try:
        guard.check_guard(
            host, session.last_checkpoint, run.config.divergence_factor, diagnose=_diagnose(run)
        )
    except TrainingDivergedError:
        if session.checkpoints is not None:
            session.checkpoints.wait()  # the checkpoint the error names is complete
        raise


def _run_steps(run: _Run, session: _Session, batch: dict) -> tuple[int, float]:
    """Dispatch one step (or k scanned steps): (steps run, seconds spent compiling them)."""
    stacked = run.config.steps_per_dispatch > 1 and batch["label"].ndim == 2
    # k > 1 runs on one device only, so a 2-D label array is k stacked batches there (under
    # pmap a single batch is (devices, B / devices)).
    function = run.parts["multi_step"] if stacked else run.parts["train_step"]
    steps = batch["label"].shape[0] if stacked else 1
    if function in session.warm:
        session.state, session.metrics = function(session.state, batch, session.metrics)
        session.timed_steps += steps
        return steps, 0.0
    # The call that compiles is timed apart: compiling is not training throughput.
    jax.block_until_ready(session.state.step)
    started = time.perf_counter()
    session.state, session.metrics = function(session.state, batch, session.metrics)
    jax.block_until_ready(session.state.step)
    session.warm.add(function)
    return steps, time.perf_counter() - started


def _train_epoch(run: _Run, session: _Session, epoch: int, stop) -> tuple[float, float]:
    """One epoch of steps from ``session.step`` on; returns its (train loss, train accuracy)."""
    config, placement = run.config, run.placement
    epoch_start_step = epoch * run.steps_per_epoch
    last_step = epoch_start_step + run.steps_per_epoch
    bar = _progress(config, run.steps_per_epoch * config.batch_size, epoch, run.primary)
    batches = _epoch_batches(run, epoch, session.step - epoch_start_step)
    started, untimed, saved = time.perf_counter(), 0.0, 0.0  # untimed: compile seconds
    for batch in placement.batches(_group(batches, config.steps_per_dispatch)):
        previous = session.step
        steps, compile_seconds = _run_steps(run, session, batch)
        session.step, untimed = session.step + steps, untimed + compile_seconds
        if bar is not None:
            bar.update((session.step - previous) * config.batch_size)
        # A step checkpoint due at the epoch's last step is taken at the epoch's end, after
        # its evaluation: a checkpoint at an epoch boundary always holds that epoch's record.
        at_step_checkpoint = session.step < last_step and _crossed(
            previous, session.step, config.checkpoint_every_steps
        )
        interrupted = stop.signum is not None and session.step < last_step
        if _crossed(previous, session.step, config.log_every) or at_step_checkpoint or interrupted:
            host = placement.host(session.metrics)
            _check(run, session, host)
            if bar is not None:
                bar.set_postfix(loss=f"{_mean(host)[0]:.4f}")
            if at_step_checkpoint:
                saving = time.perf_counter()
                _save(run, session, epoch, host)
                saved += time.perf_counter() - saving
            if interrupted:
                _stop_on_interrupt(run, session, epoch, host, stop)
    if bar is not None:
        bar.close()
    host = placement.host(session.metrics)
    _check(run, session, host)
    elapsed = time.perf_counter() - started - saved  # saves are the "checkpoint" phase
    session.phases.seconds["train"] += elapsed
    session.train_seconds += elapsed - untimed
    session.metrics = placement.put(reset_sums(host))
    return _mean(host)


def _stop_on_interrupt(run: _Run, session: _Session, epoch: int, host: dict, stop) -> None:
    """Save unless a checkpoint since the epoch's start exists; raise TrainingInterrupted."""
    if session.saved_step < epoch * run.steps_per_epoch:
        _save(run, session, epoch, host)
    if session.checkpoints is not None:
        session.checkpoints.wait()
    raise guard.TrainingInterrupted(session.step, session.last_checkpoint, stop.signum)


def _epoch_batches(run: _Run, epoch: int, start_batch: int) -> Iterator[dict]:
    """This process's training batches of ``epoch`` from ``start_batch`` on."""
    from jaxnotes.data import train_batches

    return train_batches(
        run.train_data,
        run.config.batch_size,
        seed=run.config.seed,
        epoch=epoch,
        start_batch=start_batch,
        num_shards=run.placement.process_count,
        shard_index=run.placement.process_index,
    )


def _end_epoch(run: _Run, session: _Session, epoch: int, train: tuple, start_time: float) -> None:
    """Evaluate, record the epoch (history, log line, metrics.jsonl) and checkpoint it."""
    config = run.config
    train_loss, train_acc = train
    with session.phases("evaluate"):
        test = evaluate(
            run.parts["eval_step"],
            session.state,
            run.test_data,
            config.eval_batch_size,
            run.placement,
        )
    session.history.append(
        {
            "epoch": epoch + 1,
            "step": session.step,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test["loss"],
            "test_acc": test["acc"],
            "wall_s": time.perf_counter() - start_time,
        }
    )
    run.log(
        f"epoch {epoch + 1}/{config.epochs}  loss {train_loss:.4f}  train acc "
        f"{train_acc:.4f}  test acc {test['acc']:.4f}"
    )
    if session.workdir is None:
        return
    _prepare_to_write(session, run)
    if run.primary:
        with session.phases("checkpoint"):
            _write_json_lines(session.workdir / "metrics.jsonl", session.history)
    epoch_due = config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0
    step_due = _crossed(session.step - 1, session.step, config.checkpoint_every_steps)
    if epoch_due or step_due:
        _save(run, session, epoch + 1, run.placement.host(session.metrics))


def _outputs(run: _Run, session: _Session, start_time: float, compiles) -> FitResult:
    """Draw the learning curves, make the summary (and write summary.json)."""
    config, placement, parts = run.config, run.placement, run.parts
    if session.checkpoints is not None:
        with session.phases("checkpoint"):
            session.checkpoints.wait()  # the last save is complete before the run reports
    if session.workdir is not None and session.history and run.primary:
        with session.phases("plot"):
            from jaxnotes import plots

            path = session.workdir / "learning_curves.png"
            figure = plots.learning_curves(session.history, path, title=config.model)
            plots.close(figure)  # a saved file; many runs in one process must not pile figures
    final = session.history[-1] if session.history else {}
    seconds, examples = session.train_seconds, session.timed_steps * config.batch_size
    step_fn = parts["multi_step"] if config.steps_per_dispatch > 1 else parts["train_step"]
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "epochs": config.epochs,
        "train_loss": final.get("train_loss"),
        "train_acc": final.get("train_acc"),
        "test_loss": final.get("test_loss"),
        "test_acc": final.get("test_acc"),
        # null when no step ran after the last compile (a one-step run measures nothing)
        "examples_per_sec": examples / seconds if examples > 0 and seconds > 0 else None,
        "wall_s": time.perf_counter() - start_time,
        "steps": session.step,
        "timed_steps": session.timed_steps,  # steps in examples_per_sec (none that compiled)
        "precision": config.precision,
        "devices": placement.num_devices,
        "processes": placement.process_count,
        # jit's count of compiled variants of the step (pmap exposes none)
        "compilations": getattr(step_fn, "_cache_size", lambda: None)(),
        # every XLA program this run compiled (init, train, eval, anything eager), and where
        # the wall time went (see jaxnotes.profiling)
        "compiled_programs": compiles.count,
        "profile": {"phases": session.phases.report(), "compiles": compiles.report()},
    }
    if session.workdir is not None:
        summary["workdir"] = str(session.workdir)
        if run.primary:
            _write_text(session.workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
    state = placement.unplace(session.state)
    return FitResult(state, session.history, summary, summary["compilations"], session.workdir)


def _close(session: _Session | None, failing: bool = False) -> None:
    """Release orbax and the lock. While another error propagates, a failure to complete the
    last save is not raised over it (that error is what the user needs to see)."""
    if session is None:
        return
    try:
        if session.checkpoints is not None:
            session.checkpoints.close()
    except CheckpointError:
        if not failing:
            raise
    finally:
        if session.lock is not None:
            session.lock.release()


def fit(
    config: TrainConfig,
    workdir: str | os.PathLike | workdirs.NewRun | None = None,
    *,
    model: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    train_data=None,
    test_data=None,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train and evaluate ``config``; write metrics, plots and checkpoints to ``workdir``.

    Args:
      config: the experiment.
      workdir: where ``metrics.jsonl``, ``learning_curves.png``, ``summary.json`` and
        ``checkpoints/`` go; None writes nothing (no checkpoints, no resume);
        ``jaxnotes.workdir.NewRun(base)`` a fresh ``base/TIMESTAMP``. Locked while the run uses
        it. With several processes only process 0 writes logs and files; orbax writes each
        replicated array once.
      model: any ``flax.linen.Module`` (called as ``model.apply(variables, x, train=bool,
        rngs={"dropout": key})``, returning logits or ``(logits, *aux_logits)``; collections
        such as ``batch_stats`` are trained, checkpointed and restored) or ``flax.nnx.Module``
        (see ``jaxnotes.modules``). None: the zoo's model named ``config.model``; with a module,
        ``config.model`` is only the run's label (default: the class name).
      resume: continue from the newest intact checkpoint in ``workdir`` (parameters, model
        state, optimizer state, step, key, the epoch's running sums and the guard's memory; the
        data order follows from (seed, epoch)). FileNotFoundError if none; ValueError if its
        settings or parameter tree differ.
      overwrite: replace the run ``workdir`` holds; its files are deleted only when this run
        first writes (after every check passed). Without it (or ``resume``) a folder holding a
        run raises ``jaxnotes.workdir.WorkdirError``.
      train_data, test_data: ``jaxnotes.data.Dataset``s; loaded from ``config.dataset`` if None.
      log: where the one-line-per-epoch report goes.
      on_epoch: called with each epoch's record (epoch, train_loss, train_acc, test_loss,
        test_acc, ...) as it is made, e.g. to draw live curves in a notebook.

    Raises:
      TypeError: ``model`` is not a Flax module.
      ValueError: a setting, or the model against the data (input shape, logits, memory), is
        wrong; raised before anything is compiled or written.
      TrainingDivergedError: the loss became NaN/inf or diverged; nothing after the last good
        checkpoint is saved.
      TrainingInterrupted: SIGINT/SIGTERM between two steps (a checkpoint was saved if the
        last one was older than the epoch's start).
      CheckpointError: a checkpoint could not be written (disk full); earlier ones are intact.
    """
    start_time = time.perf_counter()
    phases, session, failing = profiling.Phases(), None, True
    with profiling.CompileLog() as compiles:
        run = _set_up(config, model, train_data, test_data, log, phases)
        try:
            with phases("init"):
                session = _open(run, workdir, resume, overwrite, phases)
            with guard.catch_interrupts() as stop:
                for epoch in range(session.step // run.steps_per_epoch, run.config.epochs):
                    train = _train_epoch(run, session, epoch, stop)
                    _end_epoch(run, session, epoch, train, start_time)
                    if on_epoch is not None and run.primary:
                        on_epoch(dict(session.history[-1]))
                    if stop.signum is not None:
                        host = run.placement.host(session.metrics)
                        _stop_on_interrupt(run, session, epoch + 1, host, stop)
            result = _outputs(run, session, start_time, compiles)
            failing = False
            return result
        finally:
            _close(session, failing)


def _meta(run: _Run, epoch: int, history: list[dict], host_metrics: dict) -> dict:
    metrics = {k: np.asarray(v).item() for k, v in host_metrics.items()}
    return {
        "epoch": epoch,
        "history": history,
        "config": _config_json(run.config),
        "metrics": metrics,
    }


def _config_json(config: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _check_resume_config(saved: dict, config: TrainConfig) -> None:
    current = _config_json(config)
    fields = list(TrainConfig.RESUME_FIELDS)
    if config.schedule == "cosine":  # the decay's length is the run's: it must not change
        fields.append("epochs")
    changed = [f for f in fields if saved.get(f) != current.get(f)]
    if changed:
        details = ", ".join(f"{f}: {saved.get(f)!r} -> {current.get(f)!r}" for f in changed)
        raise ValueError(
            f"--resume with a different configuration ({details}); resume with the same "
            "settings or start a new --workdir"
        )


def _write_text(path: Path, text: str) -> None:
    # Atomic: a crash mid-write leaves the previous file, never half of the new one.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json_lines(path: Path, rows: list[dict]) -> None:
    # Rewritten whole each epoch: a resumed run's file never has duplicates.
    _write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
