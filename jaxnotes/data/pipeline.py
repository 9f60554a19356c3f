"""Input pipeline: host batches with grain, preprocessing on the device, prefetch to the device.

Host side (``train_batches``, ``eval_batches``): a grain ``MapDataset`` over *batch* indices whose
elements gather a whole batch with one NumPy fancy-indexing call from the in-memory arrays.
Shuffling is still example-level: batch i of an epoch is slice i of a permutation of all examples,
drawn from (seed, epoch) with NumPy (grain's own per-index shuffle costs a Python call per
example: ~0.1M examples/s, below what we need). There is no per-example Python in the hot path,
which keeps a 2-core host far ahead of what a LeNet step consumes (see benchmarks/data.py).
Where grain is not installed, the same batches come from a plain loop.

Device side (``make_preprocess``): uint8 -> float32, resize and normalization are a pure jnp
function called inside the jitted train step, so the host ships compact uint8 and XLA fuses the
arithmetic; resizing 28 -> 224 on the host would multiply the bytes to transfer by 64.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("scale", "standardize", "imagenet")

# A batch is one gather (~0.1 ms for 256 Fashion-MNIST images), so by default grain makes it on
# demand in the consumer's thread. Measured on 2 cores: worker threads gained nothing on 60,000 x
# 28x28 (same millions of examples/s, noisier) and were 2-7x slower on the 1,257-example digits
# epochs (thread start-up each epoch). JAX's asynchronous dispatch already overlaps making batch
# i+1 with the device running step i.
DEFAULT_THREADS = 0


# --- host batches -------------------------------------------------------------------------------


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Number of full training batches in an epoch of n examples (the remainder is dropped)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the data set ({n} examples)")
    return n // batch_size


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch: a permutation of 0..n-1, a function of (seed, epoch) only.

    Seeding with the pair (not seed + epoch) keeps (seed=1, epoch=0) and (seed=0, epoch=1) apart.
    """
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    return np.random.default_rng([seed, epoch]).permutation(n)


def _arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = np.asarray(dataset.images), np.asarray(dataset.labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int32, copy=False)


def _local_batch(batch_size: int, num_shards: int, shard_index: int) -> int:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index}, {num_shards}")
    if batch_size % num_shards:
        raise ValueError(f"batch_size {batch_size} is not divisible by num_shards {num_shards}")
    return batch_size // num_shards


def _iterate(
    gather: Callable[[int], dict], start: int, stop: int, num_threads: int
) -> Iterator[dict]:
    """Batches gather(start), ..., gather(stop - 1) through a grain MapDataset over batch indices.

    Without grain (accelerator machines and bare runtimes may lack it) the same batches come from
    a plain loop: the order is fixed by ``gather``, not by grain, so both paths agree exactly.
    """
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {num_threads}")
    try:
        import grain
    except ImportError:
        return map(gather, range(start, stop))
    # grain's defaults (16 threads, 500 elements buffered) suit slow per-record reads, not this.
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    return iter(grain.MapDataset.range(start, stop).map(gather).to_iter_dataset(options))


def train_batches(
    dataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    num_shards: int = 1,
    shard_index: int = 0,
    num_threads: int = DEFAULT_THREADS,
) -> Iterator[dict]:
    """One epoch of shuffled training batches, from batch ``start_batch`` on.

    dataset: anything with ``images`` (n, H, W, C) and ``labels`` (n,), e.g. a ``Dataset``.
    Yields {"image": (b, H, W, C) in the dataset's dtype, "label": (b,) int32} with
    b = batch_size // num_shards; steps_per_epoch(n, batch_size) - start_batch batches, the
    incomplete last one dropped so every step has the same shape (no recompilation).
    The global batch i is examples order[i*B:(i+1)*B] of ``epoch_permutation(n, seed, epoch)``;
    shard s gets the contiguous s-th slice of it, so the shards of batch i together are exactly
    the unsharded batch i, and resuming at ``start_batch`` gives exactly the remaining batches.
    num_threads: grain worker threads making batches ahead (0: on demand, the fastest here).
    """
    images, labels = _arrays(dataset)
    steps = steps_per_epoch(len(labels), batch_size)
    local = _local_batch(batch_size, num_shards, shard_index)
    if not 0 <= start_batch <= steps:
        raise ValueError(f"start_batch must be in [0, {steps}], got {start_batch}")
    order = epoch_permutation(len(labels), seed, epoch)

    def gather(step: int) -> dict:
        begin = step * batch_size + shard_index * local
        idx = order[begin : begin + local]
        return {"image": images[idx], "label": labels[idx]}

    return _iterate(gather, start_batch, steps, num_threads)


def eval_batches(
    dataset,
    batch_size: int,
    *,
    num_shards: int = 1,
    shard_index: int = 0,
    num_threads: int = DEFAULT_THREADS,
) -> Iterator[dict]:
    """Every example exactly once, in order, in ceil(n / batch_size) batches of one static shape.

    Yields {"image": (b, H, W, C), "label": (b,) int32, "mask": (b,) float32} with
    b = batch_size // num_shards. The last global batch is padded (with copies of the last
    example) to batch_size; "mask" is 1.0 for real examples and 0.0 for padding, so metrics are
    sum(mask * per_example) / sum(mask). Shards split each global batch contiguously.
    """
    images, labels = _arrays(dataset)
    n = len(labels)
    if n == 0:
        raise ValueError("cannot evaluate an empty data set")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    local = _local_batch(batch_size, num_shards, shard_index)

    def gather(step: int) -> dict:
        idx = np.arange(local) + (step * batch_size + shard_index * local)
        mask = (idx < n).astype(np.float32)
        idx = np.minimum(idx, n - 1)
        return {"image": images[idx], "label": labels[idx], "mask": mask}

    return _iterate(gather, 0, math.ceil(n / batch_size), num_threads)


