"""Network in Network (chapter 9): conv + two 1x1 convs per block, no dense layer at all.

A 1x1 conv is a dense layer applied at every pixel, so a NiN block is "conv, then an MLP per
pixel". The last block has ``num_classes`` channels and a global average pool turns each channel
map into one logit, whatever the input size (no hard-coded pooling window). Shapes at 224x224x1::

    nin_block 96@11x11 s4     -> (N, 54, 54, 96)    max 3/2 -> (N, 26, 26, 96)
    nin_block 256@5x5 p2      -> (N, 26, 26, 256)   max 3/2 -> (N, 12, 12, 256)
    nin_block 384@3x3 p1      -> (N, 12, 12, 384)   max 3/2 -> (N, 5, 5, 384)
    dropout 0.5, nin_block classes@3x3 p1 -> (N, 5, 5, classes), global avg -> (N, classes)

As in the book, ReLU follows every conv, the last block's too, so the logits are >= 0.
Smallest input: 67x67.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnotes.models import layers
from jaxnotes.models.layers import Spec, conv_spec, pool_spec

# (out_channels, kernel, stride, padding) of the blocks that a 3/2 max pool follows.
ARCH = ((96, 11, 4, 0), (256, 5, 1, 2), (384, 3, 1, 1))
LAST = (3, 1, 1)  # kernel, stride, padding of the last block (num_classes channels)
POOL = pool_spec("max", 3, stride=2)


def nin_block_specs(out_channels: int, kernel: int, stride: int, padding: int) -> tuple[Spec, ...]:
    """conv ``out_channels``@kernel (stride, padding), then two ``out_channels``@1x1 convs."""
    return (conv_spec(out_channels, kernel, stride, padding),) + (conv_spec(out_channels, 1),) * 2


class NiNBlock(nn.Module):
    """(N, H, W, C) -> (N, H', W', out_channels); H', W' set by the first conv alone."""

    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dtype: Any = jnp.float32
    weight_init: str = "xavier"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        specs = nin_block_specs(self.out_channels, self.kernel_size, self.stride, self.padding)
        return layers.run_stack(
            x, specs, act=nn.relu, dtype=self.dtype, weight_init=self.weight_init
        )


def nin_block(
    out_channels: int,
    kernel_size: int,
    strides: int = 1,
    padding: int = 0,
    dtype: Any = jnp.float32,
    **kw: Any,
) -> NiNBlock:
    """The book's ``nin_block(out_channels, kernel_size, strides, padding)`` as a Flax module."""
    return NiNBlock(out_channels, kernel_size, strides, padding, dtype=dtype, **kw)


class NiN(nn.Module):
    """NiN: (N, H, W, C) -> (N, num_classes) float32 logits; H, W >= 67 (224 in the book)."""

    num_classes: int = 10
    dropout: float = 0.5
    dtype: Any = jnp.float32
    weight_init: str = "xavier"  # kernel initialiser: "xavier" (d2l) or "he" (layers.KERNEL_INITS)

    def min_input_size(self) -> int:
        windows = []
        for _, kernel, stride, padding in ARCH:
            windows += [(kernel, stride, padding), POOL.window]
        return layers.min_input_size([*windows, LAST])

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        layers.check_input(x, model="NiN", min_size=self.min_input_size())
        for channels, kernel, stride, padding in ARCH:
            x = nin_block(
                channels, kernel, stride, padding, dtype=self.dtype, weight_init=self.weight_init
            )(x)
            x = layers.MaxPool(POOL.kernel, POOL.stride, POOL.padding)(x)
        x = layers.Dropout(self.dropout, deterministic=not train)(x)
        x = nin_block(self.num_classes, *LAST, dtype=self.dtype, weight_init=self.weight_init)(x)
        return layers.GlobalAvgPool()(x).astype(jnp.float32)
