"""The book's hyper-parameters per model, and per data set where the book has none.

Fashion-MNIST (and MNIST / IDX files) use the book's table, in two editions: "classic" (the
PyTorch 0.17 edition the notes follow; the default) and "d2l1" (the current d2l.ai edition,
whose JAX tab readers see), each entry citing its source in d2l-en (``SOURCES``).

The embedded ``digits`` set (8x8 images, 1,257 training examples) has no
book setting: each model gets the smallest input size that suits it (resized on the device) and an
optimizer that converges on so little data within a CPU-friendly budget. Each preset states the
command and what it should reach.
"""

from __future__ import annotations

import copy
from typing import Any

# The classic edition (d2l-en branch "classic", the PyTorch 0.17 edition the notes follow):
# Fashion-MNIST, chapters 3 and 7-10. Source of each entry in SOURCES.
CLASSIC: dict[str, dict[str, Any]] = {
    # dropout chapter: 784-256-256-10, dropout 0.2 / 0.5, lr 0.5, batch 256 -> test acc ~0.85
    "mlp": {"learning_rate": 0.5, "batch_size": 256, "epochs": 10, "resize": None},
    # LeNet: sigmoid, lr 0.9, batch 256 -> test acc 0.78-0.81
    "lenet": {"learning_rate": 0.9, "batch_size": 256, "epochs": 10, "resize": 28},
    # AlexNet: lr 0.01, batch 128, 224x224 -> 0.88
    "alexnet": {"learning_rate": 0.01, "batch_size": 128, "epochs": 10, "resize": 224},
    # VGG-11 with channels / 4: lr 0.05, batch 128, 224x224 -> 0.92
    "vgg11_small": {"learning_rate": 0.05, "batch_size": 128, "epochs": 10, "resize": 224},
    "vgg11": {"learning_rate": 0.05, "batch_size": 128, "epochs": 10, "resize": 224},
    "vgg16": {"learning_rate": 0.05, "batch_size": 128, "epochs": 10, "resize": 224},
    # NiN: lr 0.1, batch 128, 224x224 -> 0.79-0.87
    "nin": {"learning_rate": 0.1, "batch_size": 128, "epochs": 10, "resize": 224},
    # GoogLeNet: lr 0.1, batch 128, 96x96 -> 0.89
    "googlenet": {"learning_rate": 0.1, "batch_size": 128, "epochs": 10, "resize": 96},
    # LeNet with batch norm: lr 1.0 (batch norm lets the sigmoid net take it), batch 256
    "lenet_bn": {"learning_rate": 1.0, "batch_size": 256, "epochs": 10, "resize": 28},
    # ResNet-18: lr 0.05, batch 256, 96x96
    "resnet18": {"learning_rate": 0.05, "batch_size": 256, "epochs": 10, "resize": 96},
    # DenseNet: lr 0.1, batch 256, 96x96
    "densenet": {"learning_rate": 0.1, "batch_size": 256, "epochs": 10, "resize": 96},
}
BOOK = CLASSIC  # the name the first round used

# The current d2l.ai edition (d2l-en master 23d7a5a, 2024-03-16; the JAX tab shares these
# training cells with PyTorch and MXNet): every CNN trains 10 epochs at batch 128.
D2L1: dict[str, dict[str, Any]] = {
    "mlp": {
        "learning_rate": 0.1, "batch_size": 256, "epochs": 10, "resize": None,
        "model_kwargs": {"dropout": (0.5, 0.5)},
    },
    "lenet": {"learning_rate": 0.1, "batch_size": 128, "epochs": 10, "resize": 28},
    "alexnet": {"learning_rate": 0.01, "batch_size": 128, "epochs": 10, "resize": 224},
    "vgg11_small": {"learning_rate": 0.01, "batch_size": 128, "epochs": 10, "resize": 224},
    "vgg11": {"learning_rate": 0.01, "batch_size": 128, "epochs": 10, "resize": 224},
    "vgg16": {"learning_rate": 0.01, "batch_size": 128, "epochs": 10, "resize": 224},
    "nin": {"learning_rate": 0.05, "batch_size": 128, "epochs": 10, "resize": 224},
    "googlenet": {"learning_rate": 0.01, "batch_size": 128, "epochs": 10, "resize": 96},
    "lenet_bn": {"learning_rate": 0.1, "batch_size": 128, "epochs": 10, "resize": 28},
    "resnet18": {"learning_rate": 0.01, "batch_size": 128, "epochs": 10, "resize": 96},
    "densenet": {"learning_rate": 0.01, "batch_size": 128, "epochs": 10, "resize": 96},
}  # fmt: skip

