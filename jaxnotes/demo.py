"""The book's worked examples for chapters 4-6, printed: ``python -m jaxnotes.demo``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxnotes import ops, shapes


def edge_image() -> jax.Array:
    """(6, 8): ones with a band of zeros in the middle four columns (the book's X)."""
    return jnp.ones((6, 8)).at[:, 2:6].set(0.0)


def learn_edge_kernel(steps: int = 20, learning_rate: float = 3e-2) -> tuple[jax.Array, float]:
    """Recover the [[1, -1]] kernel from X and Y = corr2d(X, [[1, -1]]) by gradient descent."""
    X = edge_image()
    Y = ops.corr2d(X, jnp.array([[1.0, -1.0]]))

    def loss(K: jax.Array) -> jax.Array:
        return jnp.sum((ops.corr2d(X, K) - Y) ** 2)

    step = jax.jit(lambda K: K - learning_rate * jax.grad(loss)(K))
    K = jnp.zeros((1, 2))
    for _ in range(steps):
        K = step(K)
    return K, float(loss(K))


def main() -> None:
    np.set_printoptions(precision=3, suppress=True)
    X = edge_image()
    print("Edge detection: corr2d(X, [[1, -1]]) marks the two vertical edges with 1 and -1")
    print(np.asarray(ops.corr2d(X, jnp.array([[1.0, -1.0]]))))
    print("...and finds nothing in X.T, whose edges are horizontal:")
    print(np.asarray(ops.corr2d(X.T, jnp.array([[1.0, -1.0]]))).any(), "\n")

    K, loss = learn_edge_kernel()
    print(f"Kernel learned by 20 steps of gradient descent: {np.asarray(K)}, loss {loss:.2e}\n")

    print("Output size floor((n - k + p_total + s) / s) on an 8x8 input:")
    for kernel, padding, stride in [
        (3, 1, 1),
        ((5, 3), (2, 1), 1),
        (3, 1, 2),
        ((3, 5), (0, 1), (3, 4)),
    ]:
        size = shapes.conv_output_shape((8, 8), kernel, stride, padding)
        print(f"  kernel {kernel}, padding {padding}, stride {stride} -> {size}")

    grid = jnp.arange(9.0).reshape(3, 3)
    print("\nPooling arange(9).reshape(3, 3) with a 2x2 window, stride 1:")
    print("  max\n", np.asarray(ops.pool2d(grid, 2, stride=1)))
    print("  avg\n", np.asarray(ops.pool2d(grid, 2, mode="avg", stride=1)))

    rng = np.random.default_rng(0)
    X3, K1 = rng.normal(size=(3, 3, 3)), rng.normal(size=(2, 3))
    gap = np.abs(ops.conv1x1(X3, K1) - ops.corr2d_multi_in_out(X3, K1[:, :, None, None])).max()
    print(f"\n1x1 convolution as a matmul over channels; max difference to corr2d: {gap:.1e}")

    print(f"Receptive field of three stacked 3x3 convs: {shapes.receptive_field([(3, 1)] * 3)}")
    print(f"Dense 784 -> 256 parameters (n_in + 1) * n_out: {shapes.dense_params(784, 256):,}")
    print(f"Conv 3 -> 64 channels, 3x3: {shapes.conv_params(3, 64, 3):,} parameters")


if __name__ == "__main__":
    main()
