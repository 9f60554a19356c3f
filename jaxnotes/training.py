"""The training engine's front door: ``fit`` a model, with everything assembled from a config.

How a run flows (``fit``): set-up (``build``: the model, any linen or NNX module, wrapped by
``jaxnotes.modules``; the optimizer, the loss, the metrics, the preprocessing; every check that
can fail, before a file is written) -> the run's lifecycle (``jaxnotes.runs``: folder, resume,
epochs of jitted steps from ``jaxnotes.steps``, checkpoints, interrupts) with this module's
:class:`FitJob` saying what an epoch's batches, evaluation and record are -> outputs (the
learning-curve plot, the summary).

Why it is built this way (the d2l JAX code's known weaknesses, each avoided here):

- The whole step is jitted and the state donated, so XLA updates parameters in place. The state
  carries the module's other collections (BatchNorm's ``batch_stats``) beside the parameters.
- Dropout keys are ``fold_in(key, step)``: a fresh key every step, the same for step s however
  the steps are grouped, resumed or spread over devices.
- Examples, not batches, are shuffled, by a permutation that depends on (seed, epoch) only, so a
  resumed run sees exactly the batches the uninterrupted one would have.
- Every training batch has the same shape (the remainder is dropped) and evaluation pads its last
  batch and masks the padding out, so the step compiles once.
- Weight decay skips biases (``jaxnotes.optim``).
- The non-finite guard lives inside the step (``jaxnotes.steps``): a bad state is never saved.

No zoo module is imported at import time: a model name is looked up at the edge.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnotes import guard, modules, optim, parallel, profiling, runs
from jaxnotes import workdir as workdirs
from jaxnotes.checkpoints import CheckpointError, Checkpoints
from jaxnotes.config import TrainConfig
from jaxnotes.guard import TrainingDivergedError, TrainingInterrupted, check_guard
from jaxnotes.steps import (
    BadKind,
    LossFn,
    MetricFn,
    TrainState,
    create_train_state,
    empty_eval_metrics,
    empty_metrics,
    eval_step,
    initial_state,
    jit_eval_step,
    jit_train_step,
    make_eval_step,
    make_multi_step,
    make_train_step,
    train_step,
)

PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
# Re-exported: the engine's public names (DESIGN's API contract) stay importable from here.
__all__ = [
    "BadKind",
    "Built",
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
    "initial_state",
    "jit_eval_step",
    "jit_train_step",
    "make_eval_step",
    "make_multi_step",
    "make_train_step",
    "train_step",
]


@dataclasses.dataclass
class FitResult:
    """What ``fit`` returns: the final state, the per-epoch history, the summary, and what is
    needed to predict as the run did (:meth:`predict`)."""

    state: TrainState
    history: list[dict]
    summary: dict
    compilations: int | None  # times the train step compiled (1 in a healthy run; None: pmap)
    workdir: Path | None = None
    model: Any = None  # the module trained (``modules.Model``)
    preprocessing: Any = None  # the run's ``jaxnotes.data.Preprocessing``

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (n, classes) of ``images`` (n, H, W, C), with the run's own
        preprocessing (resize, normalization and its training statistics), in eval mode."""
        return runs.predict_probabilities(
            self.model, self.state, self.preprocessing, images, batch_size=batch_size
        )


# --- assembly ------------------------------------------------------------------------------------


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


def input_shape(config: TrainConfig, train_data, other_data=None) -> tuple[int, int, int]:
    """One example's shape as the model sees it (after ``resize``); both splits must agree."""
    height, width, channels = train_data.images.shape[1:]
    if other_data is not None and other_data.images.shape[1:] != train_data.images.shape[1:]:
        if config.resize is None or other_data.images.shape[3] != channels:
            raise ValueError(
                f"train images are {height}x{width}x{channels} but evaluation images are "
                f"{'x'.join(map(str, other_data.images.shape[1:]))}; give both splits the same "
                "size, or a resize (--resize N) so the model sees N x N from both"
            )
    side = config.resize
    return (side, side, channels) if side else (height, width, channels)


