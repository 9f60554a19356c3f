"""Any Flax module as the engine sees it: two pure functions of (params, model_state).

The engine (``jaxnotes.training``) trains a linen module and an NNX module through the same pair::

    init(key, x)                                   -> (params, model_state)
    apply(params, model_state, x, train, dropout_key) -> (outputs, new_model_state)

``params`` are what the optimizer updates; ``model_state`` holds every other variable collection
(linen's ``batch_stats`` or a counter; NNX's ``BatchStat`` and other non-``Param`` variables) as
plain nested dicts of arrays, so the state is a pytree that jit donates, a mesh replicates, vmap
stacks and orbax checkpoints like the parameters. In training the new ``model_state`` is what
the module wrote (BatchNorm's running averages); in evaluation it is returned unchanged.

linen: the module is called as ``module.apply(variables, x, train=bool, rngs={"dropout": key})``
and returns logits or ``(logits, *aux_logits)``; its collections other than ``params`` are
mutable in training only.

NNX (``flax.nnx.Module``, built eagerly with its own ``nnx.Rngs``): the functional API
(``nnx.split`` / ``nnx.merge``) turns the object into a graph definition plus states. Supported:
``nnx.Param`` leaves are trained, every other variable (``nnx.BatchStat``, custom ones) is
``model_state``; training mode via ``module.train()`` / ``module.eval()`` (``deterministic``,
``use_running_average``), or a ``train`` argument if its ``__call__`` takes one; dropout layers
built with ``rngs=`` draw from the engine's per-step key (``nnx.reseed``), so the seed of the run,
not the module's stream counter, decides the masks and a resumed run repeats them. The module's
weights are its own initial values (its ``nnx.Rngs`` made them); the run's seed sets the data order
and dropout keys. Not supported: dropout that takes ``rngs`` only at call time, and precision
switching (build the module in the dtype you want).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A module wrapped for the engine (see the module docstring for the two functions).

    kind: "linen" or "nnx". label: the class name, the run's default ``model`` label.
    Shape facts (see :func:`trace_shapes`) are traced once per input shape and kept.
    """

    module: Any
    kind: str
    label: str
    init: Callable[[jax.Array, jax.Array], tuple[Any, Any]]
    apply: Callable[..., tuple[Any, Any]]
    inspections: dict = dataclasses.field(default_factory=dict, repr=False)

    def keys_per_example(self, x: jax.ShapeDtypeStruct) -> bool:
        """Whether the engine should vmap ``apply`` over single examples of ``x`` to give each
        its own dropout key (see ``training.make_train_step``). True only for stateless linen
        modules that use dropout: BatchNorm needs the whole batch, and NNX dropout draws from
        one stream per call."""
        if self.kind != "linen":
            return False
        try:
            found = trace_shapes(self, tuple(x.shape[1:]), x.dtype)
        except Exception:  # noqa: BLE001 -- shape errors are reported by check_outputs
            return False
        return found.needs_dropout_key and not jax.tree.leaves(found.state)


def as_model(module: Any) -> Model:
    """Wrap a ``flax.linen.Module`` or ``flax.nnx.Module`` (a ``Model`` is returned as is).

    Raises TypeError, naming what was given, for anything else (a function, a class, a name).
    """
    if isinstance(module, Model):
        return module
    import flax.linen as nn

    if isinstance(module, nn.Module):
        return _linen(module)
    nnx = _nnx()
    if nnx is not None and isinstance(module, nnx.Module):
        return _nnx_model(module, nnx)
    if isinstance(module, type):
        what = f"the class {module.__name__} (instantiate it: {module.__name__}(...))"
    elif callable(module):
        what = f"the function {getattr(module, '__name__', module)!r}"
    else:
        what = f"{type(module).__name__} {module!r:.60}"
    raise TypeError(
        f"expected a flax.linen.Module or a flax.nnx.Module instance, got {what}; a zoo model is "
        "jaxnotes.models.get_model(name) or TrainConfig(model=name)"
    )


def _nnx():
    try:
        from flax import nnx
    except ImportError:  # flax releases before NNX
        return None
    return nnx


# --- linen ---------------------------------------------------------------------------------------


def _linen(module) -> Model:
    def init(key: jax.Array, x: jax.Array) -> tuple[Any, Any]:
        variables = dict(module.init(key, x, train=False))
        params = variables.pop("params", {})
        return params, variables

    def apply(params, model_state, x, train: bool, dropout_key=None):
        variables = {"params": params, **model_state}
        rngs = None if dropout_key is None else {"dropout": dropout_key}
        if train and model_state:
            outputs, updated = module.apply(
                variables, x, train=True, rngs=rngs, mutable=list(model_state)
            )
            return outputs, {**model_state, **updated}
        return module.apply(variables, x, train=train, rngs=rngs), model_state

    return Model(module, "linen", type(module).__name__, init, apply)


