"""Data-parallel throughput: 1, 2, 4 devices, sharded jit vs pmap, same global batch.

    python benchmarks/scaling.py [--model lenet] [--batch 128] [--steps 30]

On a CPU-only machine it simulates 4 devices (JAX_NUM_CPU_DEVICES=4): the figures check the
plumbing, not speed (fake devices share the same cores). On an accelerator host it uses the real
devices. Prints examples/s per (devices, path) and the sharded / pmap ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")  # before JAX starts; ignored on GPU/TPU

import jax  # noqa: E402

from jaxnotes import data, parallel, training  # noqa: E402


def examples_per_second(config, dataset, placement, steps: int) -> float:
    parts = training.build(config, dataset, placement)
    state = training.create_train_state(parts.model, parts.tx, parts.input_shape, config.seed)
    state, metrics = placement.put(state), placement.put(training.empty_metrics())
    host_batch = next(data.train_batches(dataset, config.batch_size, seed=0, epoch=0))
    batch = next(iter(placement.batches([host_batch])))  # on the devices, reused: compute only
    step = parts.train_step
    state, metrics = step(state, batch, metrics)  # compile
    jax.block_until_ready(metrics)
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, batch, metrics)
        jax.block_until_ready(metrics)
        rates.append(steps * config.batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, {jax.device_count()} x {device.device_kind} "
        f"({jax.default_backend()}), host {platform.machine()} with {os.cpu_count()} CPUs"
    )
    side = 28 if args.model in ("lenet", "mlp") else 96
    dataset = data.synthetic(args.batch * 2, image_shape=(side, side, 1), seed=0)
    config = training.TrainConfig(
        model=args.model, batch_size=args.batch, learning_rate=0.01, progress=False
    )
    print(f"{args.model} {side}x{side}, global batch {args.batch}, train step only")
    print(f"{'devices':>7} {'sharded ex/s':>13} {'pmap ex/s':>11} {'sharded/pmap':>13}")
    counts = [n for n in (1, 2, 4, 8) if n <= jax.device_count() and args.batch % n == 0]
    for n in counts:
        sharded = examples_per_second(config, dataset, parallel.make_placement(n), args.steps)
        if n == 1:
            print(f"{n:>7} {sharded:>13,.0f} {'-':>11} {'-':>13}")
            continue
        pmapped = examples_per_second(config, dataset, parallel.PmapDataParallel(n), args.steps)
        print(f"{n:>7} {sharded:>13,.0f} {pmapped:>11,.0f} {sharded / pmapped:>12.2f}x")


if __name__ == "__main__":
    main()
