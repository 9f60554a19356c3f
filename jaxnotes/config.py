"""One experiment's settings (``TrainConfig``) and the rules every value must meet.

``validate`` checks every field's type and range before anything is loaded, compiled or written,
and names the field and the range in its message (the runner turns it into exit code 2).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
MODES = ("min", "max")
OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "cosine")
NORMALIZATIONS = ("scale", "standardize", "imagenet")
PARALLEL = ("sharded", "pmap")
# JAX keys take 32 bits of the seed without x64: larger seeds would repeat smaller ones.
MAX_SEED = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One experiment. ``fit(TrainConfig(model="lenet", dataset="digits"))`` runs it.

    ``model``: a zoo name; with ``fit(config, model=module)`` only the run's label (None: the
    module's class name, or "lenet" when no module is given).
    """

    model: str | None = None
    dataset: str = "digits"
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 128  # measured fastest on CPU for the book's small models
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
    keep_checkpoints: int = 2  # newest checkpoints kept (>= 1)
    divergence_factor: float = 1e3
    aux_weight: float = 0.3
    progress: bool = True
    devices: int = 1  # data-parallel devices (jaxnotes.parallel); results do not depend on it
    parallel: str = "sharded"  # with devices > 1: "sharded" (mesh + jit) or "pmap"
    steps_per_dispatch: int = 1  # > 1: scan that many steps per jit call (one device only)
    # --- policies (README "Beyond the defaults"); the defaults change nothing ---
    validation_fraction: float = 0.0  # > 0: a stratified part of train scores each epoch
    test_every_epoch: bool = False  # with validation: also score the test split each epoch
    warmup_steps: int = 0  # linear warm-up of the learning rate over this many updates
    clip_norm: float = 0.0  # > 0: clip the gradients' global norm to this
    accumulate: int = 1  # > 1: one update per this many batches (optax.MultiSteps)
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights
    early_stopping: int = 0  # > 0: stop after this many epochs without improvement
    monitor: str | None = None  # what early stopping / keep_best watch (None: val_loss or
    mode: str | None = None  # test_loss); mode "min"/"max" (None: from the name)
    min_delta: float = 0.0  # an improvement must beat the best by more than this
    keep_best: int = 0  # > 0: also keep this many best checkpoints by ``monitor``
    tensorboard: bool = False  # TensorBoard event files in WORKDIR/tensorboard

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value no run can use."""
        for ok, message in _rules(self):
            if not ok:
                raise ValueError(message)

    # Fields that change what a run computes: a resumed run must match them (``epochs`` too
    # when the schedule depends on the run's length).
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
        "validation_fraction",
        "warmup_steps",
        "clip_norm",
        "accumulate",
        "ema_decay",
    )

    @property
    def monitored(self) -> tuple[str, str]:
        """(metric, mode) early stopping and keep_best watch."""
        name = self.monitor or ("val_loss" if self.validation_fraction else "test_loss")
        mode = self.mode or ("max" if name.endswith(("acc", "accuracy")) else "min")
        return name, mode


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class Range:
    """A value rule: ``low <(=) value <(=) high``, finite, optionally an integer."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    text: str = ""  # how messages state the rule

    def holds(self, value: Any) -> Any:
        """Whether ``value`` (a number or a NumPy array, elementwise) meets the rule."""
        import numpy as np

        v = np.asarray(value, dtype=np.float64) if not _is_int(value) else value
        ok = np.isfinite(v) if not _is_int(v) else True
        ok = ok & ((v > self.low) if self.low_open else (v >= self.low))
        ok = ok & ((v < self.high) if self.high_open else (v <= self.high))
        if self.integer:
            ok = ok & (np.floor(v) == v)
        return ok


# The one table of the hyper-parameters' ranges: TrainConfig, population members, the search
# space (sampled values and the runner's --search-space) and the optimizer all check with it.
VALUE_RULES: dict[str, Range] = {
    "learning_rate": Range(0.0, low_open=True, text="a finite number > 0"),
    "weight_decay": Range(0.0, text="a finite number >= 0"),
    "momentum": Range(0.0, 1.0, high_open=True, text="in [0, 1)"),
    "dropout": Range(0.0, 1.0, high_open=True, text="in [0, 1)"),
    "seed": Range(0, MAX_SEED, integer=True, text="an integer in [0, 2**32)"),
    "width": Range(1, integer=True, text="a positive integer"),
}


def value_error(name: str, value: Any) -> str | None:
    """The message for ``value`` breaking ``VALUE_RULES[name]`` (None: it is fine)."""
    rule = VALUE_RULES[name]
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not number or (rule.integer and not _is_int(value)) or not bool(rule.holds(value)):
        return f"{name} must be {rule.text}, got {value!r}"
    return None


