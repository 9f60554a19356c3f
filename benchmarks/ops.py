"""corr2d: our vectorised op vs the book's per-pixel loop vs XLA's convolution (and PyTorch's).

    python benchmarks/ops.py

Prints time per call (median of repeats, after a warm-up that compiles) and ratios.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnotes import ops


def naive_corr2d(X, K):
    """The book's corr2d: a Python double loop over output pixels (baseline only)."""
    h, w = K.shape
    Y = np.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1), X.dtype)
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i : i + h, j : j + w] * K).sum()
    return Y


def seconds_per_call(fn, *args, repeats: int = 20, min_time: float = 0.2) -> float:
    jax.block_until_ready(fn(*args))  # warm-up: compile
    times = []
    for _ in range(repeats):
        start, calls = time.perf_counter(), 0
        while True:
            jax.block_until_ready(fn(*args))
            calls += 1
            if time.perf_counter() - start > min_time / repeats:
                break
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def main() -> None:
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, jax {jax.__version__}, devices {jax.devices()}"
    )
    try:
        import torch

        # One thread: a single small conv gains nothing from more, and on a loaded 2-core host
        # torch's second thread waits out scheduler slices (16 ms per call was seen).
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    corr2d = jax.jit(ops.corr2d)
    xla_conv = jax.jit(
        lambda X, K: lax.conv_general_dilated(X[None, None], K[None, None], (1, 1), "VALID")[0, 0]
    )
    header = f"{'input':>9} {'kernel':>6} {'naive loop':>12} {'corr2d':>10} {'lax.conv':>10}"
    header += f" {'torch conv':>10}   corr2d speed-up vs: loop, lax.conv, torch"
    print(header)
    rng = np.random.default_rng(0)
    for n in (64, 256):
        for k in (3, 5):
            X = rng.normal(size=(n, n)).astype(np.float32)
            K = rng.normal(size=(k, k)).astype(np.float32)
            Xj, Kj = jnp.asarray(X), jnp.asarray(K)
            ours = seconds_per_call(corr2d, Xj, Kj)
            xla = seconds_per_call(xla_conv, Xj, Kj)
            start = time.perf_counter()
            reference = naive_corr2d(X, K)
            naive = time.perf_counter() - start
            np.testing.assert_allclose(corr2d(Xj, Kj), reference, rtol=1e-3, atol=1e-3)
            torch_time = float("nan")
            if torch is not None:
                Xt, Kt = torch.from_numpy(X)[None, None], torch.from_numpy(K)[None, None]
                torch_time = seconds_per_call(torch.nn.functional.conv2d, Xt, Kt)
            print(
                f"{n:>4}x{n:<4} {k}x{k:<4} {naive * 1e3:>10.2f}ms {ours * 1e6:>8.1f}us "
                f"{xla * 1e6:>8.1f}us {torch_time * 1e6:>8.1f}us   {naive / ours:>8.0f}x "
                f"{xla / ours:>8.1f}x {torch_time / ours:>6.1f}x"
            )


if __name__ == "__main__":
    main()
