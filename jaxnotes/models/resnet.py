"""ResNet (chapter 12): residual blocks, so that a deeper net can always fall back to the identity.

A :class:`Residual` block learns ``f(x) - x`` instead of ``f(x)``: its two 3x3 convs (each with
batch norm, ReLU after the first and after the sum) are added to the block's input. When the
block changes the shape (stride 2, more channels), a 1x1 conv with the same stride carries the
input to the new shape (``use_1x1conv=True``)::

    x -> conv c@3x3 s p1 -> BN -> ReLU -> conv c@3x3 p1 -> BN -> (+) -> ReLU
    |                                                            |
    +--------------- (1x1 conv c, stride s, if use_1x1conv) ------+

Stages of the book's ResNet-18 (``resnet18``), shapes at its 96x96x1 input::

    b1  conv 64@7x7 s2 p3, BN, ReLU, max 3/2 p1        -> (N, 24, 24, 64)
    b2  Residual 64, Residual 64                       -> (N, 24, 24, 64)
    b3  Residual 128 (1x1, s2), Residual 128           -> (N, 12, 12, 128)
    b4  Residual 256 (1x1, s2), Residual 256           -> (N, 6, 6, 256)
    b5  Residual 512 (1x1, s2), Residual 512           -> (N, 3, 3, 512)
    global average pool, dense classes                 -> (N, classes)

Eighteen layers: the first conv, 4 x 2 x 2 convs in the blocks and the dense layer (the 1x1
shortcuts are not counted). 11,178,378 parameters for 10 classes (d2l's PyTorch model has the
same: conv biases kept, as ``nn.Conv2d``'s default). Other depths are other ``arch`` tuples of
(residual blocks, channels) per stage (``functools.partial(ResNet, arch=...)``).

Every stride-2 step pads, so any input of at least 1x1 runs (the maps round up: ``ceil(n / 2)``);
in training, batch norm needs more than one value per channel, so a batch of one image needs a
last map larger than 1x1 (an input of at least 33x33). Batch norm as :func:`layers.batch_norm`:
batch statistics with ``train=True`` (collection ``batch_stats`` updated), running averages
with ``train=False``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnotes.models import layers
from jaxnotes.models.layers import conv, conv_spec, pool_spec

# b1: conv 64@7x7 s2 p3 (then BN, ReLU), max 3/2 p1; shared with DenseNet.
STEM = (conv_spec(64, 7, stride=2, padding=3), pool_spec("max", 3, stride=2, padding=1))
# (residual blocks, channels) per stage.
RESNET18_ARCH = ((2, 64), (2, 128), (2, 256), (2, 512))


def stem(x: jax.Array, train: bool, *, dtype: Any, weight_init: str) -> jax.Array:
    """The book's b1 of ResNet and DenseNet: (N, H, W, C) -> (N, ceil(H/4), ceil(W/4), 64)."""
    first, pool = STEM
    kw = {"dtype": dtype, "weight_init": weight_init}
    x = conv(x, first.features, first.kernel, first.stride, first.padding, **kw)
    x = nn.relu(layers.batch_norm(x, train, dtype=dtype))
    return layers.MaxPool(pool.kernel, pool.stride, pool.padding)(x)


class Residual(nn.Module):
    """(N, H, W, C) -> (N, ceil(H / strides), ceil(W / strides), num_channels).

    Without ``use_1x1conv`` the input is added as it is, so it must already have that shape
    (``num_channels`` channels, ``strides=1``): anything else is refused before any layer runs.
    """

    num_channels: int
    use_1x1conv: bool = False
    strides: int = 1
    dtype: Any = jnp.float32
    weight_init: str = "xavier"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c, s = self.num_channels, self.strides
        if not self.use_1x1conv and (x.shape[-1] != c or s != 1):
            raise ValueError(
                f"Residual({c}, strides={s}) without use_1x1conv adds its input unchanged, so "
                f"the input must have {c} channels and strides must be 1; got an input of shape "
                f"{tuple(x.shape)}: set use_1x1conv=True to reshape the shortcut"
            )
        kw = {"dtype": self.dtype, "weight_init": self.weight_init}
        y = conv(x, c, 3, stride=s, padding=1, name="conv1", **kw)
        y = nn.relu(layers.batch_norm(y, train, dtype=self.dtype, name="bn1"))
        y = conv(y, c, 3, padding=1, name="conv2", **kw)
        y = layers.batch_norm(y, train, dtype=self.dtype, name="bn2")
        if self.use_1x1conv:
            x = conv(x, c, 1, stride=s, name="conv3", **kw)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """ResNet: (N, H, W, C) -> (N, num_classes) float32 logits; any H, W >= 1 (96 in the book).

    ``arch``: (residual blocks, channels) per stage; the first block of every stage but the
    first halves the size (stride 2) and has a 1x1 conv on the shortcut.
    """

    arch: Sequence[tuple[int, int]]
    num_classes: int = 10
    dtype: Any = jnp.float32
    weight_init: str = "xavier"  # kernel initialiser: "xavier" (d2l) or "he" (layers.KERNEL_INITS)

    def min_input_size(self) -> int:
        # Each stage after the first starts with a 3x3 s2 p1 conv (its 1x1 s2 shortcut gives
        # the same size); the other convs keep the size.
        windows = [spec.window for spec in STEM] + [(3, 2, 1)] * (len(self.arch) - 1)
        return layers.min_input_size(windows)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        layers.check_input(x, model="ResNet", min_size=self.min_input_size())
        layers.kernel_init(self.weight_init)  # an unknown name fails here, before any layer
        kw = {"dtype": self.dtype, "weight_init": self.weight_init}
        x = stem(x, train, **kw)
        for stage, (num_residuals, channels) in enumerate(self.arch):
            for index in range(num_residuals):
                if index == 0 and stage > 0:
                    block = Residual(channels, use_1x1conv=True, strides=2, **kw)
                else:
                    block = Residual(channels, **kw)
                x = block(x, train)
        x = layers.GlobalAvgPool()(x)
        return layers.dense(x, self.num_classes, **kw).astype(jnp.float32)


resnet18 = functools.partial(ResNet, arch=RESNET18_ARCH)
