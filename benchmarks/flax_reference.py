"""The plain Flax reference (e) of ``benchmarks/throughput.py``: the book's models as bare linen
modules and a bare jitted optax step, written the straightforward way.

No library code (nothing from ``jaxnotes``), no shape checks, no input checks, no metrics, no
guard: ``nn.Conv`` / ``nn.Dense`` / ``nn.max_pool`` / ``nn.avg_pool`` and a
``jax.jit(..., donate_argnums=...)`` step. It is the floor jaxnotes has to beat: whatever our
library adds around the same computation must not cost speed.

``dtype`` is the computation dtype of every layer (``jnp.bfloat16`` for mixed precision);
parameters stay float32 (linen's default ``param_dtype``). The modules name their layers so that
their parameter trees are exactly those of ``jaxnotes.models`` (same paths, same shapes), which
lets the tests run both on the same parameters. ResNet-18 and DenseNet carry batch norm: their
``batch_stats`` collection has the same tree as the zoo's too, and the bare step threads it
through ``apply(..., mutable=["batch_stats"])`` as Flax's own ImageNet example does.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

NAMES = ("lenet", "alexnet", "vgg11_small", "nin", "googlenet", "resnet18", "densenet")
STATEFUL = ("resnet18", "densenet")  # models with a batch_stats collection


def _flatten(x):
    return x.reshape(x.shape[0], -1)


class LeNet(nn.Module):
    num_classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.sigmoid(nn.Conv(6, (5, 5), padding=2, dtype=self.dtype)(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.sigmoid(nn.Conv(16, (5, 5), padding=0, dtype=self.dtype)(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = _flatten(x)
        x = nn.sigmoid(nn.Dense(120, dtype=self.dtype)(x))
        x = nn.sigmoid(nn.Dense(84, dtype=self.dtype)(x))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class AlexNet(nn.Module):
    num_classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        dt = self.dtype
        x = nn.relu(nn.Conv(96, (11, 11), strides=(4, 4), padding=1, dtype=dt)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = nn.relu(nn.Conv(256, (5, 5), padding=2, dtype=dt)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = nn.relu(nn.Conv(384, (3, 3), padding=1, dtype=dt)(x))
        x = nn.relu(nn.Conv(384, (3, 3), padding=1, dtype=dt)(x))
        x = nn.relu(nn.Conv(256, (3, 3), padding=1, dtype=dt)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = _flatten(x)
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(4096, dtype=dt)(x)))
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(4096, dtype=dt)(x)))
        return nn.Dense(self.num_classes, dtype=dt)(x)


class VGGBlock(nn.Module):
    num_convs: int
    out_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for _ in range(self.num_convs):
            x = nn.relu(nn.Conv(self.out_channels, (3, 3), padding=1, dtype=self.dtype)(x))
        return nn.max_pool(x, (2, 2), strides=(2, 2))


class VGG11Small(nn.Module):
    """VGG-11 with every block's channels / 4 (the book's ``small_conv_arch``)."""

    num_classes: int = 10
    arch: tuple = ((1, 16), (1, 32), (2, 64), (2, 128), (2, 128))
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for num_convs, channels in self.arch:
            x = VGGBlock(num_convs, channels, dtype=self.dtype)(x)
        x = _flatten(x)
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(4096, dtype=self.dtype)(x)))
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(4096, dtype=self.dtype)(x)))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class NiNBlock(nn.Module):
    out_channels: int
    kernel_size: int
    stride: int
    padding: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, s, c = self.kernel_size, self.stride, self.out_channels
        x = nn.relu(nn.Conv(c, (k, k), strides=(s, s), padding=self.padding, dtype=self.dtype)(x))
        x = nn.relu(nn.Conv(c, (1, 1), dtype=self.dtype)(x))
        return nn.relu(nn.Conv(c, (1, 1), dtype=self.dtype)(x))


class NiN(nn.Module):
    num_classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for channels, kernel, stride, padding in ((96, 11, 4, 0), (256, 5, 1, 2), (384, 3, 1, 1)):
            x = NiNBlock(channels, kernel, stride, padding, dtype=self.dtype)(x)
            x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        x = NiNBlock(self.num_classes, 3, 1, 1, dtype=self.dtype)(x)
        return jnp.mean(x, axis=(1, 2))


class Inception(nn.Module):
    c1: int
    c2: tuple
    c3: tuple
    c4: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(nn.Conv, dtype=self.dtype)
        p1 = nn.relu(conv(self.c1, (1, 1), name="p1_1")(x))
        p2 = nn.relu(conv(self.c2[0], (1, 1), name="p2_1")(x))
        p2 = nn.relu(conv(self.c2[1], (3, 3), padding=1, name="p2_2")(p2))
        p3 = nn.relu(conv(self.c3[0], (1, 1), name="p3_1")(x))
        p3 = nn.relu(conv(self.c3[1], (5, 5), padding=2, name="p3_2")(p3))
        p4 = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        p4 = nn.relu(conv(self.c4, (1, 1), name="p4_2")(p4))
        return jnp.concatenate([p1, p2, p3, p4], axis=-1)


GOOGLENET_STAGES = (
    (("3a", 64, (96, 128), (16, 32), 32), ("3b", 128, (128, 192), (32, 96), 64)),
    (
        ("4a", 192, (96, 208), (16, 48), 64),
        ("4b", 160, (112, 224), (24, 64), 64),
        ("4c", 128, (128, 256), (24, 64), 64),
        ("4d", 112, (144, 288), (32, 64), 64),
        ("4e", 256, (160, 320), (32, 128), 128),
    ),
    (("5a", 256, (160, 320), (32, 128), 128), ("5b", 384, (192, 384), (48, 128), 128)),
)


class GoogLeNet(nn.Module):
    """Without the auxiliary classifiers (as d2l)."""

    num_classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        dt, pad1 = self.dtype, ((1, 1), (1, 1))
        x = nn.relu(nn.Conv(64, (7, 7), strides=(2, 2), padding=3, dtype=dt)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad1)
        x = nn.relu(nn.Conv(64, (1, 1), dtype=dt)(x))
        x = nn.relu(nn.Conv(192, (3, 3), padding=1, dtype=dt)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad1)
        for index, stage in enumerate(GOOGLENET_STAGES):
            if index:
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad1)
            for name, c1, c2, c3, c4 in stage:
                x = Inception(c1, c2, c3, c4, dtype=dt, name=f"inception_{name}")(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=dt)(x)


def _batch_norm(train: bool, dtype: Any, name: str | None = None) -> nn.BatchNorm:
    """d2l's ``nn.BatchNorm2d`` settings: momentum 0.1 in PyTorch's convention (0.9 in flax's),
    eps 1e-5; batch statistics in training, running averages in evaluation."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name
    )


