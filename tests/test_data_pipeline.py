"""Pipeline: example-level shuffling, resume, shards, padded evaluation, on-device preprocessing."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnotes.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    channel_stats,
    eval_batches,
    from_arrays,
    make_preprocess,
    prefetch_to_device,
    steps_per_epoch,
    train_batches,
)


def indexed(n: int, hw: int = 2):
    """A data set whose image i is filled with i and whose label is i: batches reveal indices."""
    images = np.broadcast_to(np.arange(n, dtype=np.int32)[:, None, None, None], (n, hw, hw, 1))
    return from_arrays(np.ascontiguousarray(images), np.arange(n), num_classes=n)


def epoch_indices(ds, batch_size, **kw) -> list[np.ndarray]:
    batches = list(train_batches(ds, batch_size, **kw))
    for b in batches:
        assert b["label"].dtype == np.int32
        np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["label"])  # aligned
    return [b["label"] for b in batches]


@pytest.mark.parametrize("n,batch_size", [(103, 10), (64, 64), (1000, 128), (7, 3)])
def test_train_epoch_is_a_drop_remainder_permutation(n, batch_size):
    ds = indexed(n)
    batches = epoch_indices(ds, batch_size, seed=0, epoch=0)
    assert len(batches) == n // batch_size == steps_per_epoch(n, batch_size)
    assert all(b.shape == (batch_size,) for b in batches)  # static shape, remainder dropped
    seen = np.concatenate(batches)
    assert np.unique(seen).size == seen.size  # no example twice in an epoch


def test_epochs_differ_and_seeds_repeat():
    ds = indexed(500)
    orders = {e: np.concatenate(epoch_indices(ds, 50, seed=3, epoch=e)) for e in range(4)}
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.array_equal(orders[a], orders[b])
    np.testing.assert_array_equal(orders[2], np.concatenate(epoch_indices(ds, 50, seed=3, epoch=2)))
    other_seed = np.concatenate(epoch_indices(ds, 50, seed=4, epoch=2))
    assert not np.array_equal(orders[2], other_seed)
    # (seed, epoch) is a pair: (3, 1) is not (4, 0).
    assert not np.array_equal(orders[1], np.concatenate(epoch_indices(ds, 50, seed=4, epoch=0)))


def test_shuffling_is_example_level_not_batch_level():
    ds = indexed(1000)
    first = epoch_indices(ds, 100, seed=0, epoch=0)
    second = epoch_indices(ds, 100, seed=0, epoch=1)
    # Shuffled batches of fixed blocks would keep each batch's set of examples across epochs.
    sets_first = {frozenset(b.tolist()) for b in first}
    assert not sets_first & {frozenset(b.tolist()) for b in second}
    # And a batch is not a contiguous block of the original order.
    assert all(np.ptp(b) > 100 for b in first)


@pytest.mark.parametrize("start", [0, 1, 5, 9, 10])
def test_start_batch_resumes_exactly(start):
    ds = indexed(205)
    full = epoch_indices(ds, 20, seed=7, epoch=2)
    resumed = epoch_indices(ds, 20, seed=7, epoch=2, start_batch=start)
    assert len(resumed) == len(full) - start
    for a, b in zip(full[start:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("num_shards", [2, 4, 8])
def test_shards_together_are_the_unsharded_batch(num_shards):
    ds = indexed(333)
    full = epoch_indices(ds, 32, seed=1, epoch=5, start_batch=2)
    shards = [
        epoch_indices(ds, 32, seed=1, epoch=5, start_batch=2, num_shards=num_shards, shard_index=s)
        for s in range(num_shards)
    ]
    for i, batch in enumerate(full):
        parts = [shard[i] for shard in shards]
        assert all(p.shape == (32 // num_shards,) for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), batch)


def test_worker_threads_give_the_same_batches():
    ds = indexed(300)
    for make in (
        lambda t: train_batches(ds, 16, seed=2, epoch=1, start_batch=3, num_threads=t),
        lambda t: eval_batches(ds, 16, num_threads=t),
    ):
        for a, b in zip(make(0), make(3), strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


def test_without_grain_the_batches_are_the_same(monkeypatch):
    ds = indexed(100)
    with_grain = list(train_batches(ds, 10, seed=0, epoch=3, start_batch=2))
    with_grain_eval = list(eval_batches(ds, 30))
    monkeypatch.setitem(sys.modules, "grain", None)  # import grain now fails
    without = list(train_batches(ds, 10, seed=0, epoch=3, start_batch=2))
    without_eval = list(eval_batches(ds, 30))
    for a, b in zip(with_grain + with_grain_eval, without + without_eval, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_train_batches_errors():
    ds = indexed(10)
    with pytest.raises(ValueError, match="larger"):
        list(train_batches(ds, 11, seed=0, epoch=0))
    with pytest.raises(ValueError, match="divisible"):
        list(train_batches(ds, 9, seed=0, epoch=0, num_shards=2))
    with pytest.raises(ValueError, match="start_batch"):
        list(train_batches(ds, 5, seed=0, epoch=0, start_batch=3))
    with pytest.raises(ValueError, match="shard_index"):
        list(train_batches(ds, 4, seed=0, epoch=0, num_shards=2, shard_index=2))


@pytest.mark.parametrize(
    "n,batch_size,num_shards", [(10, 3, 1), (12, 4, 1), (5, 8, 1), (101, 20, 4), (7, 6, 3)]
)
def test_eval_covers_every_example_once(n, batch_size, num_shards):
    ds = indexed(n)
    real = []
    num_batches = -(-n // batch_size)
    for shard in range(num_shards):
        batches = list(eval_batches(ds, batch_size, num_shards=num_shards, shard_index=shard))
        assert len(batches) == num_batches
        for i, b in enumerate(batches):
            local = batch_size // num_shards
            assert b["image"].shape == (local, 2, 2, 1) and b["label"].shape == (local,)
            assert b["mask"].shape == (local,) and b["mask"].dtype == np.float32
            # Positions in the global batch are i*B + s*local + j; those < n are real, in order.
            positions = i * batch_size + shard * local + np.arange(local)
            np.testing.assert_array_equal(b["mask"], (positions < n).astype(np.float32))
            real.append(b["label"][b["mask"] == 1])
            np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["label"])
    np.testing.assert_array_equal(np.sort(np.concatenate(real)), np.arange(n))


def test_eval_single_process_order():
    labels = np.concatenate([b["label"] for b in eval_batches(indexed(10), 4)])
    np.testing.assert_array_equal(labels[:10], np.arange(10))


# --- on-device preprocessing --------------------------------------------------------------------


def random_uint8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_scale_uint8_and_float():
    x = random_uint8((4, 5, 5, 1))
    out = jax.jit(make_preprocess())(x)
    assert out.dtype == jnp.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, x.astype(np.float64) / 255.0, rtol=1e-6)
    as_float = (x / 255.0).astype(np.float32)
    np.testing.assert_allclose(make_preprocess()(as_float), as_float, rtol=1e-7)  # not rescaled


def test_standardize_matches_numpy():
    x = random_uint8((6, 4, 4, 3), seed=1)
    ds = from_arrays(x, np.zeros(6))
    mean, std = channel_stats(ds)
    ref = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, ref.std(axis=(0, 1, 2)), rtol=1e-5)
    out = jax.jit(make_preprocess(normalization="standardize", mean=mean, std=std))(x)
    expected = (ref - ref.mean(axis=(0, 1, 2))) / ref.std(axis=(0, 1, 2))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    with pytest.raises(ValueError, match="channel_stats"):
        make_preprocess(normalization="standardize")


def test_channel_stats_chunks_and_float_input():
    x = random_uint8((100, 3, 3, 2), seed=2)
    whole = channel_stats(from_arrays(x, np.zeros(100)))
    chunked = channel_stats(from_arrays(x, np.zeros(100)), chunk_size=7)
    np.testing.assert_allclose(whole, chunked, rtol=1e-6)
    floats = channel_stats(from_arrays(x / 255.0, np.zeros(100)))
    np.testing.assert_allclose(whole, floats, rtol=1e-6)


def test_imagenet_normalization():
    x = random_uint8((2, 3, 3, 3), seed=3)
    out = make_preprocess(normalization="imagenet")(x)
    ref = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match="RGB"):
        make_preprocess(normalization="imagenet")(random_uint8((2, 28, 28, 1)))


def bilinear_upsample_reference(x: np.ndarray, size: int) -> np.ndarray:
    """Half-pixel-centre bilinear upsampling of (B, H, W, C), written out in NumPy."""

    def weights(n_in):
        coords = (np.arange(size) + 0.5) * n_in / size - 0.5
        coords = np.clip(coords, 0, n_in - 1)
        lo = np.floor(coords).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = coords - lo
        w = np.zeros((size, n_in))
        w[np.arange(size), lo] += 1 - frac
        w[np.arange(size), hi] += frac
        return w

    wh, ww = weights(x.shape[1]), weights(x.shape[2])
    return np.einsum("ih,jw,bhwc->bijc", wh, ww, x)


@pytest.mark.parametrize("size", [56, 96])
def test_resize_shape_and_values(size):
    x = random_uint8((3, 28, 28, 1), seed=4)
    out = jax.jit(make_preprocess(image_size=size))(x)
    assert out.shape == (3, size, size, 1) and out.dtype == jnp.float32
    ref = bilinear_upsample_reference(x / 255.0, size)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_resize_then_imagenet_on_rgb():
    x = random_uint8((2, 8, 8, 3), seed=5)
    out = make_preprocess(image_size=224, normalization="imagenet")(x)
    assert out.shape == (2, 224, 224, 3)
    ref = (bilinear_upsample_reference(x / 255.0, 224) - np.array(IMAGENET_MEAN)) / np.array(
        IMAGENET_STD
    )
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_bad_normalization():
    with pytest.raises(ValueError, match="scale"):
        make_preprocess(normalization="minmax")


# --- prefetch -----------------------------------------------------------------------------------


def test_prefetch_to_device_keeps_order_and_content():
    ds = indexed(50)
    host = list(eval_batches(ds, 8))
    device = list(prefetch_to_device(eval_batches(ds, 8), size=3))
    assert len(device) == len(host)
    for h, d in zip(host, device, strict=True):
        assert isinstance(d["image"], jax.Array)
        for key in h:
            np.testing.assert_array_equal(np.asarray(d[key]), h[key])


def test_prefetch_with_sharding():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    for batch in prefetch_to_device(train_batches(indexed(40), 8, seed=0, epoch=0), 2, sharding):
        assert batch["image"].sharding == sharding and batch["label"].sharding == sharding


SHARDED_SCRIPT = """
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxnotes.data import from_arrays, prefetch_to_device, train_batches
assert jax.device_count() == 4, jax.devices()
n = 64
ds = from_arrays(np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1), np.arange(n))
sharding = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), P("batch"))
host = list(train_batches(ds, 16, seed=0, epoch=0))
for h, d in zip(host, prefetch_to_device(train_batches(ds, 16, seed=0, epoch=0), 2, sharding)):
    assert d["label"].sharding == sharding
    for shard in d["label"].addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), h["label"][shard.index])
        assert shard.data.shape == (4,)
print("ok")
"""


def test_prefetch_shards_over_four_cpu_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