EDITIONS = {"classic": CLASSIC, "d2l1": D2L1}

# Where each entry comes from (d2l-en; classic = branch "classic", d2l1 = master 23d7a5a).
SOURCES: dict[str, dict[str, str]] = {
    "classic": {
        "mlp": "chapter_multilayer-perceptrons/dropout.md: dropout1, dropout2 = 0.2, 0.5; "
        "num_epochs, lr, batch_size = 10, 0.5, 256",
        "lenet": "chapter_convolutional-neural-networks/lenet.md: lr, num_epochs = 0.9, 10; "
        "batch_size = 256",
        "alexnet": "chapter_convolutional-modern/alexnet.md: lr, num_epochs = 0.01, 10; "
        "batch_size = 128, resize=224",
        "vgg11_small": "chapter_convolutional-modern/vgg.md: ratio = 4; "
        "lr, num_epochs, batch_size = 0.05, 10, 128; resize=224",
        "nin": "chapter_convolutional-modern/nin.md: lr, num_epochs, batch_size = 0.1, 10, 128; "
        "resize=224",
        "googlenet": "chapter_convolutional-modern/googlenet.md: "
        "lr, num_epochs, batch_size = 0.1, 10, 128; resize=96",
        "lenet_bn": "chapter_convolutional-modern/batch-norm.md L513-515 (and L613, the concise "
        "net): lr, num_epochs, batch_size = 1.0, 10, 256; load_data_fashion_mnist(batch_size)",
        "resnet18": "chapter_convolutional-modern/resnet.md L406-408: lr, num_epochs, batch_size "
        "= 0.05, 10, 256; load_data_fashion_mnist(batch_size, resize=96)",
        "densenet": "chapter_convolutional-modern/densenet.md L366-368: lr, num_epochs, "
        "batch_size = 0.1, 10, 256; load_data_fashion_mnist(batch_size, resize=96)",
    },
    "d2l1": {
        "mlp": "chapter_multilayer-perceptrons/dropout.md L351-356: dropout_1 0.5, dropout_2 "
        "0.5, lr 0.1; d2l.FashionMNIST(batch_size=256); d2l.Trainer(max_epochs=10)",
        "lenet": "chapter_convolutional-neural-networks/lenet.md L320-323: LeNet(lr=0.1); "
        "FashionMNIST(batch_size=128); Trainer(max_epochs=10)",
        "alexnet": "chapter_convolutional-modern/alexnet.md L450-453: AlexNet(lr=0.01); "
        "FashionMNIST(batch_size=128, resize=(224, 224)); Trainer(max_epochs=10)",
        "vgg11_small": "chapter_convolutional-modern/vgg.md L275-278: VGG(arch=((1, 16), (1, 32), "
        "(2, 64), (2, 128), (2, 128)), lr=0.01); batch_size=128, resize=(224, 224); 10 epochs",
        "nin": "chapter_convolutional-modern/nin.md L231-234: NiN(lr=0.05); batch_size=128, "
        "resize=(224, 224); 10 epochs",
        "googlenet": "chapter_convolutional-modern/googlenet.md L468-471: GoogleNet(lr=0.01); "
        "batch_size=128, resize=(96, 96); 10 epochs",
        "lenet_bn": "chapter_convolutional-modern/batch-norm.md L802-804: Trainer(max_epochs=10); "
        "FashionMNIST(batch_size=128); BNLeNet(lr=0.1)",
        "resnet18": "chapter_convolutional-modern/resnet.md L487-489: ResNet18(lr=0.01); "
        "Trainer(max_epochs=10); FashionMNIST(batch_size=128, resize=(96, 96))",
        "densenet": "chapter_convolutional-modern/densenet.md L468-470: DenseNet(lr=0.01); "
        "Trainer(max_epochs=10); FashionMNIST(batch_size=128, resize=(96, 96))",
    },
}

