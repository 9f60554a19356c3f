"""Forward + backward throughput of the model zoo: jitted ``value_and_grad`` of the training loss.

    python benchmarks/models.py [--models lenet,googlenet] [--batch N] [--steps N] [--dtype bf16]

Every model runs at its book input size with the book's Fashion-MNIST setting (1 channel, 10
classes, dropout on: ``train=True``), on synthetic data already on the device, so the number is the
compiled step alone (no input pipeline, no optimizer update). On an accelerator: batch 128, 20 timed
steps. On CPU the 224x224 models get small batches and 2-3 steps, so the whole script takes a few
minutes on 2 cores; CPU numbers say which model is heavy, not how fast a GPU is.

Printed per model: compile time (first call), time per step, images/s, forward multiply-adds per
image and parameters (both from ``jaxnotes.shapes.summarize``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp

from jaxnotes import shapes
from jaxnotes.models import BOOK_INPUT_SIZE, classification_loss, get_model

# (batch, timed steps) on CPU, chosen by the model's cost per image (see the MACs column).
CPU_PLAN = {
    "mlp": (128, 10),
    "lenet": (128, 10),
    "googlenet": (16, 3),
    "alexnet": (16, 3),
    "vgg11_small": (16, 3),
    "nin": (16, 3),
    "lenet_bn": (128, 10),
    "resnet18": (16, 3),
    "densenet": (16, 3),
    "vgg11": (4, 2),
    "vgg16": (4, 2),
}
ACCELERATOR_PLAN = (128, 20)
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def machine() -> str:
    devices = jax.devices()
    return (
        f"jax {jax.__version__} on {jax.default_backend()}: {len(devices)} x "
        f"{devices[0].device_kind} {devices}; host {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )


def benchmark(name: str, batch: int, steps: int, dtype) -> dict:
    """Compile and time ``steps`` calls of the jitted loss-and-gradient step of model ``name``."""
    kw = {"aux_logits": True} if name == "googlenet" else {}  # train as the paper: aux heads on
    model = get_model(name, dtype=dtype, **kw)
    size = BOOK_INPUT_SIZE[name]
    summary = shapes.summarize(model, (1, size, size, 1), train=False)

    key = jax.random.key(0)
    x = jax.random.normal(key, (batch, size, size, 1), jnp.float32)
    labels = jax.random.randint(key, (batch,), 0, 10)
    variables = dict(jax.jit(model.init)(key, x[:1]))
    params = variables.pop("params")  # the rest: batch norm's running statistics, if any

    @jax.jit
    def step(params, x, labels, key):
        def loss_fn(params):
            outputs = model.apply(
                {"params": params, **variables},
                x,
                train=True,
                rngs={"dropout": key},
                mutable=list(variables) or False,
            )
            outputs = outputs[0] if variables else outputs  # (logits, updated statistics)
            return classification_loss(outputs, labels)

        return jax.value_and_grad(loss_fn)(params)

    start = time.perf_counter()
    jax.block_until_ready(step(params, x, labels, key))  # compile + one warm-up run
    compile_s = time.perf_counter() - start

    start = time.perf_counter()
    for i in range(steps):
        out = step(params, x, labels, jax.random.fold_in(key, i))
    jax.block_until_ready(out)
    elapsed = time.perf_counter() - start
    return {
        "model": name,
        "input": f"{size}x{size}x1",
        "batch": batch,
        "steps": steps,
        "compile_s": compile_s,
        "step_ms": 1e3 * elapsed / steps,
        "images_per_s": batch * steps / elapsed,
        "mmacs_per_image": summary.total_macs / 1e6,
        "params": summary.total_params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CPU_PLAN), help="comma-separated names")
    parser.add_argument("--batch", type=int, help="override the batch size of every model")
    parser.add_argument("--steps", type=int, help="override the number of timed steps")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    args = parser.parse_args()

    print(machine())
    on_cpu = jax.default_backend() == "cpu"
    print(f"forward+backward (value_and_grad), dtype {args.dtype}, synthetic data on the device")
    header = f"{'model':12} {'input':10} {'batch':>5} {'steps':>5} {'compile s':>9} "
    header += f"{'ms/step':>9} {'images/s':>9} {'M MACs/img':>10} {'params':>12}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        batch, steps = CPU_PLAN[name] if on_cpu else ACCELERATOR_PLAN
        row = benchmark(name, args.batch or batch, args.steps or steps, DTYPES[args.dtype])
        print(
            f"{row['model']:12} {row['input']:10} {row['batch']:5d} {row['steps']:5d} "
            f"{row['compile_s']:9.1f} {row['step_ms']:9.1f} {row['images_per_s']:9.1f} "
            f"{row['mmacs_per_image']:10.2f} {row['params']:12,d}",
            flush=True,
        )


if __name__ == "__main__":
    main()
