"""Models a user would write, defined here and not in the zoo: one architecture in linen and NNX.

A small residual CNN with batch normalisation (a stem conv + BN + ReLU, one residual block of two
conv + BN, global average pooling, a dense head). Both versions compute the same function; the
NNX one is filled with the linen one's weights by :func:`nnx_from_linen`.
"""

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx

MOMENTUM = 0.9  # BatchNorm's running-average momentum in both versions


class ResBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(x)
        y = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM)(y))
        y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(y)
        y = nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM)(y)
        return nn.relu(x + y)


class TinyResNet(nn.Module):
    num_classes: int = 10
    width: int = 16
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (3, 3), padding="SAME")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM)(x))
        x = ResBlock(self.width)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class NNXResBlock(nnx.Module):
    def __init__(self, features: int, rngs: nnx.Rngs):
        conv = dict(kernel_size=(3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.conv1 = nnx.Conv(features, features, **conv)
        self.bn1 = nnx.BatchNorm(features, momentum=MOMENTUM, rngs=rngs)
        self.conv2 = nnx.Conv(features, features, **conv)
        self.bn2 = nnx.BatchNorm(features, momentum=MOMENTUM, rngs=rngs)

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        return nnx.relu(x + self.bn2(self.conv2(y)))


class NNXTinyResNet(nnx.Module):
    def __init__(self, channels=1, num_classes=10, width=16, dropout=0.0, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(channels, width, kernel_size=(3, 3), padding="SAME", rngs=rngs)
        self.bn = nnx.BatchNorm(width, momentum=MOMENTUM, rngs=rngs)
        self.block = NNXResBlock(width, rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x)))
        x = jnp.mean(self.block(x), axis=(1, 2))
        return self.head(self.dropout(x))


def nnx_from_linen(variables, channels=1, num_classes=10, width=16) -> NNXTinyResNet:
    """An NNX TinyResNet holding the weights and running statistics of linen ``variables``."""
    model = NNXTinyResNet(channels, num_classes, width, rngs=nnx.Rngs(0))
    p, s = variables["params"], variables["batch_stats"]
    pairs = [
        (model.conv, p["Conv_0"], None),
        (model.bn, p["BatchNorm_0"], s["BatchNorm_0"]),
        (model.block.conv1, p["ResBlock_0"]["Conv_0"], None),
        (model.block.bn1, p["ResBlock_0"]["BatchNorm_0"], s["ResBlock_0"]["BatchNorm_0"]),
        (model.block.conv2, p["ResBlock_0"]["Conv_1"], None),
        (model.block.bn2, p["ResBlock_0"]["BatchNorm_1"], s["ResBlock_0"]["BatchNorm_1"]),
        (model.head, p["Dense_0"], None),
    ]
    for layer, weights, stats in pairs:
        for name, value in {**weights, **(stats or {})}.items():
            getattr(layer, name)[...] = jnp.asarray(value)
    return model
