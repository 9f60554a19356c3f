"""LeNet-5 as the book trains it (chapter 7): two conv + avg-pool stages, three dense layers.

Shapes at the book's 28x28x1 Fashion-MNIST input::

    (N, 28, 28, 1) conv 6@5x5 p2 -> (N, 28, 28, 6) avg 2/2 -> (N, 14, 14, 6)
                   conv 16@5x5   -> (N, 10, 10, 16) avg 2/2 -> (N, 5, 5, 16)
    flatten (N, 400) -> dense 120 -> dense 84 -> dense classes

61,706 parameters for 10 classes. Sigmoid activations as in the book (``activation="relu"``
trains faster); Xavier-initialised kernels as d2l, without which the sigmoid net barely moves.
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
