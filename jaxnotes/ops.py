"""From-scratch convolution, pooling, dropout, L2 and batch norm (chapters 2-6, 11): pure, jit-able.

Each op is written the way the chapter explains it, but vectorised: instead of a Python loop over
output pixels, a window op is a sum (or max) over the ``kh * kw`` kernel offsets of strided slices
of the padded input, so one slice covers every output pixel at once and XLA fuses the lot. The
loop over kernel offsets is a trace-time loop of ``kh * kw`` iterations, never over pixels.

Layouts follow the book: a single image is ``(height, width)``, a multi-channel one
``(channels, height, width)``; kernels are ``(kh, kw)``, ``(c_in, kh, kw)`` or
``(c_out, c_in, kh, kw)``. (The models use Flax's NHWC layout; these ops are for the chapters.)
:func:`batch_norm` works on a batch, so it takes the models' layouts: NHWC or (N, features).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxnotes import shapes


def _check_ndim(name: str, array: jax.Array, ndims: tuple[int, ...], layout: str) -> None:
    if jnp.result_type(array) == jnp.bool_:
        raise ValueError(
            f"{name} has dtype bool; pass numbers (e.g. .astype(jnp.float32): True -> 1.0)"
        )
    if array.ndim not in ndims:
        raise ValueError(f"{name} must have layout {layout}, got an array of shape {array.shape}")


def _window_slices(x: jax.Array, window: tuple[int, int], stride: tuple[int, int], out_hw):
    """Yield, for every kernel offset (a, b), the strided slice of ``x`` (..., h, w) it multiplies.

    Slice (a, b) has shape (..., out_h, out_w): element (i, j) is x[..., i*sh + a, j*sw + b].
    """
    (kh, kw), (sh, sw), (oh, ow) = window, stride, out_hw
    lead = x.shape[:-2]
    for a in range(kh):
        for b in range(kw):
            start = (0,) * len(lead) + (a, b)
            limit = (*lead, a + (oh - 1) * sh + 1, b + (ow - 1) * sw + 1)
            yield (a, b), lax.slice(x, start, limit, (1,) * len(lead) + (sh, sw))


def _pad_hw(x: jax.Array, padding: tuple, value: float) -> jax.Array:
    (top, bottom), (left, right) = padding
    if top == bottom == left == right == 0:
        return x
    pad_width = [(0, 0)] * (x.ndim - 2) + [(top, bottom), (left, right)]
    return jnp.pad(x, pad_width, constant_values=value)


def _pair(value: Any, name: str) -> tuple[int, int]:
    first, second = shapes.per_dim(value, name)
    return shapes.check_int(name, first, 1), shapes.check_int(name, second, 1)


def corr2d(X: jax.Array, K: jax.Array, stride: Any = 1, padding: Any = 0) -> jax.Array:
    """2-D cross-correlation, the operation deep-learning "convolution" layers compute.

    Args:
      X: (height, width) input.
      K: (kh, kw) kernel.
      stride: int or (sh, sw).
      padding: int (every side), (ph, pw) per side, or ((top, bottom), (left, right)); zeros.

    Returns:
      (out_h, out_w) with ``Y[i, j] = sum_ab X[i*sh + a, j*sw + b] * K[a, b]`` on the padded input;
      sizes follow :func:`jaxnotes.shapes.conv_output_shape`.
    """
    return _corr2d(X, K, _pair(stride, "stride"), shapes.padding_2d(padding))


# Compiled once per (shapes, stride, padding): called eagerly, the kh*kw slices would otherwise
# each dispatch (and compile) on their own.
@functools.partial(jax.jit, static_argnums=(2, 3))
def _corr2d(X: jax.Array, K: jax.Array, stride: tuple, padding: tuple) -> jax.Array:
    _check_ndim("corr2d: X", X, (2,), "(height, width)")
    _check_ndim("corr2d: K", K, (2,), "(kh, kw)")
    out_hw = shapes.conv_output_shape(X.shape, K.shape, stride, padding)
    dtype = jnp.result_type(X, K)
    Xp = _pad_hw(X.astype(dtype), padding, 0)
    out = jnp.zeros(out_hw, dtype)
    for (a, b), patch in _window_slices(Xp, K.shape, stride, out_hw):
        out = out + patch * K[a, b]
    return out


def conv2d(X: jax.Array, K: jax.Array, stride: Any = 1, padding: Any = 0) -> jax.Array:
    """True 2-D convolution: :func:`corr2d` with the kernel rotated by 180 degrees.

    Shapes as :func:`corr2d`; equals ``scipy.signal.convolve2d(X, K, "valid")`` without padding.
    """
    K = jnp.asarray(K)
    _check_ndim("conv2d: K", K, (2,), "(kh, kw)")
    return corr2d(X, K[::-1, ::-1], stride, padding)


def corr2d_multi_in(X: jax.Array, K: jax.Array, stride: Any = 1, padding: Any = 0) -> jax.Array:
    """Multi-input-channel correlation: one 2-D kernel per channel, results summed.

    Args:
      X: (c_in, height, width).
      K: (c_in, kh, kw).
      stride, padding: as :func:`corr2d`.

    Returns:
      (out_h, out_w).
    """
    return _corr2d_multi_in(X, K, _pair(stride, "stride"), shapes.padding_2d(padding))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _corr2d_multi_in(X: jax.Array, K: jax.Array, stride: tuple, padding: tuple) -> jax.Array:
    _check_ndim("corr2d_multi_in: X", X, (3,), "(channels, height, width)")
    _check_ndim("corr2d_multi_in: K", K, (3,), "(channels, kh, kw)")
    if X.shape[0] != K.shape[0]:
        raise ValueError(
            f"corr2d_multi_in: X has {X.shape[0]} channels but K has {K.shape[0]}; "
            "expected K of shape (c_in, kh, kw) with c_in = X.shape[0]"
        )
    per_channel = jax.vmap(lambda x, k: _corr2d(x, k, stride, padding))(X, K)
    return per_channel.sum(axis=0)


def corr2d_multi_in_out(X: jax.Array, K: jax.Array, stride: Any = 1, padding: Any = 0) -> jax.Array:
    """Multi-input, multi-output correlation: one 3-D kernel per output channel, stacked.

    Args:
      X: (c_in, height, width).
      K: (c_out, c_in, kh, kw).
      stride, padding: as :func:`corr2d`.

    Returns:
      (c_out, out_h, out_w).
    """
    return _corr2d_multi_in_out(X, K, _pair(stride, "stride"), shapes.padding_2d(padding))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _corr2d_multi_in_out(X: jax.Array, K: jax.Array, stride: tuple, padding: tuple) -> jax.Array:
    _check_ndim("corr2d_multi_in_out: K", K, (4,), "(c_out, c_in, kh, kw)")
    if K.shape[0] == 0:
        raise ValueError("corr2d_multi_in_out: K has no output channels (c_out = 0)")
    return jax.vmap(lambda k: _corr2d_multi_in(X, k, stride, padding))(K)


def conv1x1(X: jax.Array, K: jax.Array) -> jax.Array:
    """1x1 convolution as a matrix product over channels: it mixes channels, sees no space.

    Args:
      X: (c_in, height, width).
      K: (c_out, c_in).

    Returns:
      (c_out, height, width) with ``Y[o] = sum_c K[o, c] * X[c]``.
    """
    X, K = jnp.asarray(X), jnp.asarray(K)
    _check_ndim("conv1x1: X", X, (3,), "(channels, height, width)")
    _check_ndim("conv1x1: K", K, (2,), "(c_out, c_in)")
    c_in, h, w = X.shape
    if K.shape[1] != c_in:
        raise ValueError(
            f"conv1x1: K has shape {K.shape}, expected (c_out, {c_in}) for X of shape {X.shape}"
        )
    return (K @ X.reshape(c_in, h * w)).reshape(K.shape[0], h, w)


def pool2d(
    X: jax.Array,
    pool_size: Any,
    mode: str = "max",
    padding: Any = 0,
    stride: Any = None,
) -> jax.Array:
    """Max or average pooling, per channel.

    Args:
      X: (height, width) or (channels, height, width); each channel pooled on its own.
      pool_size: int or (ph, pw) window.
      mode: "max" or "avg".
      padding: as :func:`corr2d`. Max pooling pads with -inf, so padding never wins the max.
        Average pooling pads with zeros and always divides by the full window size
        ``ph * pw`` (padded cells count), the convention of PyTorch's ``avg_pool2d`` default
        (``count_include_pad=True``) and of the book.
      stride: int or pair; defaults to the window (non-overlapping windows).

    Returns:
      (out_h, out_w) or (channels, out_h, out_w), sizes from
      :func:`jaxnotes.shapes.pool_output_shape`.
    """
    window = _pair(pool_size, "pool_size")
    step = window if stride is None else _pair(stride, "stride")
    return _pool2d(X, window, step, shapes.padding_2d(padding), mode)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _pool2d(X: jax.Array, window: tuple, step: tuple, padding: tuple, mode: str) -> jax.Array:
    _check_ndim("pool2d: X", X, (2, 3), "(height, width) or (channels, height, width)")
    if mode not in ("max", "avg"):
        raise ValueError(f"pool2d: mode must be 'max' or 'avg', got {mode!r}")
    out_hw = shapes.pool_output_shape(X.shape[-2:], window, step, padding)
    if mode == "max":
        Xp = _pad_hw(X, padding, -jnp.inf)
        patches = (patch for _, patch in _window_slices(Xp, window, step, out_hw))
        out = next(patches)
        for patch in patches:
            out = jnp.maximum(out, patch)
        return out
    dtype = jnp.result_type(X, jnp.float32)
    Xp = _pad_hw(X.astype(dtype), padding, 0)
    total = sum(patch for _, patch in _window_slices(Xp, window, step, out_hw))
    return total / (window[0] * window[1])


def dropout(key: jax.Array, X: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout: zero each element with probability ``rate``, scale the rest by 1/(1-rate).

    The scaling keeps the expectation unchanged, ``E[dropout(X)] = X``, so inference can skip
    dropout altogether (the caller simply does not call it). The same key gives the same mask.

    Args:
      key: a PRNG key; split or ``fold_in`` a fresh one for every call.
      X: any shape.
      rate: drop probability in [0, 1] (a Python number). 0 returns ``X`` unchanged; 1 returns
        zeros (no division by zero).
    """
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise ValueError(f"dropout: rate must be a number in [0, 1], got {rate!r}")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"dropout: rate must be in [0, 1], got {rate}")
    X = jnp.asarray(X)
    if rate == 0:
        return X
    if rate == 1:
        return jnp.zeros_like(X)
    keep = jax.random.bernoulli(key, 1.0 - rate, X.shape)
    return jnp.where(keep, X / (1.0 - rate), jnp.zeros((), X.dtype))


