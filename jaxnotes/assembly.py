"""Run assembly: everything fixed for a run, made from a config and its data before any file
is touched (``build`` -> :class:`Built`), and every check that can fail before the first step.

The model (a zoo name looked up here, at the edge, or any linen/NNX module), the optimizer
(``config``'s, or the user's ``tx`` with clipping and accumulation around it), the loss and the
metrics (the user's, checked on the model's traced outputs), the preprocessing (with the
training split's statistics), the validation split, and the jitted steps on a placement.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
import optax

from jaxnotes import modules, optim, parallel
from jaxnotes.config import TrainConfig
from jaxnotes.steps import LossFn, MetricFn, make_eval_step, make_multi_step, make_train_step

PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16}
RESERVED_METRICS = ("loss", "acc")  # every run reports these


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


def schedule(config: TrainConfig, total_updates: int) -> float | optax.Schedule:
    """The learning rate of ``config`` over ``total_updates`` optimizer updates."""
    return optim.learning_rate_schedule(
        config.learning_rate, total_updates, config.schedule, config.warmup_steps
    )


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
    the data's input shape (no compute) so a shape it cannot take, outputs that are not logits,
    too few logits for the labels, a loss or metric of the wrong shape fail here, with a message
    naming what is wrong, before anything compiles. ``tx``: any optax transformation (None:
    ``config``'s optimizer, schedule and warm-up); ``config.clip_norm`` / ``accumulate`` wrap
    either. ``placement`` (``jaxnotes.parallel``): one device, a mesh or pmap; by default it
    follows ``config.devices`` / ``config.parallel``.
    """
    from jaxnotes import data as jdata

    if placement is None:
        if config.devices > 1:
            parallel.check_devices(config.devices, config.batch_size)
        placement = parallel.make_placement(config.devices, config.parallel)
    steps_per_epoch = jdata.steps_per_epoch(len(train_data), config.batch_size)
    check_accumulation(config, steps_per_epoch)
    module = resolve_model(config, model, train_data.num_classes)
    shape = input_shape(config, train_data, test_data)
    fns = modules.as_model(module)
    num_logits = modules.check_outputs(fns, shape, num_classes(train_data, test_data))
    modules.check_memory(fns, shape, config.batch_size // placement.num_devices)
    check_precision(config, fns, shape)
    check_loss_and_metrics(fns, shape, loss_fn, metrics)
    tx = make_tx(config, steps_per_epoch, tx)
    preprocessing = config_preprocessing(config, train_data)
    preprocess, axis = preprocessing.function(), placement.axis_name
    policy = {"loss_fn": loss_fn, "metrics": metrics}
    step = make_train_step(
        fns, tx, preprocess, config.aux_weight, config.divergence_factor, axis_name=axis,
        ema_decay=config.ema_decay, **policy,
    )  # fmt: skip
    return Built(
        model=module, fns=fns, tx=tx, preprocessing=preprocessing, preprocess=preprocess,
        input_shape=shape, num_logits=num_logits, steps_per_epoch=steps_per_epoch,
        placement=placement, train_step=placement.jit_train(step),
        multi_step=placement.jit_train(make_multi_step(step)),
        eval_step=placement.jit_eval(make_eval_step(fns, preprocess, axis_name=axis, **policy)),
        metric_names=tuple(metrics or ()),
    )  # fmt: skip


def make_tx(config: TrainConfig, steps_per_epoch: int, tx=None) -> optax.GradientTransformation:
    """``config``'s optimizer, or the user's ``tx`` (checked), with clipping and accumulation."""
    if tx is None:
        return optim.config_optimizer(config, steps_per_epoch)
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(
            f"tx must be an optax.GradientTransformation (e.g. optax.adamw(1e-3)), got "
            f"{type(tx).__name__} {tx!r:.60}"
        )
    return optim.with_policies(tx, config.clip_norm, config.accumulate)


def check_accumulation(config: TrainConfig, steps_per_epoch: int) -> None:
    if steps_per_epoch % config.accumulate:
        raise ValueError(
            f"accumulate {config.accumulate} does not divide the epoch's {steps_per_epoch} "
            f"batches; choose a divisor of {steps_per_epoch} (or another batch size)"
        )


def check_precision(config: TrainConfig, fns: modules.Model, shape: tuple) -> None:
    """A half precision must reach the model's matrix products: a model that computes in
    float32 whatever it is told would train slower (fp16: scaled for nothing) and say otherwise."""
    if config.precision == "fp32":
        return
    inspection = modules.trace_shapes(fns, shape)
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda p, s, v: fns.apply(p, s, v, False))(
        inspection.params, inspection.state, x
    )
    wanted = PRECISIONS[config.precision]
    heavy = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name in _PRODUCTS]
    if heavy and not any(v.aval.dtype == wanted for e in heavy for v in e.invars):
        raise ValueError(
            f"precision {config.precision!r}: {fns.label} computes its matrix products in "
            f"{heavy[0].invars[0].aval.dtype}, not {jnp.dtype(wanted).name} (it forces float32); "
            "use precision='fp32', or a module whose dtype field it uses"
        )