def num_classes(*datasets) -> int:
    """Logits the model needs: the data sets' class count, or more if a label is larger."""
    needed = 0
    for dataset in datasets:
        if dataset is None:
            continue
        needed = max(needed, int(dataset.num_classes))
        if len(dataset):
            needed = max(needed, int(np.max(dataset.labels)) + 1)
    return needed


def schedule(config: TrainConfig, total_steps: int) -> float | optax.Schedule:
    """The learning rate of ``config``: constant, or cosine decay to 0 over ``total_steps``."""
    if config.schedule == "cosine":
        return optim.cosine_decay(config.learning_rate, total_steps)
    return config.learning_rate


def config_preprocessing(config: TrainConfig, train_data):
    """The run's ``Preprocessing``: resize, then normalization, with "standardize" statistics
    of the training split only (no leak from the evaluation data)."""
    from jaxnotes.data import Preprocessing

    return Preprocessing.of(config.resize, config.normalization, train_data)


@dataclasses.dataclass
class Built:
    """Everything fixed for a run, made by :func:`build` before any file is touched."""

    model: Any  # the module
    fns: modules.Model
    tx: optax.GradientTransformation
    preprocessing: Any  # jaxnotes.data.Preprocessing
    preprocess: Callable[[jax.Array], jax.Array]
    input_shape: tuple[int, int, int]
    num_logits: int
    steps_per_epoch: int
    placement: Any
    train_step: Callable
    multi_step: Callable
    eval_step: Callable
    metric_names: tuple[str, ...] = ()