def l2_penalty(params: Any) -> jax.Array:
    """``sum(w ** 2) / 2`` over every leaf given (pass only the weights you want penalised)."""
    leaves = jax.tree.leaves(params)
    if not leaves:
        return jnp.zeros(())
    return sum(jnp.sum(jnp.square(w)) for w in leaves) / 2


def _check_batch_norm_shapes(X: jax.Array, **per_channel: jax.Array) -> None:
    _check_ndim("batch_norm: X", X, (2, 4), "(N, C) (dense) or (N, H, W, C) (conv, NHWC)")
    for name, value in per_channel.items():
        if jnp.shape(value) != (X.shape[-1],):
            raise ValueError(
                f"batch_norm: {name} must have shape ({X.shape[-1]},) (one per channel of X "
                f"{X.shape}), got {jnp.shape(value)}"
            )


def batch_norm(
    X: jax.Array,
    gamma: jax.Array,
    beta: jax.Array,
    moving_mean: jax.Array,
    moving_var: jax.Array,
    *,
    train: bool,
    eps: float = 1e-5,
    momentum: float = 0.9,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batch normalization as the book writes it: ``(Y, new_moving_mean, new_moving_var)``.

    Training (``train=True``): each channel is standardised with the mean and the *biased*
    variance (divided by the number of values, not that minus one) of the batch itself, and the
    moving averages move towards them, with the book's (and ``flax.linen.BatchNorm``'s)
    convention: ``moving = momentum * moving + (1 - momentum) * batch_statistic``. Inference
    (``train=False``): the moving averages standardise, and come back unchanged. Then
    ``Y = gamma * X_hat + beta``, with ``X_hat = (X - mean) / sqrt(var + eps)``.

    Shapes (C channels, or C features of a dense layer):

    * ``X``: (N, H, W, C) after a convolution (NHWC: the statistics are over N, H and W, one
      per channel) or (N, C) after a dense layer (over N, one per feature);
    * ``gamma``, ``beta``, ``moving_mean``, ``moving_var``: (C,); so are the returned averages;
    * ``Y``: the shape of ``X``.

    ``momentum`` 0.9 and ``eps`` 1e-5 are the book's from-scratch values (PyTorch's
    ``BatchNorm2d(momentum=0.1)`` is the same average, its momentum being ``1 - ours``; flax's
    ``BatchNorm`` defaults to 0.99). PyTorch *stores* the unbiased variance in its running
    average (it normalises with the biased one, as here); the book's code and flax store the
    biased one, as here.

    A channel with a single value in the batch (a dense layer's batch of one, or an NHWC batch of
    one 1x1 map) has no variance to estimate: training on it raises a ``ValueError`` (as
    PyTorch's ``BatchNorm`` does) instead of silently normalising everything to ``beta``.
    """
    X = jnp.asarray(X)
    _check_batch_norm_shapes(
        X, gamma=gamma, beta=beta, moving_mean=moving_mean, moving_var=moving_var
    )
    if not train:
        X_hat = (X - moving_mean) / jnp.sqrt(moving_var + eps)
        return gamma * X_hat + beta, moving_mean, moving_var
    axes = tuple(range(X.ndim - 1))  # every axis but the channels
    if X.size // max(X.shape[-1], 1) < 2:  # values per channel
        raise ValueError(
            f"batch_norm: training needs more than one value per channel to estimate a variance, "
            f"got X of shape {X.shape}; use a batch of at least 2 (or train=False)"
        )
    mean = X.mean(axis=axes)
    var = jnp.square(X - mean).mean(axis=axes)  # biased: divided by the count, as the book
    X_hat = (X - mean) / jnp.sqrt(var + eps)
    new_mean = momentum * moving_mean + (1.0 - momentum) * mean
    new_var = momentum * moving_var + (1.0 - momentum) * var
    return gamma * X_hat + beta, new_mean, new_var
