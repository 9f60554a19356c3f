"""The training engine: one jitted step, metrics kept on the device, checkpoints, resume, guard.

How a run flows (``fit``): host batches (``jaxnotes.data``) -> device -> ``train_step`` (forward,
loss, backward and optimizer update in ONE jit, the state donated) -> a metrics accumulator that
stays on the device and is pulled to the host once per ``log_every`` steps and at each epoch's
end -> history, ``metrics.jsonl``, plots, checkpoints.

Why it is built this way (the d2l JAX code's known weaknesses, each avoided here):

- The whole step is jitted and the state donated, so XLA updates parameters in place.
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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxnotes import optim
from jaxnotes.models import classification_loss

PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def _identity(x: jax.Array) -> jax.Array:
    return x


# --- state and steps ---------------------------------------------------------------------------


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue: a pure pytree of arrays (checkpointed as is).

    ``key`` is raw uint32 key data (shape (2,)), so checkpoints need no typed-key support.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, ...],
    seed: int,
) -> TrainState:
    """Initialise parameters and optimizer state.

    Args:
      model: a linen module called as ``model.apply(variables, x, train=bool, rngs=...)``.
      tx: the optimizer.
      input_shape: one example's shape as the model sees it, (height, width, channels).
      seed: the run's seed: parameters use ``fold_in(key, 0)``, dropout ``fold_in(key, 1)``.
    """
    root = jax.random.key(seed)
    dummy = jnp.zeros((1, *input_shape), jnp.float32)

    @jax.jit
    def init() -> TrainState:
        params = model.init(jax.random.fold_in(root, 0), dummy, train=False)["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            key=jax.random.key_data(jax.random.fold_in(root, 1)),
        )

    return init()


# The metrics accumulator: sums that stay on the device between host pulls, plus the guard's
# memory. "first_loss" is the first loss seen since the run (or resume) started; "bad_step" is the
# first step whose loss was not finite (kind 1) or over divergence_factor x first_loss (kind 2).
def empty_metrics() -> dict[str, jax.Array]:
    """A fresh training-metrics accumulator (device arrays)."""
    return {
        "loss_sum": jnp.zeros((), jnp.float32),
        "correct": jnp.zeros((), jnp.float32),
        "count": jnp.zeros((), jnp.float32),
        "first_loss": jnp.full((), jnp.nan, jnp.float32),
        "bad_step": jnp.full((), -1, jnp.int32),
        "bad_kind": jnp.zeros((), jnp.int32),
        "bad_loss": jnp.zeros((), jnp.float32),
    }


def reset_sums(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Zero the sums, keep the guard's memory (first loss, first bad step)."""
    fresh = empty_metrics()
    return {**metrics, **{k: fresh[k] for k in ("loss_sum", "correct", "count")}}


def _logits(outputs: Any) -> jax.Array:
    return outputs[0] if isinstance(outputs, tuple | list) else outputs


def uses_dropout(model: nn.Module, images: jax.Array) -> bool:
    """Whether ``model`` asks for a "dropout" key in training mode (traced only, no compute)."""
    from flax.errors import InvalidRngError

    shape = jax.ShapeDtypeStruct((1, *images.shape[1:]), images.dtype)
    try:
        variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), shape)
        jax.eval_shape(lambda v, x: model.apply(v, x, train=True), variables, shape)
    except InvalidRngError:
        return True
    return False


