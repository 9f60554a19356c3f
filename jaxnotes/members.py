"""A population's members: their settings, the checks they pass, and their traced parts.

A :class:`Member` is one run of a population (``jaxnotes.population``): a seed, rates and
training / evaluation subsets. Here are what turns members into one program's inputs: the checks
(with the one table of value rules), the traced per-member settings (``hyper``: rates, total
steps, dropout), each member's optimizer as a function of them, and each member's preprocessing
(its own training statistics for "standardize").
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections.abc import Callable, Sequence

import numpy as np
import optax

from jaxnotes import optim
from jaxnotes.assembly import config_preprocessing
from jaxnotes.config import TrainConfig, check_value

HYPER = ("learning_rate", "weight_decay", "momentum", "dropout")


@dataclasses.dataclass(frozen=True, eq=False)
class Member:
    """One member's settings; None takes the config's value (dropout: the model's own).

    train_indices: the member's training examples, indices into ``train_data`` (None: all).
    eval_indices: its evaluation examples, indices into ``eval_data`` (None: all).
    """

    seed: int = 0
    learning_rate: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    dropout: float | None = None
    train_indices: np.ndarray | None = None
    eval_indices: np.ndarray | None = None

    def settings(self, config: TrainConfig) -> dict[str, float | None]:
        """The member's effective rates (the optimizer's rules, e.g. "momentum" means 0.9)."""
        pick = lambda mine, default: default if mine is None else mine
        momentum = pick(self.momentum, config.momentum)
        return {
            "learning_rate": pick(self.learning_rate, config.learning_rate),
            "weight_decay": pick(self.weight_decay, config.weight_decay),
            "momentum": optim.effective_momentum(config.optimizer, momentum),
            "dropout": self.dropout,
        }

    def describe(self, config: TrainConfig) -> dict:
        """JSON-able: seed, the rates, and the sizes of the subsets."""
        row = {"seed": self.seed, **self.settings(config)}
        for name in ("train_indices", "eval_indices"):
            value = getattr(self, name)
            row[name.replace("indices", "examples")] = None if value is None else len(value)
        return row


# --- checks --------------------------------------------------------------------------------------


def check_members(members: Sequence[Member], config: TrainConfig, train_data, eval_data) -> None:
    """ValueError/TypeError naming the first member (or data) no population can train."""
    if not members:
        raise ValueError("a population needs at least one member")
    for name, dataset in (("train_data", train_data), ("eval_data", eval_data)):
        check_finite(name, dataset)
    for i, member in enumerate(members):
        if not isinstance(member, Member):
            raise TypeError(f"member {i} must be a jaxnotes.population.Member, got {member!r}")
        try:
            for name, value in {**member.settings(config), "seed": member.seed}.items():
                if value is not None:
                    check_value(name, value)
        except ValueError as error:
            raise ValueError(f"member {i}: {error}") from None
        for name, dataset in (("train_indices", train_data), ("eval_indices", eval_data)):
            check_indices(i, name, getattr(member, name), dataset)
        n = len(train_data) if member.train_indices is None else len(member.train_indices)
        if n < config.batch_size:
            raise ValueError(
                f"member {i} trains on {n} examples, fewer than one batch of {config.batch_size}"
            )


def check_finite(name: str, dataset) -> None:
    """A population does not stop at a NaN (a diverged member is a result): NaN or inf in the
    data would make every member diverge, so it is refused up front, by name."""
    images = np.asarray(dataset.images)
    if np.issubdtype(images.dtype, np.floating):
        bad = ~np.isfinite(images)
        if bad.any():
            first = int(np.argwhere(bad)[0][0])
            raise ValueError(
                f"{name} holds {int(bad.sum())} non-finite pixel value(s) (NaN or inf; the first "
                f"in example {first}); clean the data before training"
            )


def check_indices(i: int, name: str, idx, dataset) -> None:
    if idx is None:
        return
    idx = np.asarray(idx)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"member {i}: {name} must be a non-empty 1-D integer array")
    if idx.min() < 0 or idx.max() >= len(dataset):
        raise ValueError(
            f"member {i}: {name} go from {idx.min()} to {idx.max()}, outside the data set's "
            f"0..{len(dataset) - 1}"
        )


def dropout_field(module) -> str:
    fields = getattr(module, "__dataclass_fields__", {})
    for name in ("dropout", "aux_dropout"):
        if name in fields:
            return name
    raise ValueError(
        f"members set a dropout rate but {type(module).__name__} has no 'dropout' field to set "
        "(zoo models: mlp, alexnet, vgg*, nin, googlenet's aux heads)"
    )


def hash_indices(indices: np.ndarray) -> str:
    """A short fingerprint of an index array (a resumed population must train the same folds)."""
    return hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()[:16]


# --- the compiled pieces -------------------------------------------------------------------------


TRACED_RATES = ("learning_rate", "weight_decay", "momentum")  # what a member's optimizer varies


def tx_factory(config: TrainConfig, members: Sequence[Member], make_tx=None) -> Callable:
    """hyper -> the member's optax chain: the config's optimizer with traced rates, or the
    user's ``make_tx(**rates)`` (e.g. ``optax.inject_hyperparams(optax.adamw)``) called with the
    rates it takes (warm-up and cosine apply to ``learning_rate``; clipping wraps either)."""
    rates = [m.settings(config) for m in members]
    with_momentum = config.optimizer != "adam" and any(r["momentum"] > 0 for r in rates)
    with_decay = any(r["weight_decay"] > 0 for r in rates)
    taken = rates_taken(make_tx, members) if make_tx is not None else ()

    def tx_for(hyper: dict):
        learning_rate = optim.learning_rate_schedule(
            hyper["learning_rate"], hyper["total_steps"], config.schedule, config.warmup_steps
        )
        if make_tx is not None:
            chosen = {"learning_rate": learning_rate, **{n: hyper[n] for n in taken[1:]}}
            tx = make_tx(**chosen)
        else:
            tx = optim.chain(
                config.optimizer, learning_rate, hyper["momentum"], hyper["weight_decay"],
                config.decoupled, with_momentum=with_momentum, with_decay=with_decay,
            )  # fmt: skip
        return optim.with_policies(tx, config.clip_norm)

    return tx_for


def rates_taken(make_tx, members: Sequence[Member]) -> tuple[str, ...]:
    """The rates ``make_tx`` takes (learning_rate first); a member setting another: an error."""

    if not callable(make_tx) or isinstance(make_tx, optax.GradientTransformation):
        raise TypeError(
            "a population's tx is a factory of the members' rates, e.g. "
            f"optax.inject_hyperparams(optax.adamw), not {make_tx!r:.60}"
        )
    accepted = inspect.signature(make_tx).parameters
    if "learning_rate" not in accepted:
        raise ValueError("a population's tx factory must take learning_rate")
    for i, member in enumerate(members):
        for name in TRACED_RATES[1:]:
            if getattr(member, name) is not None and name not in accepted:
                raise ValueError(
                    f"member {i} sets {name}, which the tx factory does not take "
                    f"(it takes {', '.join(accepted)})"
                )
    return tuple(n for n in TRACED_RATES if n in accepted)


def check_population_config(config: TrainConfig) -> None:
    """What is ``fit``'s alone: a population has no validation split, callbacks or fp16."""
    alone = {
        "accumulate": config.accumulate > 1, "ema_decay": config.ema_decay > 0,
        "precision='fp16'": config.precision == "fp16",
        "validation_fraction": config.validation_fraction > 0,
        "early_stopping": config.early_stopping > 0, "keep_best": config.keep_best > 0,
        "tensorboard": config.tensorboard,
    }  # fmt: skip
    found = [name for name, on in alone.items() if on]
    if found:
        raise ValueError(
            f"{', '.join(found)}: a population (K-fold, search) does not take these; its "
            "members are scored on their own held-out parts (use fit for these policies)"
        )