# --- NNX -----------------------------------------------------------------------------------------


def _nnx_model(module, nnx) -> Model:
    graphdef, params, rng_state, rest = nnx.split(module, nnx.Param, nnx.RngState, ...)
    # Templates hold only the tree structure; the values come in as arguments (never as jit
    # constants, which would copy the weights into the compiled program).
    templates = [_abstract(s) for s in (params, rest)]
    rng_values = nnx.to_pure_dict(rng_state)
    initial = (_copy(nnx.to_pure_dict(params)), _copy(nnx.to_pure_dict(rest)))
    call_takes_train = "train" in inspect.signature(type(module).__call__).parameters

    def init(key: jax.Array, x: jax.Array) -> tuple[Any, Any]:
        del key, x  # an NNX module arrives initialised
        return initial

    rng_template = _abstract(rng_state)

    def merged(params_values, state_values):
        rngs = _filled(rng_template, rng_values, nnx)
        trained = _filled(templates[0], params_values, nnx)
        return nnx.merge(graphdef, trained, rngs, _filled(templates[1], state_values, nnx))

    def apply(params_values, state_values, x, train: bool, dropout_key=None):
        live = merged(params_values, state_values)
        if dropout_key is not None:
            nnx.reseed(live, dropout=dropout_key, default=dropout_key)
        _set_mode(live, train)
        outputs = live(x, train=train) if call_takes_train else live(x)
        if not train:
            return outputs, state_values
        _, _, _, updated = nnx.split(live, nnx.Param, nnx.RngState, ...)
        return outputs, nnx.to_pure_dict(updated)

    return Model(module, "nnx", type(module).__name__, init, apply)


def _set_mode(module, train: bool) -> None:
    if hasattr(module, "train") and hasattr(module, "eval"):
        module.train() if train else module.eval()
        return
    module.set_attributes(
        deterministic=not train, use_running_average=not train, raise_if_not_found=False
    )


def _abstract_key() -> jax.ShapeDtypeStruct:
    """A PRNG key's shape and dtype: shape checks need no real key (making one compiles)."""
    return jax.eval_shape(lambda: jax.random.key(0))


def _abstract(state):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), state)


def _filled(template, values, nnx):
    state = jax.tree.map(lambda a: a, template)  # a fresh State: replace_by_pure_dict mutates
    nnx.replace_by_pure_dict(state, values)
    return state


def _copy(tree):
    return jax.tree.map(jnp.array, tree)