def _apply_train(model, params, images, step_key, first_index, per_example_keys):
    """Forward pass in training mode.

    With ``per_example_keys``, example i of the global batch draws its dropout mask from
    ``fold_in(step_key, i)``: the masks then depend on (key, step, example) only, never on how the
    batch is split over devices, so one device, a sharded mesh and pmap compute the same thing.
    The model runs vmapped over single examples, which XLA batches back into one computation.
    """
    if not per_example_keys:
        return model.apply({"params": params}, images, train=True, rngs={"dropout": step_key})
    indices = first_index + jnp.arange(images.shape[0])
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(indices)

    def one(x, key):
        return model.apply({"params": params}, x[None], train=True, rngs={"dropout": key})

    outputs = jax.vmap(one)(images, keys)
    return jax.tree.map(lambda out: out[:, 0], outputs)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    preprocess: Callable[[jax.Array], jax.Array] = _identity,
    aux_weight: float = 0.3,
    divergence_factor: float = 1e3,
    *,
    per_example_keys: bool | None = None,
    axis_name: str | None = None,
) -> Callable:
    """The un-jitted train step ``(state, batch, metrics) -> (state, metrics)``.

    ``batch``: {"image": (B, H, W, C) uint8 or float, "label": (B,) int}. ``preprocess`` (resize,
    normalize) runs inside the step, on the device. The loss is the mean cross-entropy (plus
    ``aux_weight`` x each auxiliary head's for GoogLeNet), computed in float32. Jit it with
    :func:`jit_train_step` (or with shardings, see ``jaxnotes.parallel``).

    per_example_keys: dropout keys per example (see :func:`_apply_train`); None decides by
      whether the model uses dropout at all (models without it skip the per-example form).
    axis_name: under ``jax.pmap``, the device axis: gradients and the loss are averaged and the
      counts summed over it, so every device applies the global batch's update.
    """

    def train_step(state: TrainState, batch: dict, metrics: dict) -> tuple[TrainState, dict]:
        images, labels = preprocess(batch["image"]), batch["label"]
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        local_batch = labels.shape[0]
        first_index = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_batch
        per_example = uses_dropout(model, images) if per_example_keys is None else per_example_keys

        def loss_fn(params):
            outputs = _apply_train(model, params, images, step_key, first_index, per_example)
            return classification_loss(outputs, labels, aux_weight), _logits(outputs)

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        count = jnp.asarray(local_batch, jnp.float32)
        if axis_name is not None:
            grads, loss = jax.lax.pmean((grads, loss), axis_name)
            correct, count = jax.lax.psum((correct, count), axis_name)
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
        state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return state, metrics

    return train_step


def jit_train_step(step_fn: Callable) -> Callable:
    """Jit a train step, donating the state and the metrics (updated in place)."""
    return jax.jit(step_fn, donate_argnums=(0, 2))


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
    return {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "count")}


def make_eval_step(
    model: nn.Module,
    preprocess: Callable[[jax.Array], jax.Array] = _identity,
    *,
    axis_name: str | None = None,
) -> Callable:
    """The un-jitted eval step ``(params, batch, metrics) -> metrics``.

    ``batch`` has a "mask" (1 real, 0 padding): padded examples count for nothing. Under
    ``jax.pmap`` pass the device ``axis_name``: the sums are then totalled over devices.
    """

    def eval_step(params: Any, batch: dict, metrics: dict) -> dict:
        logits = model.apply({"params": params}, preprocess(batch["image"]), train=False)
        logits = _logits(logits).astype(jnp.float32)
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
    return jax.jit(step_fn, donate_argnums=(2,))


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
    model: nn.Module,
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
    params: Any,
    batch: dict,
    metrics: dict,
    *,
    model: nn.Module,
    preprocess: Callable[[jax.Array], jax.Array] = _identity,
) -> dict:
    """One jitted evaluation step (see :func:`make_eval_step`)."""
    return make_eval_step(model, preprocess)(params, batch, metrics)


