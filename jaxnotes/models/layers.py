"""Building blocks the model zoo shares: shape-checked conv / pooling, input checks, the loss.

Every conv and pooling layer asserts at trace time (``chex.assert_shape``) that its output has the
shape :mod:`jaxnotes.shapes` predicts from that layer's own kernel, stride and padding, so a wrong
layer or a wrong formula fails at ``init`` (or under ``jax.eval_shape``), never silently.

A plain stack of layers is written as data, a tuple of :class:`Spec` (the book's kernel, stride
and padding), so the same tuple both builds the layers (:func:`run_stack`) and gives the smallest
input the stack accepts (:func:`min_input_size`), which the models' input check reports.

Layout everywhere is NHWC: ``(batch, height, width, channels)``.

Batch normalization (chapters 11-13): the zoo calls :func:`batch_norm` (``flax.linen.BatchNorm``
with the book's momentum and epsilon); :class:`BatchNorm` is the chapter's from-scratch layer
(:func:`jaxnotes.ops.batch_norm`), a drop-in for it.

On the CPU backend (float32), convolutions and max pooling take the fast paths of
:mod:`jaxnotes.models.cpu_kernels`: the same functions, written with the ops XLA:CPU runs well
(its own convolution is 10-50x slower than it should be on this book's shapes). Parameters are
created by ``nn.Conv`` either way, so checkpoints and parameter trees do not depend on the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnotes import ops, shapes
from jaxnotes.models import cpu_kernels

# (kernel, stride, padding per side) of one conv or pooling layer along height and width.
Window = tuple[int, int, int]

# Kernel initialisers by name. "xavier" (Glorot uniform, variance 2 / (fan_in + fan_out)) is
# d2l's for every conv and dense kernel; the sigmoid LeNet in particular trains as in the book only
# with it (flax's default lecun_normal is narrower). "he" (Kaiming normal, variance 2 / fan_in)
# keeps a ReLU layer's output variance equal to its input's; with Xavier, a deep ReLU stack
# without batch norm (GoogLeNet's 22 layers) starts with activations shrinking layer by layer and
# sits near chance for epochs.
KERNEL_INITS: dict[str, nn.initializers.Initializer] = {
    "xavier": nn.initializers.xavier_uniform(),
    "he": nn.initializers.he_normal(),
}


def kernel_init(name: str) -> nn.initializers.Initializer:
    """The initialiser called ``name`` (a key of :data:`KERNEL_INITS`)."""
    if name not in KERNEL_INITS:
        raise ValueError(f"weight_init must be one of {sorted(KERNEL_INITS)}, got {name!r}")
    return KERNEL_INITS[name]


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"relu": nn.relu, "sigmoid": nn.sigmoid}


def activation_fn(activation: str | Callable[[jax.Array], jax.Array]) -> Callable:
    """``"relu"`` / ``"sigmoid"`` (or any callable) as a function."""
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)} or a callable, got {activation!r}"
        )
    return ACTIVATIONS[activation]


# ---- layers ----------------------------------------------------------------------------------


def conv(
    x: jax.Array,
    features: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    *,
    dtype: Any = jnp.float32,
    weight_init: str = "xavier",
    name: str | None = None,
) -> jax.Array:
    """Square ``nn.Conv``, float32 params: (N, H, W, C) -> (N, H', W', features).

    Call it inside a ``@nn.compact`` method: the ``nn.Conv`` becomes a child of that module.
    ``padding`` is per side, as in the book's ``nn.Conv2d(..., padding=p)``; ``weight_init``
    names the kernel initialiser (:data:`KERNEL_INITS`, Xavier as in d2l by default). On CPU in
    float32 the convolution itself runs :func:`jaxnotes.models.cpu_kernels.conv_general_dilated`
    (elsewhere ``lax.conv_general_dilated``, i.e. cuDNN on GPUs).
    """
    layer = nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dtype=dtype,
        kernel_init=kernel_init(weight_init),
        conv_general_dilated=cpu_kernels.conv_general_dilated,
        name=name,
    )
    y = layer(x)
    height, width = shapes.conv_output_shape(x.shape[1:3], kernel_size, stride, padding)
    chex.assert_shape(y, (x.shape[0], height, width, features))
    return y


def dense(
    x: jax.Array,
    features: int,
    *,
    dtype: Any = jnp.float32,
    weight_init: str = "xavier",
    name: str | None = None,
) -> jax.Array:
    """``nn.Dense``, kernel from ``weight_init`` (Xavier by default): (N, D) -> (N, features)."""
    return nn.Dense(features, dtype=dtype, kernel_init=kernel_init(weight_init), name=name)(x)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class _Pool(nn.Module):
    """A pooling window per channel: (N, H, W, C) -> (N, H', W', C), the padding per side.

    A module rather than a bare function so that :func:`jaxnotes.shapes.summarize` lists it.
    """

    window: int | tuple[int, int]
    stride: int | None = None  # None: the window, as in the book
    padding: int = 0

    def __call__(self, x: jax.Array) -> jax.Array:
        window = _pair(self.window)
        stride = window if self.stride is None else _pair(self.stride)
        pad = ((self.padding, self.padding), (self.padding, self.padding))
        y = self.reduce(x, window, strides=stride, padding=pad)
        height, width = shapes.pool_output_shape(x.shape[1:3], window, stride, self.padding)
        chex.assert_shape(y, (x.shape[0], height, width, x.shape[3]))
        return y


def max_pool(x: jax.Array, window, strides, padding) -> jax.Array:
    """``nn.max_pool``; on CPU (float32) the same function with a gradient XLA:CPU runs fast."""
    if cpu_kernels.fast_path_enabled(x):
        return cpu_kernels.max_pool(x, window, strides, padding)
    return nn.max_pool(x, window, strides=strides, padding=padding)


class MaxPool(_Pool):
    """Max pooling; the padding is -inf, so it never wins (as PyTorch's ``MaxPool2d``)."""

    reduce = staticmethod(max_pool)


class AvgPool(_Pool):
    """Average pooling; padded zeros count in the mean (PyTorch's ``AvgPool2d`` default too)."""

    reduce = staticmethod(nn.avg_pool)


class GlobalAvgPool(nn.Module):
    """Mean over height and width, whatever their size: (N, H, W, C) -> (N, C)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.mean(x, axis=(1, 2))
        chex.assert_shape(y, (x.shape[0], x.shape[3]))
        return y


# Batch normalization with d2l's PyTorch settings (``nn.BatchNorm2d``: eps 1e-5, momentum 0.1 in
# PyTorch's convention, i.e. 0.9 in the book's and flax's: new = 0.9 * old + 0.1 * batch).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def check_batch_statistics(x: jax.Array, where: str) -> None:
    """Refuse training-mode batch norm on one value per channel (no variance to estimate).

    A dense layer's batch of one, or an NHWC batch of one 1x1 map, would have variance 0 and
    every output ``beta``: PyTorch raises here too. Shapes are static, so this runs at trace time.
    """
    channels = max(x.shape[-1], 1)
    if x.size // channels < 2:
        raise ValueError(
            f"{where}: batch normalization in training mode needs more than one value per "
            f"channel to estimate a variance, got an input of shape {tuple(x.shape)}; train with "
            "a batch of at least 2 (evaluation, train=False, takes any batch)"
        )


def batch_norm(
    x: jax.Array, train: bool, *, dtype: Any = jnp.float32, name: str | None = None
) -> jax.Array:
    """The zoo's batch norm: ``flax.linen.BatchNorm`` over the last axis, the book's settings.

    Training: batch statistics, and the running averages (collection ``batch_stats``: ``mean``,
    ``var``, the biased variance) updated with momentum :data:`BN_MOMENTUM`; evaluation: the
    running averages. Statistics in float32 whatever ``dtype`` (flax's rule). Call it inside a
    ``@nn.compact`` method. :class:`BatchNorm` is the same layer from scratch.
    """
    if train:
        check_batch_statistics(x, name or "BatchNorm")
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        name=name,
    )(x)


class BatchNorm(nn.Module):
    """Batch normalization from scratch (chapter 11) on :func:`jaxnotes.ops.batch_norm`.

    The same variables as ``flax.linen.BatchNorm`` (params ``scale``, ``bias``; collection
    ``batch_stats`` with ``mean``, ``var``), the same flag (``use_running_average``, field or call
    argument) and the same function with the same ``momentum`` and ``epsilon``, so either can
    replace the other (``tests/test_modern_cnn.py`` checks outputs and running statistics).
    Defaults are the book's (momentum 0.9; flax's default is 0.99). Input (N, C) or NHWC.
    Training mutates ``batch_stats``: ``apply(..., mutable=["batch_stats"])``; ``init`` creates
    the variables without moving the averages (as flax).
    """

    use_running_average: bool | None = None
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON
    dtype: Any = None  # of the output; None: the input's. Statistics in float32 or wider.

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        channels = (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, channels, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, channels, jnp.float32)
        mean = self.variable("batch_stats", "mean", jnp.zeros, channels, jnp.float32)
        var = self.variable("batch_stats", "var", jnp.ones, channels, jnp.float32)
        train = not use_running_average  # ops.batch_norm refuses one value per channel
        y, new_mean, new_var = ops.batch_norm(
            x.astype(jnp.promote_types(x.dtype, jnp.float32)),
            scale,
            bias,
            mean.value,
            var.value,
            train=train,
            eps=self.epsilon,
            momentum=self.momentum,
        )
        if train and not self.is_initializing():
            mean.value, var.value = new_mean, new_var
        return y.astype(self.dtype or x.dtype)


class Dropout(nn.Module):
    """``nn.Dropout`` (the same masks from the same keys, bit for bit) whose rate may be traced.

    A population of runs (``jaxnotes.population``) passes each member's dropout rate as a traced
    scalar, so members with different rates share one compiled program; linen's own layer needs
    a Python number (it branches on ``rate == 0``). Named ``Dropout`` like linen's, so modules
    get the same automatic names (``Dropout_0``...) and hence the same dropout keys.
    """

    rate: Any
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs: jax.Array, deterministic: bool | None = None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        static = isinstance(self.rate, int | float)
        if deterministic or (static and self.rate == 0.0):
            return inputs
        if static and self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep_prob = 1.0 - self.rate
        rng = self.make_rng(self.rng_collection)
        mask = jax.random.bernoulli(rng, p=keep_prob, shape=inputs.shape)
        return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


def flatten(x: jax.Array) -> jax.Array:
    """(N, ...) -> (N, D). NHWC order: a PyTorch (NCHW) dense weight needs its columns permuted."""
    return x.reshape(x.shape[0], -1)


# ---- stacks written as data ------------------------------------------------------------------


class Spec(NamedTuple):
    """One conv (``features`` > 0) or pooling layer of a plain stack, as the book writes it."""

    kind: str  # "conv", "max" or "avg"
    kernel: int
    stride: int = 1
    padding: int = 0
    features: int = 0

    @property
    def window(self) -> Window:
        return (self.kernel, self.stride, self.padding)


def conv_spec(features: int, kernel: int, stride: int = 1, padding: int = 0) -> Spec:
    return Spec("conv", kernel, stride, padding, features)


def pool_spec(kind: str, kernel: int, stride: int | None = None, padding: int = 0) -> Spec:
    if kind not in ("max", "avg"):
        raise ValueError(f"pool kind must be 'max' or 'avg', got {kind!r}")
    return Spec(kind, kernel, kernel if stride is None else stride, padding)


def run_stack(
    x: jax.Array,
    specs: Sequence[Spec],
    *,
    act: Callable,
    dtype: Any = jnp.float32,
    weight_init: str = "xavier",
) -> jax.Array:
    """Apply ``specs`` in order (conv -> ``act``; pools as they are) inside a compact method."""
    for spec in specs:
        if spec.kind == "conv":
            kw = {"dtype": dtype, "weight_init": weight_init}
            x = act(conv(x, spec.features, spec.kernel, spec.stride, spec.padding, **kw))
        elif spec.kind == "max":
            x = MaxPool(spec.kernel, spec.stride, spec.padding)(x)
        elif spec.kind == "avg":
            x = AvgPool(spec.kernel, spec.stride, spec.padding)(x)
        else:
            raise ValueError(f"unknown layer kind {spec.kind!r} in {spec}")
    return x


# ---- input checks ----------------------------------------------------------------------------


def min_input_size(windows: Sequence[Window]) -> int:
    """Smallest height (or width) for which every layer of ``windows`` gives an output >= 1.

    Walks the stack from the top, where one output unit is enough, down to the input, inverting
    ``out = floor((n - k + 2p + s) / s)``: an output of at least ``m`` needs
    ``n >= (m - 1) * s + k - 2p`` (and ``n >= 1``). The forward formulas then confirm the result.
    """
    size = 1
    for kernel, stride, padding in reversed(list(windows)):
        size = max(1, (size - 1) * stride + kernel - 2 * padding)
    n = size
    for kernel, stride, padding in windows:  # raises if the inversion above were wrong
        n = shapes.conv_output_size(n, kernel, stride, padding)
    return size


LAYOUT = "NHWC (N, H, W, C)"


def check_input(x: Any, *, model: str, min_size: int) -> None:
    """Raise a ``ValueError`` naming the layout and the smallest size, before any layer runs.

    Catches a wrong rank, channels-first (NCHW) data, and images smaller than ``min_size``; an XLA
    error from deep inside the network would name none of these.
    """
    shape = tuple(x.shape)
    expects = (
        f"{model} expects a float array of layout {LAYOUT} with H and W >= {min_size} "
        f"(its smallest input size, from its kernels, strides and paddings)"
    )
    if len(shape) != 4:
        hint = {
            2: " (one grey image? use x[None, :, :, None])",
            3: " (one image (H, W, C) or a batch without channels (N, H, W)? "
            "use x[None] or x[..., None])",
        }.get(len(shape), "")
        raise ValueError(f"{expects}; got shape {shape} of rank {len(shape)}{hint}")
    _, height, width, channels = shape
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{expects}; got {x.dtype} images: convert them to floats first, e.g. "
            "x.astype(jnp.float32) / 255.0 for uint8 pixels (training.fit does this on the device)"
        )
    if height in (1, 3) and channels > 4:
        raise ValueError(
            f"{expects}; got shape {shape}, which looks channels-first (N, C, H, W): "
            "convert with x.transpose(0, 2, 3, 1)"
        )
    if height < min_size or width < min_size:
        raise ValueError(f"{expects}; got H x W = {height} x {width} (shape {shape})")