def build(
    config: TrainConfig, train_data, placement=None, *, model: Any = None, test_data=None,
    tx: optax.GradientTransformation | None = None, loss_fn: LossFn | None = None,
    metrics: Mapping[str, MetricFn] | None = None,
) -> Built:  # fmt: skip
    """Model, optimizer, preprocessing and the jitted steps for a config and its data.

    ``model``: any linen or NNX module (None: the zoo's ``config.model``). It is traced once on
    the data's input shape (no compute) so a shape it cannot take, outputs that are not logits
    or too few logits for the labels fail here, with the module's own message, before anything
    compiles. ``tx``: any optax transformation (None: ``config``'s optimizer and schedule).
    ``placement`` (``jaxnotes.parallel``) decides how the steps are compiled: one device, a mesh
    or pmap; by default it follows ``config.devices`` / ``config.parallel``.
    """
    from jaxnotes import data as jdata

    if placement is None:
        if config.devices > 1:
            parallel.check_devices(config.devices, config.batch_size)
        placement = parallel.make_placement(config.devices, config.parallel)
    steps_per_epoch = jdata.steps_per_epoch(len(train_data), config.batch_size)
    module = resolve_model(config, model, train_data.num_classes)
    shape = input_shape(config, train_data, test_data)
    fns = modules.as_model(module)
    num_logits = modules.check_outputs(fns, shape, num_classes(train_data, test_data))
    modules.check_memory(fns, shape, config.batch_size // placement.num_devices)
    if tx is None:
        tx = optim.make_optimizer(
            config.optimizer, schedule(config, config.epochs * steps_per_epoch),
            momentum=config.momentum, weight_decay=config.weight_decay, decoupled=config.decoupled,
        )  # fmt: skip
    preprocessing = config_preprocessing(config, train_data)
    preprocess, axis = preprocessing.function(), placement.axis_name
    policy = {"loss_fn": loss_fn, "metrics": metrics}
    step = make_train_step(
        fns, tx, preprocess, config.aux_weight, config.divergence_factor, axis_name=axis, **policy
    )
    return Built(
        model=module, fns=fns, tx=tx, preprocessing=preprocessing, preprocess=preprocess,
        input_shape=shape, num_logits=num_logits, steps_per_epoch=steps_per_epoch,
        placement=placement, train_step=placement.jit_train(step),
        multi_step=placement.jit_train(make_multi_step(step)),
        eval_step=placement.jit_eval(make_eval_step(fns, preprocess, axis_name=axis, **policy)),
        metric_names=tuple(metrics or ()),
    )  # fmt: skip


def evaluate(
    eval_step: Callable, weights: Any, dataset, batch_size: int, placement=None,
    metric_names: tuple[str, ...] = (),
) -> dict:  # fmt: skip
    """Mean loss, accuracy (and each metric) over every example of ``dataset``, one host pull.

    ``weights``: the ``TrainState`` (or bare parameters, for a model without other state).
    ``batch_size`` is rounded up to a multiple of the placement's device count (more padding,
    same result).
    """
    from jaxnotes import data as jdata
    from jaxnotes.steps import means

    placement = placement or parallel.SingleDevice()
    devices = placement.num_devices
    batch_size = -(-batch_size // devices) * devices
    batches = jdata.eval_batches(
        dataset, batch_size, num_shards=placement.process_count, shard_index=placement.process_index
    )
    metrics = placement.put(empty_eval_metrics(metric_names))
    for batch in placement.batches(batches):
        metrics = eval_step(weights, batch, metrics)
    return means(placement.host(metrics))


# --- the run -------------------------------------------------------------------------------------


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


@dataclasses.dataclass
class FitJob:
    """A single model's run, as the lifecycle (``jaxnotes.runs``) drives it."""

    config: TrainConfig
    train_data: Any
    test_data: Any
    built: Built
    log: Callable[[str], None]

    @property
    def placement(self):
        return self.built.placement

    @property
    def steps_per_epoch(self) -> int:
        return self.built.steps_per_epoch

    @property
    def primary(self) -> bool:
        return self.placement.process_index == 0

    def fresh_metrics(self) -> dict:
        return jax.device_get(empty_metrics(self.built.metric_names))

    def epoch_batches(self, epoch: int, start: int) -> Iterator[dict]:
        """This process's training batches of ``epoch`` from batch ``start`` on (grouped by
        ``steps_per_dispatch``)."""
        from jaxnotes.data import train_batches

        batches = train_batches(
            self.train_data, self.config.batch_size, seed=self.config.seed, epoch=epoch,
            start_batch=start, num_shards=self.placement.process_count,
            shard_index=self.placement.process_index,
        )  # fmt: skip
        return _group(batches, self.config.steps_per_dispatch)

    def dispatch(self, batch: dict) -> tuple[str, Callable, int, int]:
        # k > 1 runs on one device only, so a 2-D label array is k stacked batches there (under
        # pmap a single batch is (devices, B / devices)).
        if self.config.steps_per_dispatch > 1 and batch["label"].ndim == 2:
            k = batch["label"].shape[0]
            return "multi_step", self.built.multi_step, k, k * self.config.batch_size
        return "train_step", self.built.train_step, 1, self.config.batch_size

    def check(self, host: dict, last_checkpoint: str | None) -> None:
        guard.check_guard(host, last_checkpoint, self.config.divergence_factor, self._diagnose)

    def _diagnose(self, step: int) -> list[str]:
        """The guard's causes: the bad step's own batch, then the optimizer."""
        from jaxnotes.data import train_batches

        epoch, index = divmod(step, self.steps_per_epoch)
        found = []
        if epoch < self.config.epochs:
            batches = train_batches(
                self.train_data, self.config.batch_size, seed=self.config.seed, epoch=epoch,
                start_batch=index, num_shards=self.placement.process_count,
                shard_index=self.placement.process_index,
            )  # fmt: skip
            batch = next(iter(batches), None)
            if batch is not None:
                found += guard.batch_causes(batch, self.built.num_logits)
        config = self.config
        return found + guard.optimizer_causes(
            config.learning_rate, config.weight_decay, config.decoupled
        )

    def end_epoch(self, session: runs.Session, epoch: int, host: dict) -> dict:
        """Evaluate, record the epoch (history, log line)."""
        train = {"train_" + k: v for k, v in _means(host).items()}
        with session.phases("evaluate"):
            test = evaluate(
                self.built.eval_step, session.state, self.test_data, self.config.eval_batch_size,
                self.placement, self.built.metric_names,
            )  # fmt: skip
        record = {"epoch": epoch + 1, "step": session.position, **train}
        record.update({"test_" + k: v for k, v in test.items()})
        record["wall_s"] = time.perf_counter() - session.phases.started
        session.history.append(record)
        self.log(
            f"epoch {epoch + 1}/{self.config.epochs}  loss {record['train_loss']:.4f}  train acc "
            f"{record['train_acc']:.4f}  test acc {record['test_acc']:.4f}"
        )
        return dict(record)

    def metric_rows(self, history: list) -> list[dict]:
        return history

    def resume_facts(self) -> dict:
        # The preprocessing (with its training statistics): a restored run predicts as it trained.
        return {"preprocessing": self.built.preprocessing.to_json()}


def _means(host: dict) -> dict:
    from jaxnotes.steps import means

    return means(host)


def _set_up(config, model, train_data, test_data, log, phases, policy) -> FitJob:
    from jaxnotes import data as jdata

    config.validate()
    config = dataclasses.replace(config, model=model_label(config, model))
    with phases("data"):
        if train_data is None:
            train_data = jdata.load(config.dataset, "train")
        if test_data is None:
            test_data = jdata.load(config.dataset, "test")
    with phases("build"):
        built = build(config, train_data, model=model, test_data=test_data, **policy)
    primary = built.placement.process_index == 0
    return FitJob(config, train_data, test_data, built, log if primary else (lambda line: None))


def _open(job: FitJob, workdir, resume: bool, overwrite: bool, phases) -> runs.Session:
    """The run's folder (locked) and the initial state, or the latest intact checkpoint's."""
    built, config = job.built, job.config
    state = create_train_state(built.fns, built.tx, built.input_shape, config.seed)
    folder = None
    if workdir is not None:
        folder = runs.RunFolder.open(
            workdir, resume=resume, overwrite=overwrite, primary=job.primary,
            keep=config.keep_checkpoints, log=job.log,
        )  # fmt: skip
        if job.primary and not resume:
            runs.import_in_background()  # orbax and matplotlib, needed only later
    try:
        return runs.start_session(job, state, folder, resume, phases)
    except BaseException:
        if folder is not None:
            folder.close(failing=True)
        raise


def _outputs(job: FitJob, session: runs.Session, compiles) -> FitResult:
    """Draw the learning curves, make the summary (and write summary.json)."""
    config, built = job.config, job.built
    if session.folder is not None and session.history:
        from jaxnotes import plots

        with session.phases("plot"):
            session.folder.prepare_to_write()
            session.folder.save_figure(
                "learning_curves.png",
                lambda path: plots.learning_curves(session.history, path, title=config.model),
            )
    final = session.history[-1] if session.history else {}
    step_fn = built.multi_step if config.steps_per_dispatch > 1 else built.train_step
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "epochs": config.epochs,
        **{k: final.get(k) for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
        # null when no step ran after the last compile (a one-step run measures nothing)
        "examples_per_sec": runs.throughput(session),
        "wall_s": time.perf_counter() - session.phases.started,
        "steps": session.position,
        "timed_steps": session.timed_examples // config.batch_size,  # steps in examples_per_sec
        "precision": config.precision,
        "devices": job.placement.num_devices,
        "processes": job.placement.process_count,
        # jit's count of compiled variants of the step (pmap exposes none)
        "compilations": getattr(step_fn, "_cache_size", lambda: None)(),
        # every XLA program this run compiled (init, train, eval, anything eager), and where
        # the wall time went (see jaxnotes.profiling)
        "compiled_programs": compiles.count,
        "profile": {"phases": session.phases.report(), "compiles": compiles.report()},
        "preprocessing": built.preprocessing.to_json(),
    }
    runs.finish(job, session, summary)
    state = job.placement.unplace(session.state)
    folder = session.folder.path if session.folder is not None else None
    return FitResult(
        state, session.history, summary, summary["compilations"], folder, built.fns,
        built.preprocessing,
    )  # fmt: skip


def fit(
    config: TrainConfig,
    workdir: str | os.PathLike | workdirs.NewRun | None = None,
    *,
    model: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    train_data=None,
    test_data=None,
    tx: optax.GradientTransformation | None = None,
    loss_fn: LossFn | None = None,
    metrics: Mapping[str, MetricFn] | None = None,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train and evaluate ``config``; write metrics, plots and checkpoints to ``workdir``.

    Args:
      config: the experiment.
      workdir: where ``metrics.jsonl``, ``learning_curves.png``, ``summary.json`` and
        ``checkpoints/`` go; None writes nothing (no checkpoints, no resume);
        ``jaxnotes.workdir.NewRun(base)`` a fresh ``base/TIMESTAMP``. Locked while the run uses
        it. With several processes only process 0 writes logs and files.
      model: any ``flax.linen.Module`` (called as ``model.apply(variables, x, train=bool,
        rngs={"dropout": key})``, returning logits or ``(logits, *aux_logits)``; collections
        such as ``batch_stats`` are trained, checkpointed and restored) or ``flax.nnx.Module``
        (see ``jaxnotes.modules``). None: the zoo's model named ``config.model``; with a module,
        ``config.model`` is only the run's label (default: the class name).
      resume: continue from the newest intact checkpoint in ``workdir`` (everything, mid-epoch
        included: see ``jaxnotes.runs``). FileNotFoundError if none; ValueError if its settings
        or parameter tree differ.
      overwrite: replace the run ``workdir`` holds; its files are deleted only when this run
        first writes (after every check passed). Without it (or ``resume``) a folder holding a
        run raises ``jaxnotes.workdir.WorkdirError``.
      train_data, test_data: ``jaxnotes.data.Dataset``s; loaded from ``config.dataset`` if None.
      tx: any ``optax.GradientTransformation`` (None: ``config.optimizer`` with its rates and
        schedule; with ``tx`` those fields are only labels).
      loss_fn: ``(outputs, labels) -> per-example losses`` (None: cross-entropy plus
        ``config.aux_weight`` x each auxiliary head's).
      metrics: name -> ``fn(logits, labels) -> per-example values``, summed on the device and
        reported per epoch as ``train_NAME`` and ``test_NAME``.
      log: where the one-line-per-epoch report goes.
      on_epoch: called with each epoch's record (epoch, train_loss, train_acc, test_loss,
        test_acc, ...) as it is made, e.g. to draw live curves in a notebook.

    Raises:
      TypeError: ``model`` is not a Flax module.
      ValueError: a setting, or the model against the data (input shape, logits, memory), is
        wrong; raised before anything is compiled or written.
      TrainingDivergedError: the loss became NaN/inf or diverged (nothing bad is saved).
      TrainingInterrupted: SIGINT/SIGTERM between two steps (a checkpoint was saved).
      CheckpointError: a checkpoint could not be written (disk full); earlier ones are intact.
    """
    phases = profiling.Phases()
    policy = {"tx": tx, "loss_fn": loss_fn, "metrics": metrics}
    with profiling.CompileLog() as compiles:
        job = _set_up(config, model, train_data, test_data, log, phases, policy)
        return _run(job, workdir, resume, overwrite, on_epoch, phases, compiles)


def _run(job: FitJob, workdir, resume, overwrite, on_epoch, phases, compiles) -> FitResult:
    """Open the folder, train every epoch, write the outputs; the folder closed on any exit."""
    session, failing = None, True

    def epoch_end(record: dict) -> bool:
        if on_epoch is not None:
            on_epoch(record)
        return False

    try:
        with phases("init"):
            session = _open(job, workdir, resume, overwrite, phases)
        runs.train_epochs(job, session, epoch_end)
        result = _outputs(job, session, compiles)
        failing = False
        return result
    finally:
        if session is not None and session.folder is not None:
            session.folder.close(failing)
