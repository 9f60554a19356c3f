"""The book's PyTorch models, written as d2l's PyTorch code writes them (the baseline of
``benchmarks/throughput.py``).

Each network takes Fashion-MNIST-shaped input: (N, 1, H, W) float32, NCHW, at the book's size
(``jaxnotes.models.BOOK_INPUT_SIZE``), and has 10 outputs. Channels, kernels, strides and paddings
are d2l's and equal ours in ``jaxnotes/models/*.py`` (``tests/test_benchmarks.py`` checks the
parameter counts and, with copied weights, the outputs):

- ``lenet``: sigmoid and average pooling as in the book;
- ``alexnet``: the first conv has padding 1, as in d2l's code; the first dense layer takes 6400;
- ``vgg11_small``: VGG-11 with every block's channels / 4, dense 4096-4096 (d2l's ``ratio = 4``);
- ``nin``: ``nin_block`` x 4, dropout before the last block, global average pooling;
- ``googlenet``: blocks b1..b5 with nine Inception blocks, without the auxiliary heads (d2l has
  none either);
- ``lenet_bn``, ``resnet18``, ``densenet`` (``MODERN``; ``resnet18`` and ``densenet`` are also in
  ``throughput.py``'s table, all three in ``train_cpu.py`` and ``tests/test_modern_cnn.py``):
  the batch-norm chapters' networks, with
  ``nn.BatchNorm2d`` / ``nn.BatchNorm1d`` as d2l's concise code. PyTorch's running variance is
  updated with the *unbiased* batch variance (n / (n - 1) times the biased one it normalises
  with); flax's and the book's from-scratch code keep the biased one.

``d2l_init`` applies the Xavier-uniform initialisation d2l's ``train_ch6`` applies, and
:func:`load_flax_params` copies the weights (and batch-norm statistics) of one of our Flax models
into one of these networks (for the cross-checks; speed does not depend on the values).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

NAMES = ("lenet", "alexnet", "vgg11_small", "nin", "googlenet")
MODERN = ("lenet_bn", "resnet18", "densenet")


def lenet(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, num_classes),
    )  # fmt: skip


def alexnet(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Flatten(),
        nn.Linear(6400, 4096), nn.ReLU(), nn.Dropout(p=0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(p=0.5),
        nn.Linear(4096, num_classes),
    )  # fmt: skip


def vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        layers.append(nn.ReLU())
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


def vgg(conv_arch, num_classes: int = 10) -> nn.Module:
    conv_blks = []
    in_channels = 1
    for num_convs, out_channels in conv_arch:
        conv_blks.append(vgg_block(num_convs, in_channels, out_channels))
        in_channels = out_channels
    return nn.Sequential(
        *conv_blks, nn.Flatten(),
        nn.Linear(out_channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, num_classes),
    )  # fmt: skip


def vgg11_small(num_classes: int = 10, ratio: int = 4) -> nn.Module:
    return vgg([(pair[0], pair[1] // ratio) for pair in VGG11_ARCH], num_classes)


def nin_block(in_channels, out_channels, kernel_size, strides, padding) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, strides, padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
    )  # fmt: skip


def nin(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nin_block(1, 96, kernel_size=11, strides=4, padding=0),
        nn.MaxPool2d(3, stride=2),
        nin_block(96, 256, kernel_size=5, strides=1, padding=2),
        nn.MaxPool2d(3, stride=2),
        nin_block(256, 384, kernel_size=3, strides=1, padding=1),
        nn.MaxPool2d(3, stride=2),
        nn.Dropout(0.5),
        nin_block(384, num_classes, kernel_size=3, strides=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
    )


class Inception(nn.Module):
    """d2l's Inception block; the layers are registered in the order ``forward`` calls them."""

    def __init__(self, in_channels, c1, c2, c3, c4, **kwargs):
        super().__init__(**kwargs)
        self.p1_1 = nn.Conv2d(in_channels, c1, kernel_size=1)
        self.p2_1 = nn.Conv2d(in_channels, c2[0], kernel_size=1)
        self.p2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
        self.p3_1 = nn.Conv2d(in_channels, c3[0], kernel_size=1)
        self.p3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
        self.p4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.p4_2 = nn.Conv2d(in_channels, c4, kernel_size=1)

    def forward(self, x):
        p1 = F.relu(self.p1_1(x))
        p2 = F.relu(self.p2_2(F.relu(self.p2_1(x))))
        p3 = F.relu(self.p3_2(F.relu(self.p3_1(x))))
        p4 = F.relu(self.p4_2(self.p4_1(x)))
        return torch.cat((p1, p2, p3, p4), dim=1)