# digits: `python -m train --model NAME` (CPU, 2 cores). Expected test accuracy in the comments.
DIGITS: dict[str, dict[str, Any]] = {
    # >= 0.95 in about 10 s (sigmoid kept, as in the book; Adam gets it off the plateau fast)
    "lenet": {
        "optimizer": "adam",
        "learning_rate": 3e-3,
        "batch_size": 16,
        "epochs": 12,
        "resize": 28,
    },
    # >= 0.95 (dropout 0.2 / 0.5 as in the book)
    "mlp": {"learning_rate": 0.1, "batch_size": 32, "epochs": 20, "resize": None},
    # >= 0.90 (0.980-0.989 over seeds 0-2) in about 65 s; 32x32 is the smallest input the five
    # stages reduce cleanly. Without batch norm this 22-layer ReLU net sits at chance for epochs
    # from d2l's Xavier init (its signal decays ~400x from block 3a to 5b); He init keeps it
    # alive. Adam, the two auxiliary classifiers and a cosine decay (steady last epochs) do the
    # rest. Measured, 10-14 epochs: Xavier + SGD 0.05 ~0.10; Xavier + Adam 0.81-0.93;
    # He + Adam, no heads 0.96-0.98; this preset 0.98-0.99.
    "googlenet": {
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "schedule": "cosine",
        "batch_size": 32,
        "epochs": 10,
        "resize": 32,
        "model_kwargs": {"aux_logits": True, "weight_init": "he"},
    },
    "alexnet": {"learning_rate": 0.01, "batch_size": 32, "epochs": 10, "resize": 68},
    "vgg11_small": {"learning_rate": 0.05, "batch_size": 32, "epochs": 10, "resize": 32},
    "vgg11": {"learning_rate": 0.05, "batch_size": 32, "epochs": 10, "resize": 32},
    "vgg16": {"learning_rate": 0.02, "batch_size": 32, "epochs": 10, "resize": 32},
    "nin": {"learning_rate": 0.05, "batch_size": 32, "epochs": 15, "resize": 68},
    # The batch-norm nets train with plain SGD at a large rate; a cosine decay steadies the
    # running statistics for the last epochs (constant lr: test acc swung 0.81-0.96 from epoch
    # to epoch). Times: 2 shared cores, `JAXNOTES_COMPILE_CACHE=0` (cold).
    # lenet_bn: 0.963-0.970 (seeds 0-2) in ~10 s; constant lr 0.1 (d2l1's) 0.967, 1.0 0.95
    "lenet_bn": {
        "learning_rate": 0.5,
        "schedule": "cosine",
        "batch_size": 32,
        "epochs": 10,
        "resize": 28,
    },
    # >= 0.95 (0.980-0.981 over seeds 0-2) in ~30 s cold (8 s of it compiling); 3 epochs:
    # 0.969-0.976
    "resnet18": {
        "learning_rate": 0.05,
        "schedule": "cosine",
        "batch_size": 32,
        "epochs": 4,
        "resize": 32,
    },
    # 0.989-0.994 (seeds 0-2) in ~37 s cold (20 s of it compiling); 29x29 is its smallest input
    "densenet": {
        "learning_rate": 0.1,
        "schedule": "cosine",
        "batch_size": 32,
        "epochs": 4,
        "resize": 32,
    },
}


def preset(model: str, dataset: str, edition: str = "classic") -> dict[str, Any]:
    """Hyper-parameters for ``model`` on ``dataset`` (flags on the command line override them).

    ``edition``: "classic" (the notes' course) or "d2l1" (the current d2l.ai edition) for the
    book's data sets; digits has its own presets (the book has no digits setting).
    """
    if edition not in EDITIONS:
        raise ValueError(f"unknown edition {edition!r}; expected one of {', '.join(EDITIONS)}")
    table = DIGITS if dataset == "digits" else EDITIONS[edition]
    if model not in table:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(sorted(table))}")
    return copy.deepcopy(table[model])


def source(model: str, edition: str) -> str:
    """Where the book's setting of ``model`` in ``edition`` comes from (file and line)."""
    entries = SOURCES[edition]
    return entries.get(model) or entries.get(
        "vgg11_small" if model.startswith("vgg") else model, ""
    )
