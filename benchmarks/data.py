"""Host input pipeline throughput: can the data feed a LeNet step ten times over?

    .venv/bin/python benchmarks/data.py [--epochs 5] [--skip-lenet]

Also times the book's data from disk: decoding the IDX files of 60,000 images, loading the
decoded ``.npz`` cache, and TFDS's ``data_source`` read of the same split (mock data).

Measures ``train_batches`` over full epochs (examples/s delivered to the consumer, nothing else
done with them) for scikit-learn's digits and for a Fashion-MNIST-sized uint8 source (60,000 x
28x28x1, made here), plus ``eval_batches``. For scale, it also times a jitted LeNet SGD step on
this machine's default JAX device (a rough figure: the training benchmarks measure the step).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import time

import numpy as np

from jaxnotes import data


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = ", ".join(
        f"{pkg} {importlib.metadata.version(pkg)}" for pkg in ("numpy", "jax", "grain")
    )
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {versions}"


def time_epochs(make_iterator, epochs: int) -> tuple[float, int]:
    """Median examples/s over ``epochs`` passes of make_iterator(epoch), and examples per pass."""
    rates, count = [], 0
    for epoch in range(epochs + 1):  # pass 0 warms up (imports, thread start)
        start, count = time.perf_counter(), 0
        for batch in make_iterator(epoch):
            count += int(batch["mask"].sum()) if "mask" in batch else len(batch["label"])
        if epoch:
            rates.append(count / (time.perf_counter() - start))
    return float(np.median(rates)), count


def report(label: str, rate: float, count: int) -> None:
    print(f"  {label:<50} {rate:>12,.0f} examples/s  ({count:,} per epoch)")


def grain_shuffle_rate(n: int) -> float:
    """Examples/s of drawing one epoch's order with grain's per-index MapDataset.shuffle.

    The alternative to our vectorised NumPy permutation: one Python call per example.
    """
    import grain

    order = grain.MapDataset.range(n).shuffle(seed=0)
    start = time.perf_counter()
    _ = [order[i] for i in range(n)]
    return n / (time.perf_counter() - start)


def lenet_step_rate(batch_size: int, steps: int = 20) -> tuple[float, str]:
    """Examples/s of a jitted LeNet SGD step (book's LeNet: sigmoid, average pooling)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    class LeNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.sigmoid(nn.Conv(6, (5, 5), padding=2)(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
            x = nn.sigmoid(nn.Conv(16, (5, 5), padding="VALID")(x))
            x = nn.avg_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
            x = nn.sigmoid(nn.Dense(120)(x))
            x = nn.sigmoid(nn.Dense(84)(x))
            return nn.Dense(10)(x)

    model = LeNet()
    preprocess = data.make_preprocess()
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))

    @jax.jit
    def step(params, images, labels):
        def loss_fn(p):
            logits = model.apply(p, preprocess(images))
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return jax.tree.map(lambda p, g: p - 0.9 * g, params, grads), loss

    source = data.synthetic(batch_size * 4)
    batches = [jax.device_put(b) for b in data.train_batches(source, batch_size, seed=0, epoch=0)]
    params, loss = step(params, batches[0]["image"], batches[0]["label"])
    loss.block_until_ready()
    start = time.perf_counter()
    for i in range(steps):
        b = batches[i % len(batches)]
        params, loss = step(params, b["image"], b["label"])
    loss.block_until_ready()
    return steps * batch_size / (time.perf_counter() - start), str(jax.devices()[0])


def sources(repeats: int = 5) -> None:
    """The book's data from disk: IDX decode of 60,000 images, the decoded .npz cache, and
    TFDS's data_source read of the same split (mock data: no prepared copy is needed)."""
    import tempfile
    from pathlib import Path

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60_000, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 60_000).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for prefix, n in (("train", 60_000), ("t10k", 10_000)):
            data.write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images[:n])
            data.write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels[:n])
        idx = best_of(repeats, lambda: data.load_idx_dir(folder, "train"))
        train = data.load_idx_dir(folder, "train")
        np.savez(folder / "train.npz", images=train.images, labels=train.labels, num_classes=10)
        cached = best_of(repeats, lambda: dict(np.load(folder / "train.npz")))
    print("the book's data from disk (60,000 x 28x28 uint8, best of 5):")
    for label, seconds in (("IDX .gz decode (gzip + IDX reader)", idx), ("decoded .npz", cached)):
        print(f"  {label:40}{seconds:7.3f} s  {60_000 / seconds:>12,.0f} images/s")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        print("  TFDS data_source: tensorflow_datasets not installed")
        return
    with tfds.testing.mock_data(num_examples=60_000):
        read = best_of(1, lambda: data.load_tfds("fashion_mnist", "train"))
    label = "TFDS data_source read (mock data)"
    print(
        f"  {label:40}{read:7.3f} s  {60_000 / read:>12,.0f} images/s  (.npz {read / cached:,.0f}x)"
    )


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--skip-lenet", action="store_true")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    digits = data.load("digits", "train")
    fashion_sized = data.synthetic(60_000, (28, 28, 1))
    print(f"host pipeline (median of {args.epochs} epochs after one warm-up epoch):")
    results = {}
    for name, ds, batch_sizes in (
        ("digits 1,257 x 8x8x1 f32", digits, (64, 128)),
        ("60,000 x 28x28x1 uint8", fashion_sized, (128, 256)),
    ):
        for batch_size in batch_sizes:
            rate, count = time_epochs(
                lambda e, ds=ds, b=batch_size: data.train_batches(ds, b, seed=0, epoch=e),
                args.epochs,
            )
            results[(name, batch_size)] = rate
            report(f"train_batches {name}, batch {batch_size}", rate, count)
    rate, count = time_epochs(
        lambda e: data.train_batches(fashion_sized, 256, seed=0, epoch=e, num_threads=2),
        args.epochs,
    )
    report("  same, 2 grain worker threads", rate, count)
    rate, count = time_epochs(lambda e: data.eval_batches(fashion_sized, 256), args.epochs)
    report("eval_batches 60,000 x 28x28x1 uint8, batch 256", rate, count)
    report("(grain MapDataset.shuffle order, per index)", grain_shuffle_rate(60_000), 60_000)

    sources()
    if not args.skip_lenet:
        step_rate, device = lenet_step_rate(256)
        host_rate = results[("60,000 x 28x28x1 uint8", 256)]
        print(f"LeNet SGD step, batch 256, on {device}: {step_rate:,.0f} examples/s")
        print(f"host pipeline / LeNet step: {host_rate / step_rate:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