def googlenet(num_classes: int = 10) -> nn.Module:
    b1 = nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )  # fmt: skip
    b2 = nn.Sequential(
        nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
        nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )  # fmt: skip
    b3 = nn.Sequential(
        Inception(192, 64, (96, 128), (16, 32), 32),
        Inception(256, 128, (128, 192), (32, 96), 64),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    b4 = nn.Sequential(
        Inception(480, 192, (96, 208), (16, 48), 64),
        Inception(512, 160, (112, 224), (24, 64), 64),
        Inception(512, 128, (128, 256), (24, 64), 64),
        Inception(512, 112, (144, 288), (32, 64), 64),
        Inception(528, 256, (160, 320), (32, 128), 128),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    b5 = nn.Sequential(
        Inception(832, 256, (160, 320), (32, 128), 128),
        Inception(832, 384, (192, 384), (48, 128), 128),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
    )
    return nn.Sequential(b1, b2, b3, b4, b5, nn.Linear(1024, num_classes))


def lenet_bn(num_classes: int = 10) -> nn.Module:
    """d2l's LeNet with batch norm (concise version): no padding on the first conv."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), nn.BatchNorm2d(6), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
        nn.Linear(84, num_classes),
    )  # fmt: skip


class Residual(nn.Module):
    """d2l's residual block (the layers registered as d2l registers them)."""

    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.Conv2d(
            input_channels, num_channels, kernel_size=3, padding=1, stride=strides
        )
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return F.relu(Y)


def resnet_block(input_channels, num_channels, num_residuals, first_block=False):
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels, num_channels))
    return blk


def resnet18(num_classes: int = 10) -> nn.Module:
    b1 = nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )  # fmt: skip
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnet_block(256, 512, 2))
    return nn.Sequential(
        b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(512, num_classes),
    )  # fmt: skip


def conv_block(input_channels, num_channels) -> nn.Module:
    return nn.Sequential(
        nn.BatchNorm2d(input_channels), nn.ReLU(),
        nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1),
    )  # fmt: skip


class DenseBlock(nn.Module):
    """d2l's dense block: each conv block's output is concatenated to its input."""

    def __init__(self, num_convs, input_channels, num_channels):
        super().__init__()
        layer = []
        for i in range(num_convs):
            layer.append(conv_block(num_channels * i + input_channels, num_channels))
        self.net = nn.Sequential(*layer)

    def forward(self, X):
        for blk in self.net:
            Y = blk(X)
            X = torch.cat((X, Y), dim=1)
        return X


def transition_block(input_channels, num_channels) -> nn.Module:
    return nn.Sequential(
        nn.BatchNorm2d(input_channels), nn.ReLU(),
        nn.Conv2d(input_channels, num_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2),
    )  # fmt: skip


