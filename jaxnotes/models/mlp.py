"""The dropout chapter's MLP: flatten, hidden dense + ReLU + dropout layers, then the classes.

    (N, H, W, C) or (N, D) -> flatten (N, D) -> [dense h_i -> ReLU -> dropout p_i] * len(hidden)
    -> dense classes -> (N, num_classes) float32 logits

The book's defaults: two hidden layers of 256 units, dropout 0.2 after the first and 0.5 after the
second (the layer nearer the input gets the smaller rate). Dropout is active only with
``train=True`` and draws from the ``"dropout"`` rng.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnotes.models import layers


class MLP(nn.Module):
    """``dropout`` is one rate per hidden layer, or a single rate for all of them."""

    num_classes: int = 10
    hidden: Sequence[int] = (256, 256)
    dropout: float | Sequence[float] = (0.2, 0.5)
    dtype: Any = jnp.float32
    weight_init: str = "xavier"  # kernel initialiser: "xavier" (d2l) or "he" (layers.KERNEL_INITS)

    def rates(self) -> tuple:
        if isinstance(self.dropout, int | float):
            return (float(self.dropout),) * len(self.hidden)
        if getattr(self.dropout, "ndim", None) == 0:  # a traced rate (a population member's)
            return (self.dropout,) * len(self.hidden)
        if len(self.dropout) != len(self.hidden):
            raise ValueError(
                f"MLP: one dropout rate per hidden layer, got hidden={tuple(self.hidden)} and "
                f"dropout={tuple(self.dropout)}"
            )
        return tuple(float(rate) for rate in self.dropout)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # Images (N, H, W, C) or feature rows (N, D); a rank-3 input is ambiguous (one image or a
        # batch without channels), so it is refused rather than flattened the wrong way.
        if x.ndim not in (2, 4):
            raise ValueError(
                f"MLP expects a float array of layout {layers.LAYOUT} or (N, D); "
                f"got shape {tuple(x.shape)} of rank {x.ndim}"
            )
        x = layers.flatten(x)
        for width, rate in zip(self.hidden, self.rates(), strict=True):
            x = nn.relu(layers.dense(x, width, dtype=self.dtype, weight_init=self.weight_init))
            x = layers.Dropout(rate, deterministic=not train)(x)
        return layers.dense(
            x, self.num_classes, dtype=self.dtype, weight_init=self.weight_init
        ).astype(jnp.float32)