def check_value(name: str, value: Any) -> None:
    """Raise ValueError if ``value`` breaks the rule for ``name`` (see ``VALUE_RULES``)."""
    message = value_error(name, value)
    if message:
        raise ValueError(message)


def _int_at_least(config: TrainConfig, name: str, low: int) -> tuple[bool, str]:
    value = getattr(config, name)
    return _is_int(value) and value >= low, f"{name} must be >= {low} (an integer), got {value!r}"


def _value(config: TrainConfig, name: str) -> tuple[bool, str]:
    message = value_error(name, getattr(config, name))
    return message is None, message or ""


def _choice(config: TrainConfig, name: str, choices: tuple[str, ...]) -> tuple[bool, str]:
    value = getattr(config, name)
    return value in choices, f"{name} must be one of {', '.join(choices)}, got {value!r}"


def _rules(c: TrainConfig) -> list[tuple[bool, str]]:
    """(passes, message) for every rule, in the order they are reported."""
    return [
        (c.model is None or isinstance(c.model, str), f"model must be a name, got {c.model!r}"),
        (
            isinstance(c.dataset, str) and c.dataset != "",
            f"dataset must be a name, got {c.dataset!r}",
        ),
        _int_at_least(c, "epochs", 1),
        _int_at_least(c, "batch_size", 1),
        _int_at_least(c, "eval_batch_size", 1),
        _value(c, "learning_rate"),
        _choice(c, "optimizer", OPTIMIZERS),
        _value(c, "momentum"),
        _value(c, "weight_decay"),
        (isinstance(c.decoupled, bool), f"decoupled must be True or False, got {c.decoupled!r}"),
        _choice(c, "schedule", SCHEDULES),
        (isinstance(c.model_kwargs, dict), f"model_kwargs must be a dict, got {c.model_kwargs!r}"),
        (
            c.resize is None or (_is_int(c.resize) and c.resize >= 1),
            f"resize must be >= 1, got {c.resize!r}",
        ),
        _choice(c, "normalization", NORMALIZATIONS),
        _choice(c, "precision", PRECISIONS),
        _value(c, "seed"),
        _int_at_least(c, "log_every", 1),
        _int_at_least(c, "checkpoint_every", 0),
        _int_at_least(c, "checkpoint_every_steps", 0),
        _int_at_least(c, "keep_checkpoints", 1),
        (
            _is_number(c.divergence_factor) and c.divergence_factor > 1,
            f"divergence_factor must be a finite number > 1, got {c.divergence_factor!r}",
        ),
        (
            _is_number(c.aux_weight) and c.aux_weight >= 0,
            f"aux_weight must be a finite number >= 0, got {c.aux_weight!r}",
        ),
        _int_at_least(c, "devices", 1),
        _choice(c, "parallel", PARALLEL),
        _int_at_least(c, "steps_per_dispatch", 1),
        (
            c.steps_per_dispatch == 1 or c.devices == 1,
            "steps_per_dispatch > 1 runs on one device only",
        ),
        *_policy_rules(c),
    ]


def _fraction(c: TrainConfig, name: str) -> tuple[bool, str]:
    v = getattr(c, name)
    ok = _is_number(v) and (v == 0 or 0 < v < 1)
    return ok, f"{name} must be 0 (off) or in (0, 1), got {v!r}"


def _at_least(c: TrainConfig, name: str, low: float) -> tuple[bool, str]:
    v = getattr(c, name)
    return _is_number(v) and v >= low, f"{name} must be a finite number >= {low:g}, got {v!r}"


def _policy_rules(c: TrainConfig) -> list[tuple[bool, str]]:
    return [
        _fraction(c, "validation_fraction"),
        (isinstance(c.test_every_epoch, bool), "test_every_epoch must be True or False"),
        _int_at_least(c, "warmup_steps", 0),
        _at_least(c, "clip_norm", 0.0),
        _int_at_least(c, "accumulate", 1),
        _fraction(c, "ema_decay"),
        _int_at_least(c, "early_stopping", 0),
        (c.monitor is None or isinstance(c.monitor, str), f"monitor must be a metric name, got "
         f"{c.monitor!r}"),
        (c.mode is None or c.mode in MODES, f"mode must be one of min, max, got {c.mode!r}"),
        _at_least(c, "min_delta", 0.0),
        _int_at_least(c, "keep_best", 0),
        (isinstance(c.tensorboard, bool), f"tensorboard must be True or False, got "
         f"{c.tensorboard!r}"),
        (c.accumulate == 1 or c.steps_per_dispatch == 1, "accumulate and steps_per_dispatch "
         "cannot be combined"),
    ]  # fmt: skip