# --- the guard -----------------------------------------------------------------------------------


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/inf or exploded; raised with the step and the likely causes."""

    def __init__(self, step: int, kind: str, loss: float, detail: str, checkpoint: str | None):
        self.step, self.kind, self.loss, self.checkpoint = step, kind, loss, checkpoint
        kept = (
            f"The last good checkpoint is intact: {checkpoint}"
            if checkpoint
            else "No checkpoint had been written yet"
        )
        super().__init__(
            f"Training stopped at step {step}: {detail}. Likely causes (the notes): a learning "
            "rate too large (try 10x smaller), weights initialised too large, or a division by "
            f"zero (0/0 gives NaN; x/0 gives inf). {kept}."
        )


def check_guard(host_metrics: dict, checkpoint: str | None, divergence_factor: float) -> None:
    """Raise :class:`TrainingDivergedError` if the accumulator recorded a bad step."""
    step = int(host_metrics["bad_step"])
    if step < 0:
        return
    loss = float(host_metrics["bad_loss"])
    if int(host_metrics["bad_kind"]) == 1:
        kind, detail = "non-finite", f"the loss became {loss} (not finite)"
    else:
        kind = "diverged"
        detail = (
            f"the loss diverged to {loss:.4g}, over {divergence_factor:g} x the first loss "
            f"({float(host_metrics['first_loss']):.4g})"
        )
    raise TrainingDivergedError(step, kind, loss, detail, checkpoint)


# --- configuration and checkpoints --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One experiment. ``fit(TrainConfig(model="lenet", dataset="digits"))`` runs it."""

    model: str = "lenet"
    dataset: str = "digits"
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 256
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    decoupled: bool = True
    schedule: str = "constant"  # or "cosine": cosine decay to 0 over the run
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    resize: int | None = None  # image side the model sees; None keeps the data's
    normalization: str = "scale"
    precision: str = "fp32"
    seed: int = 0
    log_every: int = 50  # steps between host pulls of the metrics (and progress updates)
    checkpoint_every: int = 1  # epochs between checkpoints; 0 disables
    checkpoint_every_steps: int = 0  # also checkpoint every N steps (0: only at epoch ends)
    keep_checkpoints: int = 2
    divergence_factor: float = 1e3
    aux_weight: float = 0.3
    progress: bool = True
    devices: int = 1  # data-parallel devices (jaxnotes.parallel); results do not depend on it
    parallel: str = "sharded"  # with devices > 1: "sharded" (mesh + jit) or "pmap"
    steps_per_dispatch: int = 1  # > 1: scan that many steps per jit call (one device only)

    def validate(self) -> None:
        """Raise ValueError for values no run can use (the runner turns it into exit code 2)."""
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (
                self.eval_batch_size >= 1,
                f"eval batch size must be >= 1, got {self.eval_batch_size}",
            ),
            (self.learning_rate > 0, f"learning rate must be > 0, got {self.learning_rate}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.precision in PRECISIONS, f"precision must be one of {list(PRECISIONS)}"),
            (self.schedule in ("constant", "cosine"), "schedule must be 'constant' or 'cosine'"),
            (self.resize is None or self.resize >= 1, f"resize must be >= 1, got {self.resize}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.devices >= 1, f"devices must be >= 1, got {self.devices}"),
            (self.parallel in ("sharded", "pmap"), "parallel must be 'sharded' or 'pmap'"),
            (self.steps_per_dispatch >= 1, "steps_per_dispatch must be >= 1"),
            (
                self.steps_per_dispatch == 1 or self.devices == 1,
                "steps_per_dispatch > 1 runs on one device only",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    # Fields that change what a run computes: a resumed run must match them.
    RESUME_FIELDS = (
        "model",
        "dataset",
        "batch_size",
        "learning_rate",
        "optimizer",
        "momentum",
        "weight_decay",
        "decoupled",
        "schedule",
        "model_kwargs",
        "resize",
        "normalization",
        "precision",
        "seed",
        "aux_weight",
    )


class Checkpoints:
    """Orbax checkpoints of the TrainState plus JSON metadata (epoch, history, config).

    Orbax writes each checkpoint into a temporary folder and renames it when complete, so a
    crash mid-write never leaves a half-written checkpoint that ``latest`` would pick up.
    """

    def __init__(self, directory: Path, keep: int):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = directory.absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, meta: dict) -> str:
        ocp = self._ocp
        step = int(state.step)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        # Wait: a later crash must not take the checkpoint we report as "the last good one".
        self.manager.wait_until_finished()
        return str(self.directory / str(step))

    def restore(self, abstract_state: TrainState) -> tuple[TrainState, dict]:
        ocp = self._ocp
        step = self.latest_step()
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["meta"]

    def close(self) -> None:
        self.manager.close()


# --- the loop ------------------------------------------------------------------------------------


@dataclasses.dataclass
class FitResult:
    """What ``fit`` returns: the final state, the per-epoch history and the summary line."""

    state: TrainState
    history: list[dict]
    summary: dict
    compilations: int | None  # times the train step compiled (1 in a healthy run; None: pmap)


def _mean(sums: dict) -> tuple[float, float]:
    """(mean loss, accuracy) as Python floats from host sums."""
    count = max(float(sums["count"]), 1.0)
    return float(sums["loss_sum"]) / count, float(sums["correct"]) / count


def _learning_rate(config: TrainConfig, total_steps: int) -> float | optax.Schedule:
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, max(total_steps, 1))
    return config.learning_rate


def build(config: TrainConfig, train_data, placement=None) -> dict:
    """Model, optimizer, preprocessing and the jitted steps for a config and its data.

    ``placement`` (``jaxnotes.parallel``) decides how the steps are compiled: one device, a mesh
    or pmap; by default it follows ``config.devices`` / ``config.parallel``.
    """
    from jaxnotes import data as jdata
    from jaxnotes import parallel
    from jaxnotes.models import get_model

    if placement is None:
        if config.devices > 1:
            parallel.check_devices(config.devices, config.batch_size)
        placement = parallel.make_placement(config.devices, config.parallel)
    steps_per_epoch = jdata.steps_per_epoch(len(train_data), config.batch_size)
    model = get_model(
        config.model,
        num_classes=train_data.num_classes,
        dtype=PRECISIONS[config.precision],
        **config.model_kwargs,
    )
    tx = optim.make_optimizer(
        config.optimizer,
        _learning_rate(config, config.epochs * steps_per_epoch),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        decoupled=config.decoupled,
    )
    mean = std = None
    if config.normalization == "standardize":
        mean, std = jdata.channel_stats(train_data)  # training split only: no leak
    preprocess = jdata.make_preprocess(config.resize, config.normalization, mean, std)
    height, width, channels = train_data.images.shape[1:]
    side = config.resize
    input_shape = (side, side, channels) if side else (height, width, channels)
    axis = placement.axis_name
    train_step = make_train_step(
        model, tx, preprocess, config.aux_weight, config.divergence_factor, axis_name=axis
    )
    return {
        "model": model,
        "tx": tx,
        "preprocess": preprocess,
        "input_shape": input_shape,
        "steps_per_epoch": steps_per_epoch,
        "placement": placement,
        "train_step": placement.jit_train(train_step),
        "multi_step": placement.jit_train(make_multi_step(train_step)),
        "eval_step": placement.jit_eval(make_eval_step(model, preprocess, axis_name=axis)),
    }


def evaluate(eval_step: Callable, params: Any, dataset, batch_size: int, placement=None) -> dict:
    """Mean loss and accuracy over every example of ``dataset`` (one host pull at the end).

    ``batch_size`` is rounded up to a multiple of the placement's device count (more padding,
    same result).
    """
    from jaxnotes import data as jdata
    from jaxnotes import parallel

    placement = placement or parallel.SingleDevice()
    devices = placement.num_devices
    batch_size = -(-batch_size // devices) * devices
    batches = jdata.eval_batches(
        dataset, batch_size, num_shards=placement.process_count, shard_index=placement.process_index
    )
    metrics = placement.put(empty_eval_metrics())
    for batch in placement.batches(batches):
        metrics = eval_step(params, batch, metrics)
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


def fit(
    config: TrainConfig,
    workdir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    train_data=None,
    test_data=None,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train and evaluate ``config``; write metrics, plots and checkpoints to ``workdir``.

    Args:
      config: the experiment.
      workdir: where ``metrics.jsonl``, ``learning_curves.png`` and ``checkpoints/`` go; None
        writes nothing (no checkpoints, no resume). With several processes only process 0
        writes logs and files; orbax writes each replicated array once.
      resume: continue from the latest checkpoint in ``workdir`` (parameters, optimizer state,
        step, key; the data order follows from (seed, epoch)). FileNotFoundError if none.
      train_data, test_data: ``jaxnotes.data.Dataset``s; loaded from ``config.dataset`` if None.
      log: where the one-line-per-epoch report goes.

    Raises:
      TrainingDivergedError: the loss became NaN/inf or diverged; nothing after the last good
        checkpoint is saved.
    """
    from jaxnotes import data as jdata

    start_time = time.perf_counter()
    config.validate()
    if train_data is None:
        train_data = jdata.load(config.dataset, "train")
    if test_data is None:
        test_data = jdata.load(config.dataset, "test")
    parts = build(config, train_data)
    placement, steps_per_epoch = parts["placement"], parts["steps_per_epoch"]
    primary = placement.process_index == 0
    log = log if primary else (lambda line: None)
    state = create_train_state(parts["model"], parts["tx"], parts["input_shape"], config.seed)

    workdir = Path(workdir) if workdir is not None else None
    checkpoints, history, last_checkpoint = None, [], None
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        checkpoints = Checkpoints(workdir / "checkpoints", config.keep_checkpoints)
    if resume:
        if checkpoints is None or checkpoints.latest_step() is None:
            where = workdir / "checkpoints" if workdir else "(no workdir given)"
            raise FileNotFoundError(f"--resume: no checkpoint found in {where}")
        state, meta = checkpoints.restore(state)
        _check_resume_config(meta["config"], config)
        history = [h for h in meta["history"] if h["step"] <= int(state.step)]
        last_checkpoint = str(checkpoints.directory / str(int(state.step)))
        log(f"resumed from step {int(state.step)} ({last_checkpoint})")

    def save(epoch: int) -> str:
        return checkpoints.save(placement.unplace(state), _meta(config, epoch, history))

    train_step, multi_step, eval_step = parts["train_step"], parts["multi_step"], parts["eval_step"]
    step = int(state.step)
    state, metrics = placement.put(state), placement.put(empty_metrics())
    # Throughput counts training steps only (no evaluation, no first step: it compiles).
    train_examples, train_seconds, compiled = 0, 0.0, False
    for epoch in range(step // steps_per_epoch, config.epochs):
        bar = _progress(config, steps_per_epoch * config.batch_size, epoch, primary)
        batches = jdata.train_batches(
            train_data,
            config.batch_size,
            seed=config.seed,
            epoch=epoch,
            start_batch=step - epoch * steps_per_epoch,
            num_shards=placement.process_count,
            shard_index=placement.process_index,
        )
        epoch_start, timed_from_step = time.perf_counter(), step
        for batch in placement.batches(_group(batches, config.steps_per_dispatch)):
            stacked = batch["label"].ndim == 2
            run = multi_step if stacked else train_step
            state, metrics = run(state, batch, metrics)
            previous, step = step, step + (batch["label"].shape[0] if stacked else 1)
            if not compiled:
                jax.block_until_ready(state.step)
                compiled, epoch_start, timed_from_step = True, time.perf_counter(), step
            if bar is not None:
                bar.update((step - previous) * config.batch_size)
            at_step_checkpoint = _crossed(previous, step, config.checkpoint_every_steps)
            if _crossed(previous, step, config.log_every) or at_step_checkpoint:
                host = placement.host(metrics)
                check_guard(host, last_checkpoint, config.divergence_factor)
                if bar is not None:
                    bar.set_postfix(loss=f"{_mean(host)[0]:.4f}")
                if at_step_checkpoint and checkpoints is not None:
                    last_checkpoint = save(epoch)
        if bar is not None:
            bar.close()
        host = placement.host(metrics)
        check_guard(host, last_checkpoint, config.divergence_factor)
        train_seconds += time.perf_counter() - epoch_start
        train_examples += (step - timed_from_step) * config.batch_size
        train_loss, train_acc = _mean(host)
        test = evaluate(eval_step, state.params, test_data, config.eval_batch_size, placement)
        history.append(
            {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "test_loss": test["loss"],
                "test_acc": test["acc"],
                "wall_s": time.perf_counter() - start_time,
            }
        )
        metrics = placement.put(reset_sums(placement.host(metrics)))
        log(
            f"epoch {epoch + 1}/{config.epochs}  loss {train_loss:.4f}  train acc "
            f"{train_acc:.4f}  test acc {test['acc']:.4f}"
        )
        if workdir is not None:
            if primary:
                _write_history(workdir, history)
            if config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0:
                last_checkpoint = save(epoch + 1)
    if checkpoints is not None:
        checkpoints.close()
    if workdir is not None and history and primary:
        from jaxnotes import plots

        plots.learning_curves(history, workdir / "learning_curves.png", title=config.model)
    final = history[-1] if history else {}
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "epochs": config.epochs,
        "train_loss": final.get("train_loss"),
        "train_acc": final.get("train_acc"),
        "test_loss": final.get("test_loss"),
        "test_acc": final.get("test_acc"),
        "examples_per_sec": train_examples / train_seconds if train_seconds > 0 else None,
        "wall_s": time.perf_counter() - start_time,
        "steps": step,
        "precision": config.precision,
        "devices": placement.num_devices,
        "processes": placement.process_count,
        # jit's count of compiled variants of the step (pmap exposes none)
        "compilations": getattr(
            multi_step if config.steps_per_dispatch > 1 else train_step, "_cache_size", lambda: None
        )(),
    }
    return FitResult(
        placement.unplace(state), history, summary, compilations=summary["compilations"]
    )


def _meta(config: TrainConfig, epoch: int, history: list[dict]) -> dict:
    return {"epoch": epoch, "history": history, "config": _config_json(config)}


def _config_json(config: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _check_resume_config(saved: dict, config: TrainConfig) -> None:
    current = _config_json(config)
    changed = [f for f in TrainConfig.RESUME_FIELDS if saved.get(f) != current.get(f)]
    if changed:
        details = ", ".join(f"{f}: {saved.get(f)!r} -> {current.get(f)!r}" for f in changed)
        raise ValueError(
            f"--resume with a different configuration ({details}); resume with the same "
            "settings or start a new --workdir"
        )


def _write_history(workdir: Path, history: list[dict]) -> None:
    # Rewritten whole (and atomically) each epoch: a resumed run's file never has duplicates.
    path = workdir / "metrics.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    os.replace(tmp, path)
