"""AlexNet, the book's bridge from LeNet to VGG: deeper, ReLU, max pooling, dropout, 224 input.

Shapes at the book's 224x224x1 input (Fashion-MNIST resized)::

    conv 96@11x11 s4 p1 -> (N, 54, 54, 96)   max 3/2 -> (N, 26, 26, 96)
    conv 256@5x5 p2     -> (N, 26, 26, 256)  max 3/2 -> (N, 12, 12, 256)
    conv 384@3x3 p1, conv 384@3x3 p1, conv 256@3x3 p1 -> (N, 12, 12, 256)  max 3/2 -> (N, 5, 5, 256)
    flatten (N, 6400) -> dense 4096 -> dropout -> dense 4096 -> dropout -> dense classes

The first conv has padding 1 as in d2l's code (``nn.Conv2d(1, 96, kernel_size=11, stride=4,
padding=1)``); at 224 the output is 54x54 with or without it. Smallest input: 65x65.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnotes.models import layers
from jaxnotes.models.layers import conv_spec, pool_spec

FEATURES = (
    conv_spec(96, 11, stride=4, padding=1),
    pool_spec("max", 3, stride=2),
    conv_spec(256, 5, padding=2),
    pool_spec("max", 3, stride=2),
    conv_spec(384, 3, padding=1),
    conv_spec(384, 3, padding=1),
    conv_spec(256, 3, padding=1),
    pool_spec("max", 3, stride=2),
)
HIDDEN = (4096, 4096)


class AlexNet(nn.Module):
    """AlexNet: (N, H, W, C) -> (N, num_classes) float32 logits; H, W >= 65 (224 in the book)."""

    num_classes: int = 10
    dropout: float = 0.5
    dtype: Any = jnp.float32
    weight_init: str = "xavier"  # kernel initialiser: "xavier" (d2l) or "he" (layers.KERNEL_INITS)

    def min_input_size(self) -> int:
        return layers.min_input_size([spec.window for spec in FEATURES])

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        layers.check_input(x, model="AlexNet", min_size=self.min_input_size())
        x = layers.run_stack(
            x, FEATURES, act=nn.relu, dtype=self.dtype, weight_init=self.weight_init
        )
        x = layers.flatten(x)
        for width in HIDDEN:
            x = nn.relu(layers.dense(x, width, dtype=self.dtype, weight_init=self.weight_init))
            x = layers.Dropout(self.dropout, deterministic=not train)(x)
        return layers.dense(
            x, self.num_classes, dtype=self.dtype, weight_init=self.weight_init
        ).astype(jnp.float32)
