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
import numpy as np
import optax

from jaxnotes import callbacks as hooks
from jaxnotes import guard, optim, parallel, profiling, runs
from jaxnotes import workdir as workdirs
from jaxnotes.assembly import (
    PRECISIONS,
    Built,
    build,
    check_monitor,
    config_preprocessing,
    input_shape,
    model_label,
    num_classes,
    resolve_model,
    schedule,
    split_validation,
)
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
    evaluation_weights,
    initial_state,
    jit_eval_step,
    jit_train_step,
    make_eval_step,
    make_multi_step,
    make_train_step,
    means,
    train_step,
)

# Re-exported: the engine's public names (DESIGN's API contract) stay importable from here.
__all__ = [
    "PRECISIONS", "BadKind", "Built", "CheckpointError", "Checkpoints", "FitResult",
    "TrainConfig", "TrainState", "TrainingDivergedError", "TrainingInterrupted", "build",
    "check_guard", "config_preprocessing", "create_train_state", "empty_eval_metrics",
    "empty_metrics", "eval_step", "evaluate", "fit", "initial_state", "input_shape",
    "jit_eval_step", "jit_train_step", "make_eval_step", "make_multi_step", "make_train_step",
    "model_label", "num_classes", "resolve_model", "schedule", "train_step",
]  # fmt: skip


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
    val_data: Any = None  # scored each epoch when given (the test split then only at the end)
    callbacks: list = dataclasses.field(default_factory=list)
    policy: dict = dataclasses.field(default_factory=dict)  # the user's tx, loss_fn, metrics

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

    def evaluate(self, state, dataset) -> dict:
        """Mean loss, accuracy and metrics on ``dataset``, with the evaluation weights (the
        moving average when the run keeps one)."""
        return evaluate(
            self.built.eval_step, evaluation_weights(state), dataset, self.config.eval_batch_size,
            self.placement, self.built.metric_names,
        )  # fmt: skip

    def end_epoch(self, session: runs.Session, epoch: int, host: dict) -> dict:
        """Evaluate (validation, or test), record the epoch (history, log line)."""
        record = {"epoch": epoch + 1, "step": session.position}
        record.update({"train_" + k: v for k, v in means(host).items()})
        with session.phases("evaluate"):
            if self.val_data is not None:
                record.update(_prefixed("val", self.evaluate(session.state, self.val_data)))
            if self.val_data is None or self.config.test_every_epoch:
                record.update(_prefixed("test", self.evaluate(session.state, self.test_data)))
        record["wall_s"] = time.perf_counter() - session.phases.started
        session.history.append(record)
        held_out = "val" if self.val_data is not None else "test"
        self.log(
            f"epoch {epoch + 1}/{self.config.epochs}  loss {record['train_loss']:.4f}  train acc "
            f"{record['train_acc']:.4f}  {held_out} acc {record[held_out + '_acc']:.4f}"
        )
        hooks.call(self.callbacks, "on_eval", dict(record))
        return dict(record)

    def checkpoint_metric(self, session: runs.Session, epoch: int) -> float | None:
        """The monitored value of an epoch-end checkpoint (kept among the best by it)."""
        if not self.config.keep_best or not session.history:
            return None
        record = session.history[-1]
        return record.get(self.config.monitored[0]) if record["epoch"] == epoch else None

    def metric_rows(self, history: list) -> list[dict]:
        return history

    def resume_facts(self) -> dict:
        """The preprocessing (with its statistics: a restored run predicts as it trained), and
        what the optimizer, loss and metrics are (a resume with others is refused by name)."""
        name = lambda fn: None if fn is None else f"{fn.__module__}.{fn.__qualname__}"
        metrics = self.policy.get("metrics") or {}
        images = self.train_data.images
        return {
            "preprocessing": self.built.preprocessing.to_json(),
            "num_classes": self.built.num_logits,
            "image": {"shape": list(images.shape[1:]), "dtype": str(images.dtype)},
            "optimizer": optim.describe(self.built.tx),
            "loss_fn": name(self.policy.get("loss_fn")),
            "metric_fns": {k: name(fn) for k, fn in sorted(metrics.items())},
        }


def _prefixed(prefix: str, scores: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in scores.items()}


