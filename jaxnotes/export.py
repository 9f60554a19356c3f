"""A trained run as one portable inference function: serialized ``jax.export`` StableHLO.

``export_run(workdir, path)`` writes the run's inference (its preprocessing, the eval-mode
forward pass with its weights, softmax) with a symbolic batch dimension, lowered for CPU, CUDA
and TPU at once: lowering for a platform needs no hardware, so a successful export proves the
graph holds nothing CPU-only (the CPU fast-path kernels step aside while it is traced:
``models.cpu_kernels.portable``). ``load_exported(path)`` gives a callable ``images ->
probabilities`` on whatever backend JAX has, without jaxnotes' models or Flax.

The weights are constants of the program: the file is self-contained (LeNet's is about 0.3 MB;
VGG-16's would be over 500 MB).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PLATFORMS = ("cpu", "cuda", "tpu")


def export_run(
    workdir: str | os.PathLike, path: str | os.PathLike, which: str = "best", *,
    platforms: Sequence[str] = PLATFORMS, model: Any = None, matmul_precision: str = "highest",
) -> Path:  # fmt: skip
    """Serialize the inference of the run in ``workdir`` (``runs.load_run(workdir, which)``) to
    ``path``; returns the path. The input is ``(batch, H, W, C)`` in the dtype and size the
    run's data had (e.g. float32 8x8x1 for digits, uint8 28x28x1 for Fashion-MNIST).

    ``matmul_precision`` is written into the program's convolutions and matrix products:
    "highest" computes float32 as float32 on every platform. With "default" an H200 runs them
    in TF32, measured: a CPU-made LeNet export gave the CPU's probabilities to 2.3e-4 on the GPU
    with "default", to 4.8e-7 with "highest" (benchmarks/gpu_check.sh, BENCHMARKS.md).
    """
    from jaxnotes import inference, modules, steps
    from jaxnotes.models import cpu_kernels

    run = inference.load_run(workdir, which, model=model)
    image = run.image or {}
    if "shape" not in image:
        raise ValueError(f"{workdir}: the run's checkpoint does not record its input images")
    forward = inference.probabilities_function(modules.as_model(run.model), run.preprocessing)
    weights = steps.evaluation_weights(run.state)
    weights = weights.replace(opt_state=None)
    fn = jax.jit(lambda images: forward(weights, images))
    (batch,) = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, *image["shape"]), np.dtype(image["dtype"]))
    with cpu_kernels.portable(), jax.default_matmul_precision(matmul_precision):
        exported = jax.export.export(fn, platforms=tuple(platforms))(spec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(exported.serialize())
    os.replace(tmp, path)  # never a half-written export
    return path


def load_exported(path: str | os.PathLike) -> Callable[[Any], jax.Array]:
    """The function :func:`export_run` wrote: ``images (n, H, W, C) -> probabilities (n, K)``."""
    exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))

    def predict(images: Any) -> jax.Array:
        return exported.call(jnp.asarray(images, exported.in_avals[0].dtype))

    predict.exported = exported  # platforms, input shapes: predict.exported.in_avals
    return predict