# --- device side --------------------------------------------------------------------------------


def channel_stats(dataset, chunk_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (population) of a data set's images in [0, 1] units.

    Compute them on the training split and pass them to ``make_preprocess(normalization=
    "standardize", ...)``. Returns two float32 arrays of shape (C,). Accumulated in float64 by
    chunks, so Fashion-MNIST needs no float copy of the whole split.
    """
    images = np.asarray(dataset.images)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    channels = images.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    for start in range(0, len(images), chunk_size):
        chunk = images[start : start + chunk_size].reshape(-1, channels).astype(np.float64) / scale
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    count = images.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def make_preprocess(
    image_size: int | None = None,
    normalization: str = "scale",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Callable[[jax.Array], jax.Array]:
    """A pure function (B, H, W, C) uint8 or float -> (B, S, S, C) float32, for inside jit.

    uint8 is divided by 255 (float input is taken to be in [0, 1] already); then bilinear
    ``jax.image.resize`` to S x S with S = image_size (no resize when image_size is None: the
    output is (B, H, W, C)); then normalization: "scale" (nothing more), "standardize"
    ((x - mean) / std per channel, from ``channel_stats`` of the training split) or "imagenet"
    (the ImageNet RGB mean/std).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; valid: {NORMALIZATIONS}")
    if normalization == "standardize" and (mean is None or std is None):
        raise ValueError('normalization="standardize" needs mean and std (see channel_stats)')
    if normalization == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    shift = None if mean is None else np.asarray(mean, np.float32)
    scale = None if std is None else np.asarray(std, np.float32)

    def preprocess(images: jax.Array) -> jax.Array:
        if images.ndim != 4:
            raise ValueError(f"expected a batch (B, H, W, C), got shape {images.shape}")
        x = images.astype(jnp.float32)
        if images.dtype == jnp.uint8:
            x = x / 255.0
        batch, height, width, channels = x.shape
        if image_size is not None and (height, width) != (image_size, image_size):
            x = jax.image.resize(x, (batch, image_size, image_size, channels), "bilinear")
        if shift is not None:
            if normalization == "imagenet" and channels != 3:
                raise ValueError(
                    f"ImageNet mean/std are for RGB inputs (3 channels), got {channels} "
                    'channel(s); use normalization="standardize" with channel_stats instead'
                )
            if shift.shape != (channels,) or scale.shape != (channels,):
                raise ValueError(
                    f"mean/std have shapes {shift.shape}/{scale.shape}, images have {channels} "
                    "channels"
                )
            x = (x - shift) / scale
        return x

    return preprocess


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """A run's whole input preprocessing, as data: what training saw is what prediction sees.

    resize: the side the model sees (None: as stored); normalization: "scale", "standardize"
    or "imagenet"; mean/std: the per-channel statistics "standardize" uses (of the training
    split only, see :meth:`of`). Stored in checkpoints and ``summary.json`` (:meth:`to_json`), so a
    restored run, a fold ensemble and an export all preprocess exactly as the run trained.
    """

    resize: int | None = None
    normalization: str = "scale"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def of(cls, resize: int | None, normalization: str, train_data=None) -> Preprocessing:
        """The preprocessing of a run; "standardize" takes its statistics from ``train_data``."""
        if normalization != "standardize":
            return cls(resize, normalization)
        mean, std = channel_stats(train_data)
        return cls(resize, normalization, tuple(map(float, mean)), tuple(map(float, std)))

    def function(self) -> Callable[[jax.Array], jax.Array]:
        """The jit-able (B, H, W, C) -> (B, S, S, C) float32 function (``make_preprocess``)."""
        return make_preprocess(self.resize, self.normalization, self.mean, self.std)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> Preprocessing:
        tup = lambda v: None if v is None else tuple(float(x) for x in v)
        return cls(record.get("resize"), record["normalization"], tup(record.get("mean")),
                   tup(record.get("std")))  # fmt: skip


def prefetch_to_device(
    iterator: Iterable[dict], size: int = 2, sharding: jax.sharding.Sharding | None = None
) -> Iterator[dict]:
    """Keep ``size`` batches in flight to the device while the current one is consumed.

    jax.device_put is asynchronous, so putting batch i+size before step i returns lets the copy
    overlap the computation. With ``sharding`` (e.g. NamedSharding(mesh, P("batch"))), each batch
    is placed with it; on several processes, each process's batch is its local shard of the
    global batch (as ``train_batches(..., num_shards=process_count, shard_index=process_index)``
    gives) and the global array is assembled with jax.make_array_from_process_local_data.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")

    if sharding is not None and jax.process_count() > 1:

        def put(batch):
            return jax.tree.map(
                lambda x: jax.make_array_from_process_local_data(sharding, x), batch
            )
    else:

        def put(batch):
            return jax.device_put(batch, sharding)

    queue = collections.deque()
    for batch in iterator:
        queue.append(put(batch))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
