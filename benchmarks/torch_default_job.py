"""The default job (``python -m train``: LeNet on digits) done the PyTorch way, for cold_start.py.

    python benchmarks/torch_default_job.py     # prints one JSON line: phases, test_acc

The same job as the runner's digits preset: scikit-learn's ``load_digits`` and the same
stratified 70/30 ``train_test_split`` (random_state 0), pixels / 16 resized to 28x28 bilinear
(``F.interpolate``, as ``jax.image.resize`` upsamples: half-pixel centres), the book's LeNet
(``torch_models.lenet``: sigmoid, average pooling, d2l's Xavier init), Adam lr 3e-3, batch 16 with
the last partial batch dropped, 12 epochs of example-level shuffling (``DataLoader``), test
accuracy after every epoch (``net.eval()``, ``torch.no_grad()``), eager float32 on every core.
Like the book's loop it writes no checkpoints and draws no plot (the runner does both).
"""

import time

STARTED = time.time()  # before the imports: the parent process times what comes before

import json  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch_models import lenet  # noqa: E402

IMPORTED = time.time()
EPOCHS, BATCH, LR, SIDE = 12, 16, 3e-3, 28


def load():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.tensor(bunch.images / 16.0, dtype=torch.float32)[:, None]
    images = F.interpolate(images, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    index = list(range(len(labels)))
    train, test = train_test_split(index, test_size=0.3, stratify=bunch.target, random_state=0)
    train, test = sorted(train), sorted(test)
    return (images[train], labels[train]), (images[test], labels[test])


def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        correct = sum(
            (net(images[i : i + 256]).argmax(1) == labels[i : i + 256]).sum().item()
            for i in range(0, len(labels), 256)
        )
    return correct / len(labels)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    phases = {"import": IMPORTED - STARTED}
    t = time.time()
    (x_train, y_train), (x_test, y_test) = load()
    phases["data"] = time.time() - t
    net = lenet()
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_train, y_train),
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
    )
    phases["train"] = phases["evaluate"] = 0.0
    for _ in range(EPOCHS):
        t = time.time()
        net.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
        phases["train"] += time.time() - t
        t = time.time()
        test_acc = accuracy(net, x_test, y_test)
        phases["evaluate"] += time.time() - t
    print(json.dumps({"started": STARTED, "phases": phases, "test_acc": test_acc}))


if __name__ == "__main__":
    main()