class Residual(nn.Module):
    num_channels: int
    use_1x1conv: bool = False
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        c, s, dt = self.num_channels, (self.strides, self.strides), self.dtype
        y = nn.Conv(c, (3, 3), strides=s, padding=1, dtype=dt, name="conv1")(x)
        y = nn.relu(_batch_norm(train, dt, "bn1")(y))
        y = nn.Conv(c, (3, 3), padding=1, dtype=dt, name="conv2")(y)
        y = _batch_norm(train, dt, "bn2")(y)
        if self.use_1x1conv:
            x = nn.Conv(c, (1, 1), strides=s, padding=0, dtype=dt, name="conv3")(x)
        return nn.relu(y + x)


def _stem(x, train: bool, dtype: Any):
    """b1 of ResNet and DenseNet: conv 64@7x7 s2 p3, BN, ReLU, max 3/2 p1."""
    x = nn.Conv(64, (7, 7), strides=(2, 2), padding=3, dtype=dtype)(x)
    x = nn.relu(_batch_norm(train, dtype)(x))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ResNet18(nn.Module):
    """d2l's ResNet-18: the stem, 4 stages of 2 residual blocks (64, 128, 256, 512 channels;
    the first block of stages 2-4 halves the size with a 1x1 conv on the shortcut), global
    average pool, dense."""

    num_classes: int = 10
    arch: tuple = ((2, 64), (2, 128), (2, 256), (2, 512))
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _stem(x, train, self.dtype)
        for stage, (blocks, channels) in enumerate(self.arch):
            for index in range(blocks):
                first = index == 0 and stage > 0
                x = Residual(
                    channels, use_1x1conv=first, strides=2 if first else 1, dtype=self.dtype
                )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class DenseBlock(nn.Module):
    num_convs: int
    num_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for _ in range(self.num_convs):
            y = nn.relu(_batch_norm(train, self.dtype)(x))
            y = nn.Conv(self.num_channels, (3, 3), padding=1, dtype=self.dtype)(y)
            x = jnp.concatenate([x, y], axis=-1)
        return x