def traced_settings(config, members: Sequence[Member], module, steps_per_member: np.ndarray):
    """The members' traced settings, one float32 array per name in HYPER (plus each member's
    total steps), and the module field the dropout rate goes into (None: not traced)."""
    rates = [m.settings(config) for m in members]
    traced_dropout = any(r["dropout"] is not None for r in rates)
    field = dropout_field(module) if traced_dropout else None
    default_rate = getattr(module, field, 0.0) if field else 0.0
    hyper = {
        name: np.array(
            [r[name] if r[name] is not None else default_rate for r in rates], np.float32
        )
        for name in HYPER
    }
    hyper["total_steps"] = (config.epochs * steps_per_member).astype(np.int32)
    return hyper, field


def member_preprocessing(config: TrainConfig, train_data, subsets) -> list:
    """Each member's ``Preprocessing``: "standardize" statistics of its own training subset."""
    from jaxnotes import data as jdata

    if config.normalization != "standardize":
        return [config_preprocessing(config, train_data)] * len(subsets)
    out = []
    for subset in subsets:
        part = jdata.from_arrays(train_data.images[subset], train_data.labels[subset])
        out.append(config_preprocessing(config, part))
    return out


def traced_preprocess(preprocessing: list, hyper: dict) -> Callable:
    """hyper_m -> the member's preprocessing function (its statistics ride in ``hyper``)."""
    first = preprocessing[0]
    if first.normalization != "standardize":
        return lambda hyper_m: first.function()
    hyper["mean"] = np.array([p.mean for p in preprocessing], np.float32)
    hyper["std"] = np.array([p.std for p in preprocessing], np.float32)
    from jaxnotes.data import make_preprocess

    def preprocess(hyper_m):
        scale = make_preprocess(first.resize, "scale")
        return lambda images: (scale(images) - hyper_m["mean"]) / hyper_m["std"]

    return preprocess
