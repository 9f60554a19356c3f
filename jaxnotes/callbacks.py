"""Hooks into a run, and the built-ins written on them: early stopping, TensorBoard, EMA, profiling.

A callback is any object with some of these methods (:class:`Callback` has them all, doing
nothing); ``fit(..., callbacks=[...])`` calls them on process 0, in order:

- ``configure(config) -> config``: before anything is built (``EMA`` sets ``ema_decay`` here);
- ``on_train_begin(run)``: a :class:`RunInfo` (config, workdir, steps per epoch);
- ``on_step(step, metrics)``: at each metrics pull (every ``log_every`` steps), with the host
  means so far this epoch (``loss``, ``acc``, ...): no extra device sync;
- ``on_eval(record)``: after each epoch's evaluation, the epoch's record;
- ``on_epoch_end(record) -> bool``: True ends the run cleanly after this epoch (its checkpoint,
  metrics, plot and summary are written);
- ``on_train_end(summary)``: the summary, before ``fit`` returns.

The engine's own policies (``TrainConfig.early_stopping``, ``tensorboard``) are these same
callbacks, added by ``fit``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jaxnotes.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a callback learns about the run at its start."""

    config: TrainConfig
    workdir: Path | None
    steps_per_epoch: int
    primary: bool = True


class Callback:
    """The hook protocol; subclass and override what you need (see the module docstring)."""

    def configure(self, config: TrainConfig) -> TrainConfig:
        return config

    def on_train_begin(self, run: RunInfo) -> None:
        pass

    def on_step(self, step: int, metrics: dict) -> None:
        pass

    def on_eval(self, record: dict) -> None:
        pass

    def on_epoch_end(self, record: dict) -> bool:
        return False

    def on_train_end(self, summary: dict) -> None:
        pass


HOOKS = ("configure", "on_train_begin", "on_step", "on_eval", "on_epoch_end", "on_train_end")


def check(callbacks) -> list:
    """The callbacks as a list; TypeError for an object with none of the hooks."""
    out = list(callbacks or ())
    for callback in out:
        if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
            raise TypeError(
                f"{callback!r:.60} is not a callback: it has none of {', '.join(HOOKS)} (see "
                "jaxnotes.callbacks.Callback)"
            )
    return out


