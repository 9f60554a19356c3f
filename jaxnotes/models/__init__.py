"""The model zoo: the book's CNNs (and the dropout chapter's MLP) as Flax linen modules.

Inputs are NHWC float arrays; every model returns float32 logits (GoogLeNet with aux heads, in
training: ``(logits, *aux)``) and is called as
``model.apply(variables, x, train=bool, rngs={"dropout": key})``; the batch-norm models
(``lenet_bn``, ``resnet18``, ``densenet``) also carry a ``batch_stats`` collection, updated in
training with ``mutable=["batch_stats"]``. ``dtype`` sets the computation dtype (e.g.
``jnp.bfloat16``); parameters stay float32. Look models up by name::

    model = get_model("lenet", num_classes=10, activation="relu")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))

``BOOK_INPUT_SIZE[name]`` is the height (= width) the book feeds each model. The loss lives with
the engine (``jaxnotes.losses``; re-exported here for older imports).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from jaxnotes.losses import classification_loss, cross_entropy
from jaxnotes.models.alexnet import AlexNet
from jaxnotes.models.densenet import DenseBlock, DenseNet, TransitionBlock, transition_block
from jaxnotes.models.googlenet import AuxHead, GoogLeNet, Inception
from jaxnotes.models.layers import BatchNorm
from jaxnotes.models.lenet import LeNet, LeNetBN
from jaxnotes.models.mlp import MLP
from jaxnotes.models.nin import NiN, NiNBlock, nin_block
from jaxnotes.models.resnet import RESNET18_ARCH, Residual, ResNet, resnet18
from jaxnotes.models.vgg import (
    VGG,
    VGG11_ARCH,
    VGG16_ARCH,
    VGGBlock,
    stage_receptive_fields,
    vgg11,
    vgg11_small,
    vgg16,
    vgg_block,
)

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "lenet": LeNet,
    "alexnet": AlexNet,
    "vgg11": vgg11,
    "vgg11_small": vgg11_small,
    "vgg16": vgg16,
    "nin": NiN,
    "googlenet": GoogLeNet,
    "lenet_bn": LeNetBN,
    "resnet18": resnet18,
    "densenet": DenseNet,
}

BOOK_INPUT_SIZE: dict[str, int] = {
    "mlp": 28,
    "lenet": 28,
    "alexnet": 224,
    "vgg11": 224,
    "vgg11_small": 224,
    "vgg16": 224,
    "nin": 224,
    "googlenet": 96,
    "lenet_bn": 28,
    "resnet18": 96,
    "densenet": 96,
}


def get_model(name: str, num_classes: int = 10, **kw: Any) -> nn.Module:
    """The model called ``name`` (see ``MODELS``); ``kw`` sets its fields, e.g. ``dropout=0.3``,
    ``aux_logits=True`` (googlenet), ``activation="relu"`` (lenet), ``dtype=jnp.bfloat16``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for field, value in kw.items():
        rates = value if isinstance(value, tuple | list) else [value]  # MLP: one per layer
        valid = all(isinstance(r, numbers.Real) and 0.0 <= r < 1.0 for r in rates)
        if "dropout" in field and not valid:
            raise ValueError(f"{field} is a dropout rate and must be in [0, 1), got {value!r}")
    factory = MODELS[name]
    cls = factory.func if hasattr(factory, "func") else factory
    fields = [f for f in cls.__dataclass_fields__ if f not in ("parent", "name")]
    unknown = sorted(set(kw) - set(fields))
    if unknown:
        raise TypeError(f"{name} has no field(s) {unknown}; its fields: {', '.join(fields)}")
    return factory(num_classes=num_classes, **kw)


__all__ = [
    "BOOK_INPUT_SIZE",
    "MLP",
    "MODELS",
    "RESNET18_ARCH",
    "VGG",
    "VGG11_ARCH",
    "VGG16_ARCH",
    "AlexNet",
    "AuxHead",
    "BatchNorm",
    "DenseBlock",
    "DenseNet",
    "GoogLeNet",
    "Inception",
    "LeNet",
    "LeNetBN",
    "NiN",
    "NiNBlock",
    "ResNet",
    "Residual",
    "TransitionBlock",
    "VGGBlock",
    "classification_loss",
    "cross_entropy",
    "get_model",
    "nin_block",
    "resnet18",
    "stage_receptive_fields",
    "transition_block",
    "vgg11",
    "vgg11_small",
    "vgg16",
    "vgg_block",
]
