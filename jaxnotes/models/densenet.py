"""DenseNet (chapter 13): every conv block sees the concatenation of all the maps before it.

Where a ResNet block adds its input to its output, a :class:`DenseBlock` concatenates them on
channels, so each conv block of the dense block adds ``num_channels`` (the growth rate) channels:
``num_convs`` blocks take C channels to ``C + num_convs * num_channels``. A conv block is
batch norm, ReLU, then the conv (the pre-activation order)::

    conv_block:        BN -> ReLU -> conv c@3x3 p1                 (N, H, W, C) -> (N, H, W, c)
    DenseBlock:        x <- concat(x, conv_block(x)), num_convs times  -> (N, H, W, C + n * c)
    transition_block:  BN -> ReLU -> conv c@1x1 -> avg 2/2         -> (N, H // 2, W // 2, c)

Transition blocks keep the channels in check: each halves them (and the height and width).
The book's DenseNet, shapes at its 96x96x1 input (growth rate 32, four dense blocks of four)::

    b1  conv 64@7x7 s2 p3, BN, ReLU, max 3/2 p1      -> (N, 24, 24, 64)
        DenseBlock 4 x 32, transition 96             -> (N, 12, 12, 96)      64 + 128 = 192
        DenseBlock 4 x 32, transition 112            -> (N, 6, 6, 112)       96 + 128 = 224
        DenseBlock 4 x 32, transition 120            -> (N, 3, 3, 120)      112 + 128 = 240
        DenseBlock 4 x 32                            -> (N, 3, 3, 248)      120 + 128 = 248
    BN, ReLU, global average pool, dense classes     -> (N, classes)

758,226 parameters for 10 classes (as d2l's PyTorch model). Smallest input: 29x29 (the three
2x2 average pools need a map of at least 2x2 each). Batch norm as :func:`layers.batch_norm`:
batch statistics with ``train=True`` (collection ``batch_stats`` updated), running averages
with ``train=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnotes.models import layers
from jaxnotes.models.layers import conv, pool_spec
from jaxnotes.models.resnet import STEM, stem

TRANSITION_POOL = pool_spec("avg", 2)


def conv_block(
    x: jax.Array, num_channels: int, train: bool, *, dtype: Any, weight_init: str
) -> jax.Array:
    """BN, ReLU, conv ``num_channels``@3x3 p1: (N, H, W, C) -> (N, H, W, num_channels)."""
    x = nn.relu(layers.batch_norm(x, train, dtype=dtype))
    return conv(x, num_channels, 3, padding=1, dtype=dtype, weight_init=weight_init)


class DenseBlock(nn.Module):
    """(N, H, W, C) -> (N, H, W, C + num_convs * num_channels)."""

    num_convs: int
    num_channels: int  # the growth rate: channels each conv block adds
    dtype: Any = jnp.float32
    weight_init: str = "xavier"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = {"dtype": self.dtype, "weight_init": self.weight_init}
        for _ in range(self.num_convs):
            y = conv_block(x, self.num_channels, train, **kw)
            chex.assert_shape(y, (*x.shape[:3], self.num_channels))
            x = jnp.concatenate([x, y], axis=-1)
        return x


class TransitionBlock(nn.Module):
    """(N, H, W, C) -> (N, H // 2, W // 2, num_channels): BN, ReLU, 1x1 conv, avg pool 2/2."""

    num_channels: int
    dtype: Any = jnp.float32
    weight_init: str = "xavier"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(layers.batch_norm(x, train, dtype=self.dtype))
        x = conv(x, self.num_channels, 1, dtype=self.dtype, weight_init=self.weight_init)
        return layers.AvgPool(TRANSITION_POOL.kernel, TRANSITION_POOL.stride)(x)


def transition_block(num_channels: int, dtype: Any = jnp.float32, **kw: Any) -> TransitionBlock:
    """The book's ``transition_block(num_channels)`` as a Flax module (input channels inferred)."""
    return TransitionBlock(num_channels=num_channels, dtype=dtype, **kw)


class DenseNet(nn.Module):
    """DenseNet: (N, H, W, C) -> (N, num_classes) float32 logits; H, W >= 29 (96 in the book).

    ``num_convs``: conv blocks per dense block; ``growth_rate``: channels each conv block adds.
    A transition block halving the channels (rounded down) follows every dense block but the
    last.
    """

    num_classes: int = 10
    num_convs: Sequence[int] = (4, 4, 4, 4)
    growth_rate: int = 32
    dtype: Any = jnp.float32
    weight_init: str = "xavier"  # kernel initialiser: "xavier" (d2l) or "he" (layers.KERNEL_INITS)

    def min_input_size(self) -> int:
        windows = [spec.window for spec in STEM]
        windows += [TRANSITION_POOL.window] * (len(self.num_convs) - 1)
        return layers.min_input_size(windows)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        layers.check_input(x, model="DenseNet", min_size=self.min_input_size())
        layers.kernel_init(self.weight_init)  # an unknown name fails here, before any layer
        kw = {"dtype": self.dtype, "weight_init": self.weight_init}
        x = stem(x, train, **kw)
        channels = x.shape[-1]
        for index, num_convs in enumerate(self.num_convs):
            x = DenseBlock(num_convs, self.growth_rate, **kw)(x, train)
            channels += num_convs * self.growth_rate
            if index != len(self.num_convs) - 1:
                channels //= 2
                x = transition_block(channels, **kw)(x, train)
        x = nn.relu(layers.batch_norm(x, train, dtype=self.dtype))
        x = layers.GlobalAvgPool()(x)
        return layers.dense(x, self.num_classes, **kw).astype(jnp.float32)
