"""VGG (chapter 8): blocks of 3x3 convs (padding 1) each closed by a 2x2 max pool, then three dense.

A block keeps the size through its convs and halves it in the pool, so five blocks take 224 to 7::

    (N, 224, 224, C) -> block 1 -> (N, 112, 112, c1) -> ... -> block 5 -> (N, 7, 7, c5)
    flatten (N, 49 * c5) -> dense 4096 -> dropout -> dense 4096 -> dropout -> dense classes

Presets (``functools.partial`` of :class:`VGG`): ``vgg11`` (the book's VGG-11), ``vgg11_small``
(every channel count / 4, the version the book trains; the 4096-4096 dense layers stay), ``vgg16``
(13 conv + 3 dense: 138,357,544 parameters at 224x224x3 with 1000 classes). Any input of at least
32x32 (2 ** 5) works: the first dense layer takes whatever the last block leaves.

Why 3x3: a unit after ``n`` stacked 3x3 convs sees ``2n + 1`` pixels, so three of them see the
7x7 of one 7x7 conv with 27 c^2 instead of 49 c^2 weights and three non-linearities instead of one.
Receptive field (:func:`stage_receptive_fields`) of one unit, after each stage's convs / its pool:

    stage        1      2       3        4          5
    VGG-11     3 / 4  8 / 10  26 / 30  62 / 70  134 / 150
    VGG-16     5 / 6  14 / 16 40 / 44  92 / 100 196 / 212
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnotes import shapes
from jaxnotes.models import layers
from jaxnotes.models.layers import Spec, conv_spec, pool_spec

# (num_convs, out_channels) per block.
VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
VGG16_ARCH = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
HIDDEN = (4096, 4096)


def vgg_block_specs(num_convs: int, out_channels: int) -> tuple[Spec, ...]:
    """``num_convs`` x conv ``out_channels``@3x3 p1, then max pool 2/2."""
    return (conv_spec(out_channels, 3, padding=1),) * num_convs + (pool_spec("max", 2),)


class VGGBlock(nn.Module):
    """(N, H, W, C) -> (N, H // 2, W // 2, out_channels); ReLU after every conv."""

    num_convs: int
    out_channels: int
    dtype: Any = jnp.float32
    weight_init: str = "xavier"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        specs = vgg_block_specs(self.num_convs, self.out_channels)
        return layers.run_stack(
            x, specs, act=nn.relu, dtype=self.dtype, weight_init=self.weight_init
        )


def vgg_block(num_convs: int, out_channels: int, dtype: Any = jnp.float32, **kw: Any) -> VGGBlock:
    """The book's ``vgg_block(num_convs, out_channels)`` as a Flax module."""
    return VGGBlock(num_convs=num_convs, out_channels=out_channels, dtype=dtype, **kw)


def arch_windows(arch: Sequence[tuple[int, int]]) -> list[layers.Window]:
    return [spec.window for n, c in arch for spec in vgg_block_specs(n, c)]


def stage_receptive_fields(arch: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Per block: receptive field (input pixels) of one unit after its convs and after its pool."""
    stack: list[tuple[int, int]] = []
    fields = []
    for num_convs, _ in arch:
        stack += [(3, 1)] * num_convs
        after_convs = shapes.receptive_field(stack)
        stack.append((2, 2))
        fields.append((after_convs, shapes.receptive_field(stack)))
    return tuple(fields)


def small_arch(arch: Sequence[tuple[int, int]], ratio: int = 4) -> tuple[tuple[int, int], ...]:
    """The book's cheaper VGG: every block's channels divided by ``ratio``."""
    return tuple((num_convs, channels // ratio) for num_convs, channels in arch)


class VGG(nn.Module):
    """VGG: (N, H, W, C) -> (N, num_classes) float32 logits; H, W >= 32 (224 in the book)."""

    arch: Sequence[tuple[int, int]]
    num_classes: int = 10
    dropout: float = 0.5
    dtype: Any = jnp.float32
    weight_init: str = "xavier"  # kernel initialiser: "xavier" (d2l) or "he" (layers.KERNEL_INITS)

    def min_input_size(self) -> int:
        return layers.min_input_size(arch_windows(self.arch))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        layers.check_input(x, model="VGG", min_size=self.min_input_size())
        for num_convs, channels in self.arch:
            x = vgg_block(num_convs, channels, dtype=self.dtype, weight_init=self.weight_init)(x)
        x = layers.flatten(x)
        for width in HIDDEN:
            x = nn.relu(layers.dense(x, width, dtype=self.dtype, weight_init=self.weight_init))
            x = layers.Dropout(self.dropout, deterministic=not train)(x)
        return layers.dense(
            x, self.num_classes, dtype=self.dtype, weight_init=self.weight_init
        ).astype(jnp.float32)


vgg11 = functools.partial(VGG, arch=VGG11_ARCH)
vgg11_small = functools.partial(VGG, arch=small_arch(VGG11_ARCH, 4))
vgg16 = functools.partial(VGG, arch=VGG16_ARCH)