def densenet(num_classes: int = 10) -> nn.Module:
    b1 = nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )  # fmt: skip
    num_channels, growth_rate = 64, 32
    num_convs_in_dense_blocks = [4, 4, 4, 4]
    blks = []
    for i, num_convs in enumerate(num_convs_in_dense_blocks):
        blks.append(DenseBlock(num_convs, num_channels, growth_rate))
        num_channels += num_convs * growth_rate
        if i != len(num_convs_in_dense_blocks) - 1:
            blks.append(transition_block(num_channels, num_channels // 2))
            num_channels = num_channels // 2
    return nn.Sequential(
        b1, *blks, nn.BatchNorm2d(num_channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(num_channels, num_classes),
    )  # fmt: skip


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": lenet,
    "alexnet": alexnet,
    "vgg11_small": vgg11_small,
    "nin": nin,
    "googlenet": googlenet,
    "lenet_bn": lenet_bn,
    "resnet18": resnet18,
    "densenet": densenet,
}


def get_model(name: str, num_classes: int = 10) -> nn.Module:
    """The PyTorch network called ``name`` (one of ``NAMES`` or ``MODERN``), d2l-initialised."""
    if name not in MODELS:
        raise ValueError(f"no PyTorch version of {name!r}; valid names: {', '.join(MODELS)}")
    net = MODELS[name](num_classes)
    net.apply(d2l_init)
    return net


def d2l_init(module: nn.Module) -> None:
    """Xavier-uniform conv and dense weights, as d2l's ``train_ch6`` initialises its networks."""
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --- weights from our Flax models (cross-checks) ------------------------------------------------


def flax_layer_order(model: Any, input_shape: tuple[int, ...]) -> list[dict]:
    """Every nn.Conv / nn.Dense / nn.BatchNorm of a Flax model in the order its forward pass
    calls them: its parameter ``path``, ``kind`` ("conv", "dense" or "bn") and, for a dense
    layer, ``fed_by``: the output shape of the layer that ran just before it (a 4-D map when the
    dense layer reads a flattened feature map). Traced only: nothing is computed."""
    import flax.linen as fnn
    import jax
    import jax.numpy as jnp

    order: list[dict] = []
    last_output: list[tuple[int, ...]] = [tuple(input_shape)]

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(module, fnn.Conv | fnn.Dense | fnn.BatchNorm):
            kinds = {fnn.Conv: "conv", fnn.Dense: "dense", fnn.BatchNorm: "bn"}
            kind = next(k for cls, k in kinds.items() if isinstance(module, cls))
            order.append({"path": tuple(module.path), "kind": kind, "fed_by": last_output[0]})
        output = next_fun(*args, **kwargs)
        if hasattr(output, "shape"):
            last_output[0] = tuple(output.shape)
        return output

    def init(x):
        with fnn.intercept_methods(interceptor):
            return model.init(jax.random.key(0), x, train=False)

    jax.eval_shape(init, jax.ShapeDtypeStruct(input_shape, jnp.float32))
    return order


def load_flax_params(
    net: nn.Module,
    model: Any,
    params: Any,
    input_shape: tuple[int, ...],
    batch_stats: Any = None,
) -> None:
    """Copy the ``params`` of our Flax ``model`` into the PyTorch ``net`` of the same architecture.

    Layers are matched by call order (our models call their layers in the order d2l registers
    them), conv and dense layers apart from batch-norm layers (d2l's ``Residual`` registers its
    convs before its batch norms). A batch norm's ``scale`` / ``bias`` become ``weight`` / ``bias``
    and, given ``batch_stats``, its ``mean`` / ``var`` the running statistics. Conv kernels go
    from Flax's HWIO to PyTorch's OIHW, dense kernels are transposed, and a dense layer that
    reads a flattened feature map gets its input rows reordered: Flax flattens NHWC as
    (h, w, c), PyTorch NCHW as (c, h, w). This needs the pooling between the last conv
    and the flatten to be a module (ours are), so that its output shape is seen.
    """
    order = flax_layer_order(model, input_shape)
    norms = [entry for entry in order if entry["kind"] == "bn"]
    torch_norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    if len(norms) != len(torch_norms):
        raise ValueError(f"{len(norms)} Flax batch norms but {len(torch_norms)} in PyTorch")
    for entry, layer in zip(norms, torch_norms, strict=True):
        copies = {"weight": _leaf(params, entry["path"])["scale"]}
        copies["bias"] = _leaf(params, entry["path"])["bias"]
        if batch_stats is not None:
            copies["running_mean"] = _leaf(batch_stats, entry["path"])["mean"]
            copies["running_var"] = _leaf(batch_stats, entry["path"])["var"]
        for attribute, value in copies.items():
            target = getattr(layer, attribute)
            value = np.array(value, np.float32)
            if tuple(target.shape) != value.shape:
                raise ValueError(f"{entry['path']}: {attribute} {value.shape} vs {target.shape}")
            with torch.no_grad():
                target.copy_(torch.from_numpy(value))
    order = [entry for entry in order if entry["kind"] != "bn"]
    layers = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    if len(order) != len(layers):
        raise ValueError(f"{len(order)} Flax layers but {len(layers)} PyTorch layers")
    for entry, layer in zip(order, layers, strict=True):
        where = "/".join(entry["path"])
        leaf = _leaf(params, entry["path"])
        kernel = np.array(leaf["kernel"], np.float32)  # copies: torch wants writable arrays
        bias = np.array(leaf["bias"], np.float32)
        if entry["kind"] == "conv":
            if not isinstance(layer, nn.Conv2d):
                raise ValueError(f"{where} is a conv but PyTorch has {layer}")
            weight = kernel.transpose(3, 2, 0, 1)
        else:
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"{where} is a dense layer but PyTorch has {layer}")
            n_in, n_out = kernel.shape
            fed_by = entry["fed_by"]
            if len(fed_by) == 4 and fed_by[1] * fed_by[2] > 1:
                height, width, channels = fed_by[1:]
                if height * width * channels != n_in:
                    raise ValueError(f"{where}: {n_in} inputs, but it follows a {fed_by} map")
                kernel = kernel.reshape(height, width, channels, n_out).transpose(2, 0, 1, 3)
                kernel = kernel.reshape(n_in, n_out)
            weight = kernel.T
        if tuple(layer.weight.shape) != weight.shape:
            raise ValueError(
                f"{where}: shape {weight.shape} vs PyTorch {tuple(layer.weight.shape)}"
            )
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            layer.bias.copy_(torch.from_numpy(bias))


def _leaf(tree: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree
