"""CPU training throughput: jaxnotes against PyTorch eager, the way the book trains, in one run.

    python benchmarks/train_cpu.py [--rounds 7] [--models lenet,googlenet,resnet18,densenet]
        [--lenet-steps 40] [--digits-steps 8] [--skip-googlenet] [--skip-plain]

LeNet (the book's chapter 7 setting): sigmoid + average pooling, Xavier init, SGD lr 0.9,
batch 256, cross-entropy, on Fashion-MNIST-sized synthetic data (60,000 uint8 28x28x1 images,
random labels; the pixels do not change the speed). Both sides read the same batches, made by
``jaxnotes.data.train_batches`` (the runner's host pipeline, example-level shuffling):

* jaxnotes: the real train step as ``training.fit`` builds it,
  ``jit_train_step(make_train_step(model, tx, preprocess))`` (forward, loss, backward, SGD update,
  device metrics and the divergence guard in one jit, state donated), batches through
  ``prefetch_to_device``, metrics pulled to the host every 50 steps as ``fit`` does;
* PyTorch: ``torch_models.lenet`` (``nn.Sequential`` of Conv2d / Sigmoid / AvgPool2d / Linear,
  d2l's Xavier init), eager float32, ``torch.set_num_threads(os.cpu_count())``, stepped as d2l's
  ``train_ch6`` does: uint8 -> float / 255, zero_grad, forward, cross-entropy, backward, SGD step,
  and the book's per-batch metric accumulation (loss * n and the number correct);
* jaxnotes "plain": the same jaxnotes step with the CPU fast paths of
  ``jaxnotes.models.cpu_kernels`` switched off (XLA's own convolution and pooling), for reference.

GoogLeNet, ResNet-18 and DenseNet at the shapes of the runner's digits presets (``python -m
train --model googlenet`` etc.): scikit-learn's 8x8 digits resized on the device to 32x32, batch
32; plain SGD (lr 0.05, 0.05, 0.1) and no auxiliary heads on both sides (the presets add Adam and
the heads for GoogLeNet, a cosine decay for the others; the comparison is the network's step, not
the optimizer's). jaxnotes as above; PyTorch ``torch_models.<name>`` (d2l's code; batch norm in
training mode, as both sides' steps are) fed the same images already resized (by the same
bilinear resize, done once up front, which favours PyTorch).

PyTorch runs with ``OMP_WAIT_POLICY=PASSIVE`` (set here unless already set): on a shared 2-core
host its default spinning OpenMP threads stalled it 5-15x whenever another process held a core
(and spun against XLA's threads in this same process); passive waiting was its best setting here.

Timing: the first step of each (compilation) is excluded; then ``--rounds`` rounds, each running
every contender for its number of steps in turn (interleaved, so a noisy shared host slows all of
them alike); examples/s from the median round, the best round in brackets. The ratio is of the
medians. The compiled jaxnotes step must compile exactly once (asserted).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see the module docstring

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # torch_models, next to this file

from jaxnotes import data as jdata  # noqa: E402
from jaxnotes import optim, training  # noqa: E402
from jaxnotes.models import cpu_kernels, get_model  # noqa: E402

LOG_EVERY = 50  # TrainConfig.log_every: steps between the host pulls fit makes


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    import flax
    import optax
    import torch

    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{cpu_name()}, {os.cpu_count()} CPUs, load average {load}; Python "
        f"{platform.python_version()}, jax {jax.__version__} ({jax.default_backend()}), flax "
        f"{flax.__version__}, optax {optax.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )


def endless_batches(dataset, batch_size: int, seed: int = 0) -> Iterator[dict]:
    """The runner's host batches, epoch after epoch."""
    epoch = 0
    while True:
        yield from jdata.train_batches(dataset, batch_size, seed=seed, epoch=epoch)
        epoch += 1


# ---- contenders: each is a callable running n steps and returning when they are done ---------


def jaxnotes_contender(
    name: str, dataset, batch_size: int, lr: float, resize: int | None, fast: bool = True
) -> tuple[Callable[[int], None], Callable[[], int]]:
    """The runner's train step on ``dataset``; ``fast=False`` disables the CPU fast paths.

    Returns (run n steps, number of compilations so far) and prints the first step's time.
    """
    model = get_model(name, num_classes=dataset.num_classes)
    tx = optim.make_optimizer("sgd", lr)
    preprocess = jdata.make_preprocess(resize)
    side = resize or dataset.images.shape[1]
    state = training.create_train_state(model, tx, (side, side, dataset.images.shape[3]), 0)
    enabled = cpu_kernels.fast_path_enabled
    if not fast:  # read at trace time: the first call below compiles the plain step
        cpu_kernels.fast_path_enabled = lambda *arrays: False
    try:
        step = training.jit_train_step(training.make_train_step(model, tx, preprocess))
        batches = jdata.prefetch_to_device(endless_batches(dataset, batch_size))
        box = {"state": state, "metrics": training.empty_metrics(), "step": 0}
        start = time.perf_counter()
        box["state"], box["metrics"] = step(box["state"], next(batches), box["metrics"])
        jax.block_until_ready(box["state"])
    finally:
        cpu_kernels.fast_path_enabled = enabled
    seconds = time.perf_counter() - start
    print(
        f"  {name}, CPU fast paths {'on' if fast else 'off'}: first step (compiles) {seconds:.1f} s"
    )

    def run(steps: int) -> None:
        for _ in range(steps):
            box["state"], box["metrics"] = step(box["state"], next(batches), box["metrics"])
            box["step"] += 1
            if box["step"] % LOG_EVERY == 0:
                jax.device_get(box["metrics"])
        jax.block_until_ready(box["state"])

    return run, step._cache_size


def torch_contender(
    name: str, dataset, batch_size: int, lr: float, resize: int | None
) -> Callable[[int], None]:
    """The same architecture in PyTorch eager float32, stepped as d2l's train_ch6 does."""
    import torch
    import torch_models
    from torch import nn

    torch.manual_seed(0)
    net = torch_models.get_model(name, num_classes=dataset.num_classes)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    images = dataset.images
    if resize and resize != images.shape[1]:  # resized once, here, by the same bilinear resize
        images = np.asarray(jax.jit(jdata.make_preprocess(resize))(images))
    host = jdata.from_arrays(images, dataset.labels, dataset.num_classes)
    batches = endless_batches(host, batch_size)
    metric = [0.0, 0.0, 0]

    def one_step() -> None:
        batch = next(batches)
        x = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        y = torch.from_numpy(batch["label"]).long()
        net.train()
        optimizer.zero_grad()
        y_hat = net(x)
        loss = loss_fn(y_hat, y)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # the book's Accumulator: loss * n, number correct, n
            metric[0] += float(loss) * x.shape[0]
            metric[1] += float((y_hat.argmax(dim=1) == y).sum())
            metric[2] += x.shape[0]

    one_step()  # first-call allocations, like the compile step on the other side

    def run(steps: int) -> None:
        for _ in range(steps):
            one_step()

    return run


def race(contenders: dict[str, Callable[[int], None]], steps: int, rounds: int) -> dict:
    """Seconds per step of each contender, per round, the rounds interleaved."""
    seconds = {label: [] for label in contenders}
    for _ in range(rounds):
        for label, run in contenders.items():
            start = time.perf_counter()
            run(steps)
            seconds[label].append((time.perf_counter() - start) / steps)
    return seconds


def report(title: str, seconds: dict, batch_size: int, baseline: str) -> None:
    print(f"\n{title}")
    medians = {label: statistics.median(s) for label, s in seconds.items()}
    for label, per_step in seconds.items():
        ratio = medians[baseline] / medians[label]
        print(
            f"  {label:34s} {batch_size / medians[label]:9,.0f} examples/s "
            f"(best {batch_size / min(per_step):9,.0f})  {medians[label] * 1e3:7.2f} ms/step  "
            f"x{ratio:.2f} vs {baseline}"
        )


# The models raced on the runner's digits shapes: 32x32 inputs, batch 32, plain SGD at the lr
# of each one's digits preset (GoogLeNet without its auxiliary heads on both sides).
DIGITS_LR = {"googlenet": 0.05, "resnet18": 0.05, "densenet": 0.1}
TITLES = {
    "googlenet": "GoogLeNet",
    "resnet18": "ResNet-18 (batch norm: batch statistics and running averages updated)",
    "densenet": "DenseNet (batch norm: batch statistics and running averages updated)",
}


def race_lenet(args) -> None:
    fashion = jdata.synthetic(60_000, (28, 28, 1), seed=0)
    lenet, lenet_compilations = jaxnotes_contender("lenet", fashion, 256, 0.9, None)
    contenders = {"jaxnotes (train step as fit runs it)": lenet}
    contenders["PyTorch eager (book's train_ch6)"] = torch_contender("lenet", fashion, 256, 0.9, 28)
    if not args.skip_plain:
        plain, _ = jaxnotes_contender("lenet", fashion, 256, 0.9, None, fast=False)
        contenders["jaxnotes, CPU fast paths off"] = plain
    seconds = race(contenders, args.lenet_steps, args.rounds)
    assert lenet_compilations() == 1, f"the LeNet step compiled {lenet_compilations()} times"
    report(
        "LeNet, Fashion-MNIST-sized synthetic data (60,000 x 28x28x1 uint8), batch 256, SGD 0.9",
        seconds,
        256,
        "PyTorch eager (book's train_ch6)",
    )


def race_digits(name: str, args) -> None:
    digits = jdata.load("digits", "train")
    lr = DIGITS_LR[name]
    net, net_compilations = jaxnotes_contender(name, digits, 32, lr, 32)
    contenders = {"jaxnotes (train step as fit runs it)": net}
    contenders["PyTorch eager (book's train_ch6)"] = torch_contender(name, digits, 32, lr, 32)
    if not args.skip_plain:
        plain, _ = jaxnotes_contender(name, digits, 32, lr, 32, fast=False)
        contenders["jaxnotes, CPU fast paths off"] = plain
    seconds = race(contenders, args.digits_steps, max(3, args.rounds // 2))
    assert net_compilations() == 1, f"the {name} step compiled {net_compilations()} times"
    heads = ", no auxiliary heads" if name == "googlenet" else ""
    report(
        f"{TITLES[name]}, digits ({len(digits.labels)} train images) resized to 32x32, batch 32, "
        f"SGD {lr}{heads} (the runner's digits shapes)",
        seconds,
        32,
        "PyTorch eager (book's train_ch6)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--models",
        default="lenet,googlenet,resnet18,densenet",
        help="comma-separated, from lenet, " + ", ".join(DIGITS_LR),
    )
    parser.add_argument("--lenet-steps", type=int, default=40, help="steps per round")
    parser.add_argument(
        "--digits-steps",
        "--googlenet-steps",
        type=int,
        default=8,
        help="steps per round of the digits-shaped models",
    )
    parser.add_argument("--skip-googlenet", action="store_true")
    parser.add_argument("--skip-plain", action="store_true", help="no fast-paths-off reference")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if not (args.skip_googlenet and m == "googlenet")]
    unknown = sorted(set(models) - {"lenet", *DIGITS_LR})
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from lenet, {', '.join(DIGITS_LR)}")

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    print(time.strftime("%Y-%m-%d %H:%M"), "|", machine())
    for name in models:
        if name == "lenet":
            race_lenet(args)
        else:
            race_digits(name, args)
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