_PRODUCTS = ("dot_general", "conv_general_dilated")


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax_core.jaxprs_in_params(eqn.params):
            yield from _equations(sub)


def check_loss_and_metrics(fns, shape, loss_fn, metrics) -> None:
    """A user's loss must give one value per example; metric names must be new."""
    outputs = modules.trace_shapes(fns, shape).outputs
    labels = jax.ShapeDtypeStruct((2,), jnp.int32)
    if loss_fn is not None:
        for mode in ("train", "eval"):
            got = jax.eval_shape(loss_fn, outputs[mode], labels)
            if getattr(got, "shape", None) != (2,):
                raise ValueError(
                    f"loss_fn must return per-example losses, shape (batch,): on a batch of 2 "
                    f"it returned {getattr(got, 'shape', got)} ({mode} mode)"
                )
    if metrics is None:
        return
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping name -> fn(logits, labels), got {metrics!r}")
    logits = jax.tree.leaves(outputs["eval"])[0]
    for name, fn in metrics.items():
        if not isinstance(name, str) or name in RESERVED_METRICS or "/" in name:
            raise ValueError(
                f"metric name {name!r} clashes with a built-in ({', '.join(RESERVED_METRICS)}) "
                "or is not a plain name; choose another"
            )
        got = jax.eval_shape(fn, logits, labels)
        if getattr(got, "shape", None) != (2,):
            raise ValueError(
                f"metric {name!r} must return one value per example, shape (batch,): on a batch "
                f"of 2 it returned {getattr(got, 'shape', got)}"
            )


def split_validation(config: TrainConfig, train_data, val_data):
    """(train, val): ``val_data`` as given, or a stratified ``validation_fraction`` of the
    training split (seeded by ``config.seed``), or (train, None)."""
    from jaxnotes import data as jdata

    if val_data is not None and config.validation_fraction:
        raise ValueError("give val_data or TrainConfig.validation_fraction, not both")
    if val_data is not None or not config.validation_fraction:
        return train_data, val_data
    fit_idx, val_idx = jdata.holdout_split(
        len(train_data), config.validation_fraction, config.seed, stratify=train_data.labels
    )
    return _subset(train_data, fit_idx), _subset(train_data, val_idx)


def _subset(dataset, idx: np.ndarray):
    return dataclasses.replace(dataset, images=dataset.images[idx], labels=dataset.labels[idx])


def check_monitor(config: TrainConfig, has_validation: bool, metric_names) -> None:
    """The metric early stopping / keep_best watch must be one the run reports each epoch."""
    if not (config.early_stopping or config.keep_best or config.monitor):
        return
    name, _ = config.monitored
    splits = ["train", "val" if has_validation else "test"]
    if has_validation and config.test_every_epoch:
        splits.append("test")
    known = [f"{s}_{m}" for s in splits for m in (*RESERVED_METRICS, *metric_names)]
    if name not in known:
        raise ValueError(
            f"monitor {name!r} is not a metric this run reports each epoch; choose one of "
            f"{', '.join(known)}"
        )
