"""GoogLeNet (chapter 10): Inception blocks in the book's five stages b1..b5, optional aux heads.

An :class:`Inception` block runs four paths side by side and concatenates them on channels, so
every path must keep the input's height and width (asserted before the concatenation)::

    1x1 c1 | 1x1 c2[0] -> 3x3 c2[1] p1 | 1x1 c3[0] -> 5x5 c3[1] p2 | max 3/1 p1 -> 1x1 c4

Stages, with shapes at the book's 96x96x1 input (224 in the paper: 112, 56, 28, 14, 7)::

    b1  conv 64@7x7 s2 p3, max 3/2 p1                         -> (N, 24, 24, 64)
    b2  conv 64@1x1, conv 192@3x3 p1, max 3/2 p1              -> (N, 12, 12, 192)
    b3  Inception 3a, 3b, max 3/2 p1                          -> (N, 6, 6, 480)
    b4  Inception 4a, 4b, 4c, 4d, 4e, max 3/2 p1              -> (N, 3, 3, 832)
    b5  Inception 5a, 5b, global average pool, dense classes  -> (N, classes)

Auxiliary classifiers (``aux_logits=True``; the paper's, the notes mention them): after 4a and
4d, avg pool 5x5 stride 3 (no padding), conv 128@1x1 + ReLU, dense 1024 + ReLU, dropout 0.7,
dense classes. With ``train=True`` the model returns ``(logits, aux_4a, aux_4d)`` and the engine's
loss (``jaxnotes.losses``) adds 0.3 x each auxiliary loss; at inference only ``logits``. The aux
parameters are created by ``init`` whatever ``train`` is, so variables made in eval mode train too.

What the aux pooling sees (``floor((n - 5 + 3) / 3)`` per side, from :mod:`jaxnotes.shapes`):

* at 224x224 the 4a / 4d maps are 14x14, pooled to 4x4 by windows at 0, 3, 6, 9, which cover the
  map exactly: the head's dense layer takes 4 * 4 * 128 = 2048 features, as in the paper;
* at 96x96 they are 6x6, pooled to 1x1 by a single window over the top-left 5x5: the last row and
  column are not seen, and the dense layer takes 128 features;
* below 65x65 the maps are smaller than 5x5; the window is then clamped to the map, so the head
  pools the whole map to 1x1 (a global average) instead of failing.

Smallest input of the whole network: 1x1 (every stride-2 step pads, so nothing ever vanishes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnotes.models import layers
from jaxnotes.models.layers import conv, conv_spec, pool_spec


class Inception(nn.Module):
    """(N, H, W, C) -> (N, H, W, c1 + c2[1] + c3[1] + c4), ReLU after every conv."""

    c1: int
    c2: Sequence[int]
    c3: Sequence[int]
    c4: int
    dtype: Any = jnp.float32
    weight_init: str = "xavier"  # kernel initialiser, see layers.KERNEL_INITS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        relu, kw = nn.relu, {"dtype": self.dtype, "weight_init": self.weight_init}
        p1 = relu(conv(x, self.c1, 1, name="p1_1", **kw))
        p2 = relu(conv(x, self.c2[0], 1, name="p2_1", **kw))
        p2 = relu(conv(p2, self.c2[1], 3, padding=1, name="p2_2", **kw))
        p3 = relu(conv(x, self.c3[0], 1, name="p3_1", **kw))
        p3 = relu(conv(p3, self.c3[1], 5, padding=2, name="p3_2", **kw))
        p4 = layers.MaxPool(3, 1, padding=1, name="p4_1")(x)
        p4 = relu(conv(p4, self.c4, 1, name="p4_2", **kw))
        # Concatenating on channels needs every path at the input's height and width.
        chex.assert_shape([p1, p2, p3, p4], (*x.shape[:3], None))
        return jnp.concatenate([p1, p2, p3, p4], axis=-1)


class AuxHead(nn.Module):
    """Auxiliary classifier: (N, H, W, C) -> (N, num_classes) float32; see the module docstring."""

    num_classes: int = 10
    dropout: float = 0.7
    dtype: Any = jnp.float32
    weight_init: str = "xavier"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = {"dtype": self.dtype, "weight_init": self.weight_init}
        # Clamp the 5x5 window to a smaller map (inputs below 65x65): a global average there.
        window = (min(5, x.shape[1]), min(5, x.shape[2]))
        x = layers.AvgPool(window, stride=3)(x)
        x = nn.relu(conv(x, 128, 1, **kw))
        x = nn.relu(layers.dense(layers.flatten(x), 1024, **kw))
        x = layers.Dropout(self.dropout, deterministic=not train)(x)
        return layers.dense(x, self.num_classes, **kw).astype(jnp.float32)


# b1 and b2: a plain stack.
STEM = (
    conv_spec(64, 7, stride=2, padding=3),
    pool_spec("max", 3, stride=2, padding=1),
    conv_spec(64, 1),
    conv_spec(192, 3, padding=1),
    pool_spec("max", 3, stride=2, padding=1),
)
# (name, (c1, c2, c3, c4)) of b3, b4, b5; a 3/2 p1 max pool closes b3 and b4.
STAGES = (
    (
        ("3a", (64, (96, 128), (16, 32), 32)),
        ("3b", (128, (128, 192), (32, 96), 64)),
    ),
    (
        ("4a", (192, (96, 208), (16, 48), 64)),
        ("4b", (160, (112, 224), (24, 64), 64)),
        ("4c", (128, (128, 256), (24, 64), 64)),
        ("4d", (112, (144, 288), (32, 64), 64)),
        ("4e", (256, (160, 320), (32, 128), 128)),
    ),
    (
        ("5a", (256, (160, 320), (32, 128), 128)),
        ("5b", (384, (192, 384), (48, 128), 128)),
    ),
)
STAGE_POOL = pool_spec("max", 3, stride=2, padding=1)
AUX_AFTER = ("4a", "4d")


class GoogLeNet(nn.Module):
    """GoogLeNet: (N, H, W, C) -> (N, num_classes) float32 logits, any H, W >= 1 (96 in the book).

    With ``aux_logits=True`` and ``train=True``: ``(logits, aux_4a, aux_4d)``, each (N, classes).
    ``weight_init``: kernel initialiser of every conv and dense layer, ``"xavier"`` (d2l's) or
    ``"he"`` (Kaiming normal, what a 22-layer ReLU net without batch norm trains best from; the
    runner's digits preset uses it).
    """

    num_classes: int = 10
    aux_logits: bool = False
    aux_dropout: float = 0.7
    dtype: Any = jnp.float32
    weight_init: str = "xavier"

    def min_input_size(self) -> int:
        # Inception blocks keep the size, so only the stem and the stage pools constrain it.
        windows = [spec.window for spec in STEM] + [STAGE_POOL.window] * (len(STAGES) - 1)
        return layers.min_input_size(windows)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | tuple[jax.Array, ...]:
        layers.check_input(x, model="GoogLeNet", min_size=self.min_input_size())
        layers.kernel_init(self.weight_init)  # an unknown name fails here, before any layer
        kw = {"dtype": self.dtype, "weight_init": self.weight_init}
        x = layers.run_stack(x, STEM, act=nn.relu, **kw)
        # The aux heads run in training, and at init whatever `train` is so their params exist.
        run_aux = self.aux_logits and (train or self.is_initializing())
        aux = []
        for index, stage in enumerate(STAGES):
            if index:
                x = layers.MaxPool(STAGE_POOL.kernel, STAGE_POOL.stride, STAGE_POOL.padding)(x)
            for name, (c1, c2, c3, c4) in stage:
                x = Inception(c1, c2, c3, c4, **kw, name=f"inception_{name}")(x)
                if run_aux and name in AUX_AFTER:
                    head = AuxHead(self.num_classes, self.aux_dropout, **kw, name=f"aux_{name}")
                    aux.append(head(x, train))
        x = layers.GlobalAvgPool()(x)
        logits = layers.dense(x, self.num_classes, **kw).astype(jnp.float32)
        if self.aux_logits and train:
            return (logits, *aux)
        return logits
