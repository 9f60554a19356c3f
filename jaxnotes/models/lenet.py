"""LeNet-5 as the book trains it (chapter 7): two conv + avg-pool stages, three dense layers.

Shapes at the book's 28x28x1 Fashion-MNIST input::

    (N, 28, 28, 1) conv 6@5x5 p2 -> (N, 28, 28, 6) avg 2/2 -> (N, 14, 14, 6)
                   conv 16@5x5   -> (N, 10, 10, 16) avg 2/2 -> (N, 5, 5, 16)
    flatten (N, 400) -> dense 120 -> dense 84 -> dense classes

61,706 parameters for 10 classes. Sigmoid activations as in the book (``activation="relu"``
trains faster); Xavier-initialised kernels as d2l, without which the sigmoid net barely moves.

:class:`LeNetBN` is the batch-normalization chapter's LeNet (d2l's, chapter 11): batch norm
between every conv / dense layer and its sigmoid, and no padding on the first conv::

    (N, 28, 28, 1) conv 6@5x5 BN sigmoid  -> (N, 24, 24, 6)  avg 2/2 -> (N, 12, 12, 6)
                   conv 16@5x5 BN sigmoid -> (N, 8, 8, 16)   avg 2/2 -> (N, 4, 4, 16)
    flatten (N, 256) -> dense 120 BN sigmoid -> dense 84 BN sigmoid -> dense classes

44,878 parameters for 10 classes (the BN layers' scale and bias included; their running means
and variances are state, not parameters). It trains with a learning rate of 1.0, where the plain
LeNet diverges or stalls: batch norm keeps every sigmoid's input near zero mean, unit variance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnotes.models import layers
from jaxnotes.models.layers import conv_spec, pool_spec

FEATURES = (
    conv_spec(6, 5, padding=2),
    pool_spec("avg", 2),
    conv_spec(16, 5),
    pool_spec("avg", 2),
)
HIDDEN = (120, 84)


class LeNet(nn.Module):
    """LeNet: (N, H, W, C) -> (N, num_classes) float32 logits; H, W >= 12 (28 in the book)."""

    num_classes: int = 10
    activation: str | Callable[[jax.Array], jax.Array] = "sigmoid"
    dtype: Any = jnp.float32
    weight_init: str = "xavier"  # kernel initialiser: "xavier" (d2l) or "he" (layers.KERNEL_INITS)

    def min_input_size(self) -> int:
        return layers.min_input_size([spec.window for spec in FEATURES])

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        layers.check_input(x, model="LeNet", min_size=self.min_input_size())
        act = layers.activation_fn(self.activation)
        x = layers.run_stack(x, FEATURES, act=act, dtype=self.dtype, weight_init=self.weight_init)
        x = layers.flatten(x)
        for width in HIDDEN:
            x = act(layers.dense(x, width, dtype=self.dtype, weight_init=self.weight_init))
        return layers.dense(
            x, self.num_classes, dtype=self.dtype, weight_init=self.weight_init
        ).astype(jnp.float32)


FEATURES_BN = (conv_spec(6, 5), pool_spec("avg", 2), conv_spec(16, 5), pool_spec("avg", 2))


class LeNetBN(nn.Module):
    """LeNet with batch norm: (N, H, W, C) -> (N, num_classes) float32 logits; H, W >= 16 (28 in
    the book). ``train=True``: batch statistics, and ``batch_stats`` updated (pass
    ``mutable=["batch_stats"]``); ``train=False``: the running averages."""

    num_classes: int = 10
    activation: str | Callable[[jax.Array], jax.Array] = "sigmoid"
    dtype: Any = jnp.float32
    weight_init: str = "xavier"

    def min_input_size(self) -> int:
        return layers.min_input_size([spec.window for spec in FEATURES_BN])

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        layers.check_input(x, model="LeNetBN", min_size=self.min_input_size())
        act = layers.activation_fn(self.activation)
        kw = {"dtype": self.dtype, "weight_init": self.weight_init}
        for spec in FEATURES_BN:
            if spec.kind == "conv":
                x = layers.conv(x, spec.features, spec.kernel, spec.stride, spec.padding, **kw)
                x = act(layers.batch_norm(x, train, dtype=self.dtype))
            else:
                x = layers.AvgPool(spec.kernel, spec.stride, spec.padding)(x)
        x = layers.flatten(x)
        for width in HIDDEN:
            x = act(layers.batch_norm(layers.dense(x, width, **kw), train, dtype=self.dtype))
        return layers.dense(x, self.num_classes, **kw).astype(jnp.float32)