# --- checks before the first step ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What tracing a module on a batch of 2 tells (shapes only, no compute).

    params, state: ShapeDtypeStruct trees of the parameters and the other collections.
    outputs: {"eval": ..., "train": ...} the outputs' ShapeDtypeStructs in each mode.
    needs_dropout_key: training mode asks for a "dropout" key (linen's InvalidRngError).
    largest_activation: bytes of the largest intermediate array of the forward pass, per example.
    """

    params: Any
    state: Any
    outputs: dict
    needs_dropout_key: bool
    largest_activation: int


def trace_shapes(
    model: Model, input_shape: tuple[int, ...], dtype: Any = jnp.float32
) -> Inspection:
    """Trace ``model`` once per mode on ``(2, *input_shape)``; kept per shape on the Model.

    Raises whatever the module raises for that shape (its own message).
    """
    memo_key = (tuple(input_shape), jnp.dtype(dtype).name)
    if memo_key in model.inspections:
        return model.inspections[memo_key]
    x = jax.ShapeDtypeStruct((2, *input_shape), dtype)
    key = _abstract_key()
    params, state = jax.eval_shape(model.init, key, x)
    eval_jaxpr, (eval_out, _) = jax.make_jaxpr(
        lambda p, s, v: model.apply(p, s, v, False), return_shape=True
    )(params, state, x)
    needs_key = False
    if model.kind == "linen":
        from flax.errors import InvalidRngError

        try:
            train_out = jax.eval_shape(
                lambda p, s, v: model.apply(p, s, v, True)[0], params, state, x
            )
        except InvalidRngError:
            needs_key = True
    if model.kind != "linen" or needs_key:
        train_out = jax.eval_shape(
            lambda p, s, v, k: model.apply(p, s, v, True, k)[0], params, state, x, key
        )
    largest = max((_bytes(v.aval) for e in eval_jaxpr.eqns for v in e.outvars), default=0)
    found = Inspection(
        params, state, {"eval": eval_out, "train": train_out}, needs_key, largest // 2
    )
    model.inspections[memo_key] = found
    return found


def check_outputs(model: Model, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Trace the model on ``(2, *input_shape)`` (shapes only, no compute); return its logit width.

    Raises ValueError, before anything is compiled or written, when the module cannot take the
    input (with the module's own message), returns something that is not logits of shape
    (batch, classes) or a tuple of such, or has fewer outputs than the data has classes.
    """
    try:
        found = trace_shapes(model, input_shape)
    except Exception as error:  # the module's own message, raised before the first step
        raise ValueError(
            f"{model.label} cannot take inputs of shape (batch, {', '.join(map(str, input_shape))})"
            f": {type(error).__name__}: {error}"
        ) from error
    if not jax.tree.leaves(found.params):
        raise ValueError(f"{model.label} has no parameters (no 'params' collection) to train")
    width = None
    for mode, out in found.outputs.items():
        parts = list(out) if isinstance(out, tuple | list) else [out]
        for part in parts:
            ok = (
                isinstance(part, jax.ShapeDtypeStruct)
                and len(part.shape) == 2
                and part.shape[0] == 2
                and jnp.issubdtype(part.dtype, jnp.floating)
            )
            if not ok:
                raise ValueError(
                    f"{model.label} must return logits of shape (batch, classes), or a tuple "
                    f"(logits, *aux_logits); in {mode} mode it returned {_describe(out)}"
                )
        width = parts[0].shape[1]
        for i, part in enumerate(parts):  # the main logits, then each auxiliary head's
            if part.shape[1] < num_classes:
                what = "outputs" if i == 0 else f"auxiliary head {i} (training mode) outputs"
                raise ValueError(
                    f"the data has labels 0..{num_classes - 1} but {model.label}'s {what} "
                    f"{part.shape[1]} logits; give it at least {num_classes} outputs"
                )
    return width


def _describe(out: Any) -> str:
    return str(jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}", out))


def _bytes(aval: Any) -> int:
    return int(np.prod(aval.shape, dtype=np.int64)) * jnp.dtype(aval.dtype).itemsize


def memory_floor(
    model: Model, input_shape: tuple[int, ...], batch_size: int, copies: int = 1,
    state_bytes: int | None = None,
) -> dict[str, int]:  # fmt: skip
    """A lower bound on the memory one training step needs, from shapes alone (no compute).

    Parameters and their gradients (of ``copies`` models: a population's members), plus the
    largest single intermediate array of the forward pass for the whole batch. The real need is
    larger (every stored activation, the optimizer's slots), so a run refused by this bound
    could never have fitted. ``state_bytes``: the whole training state's size when known (with
    the optimizer's slots), counted instead of the parameters.
    """
    found = trace_shapes(model, input_shape)
    param_bytes = sum(_bytes(leaf) for leaf in jax.tree.leaves(found.params))
    state = 2 * param_bytes * copies if state_bytes is None else state_bytes + param_bytes * copies
    return {
        "params_and_grads": state,
        "largest_activation": batch_size * found.largest_activation,
    }


def device_memory() -> tuple[int | None, str]:
    """(bytes, what) the default device can hold: its memory limit, or the host's RAM on CPU."""
    import os

    device = jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 -- backends without memory statistics
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"the {device.platform.upper()}'s memory"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def check_memory(
    model: Model, input_shape: tuple[int, ...], batch_size: int, copies: int = 1,
    state_bytes: int | None = None,
) -> None:  # fmt: skip
    """Raise ValueError, with the figures, when a step cannot fit in the device's memory.
    ``copies``: models trained at once on the device (a population's members)."""
    floor = memory_floor(model, input_shape, batch_size, copies, state_bytes)
    need = sum(floor.values())
    have, what = device_memory()
    if have is not None and need > have:
        gib = 2**30
        who = f"{copies} x {model.label}" if copies > 1 else model.label
        fix = "fewer members (--search N / --k-fold K) or " if copies > 1 else ""
        raise ValueError(
            f"{who} at input {'x'.join(map(str, input_shape))} with batch {batch_size} "
            f"needs at least {need / gib:.1f} GiB (parameters and gradients "
            f"{floor['params_and_grads'] / gib:.1f} GiB, the largest activation "
            f"{floor['largest_activation'] / gib:.1f} GiB) but {what} is {have / gib:.1f} GiB; "
            f"use {fix}a smaller --resize or --batch-size"
        )