def _set_up(config, model, data, log, phases, policy, callbacks) -> FitJob:
    """Every check and everything fixed for the run (before any file is touched)."""
    from jaxnotes import data as jdata

    callbacks = hooks.check(callbacks)
    for callback in callbacks:
        if callable(getattr(callback, "configure", None)):
            config = callback.configure(config)
    config.validate()
    config = dataclasses.replace(config, model=model_label(config, model))
    train_data, test_data, val_data = data
    with phases("data"):
        train_data = jdata.load(config.dataset, "train") if train_data is None else train_data
        test_data = jdata.load(config.dataset, "test") if test_data is None else test_data
        train_data, val_data = split_validation(config, train_data, val_data)
    with phases("build"):
        built = build(config, train_data, model=model, test_data=test_data, **policy)
        if val_data is not None:
            input_shape(config, train_data, val_data)  # the same size (or a resize)
    check_monitor(config, val_data is not None, built.metric_names)
    primary = built.placement.process_index == 0
    return FitJob(
        config, train_data, test_data, built, log if primary else (lambda line: None), val_data,
        [*hooks.from_config(config), *callbacks], policy,
    )  # fmt: skip


def _open(job: FitJob, workdir, resume: bool, overwrite: bool, phases) -> runs.Session:
    """The run's folder (locked) and the initial state, or the latest intact checkpoint's."""
    built, config = job.built, job.config
    if job.primary:  # overlapping the initial state's compilation
        runs.import_in_background(writes=workdir is not None and not resume)
    state = create_train_state(
        built.fns, built.tx, built.input_shape, config.seed, ema=config.ema_decay > 0,
        loss_scaling=config.precision == "fp16",
    )  # fmt: skip
    folder = None
    if workdir is not None:
        best = (config.monitored[1], config.keep_best) if config.keep_best else None
        folder = runs.RunFolder.open(
            workdir, resume=resume, overwrite=overwrite, primary=job.primary,
            keep=config.keep_checkpoints, log=job.log, best=best,
        )  # fmt: skip
    try:
        return runs.start_session(job, state, folder, resume, phases)
    except BaseException:
        if folder is not None:
            folder.close(failing=True)
        raise


def _final_scores(job: FitJob, session: runs.Session) -> dict:
    """The summary's numbers: the last epoch's, and the test split's, scored once at the end
    when epochs were scored on a validation split (or taken from the last record)."""
    final = dict(session.history[-1]) if session.history else {}
    if job.val_data is not None and "test_acc" not in final:
        with session.phases("evaluate"):
            final.update(_prefixed("test", job.evaluate(session.state, job.test_data)))
    keys = [k for k in final if k.startswith(("train_", "val_", "test_"))]
    return {k: final[k] for k in keys}