def call(callbacks, hook: str, *args) -> list:
    """Call ``hook`` on every callback that has it; the results in order."""
    return [getattr(c, hook)(*args) for c in callbacks if callable(getattr(c, hook, None))]


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs in a row without improving ``monitor`` by ``min_delta``.

    ``monitor`` (default ``config.monitored``: "val_loss", or "test_loss" without validation)
    and ``mode`` ("min"/"max"; default from the name: accuracies go up). Built on
    ``flax.training.early_stopping.EarlyStopping`` (minimising: a "max" metric is negated; its
    count starts at 0, hence ``patience - 1``). ``stopped_epoch``: where it stopped (None: never).
    """

    def __init__(self, patience: int, monitor: str | None = None, mode: str | None = None,
                 min_delta: float = 0.0):  # fmt: skip
        from flax.training.early_stopping import EarlyStopping as FlaxEarlyStopping

        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        self.patience, self.monitor, self.mode, self.min_delta = patience, monitor, mode, min_delta
        self._state = FlaxEarlyStopping(min_delta=min_delta, patience=patience - 1)
        self.stopped_epoch: int | None = None

    def on_train_begin(self, run: RunInfo) -> None:
        name, mode = dataclasses.replace(
            run.config, monitor=self.monitor or run.config.monitor, mode=self.mode
        ).monitored
        self.monitor, self.mode = name, mode
        self._state = self._state.reset()

    def on_epoch_end(self, record: dict) -> bool:
        value = float(record[self.monitor])
        self._state = self._state.update(-value if self.mode == "max" else value)
        if self._state.should_stop and self.stopped_epoch is None:
            self.stopped_epoch = int(record["epoch"])
        return bool(self._state.should_stop)


class EMA(Callback):
    """Keep an exponential moving average of the weights, on the device, inside the step:
    ``ema = decay * ema + (1 - decay) * params`` after every update. Evaluation, the best
    checkpoint and prediction use the average (the same as ``TrainConfig(ema_decay=decay)``)."""

    def __init__(self, decay: float = 0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay!r}")
        self.decay = decay

    def configure(self, config: TrainConfig) -> TrainConfig:
        if config.ema_decay and config.ema_decay != self.decay:
            raise ValueError(
                f"EMA({self.decay}) and TrainConfig.ema_decay={config.ema_decay}: give one"
            )
        return dataclasses.replace(config, ema_decay=self.decay)


class TensorBoard(Callback):
    """TensorBoard event files (tensorboardX, no TensorFlow) in ``log_dir`` (default
    WORKDIR/tensorboard): the running training loss and accuracy at each metrics pull, every
    number of each epoch's record, the run's settings as hparams and the learning-curve figure
    at the end. Process 0 only. ``pip install tensorboardX`` (the extra ``jaxnotes[tensorboard]``);
    view with ``tensorboard --logdir WORKDIR``.

    tensorboardX is imported in a thread from the start (overlapping the step's compilation),
    without the PyTorch it would import when installed; the writer opens at first use.
    """

    def __init__(self, log_dir: str | Path | None = None):
        import importlib.util
        import threading

        if importlib.util.find_spec("tensorboardX") is None:
            raise ImportError(
                "TensorBoard logging needs tensorboardX: pip install tensorboardX (or the extra: "
                "pip install 'jaxnotes[tensorboard]')"
            )
        self.log_dir, self.folder, self._writer, self._history = log_dir, None, None, []
        self._import = threading.Thread(target=_import_tensorboardx, daemon=True)
        self._import.start()

    def on_train_begin(self, run: RunInfo) -> None:
        folder = self.log_dir or (run.workdir / "tensorboard" if run.workdir else None)
        self.folder = folder if run.primary else None
        self._config, self._workdir = run.config, run.workdir

    @property
    def writer(self):
        if self._writer is None and self.folder is not None:
            self._import.join()
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.folder))
        return self._writer

    def on_step(self, step: int, metrics: dict) -> None:
        if self.writer is not None:
            for name in ("loss", "acc"):
                self.writer.add_scalar(f"step/train_{name}", float(metrics[name]), step)

    def on_epoch_end(self, record: dict) -> bool:
        if self.writer is not None:
            self._history.append(record)
            for name, value in record.items():
                if name not in ("epoch", "step") and isinstance(value, int | float):
                    self.writer.add_scalar(f"epoch/{name}", float(value), int(record["epoch"]))
            self.writer.flush()
        return False

    def on_train_end(self, summary: dict) -> None:
        if self.writer is None:
            return
        hparams = {k: v for k, v in dataclasses.asdict(self._config).items() if _scalar(v)}
        finals = {f"final/{k}": float(v) for k, v in summary.items()
                  if k.startswith(("train_", "val_", "test_")) and _number(v)}  # fmt: skip
        self.writer.add_hparams(hparams, finals, name="hparams")
        self._add_curves(summary)
        self.writer.close()
        self._writer, self.folder = None, None

    def _add_curves(self, summary: dict) -> None:
        """The run's learning-curve figure: its saved PNG, or drawn when it saved none."""
        saved = self._workdir / "learning_curves.png" if self._workdir else None
        if saved is not None and saved.exists():
            from matplotlib.image import imread

            image = imread(saved)[..., :3]
            self.writer.add_image("learning_curves", image, dataformats="HWC")
        elif self._history:
            from jaxnotes import plots

            figure = plots.learning_curves(self._history, None, title=summary.get("model"))
            self.writer.add_figure("learning_curves", figure, close=True)


def _import_tensorboardx() -> None:
    """Import tensorboardX without PyTorch: it imports torch when installed (0.9 s measured
    here) only to convert torch tensors, and we log floats and arrays. A later ``import torch``
    works as usual; if torch is already imported, nothing is held back."""
    import sys

    held = "torch" not in sys.modules
    if held:
        sys.modules["torch"] = None  # `import torch` inside tensorboardX: ImportError, handled
    try:
        import tensorboardX  # noqa: F401
    except Exception:  # noqa: BLE001 -- the writer's own import reports it
        pass
    finally:
        if held and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float | str | bool)


class ProfileSteps(Callback):
    """A ``jax.profiler`` trace of the steps from ``start`` to ``stop`` into WORKDIR/profile
    (or ``log_dir``), for TensorBoard's profile plugin or Perfetto. The trace starts and stops
    at the metrics pulls (every ``log_every`` steps) on or after those steps."""

    def __init__(self, start: int, stop: int, log_dir: str | Path | None = None):
        if not 0 <= start < stop:
            raise ValueError(f"ProfileSteps needs 0 <= start < stop, got {start}, {stop}")
        self.start, self.stop, self.log_dir = start, stop, log_dir
        self.tracing, self.folder = False, None

    def on_train_begin(self, run: RunInfo) -> None:
        folder = self.log_dir or (run.workdir / "profile" if run.workdir else None)
        self.folder = str(folder) if folder is not None and run.primary else None

    def on_step(self, step: int, metrics: dict) -> None:
        import jax

        if self.folder is None:
            return
        if not self.tracing and self.start <= step < self.stop:
            jax.profiler.start_trace(self.folder)
            self.tracing = True
        elif self.tracing and step >= self.stop:
            jax.profiler.stop_trace()
            self.tracing = False

    def on_train_end(self, summary: dict) -> None:
        if self.tracing:
            import jax

            jax.profiler.stop_trace()
            self.tracing = False


def from_config(config: TrainConfig) -> list:
    """The callbacks ``config`` asks for (early stopping, TensorBoard)."""
    out: list = []
    if config.early_stopping:
        out.append(EarlyStopping(config.early_stopping, config.monitor, config.mode,
                                 config.min_delta))  # fmt: skip
    if config.tensorboard:
        out.append(TensorBoard())
    return out