class TransitionBlock(nn.Module):
    num_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(_batch_norm(train, self.dtype)(x))
        x = nn.Conv(self.num_channels, (1, 1), padding=0, dtype=self.dtype)(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
    """d2l's DenseNet: the stem, 4 dense blocks of 4 conv blocks (growth rate 32), a transition
    block halving the channels after each but the last, BN, ReLU, global average pool, dense."""

    num_classes: int = 10
    num_convs: tuple = (4, 4, 4, 4)
    growth_rate: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _stem(x, train, self.dtype)
        channels = 64
        for index, num_convs in enumerate(self.num_convs):
            x = DenseBlock(num_convs, self.growth_rate, dtype=self.dtype)(x, train)
            channels += num_convs * self.growth_rate
            if index != len(self.num_convs) - 1:
                channels //= 2
                x = TransitionBlock(channels, dtype=self.dtype)(x, train)
        x = nn.relu(_batch_norm(train, self.dtype)(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


MODELS = {
    "lenet": LeNet,
    "alexnet": AlexNet,
    "vgg11_small": VGG11Small,
    "nin": NiN,
    "googlenet": GoogLeNet,
    "resnet18": ResNet18,
    "densenet": DenseNet,
}


def get_model(name: str, num_classes: int = 10, dtype: Any = jnp.float32) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"no plain Flax version of {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, dtype=dtype)


def init_variables(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0):
    """(params, batch_stats) for inputs of ``input_shape`` (N, H, W, C), in one jitted call;
    ``batch_stats`` is ``{}`` for a model without batch norm."""
    x = jnp.zeros(input_shape, jnp.float32)

    def init():
        variables = model.init(jax.random.key(seed), x, train=False)
        return variables["params"], variables.get("batch_stats", {})

    return jax.jit(init)()


def init_params(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> Any:
    """Parameters for inputs of ``input_shape`` (N, H, W, C), initialised in one jitted call."""
    return init_variables(model, input_shape, seed)[0]


def make_train_step(model: nn.Module, tx: optax.GradientTransformation):
    """``step(params, batch_stats, opt_state, x, y, key) -> (params, batch_stats, opt_state,
    loss)``: forward, mean cross-entropy (float32), backward and the optax update in one jit;
    params, batch statistics and optimizer state donated so XLA updates them in place. ``key``
    is the step's dropout key; ``batch_stats`` is ``{}`` for a model without batch norm (else
    the forward pass runs with ``mutable=["batch_stats"]`` and returns the updated averages)."""

    def loss_fn(params, batch_stats, x, y, key):
        rngs = {"dropout": key}
        if batch_stats:
            variables = {"params": params, "batch_stats": batch_stats}
            logits, updates = model.apply(
                variables, x, train=True, rngs=rngs, mutable=["batch_stats"]
            )
            batch_stats = updates["batch_stats"]
        else:
            logits = model.apply({"params": params}, x, train=True, rngs=rngs)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
        return losses.mean(), batch_stats

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, batch_stats, opt_state, x, y, key):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, batch_stats), grads = grad_fn(params, batch_stats, x, y, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    return step