def _outputs(job: FitJob, session: runs.Session, compiles) -> FitResult:
    """Draw the learning curves, make the summary (and write summary.json)."""
    config, built = job.config, job.built
    if session.folder is not None and session.history:
        from jaxnotes import plots

        with session.phases("plot"):
            session.folder.save_figure(
                "learning_curves.png",
                lambda path: plots.learning_curves(session.history, path, title=config.model),
            )
    step_fn = built.multi_step if config.steps_per_dispatch > 1 else built.train_step
    host = session.last_host if session.last_host is not None else job.fresh_metrics()
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "epochs": config.epochs,
        "epochs_run": len(session.history),
        **_final_scores(job, session),
        # null when no step ran after the last compile (a one-step run measures nothing)
        "examples_per_sec": runs.throughput(session),
        "wall_s": time.perf_counter() - session.phases.started,
        "steps": session.position,
        "optimizer_steps": session.position // config.accumulate,
        "timed_steps": session.timed_examples // config.batch_size,  # steps in examples_per_sec
        "skipped_steps": int(np.asarray(host["skipped"])),  # fp16: gradients not finite
        "stopped_early": session.stop_requested,
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
    hooks.call(job.callbacks, "on_train_end", summary)
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
    val_data=None,
    tx: optax.GradientTransformation | None = None,
    loss_fn: LossFn | None = None,
    metrics: Mapping[str, MetricFn] | None = None,
    callbacks=(),
    log: Callable[[str], None] = print,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train and evaluate ``config``; write metrics, plots and checkpoints to ``workdir``.

    Args:
      config: the experiment (its policies too: validation, early stopping, best checkpoints,
        EMA, warm-up, clipping, accumulation, fp16, TensorBoard; see ``TrainConfig``).
      workdir: where ``metrics.jsonl``, ``learning_curves.png``, ``summary.json`` and
        ``checkpoints/`` go; None writes nothing; ``jaxnotes.workdir.NewRun(base)`` a fresh
        ``base/TIMESTAMP``. Locked while the run uses it; only process 0 writes files.
      model: any ``flax.linen.Module`` (``model.apply(variables, x, train=bool, rngs={"dropout":
        key})`` returning logits or ``(logits, *aux_logits)``; ``batch_stats`` and other
        collections are trained and checkpointed) or ``flax.nnx.Module`` (``jaxnotes.modules``).
        None: the zoo's ``config.model``; with a module ``config.model`` is only a label.
      resume: continue from the newest intact checkpoint in ``workdir`` (everything, mid-epoch
        included). FileNotFoundError if none; ValueError naming what differs otherwise.
      overwrite: replace the run ``workdir`` holds, its files deleted only at this run's first
        write; without it (or ``resume``) such a folder raises ``workdir.WorkdirError``.
      train_data, test_data, val_data: ``jaxnotes.data.Dataset``s (train and test loaded from
        ``config.dataset`` if None). With ``val_data`` or ``config.validation_fraction`` each
        epoch is scored on the validation split (``val_*``), and the test split once at the end.
      tx: any ``optax.GradientTransformation`` (None: ``config.optimizer`` and its rates and
        schedule, then only labels).
      loss_fn: ``(outputs, labels) -> per-example losses`` (None: cross-entropy plus
        ``config.aux_weight`` x each auxiliary head's).
      metrics: name -> ``fn(logits, labels) -> per-example values``, summed on the device and
        reported per epoch as ``train_NAME``, ``val_NAME`` / ``test_NAME``.
      callbacks: ``jaxnotes.callbacks`` hooks (EarlyStopping, TensorBoard, EMA, ProfileSteps, or
        your own); log: the one-line-per-epoch report; on_epoch: each epoch's record.

    Raises:
      TypeError: ``model`` is not a Flax module, or ``tx`` not an optax transformation.
      ValueError: a setting, or the model against the data, is wrong (before anything runs).
      TrainingDivergedError: the loss became NaN/inf or diverged (nothing bad is saved).
      TrainingInterrupted: SIGINT/SIGTERM between two steps (a checkpoint was saved).
      CheckpointError: a checkpoint could not be written (disk full); earlier ones are intact.
    """
    phases = profiling.Phases()
    policy = {"tx": tx, "loss_fn": loss_fn, "metrics": metrics}
    if on_epoch is not None:
        callbacks = [*callbacks, _OnEpoch(on_epoch)]
    with profiling.CompileLog() as compiles:
        data = (train_data, test_data, val_data)
        job = _set_up(config, model, data, log, phases, policy, callbacks)
        return _run(job, workdir, resume, overwrite, phases, compiles)


class _OnEpoch(hooks.Callback):
    """``fit(on_epoch=fn)``: ``fn(record)`` after each epoch."""

    def __init__(self, fn: Callable[[dict], None]):
        self.fn, self.primary = fn, True

    def on_train_begin(self, run: hooks.RunInfo) -> None:
        self.primary = run.primary  # drawn and printed by process 0 only

    def on_epoch_end(self, record: dict) -> bool:
        if self.primary:
            self.fn(record)
        return False


def _run(job: FitJob, workdir, resume, overwrite, phases, compiles) -> FitResult:
    """Open the folder, train every epoch, write the outputs; the folder closed on any exit."""
    session, failing = None, True

    def epoch_end(record: dict) -> bool:
        return any(hooks.call(job.callbacks, "on_epoch_end", record))

    try:
        with phases("init"):
            session = _open(job, workdir, resume, overwrite, phases)
        info = hooks.RunInfo(job.config, session.folder and session.folder.path,
                             job.steps_per_epoch, job.primary)  # fmt: skip
        hooks.call(job.callbacks, "on_train_begin", info)  # info.primary: who writes
        session.on_step = lambda step, running: hooks.call(job.callbacks, "on_step", step, running)
        runs.train_epochs(job, session, epoch_end)
        result = _outputs(job, session, compiles)
        failing = False
        return result
    finally:
        if session is not None and session.folder is not None:
            session.folder.close(failing)
