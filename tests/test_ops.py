"""ops against independent references: scipy.signal, torch.nn.functional, the book's examples.

PyTorch's values come from ``torch_reference.reference``: live on Python 3.11, stored on 3.12.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal
from torch_reference import reference

from jaxnotes import demo, ops

# ---- the book's worked examples -------------------------------------------------------------


def _edge_image() -> np.ndarray:
    """The book's 6x8 image: ones with a band of zeros in the middle four columns."""
    X = np.ones((6, 8), np.float32)
    X[:, 2:6] = 0
    return X


def test_edge_detection_book_example():
    X = _edge_image()
    Y = np.asarray(ops.corr2d(X, np.array([[1.0, -1.0]])))
    expected = np.zeros((6, 7), np.float32)
    expected[:, 1] = 1  # white -> black edge
    expected[:, 5] = -1  # black -> white edge
    np.testing.assert_array_equal(Y, expected)
    # The transposed image has horizontal edges only: the horizontal kernel sees nothing.
    np.testing.assert_array_equal(ops.corr2d(X.T, np.array([[1.0, -1.0]])), np.zeros((8, 5)))


def test_learn_edge_kernel_by_gradient_descent():
    K, loss = demo.learn_edge_kernel(steps=20, learning_rate=3e-2)
    assert loss < 1e-3
    np.testing.assert_allclose(np.asarray(K), [[1.0, -1.0]], atol=0.05)


def test_demo_prints_the_book_examples(capsys):
    demo.main()
    printed = capsys.readouterr().out
    assert "[ 0.  1.  0.  0.  0. -1.  0.]" in printed
    assert "stride (3, 4) -> (2, 2)" in printed and "200,960" in printed


@pytest.mark.parametrize(
    "kernel, padding, stride, expected",
    [
        ((3, 3), 1, 1, (8, 8)),
        ((5, 3), (2, 1), 1, (8, 8)),
        ((3, 3), 1, 2, (4, 4)),
        ((3, 5), (0, 1), (3, 4), (2, 2)),
    ],
)
def test_padding_and_stride_book_examples(kernel, padding, stride, expected):
    X = np.random.default_rng(0).normal(size=(8, 8))
    assert ops.corr2d(X, np.ones(kernel), stride=stride, padding=padding).shape == expected


def test_pool_book_example():
    X = np.arange(9.0).reshape(3, 3)
    np.testing.assert_array_equal(ops.pool2d(X, 2, stride=1), [[4, 5], [7, 8]])
    np.testing.assert_array_equal(ops.pool2d(X, 2, mode="avg", stride=1), [[2, 3], [5, 6]])


def test_pool_stride_defaults_to_window_and_halves_the_size():
    X = np.random.default_rng(1).normal(size=(3, 8, 8))
    assert ops.pool2d(X, 2).shape == (3, 4, 4)


def test_conv1x1_equals_correlation_with_1x1_kernels():
    rng = np.random.default_rng(2)
    X, K = rng.normal(size=(3, 5, 6)), rng.normal(size=(2, 3))
    by_matmul = ops.conv1x1(X, K)
    by_correlation = ops.corr2d_multi_in_out(X, K.reshape(2, 3, 1, 1))
    np.testing.assert_allclose(by_matmul, by_correlation, rtol=1e-5, atol=1e-5)
    # and the plain einsum definition
    np.testing.assert_allclose(by_matmul, np.einsum("oc,chw->ohw", K, X), rtol=1e-5, atol=1e-5)


# ---- scipy ----------------------------------------------------------------------------------


def _random_cases(count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        h, w = rng.integers(1, 20, size=2)
        kh, kw = rng.integers(1, h + 1), rng.integers(1, w + 1)
        yield rng.normal(size=(h, w)), rng.normal(size=(kh, kw))


def test_corr2d_matches_scipy_correlate2d():
    for X, K in _random_cases(30, seed=3):
        np.testing.assert_allclose(
            ops.corr2d(X, K), signal.correlate2d(X, K, mode="valid"), rtol=1e-4, atol=1e-4
        )


def test_conv2d_matches_scipy_convolve2d():
    for X, K in _random_cases(30, seed=4):
        np.testing.assert_allclose(
            ops.conv2d(X, K), signal.convolve2d(X, K, mode="valid"), rtol=1e-4, atol=1e-4
        )


def test_conv2d_is_correlation_with_rotated_kernel():
    X, K = next(_random_cases(1, seed=5))
    np.testing.assert_allclose(ops.conv2d(X, K), ops.corr2d(X, np.rot90(K, 2)), atol=1e-6)


def test_corr2d_with_padding_matches_scipy_full_mode():
    # 'full' correlation is 'valid' correlation of the input padded with k-1 zeros on each side.
    rng = np.random.default_rng(6)
    X, K = rng.normal(size=(7, 9)), rng.normal(size=(3, 4))
    out = ops.corr2d(X, K, padding=((2, 2), (3, 3)))
    np.testing.assert_allclose(out, signal.correlate2d(X, K, mode="full"), rtol=1e-4, atol=1e-4)


# ---- torch ----------------------------------------------------------------------------------


def _torch_padding_grid():
    rng = np.random.default_rng(7)
    for _ in range(25):
        c_in, c_out = rng.integers(1, 4), rng.integers(1, 4)
        h, w = rng.integers(5, 14, size=2)
        kh, kw = rng.integers(1, 5, size=2)
        sh, sw = rng.integers(1, 4, size=2)
        ph, pw = rng.integers(0, 3, size=2)
        yield rng, (c_in, c_out, h, w, kh, kw, sh, sw, ph, pw)


def test_multi_channel_stride_padding_match_torch_conv2d():
    for case, (rng, (c_in, c_out, h, w, kh, kw, sh, sw, ph, pw)) in enumerate(
        _torch_padding_grid()
    ):
        X = rng.normal(size=(c_in, h, w)).astype(np.float32)
        K = rng.normal(size=(c_out, c_in, kh, kw)).astype(np.float32)
        ours = ops.corr2d_multi_in_out(X, K, stride=(sh, sw), padding=(ph, pw))

        def torch_conv(torch, X=X, K=K, s=(sh, sw), p=(ph, pw)):
            return torch.nn.functional.conv2d(
                torch.from_numpy(X)[None], torch.from_numpy(K), stride=s, padding=p
            )[0].numpy()

        ref = reference(f"ops_conv2d_{case}", torch_conv)
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
        single = ops.corr2d_multi_in(X, K[0], stride=(sh, sw), padding=(ph, pw))
        np.testing.assert_allclose(single, ref[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool2d_matches_torch(mode):
    rng = np.random.default_rng(8)
    for case in range(40):
        c, h, w = rng.integers(1, 4), rng.integers(4, 15), rng.integers(4, 15)
        kh, kw = rng.integers(1, 5, size=2)
        sh, sw = rng.integers(1, 4, size=2)
        # torch requires padding <= half the window
        ph, pw = rng.integers(0, kh // 2 + 1), rng.integers(0, kw // 2 + 1)
        X = rng.normal(size=(c, h, w)).astype(np.float32)

        def torch_pool(torch, X=X, k=(kh, kw), s=(sh, sw), p=(ph, pw)):
            F = torch.nn.functional
            pool = F.max_pool2d if mode == "max" else F.avg_pool2d
            return pool(torch.from_numpy(X)[None], k, stride=s, padding=p)[0].numpy()

        ref = reference(f"ops_pool2d_{mode}_{case}", torch_pool)
        ours = ops.pool2d(X, (kh, kw), mode=mode, padding=(ph, pw), stride=(sh, sw))
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_max_pool_pads_with_minus_infinity():
    X = -np.ones((2, 2))  # every value below zero: zero padding would win the max
    np.testing.assert_array_equal(ops.pool2d(X, 2, padding=1, stride=1), -np.ones((3, 3)))


def test_ops_jit_and_grad():
    X = jnp.asarray(np.random.default_rng(9).normal(size=(2, 9, 9)), jnp.float32)
    K = jnp.ones((3, 2, 3, 3))
    jitted = jax.jit(lambda X, K: ops.corr2d_multi_in_out(X, K, stride=2, padding=1))
    np.testing.assert_allclose(jitted(X, K), ops.corr2d_multi_in_out(X, K, 2, 1), atol=1e-5)
    # Gradients against XLA's own ops' VJPs: lax.reduce_window (max, -inf padding) for the
    # pool, lax.conv_general_dilated for the correlation (cotangents drawn at random, so a
    # gradient that is right only for all-ones cotangents fails).
    rng = np.random.default_rng(10)
    pooled, pool_vjp = jax.vjp(lambda X: ops.pool2d(X, 3, mode="max", padding=1, stride=1), X)
    cot = jnp.asarray(rng.normal(size=pooled.shape), jnp.float32)
    window = lambda X: jax.lax.reduce_window(
        X, -jnp.inf, jax.lax.max, (1, 3, 3), (1, 1, 1), ((0, 0), (1, 1), (1, 1))
    )
    ref_pooled, ref_vjp = jax.vjp(window, X)
    np.testing.assert_allclose(pooled, ref_pooled)
    np.testing.assert_allclose(pool_vjp(cot)[0], ref_vjp(cot)[0], atol=1e-6)

    K = jnp.asarray(rng.normal(size=(3, 2, 3, 3)), jnp.float32)
    ours, ours_vjp = jax.vjp(lambda X, K: ops.corr2d_multi_in_out(X, K, stride=2, padding=1), X, K)
    conv = lambda X, K: jax.lax.conv_general_dilated(
        X[None], K, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
    )[0]
    theirs, theirs_vjp = jax.vjp(conv, X, K)
    cot = jnp.asarray(rng.normal(size=ours.shape), jnp.float32)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    for got, expected in zip(ours_vjp(cot), theirs_vjp(cot), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-4)


# ---- dropout and the L2 penalty ------------------------------------------------------------


def test_dropout_keeps_the_mean_and_drops_the_right_fraction():
    X = jnp.full((200_000,), 3.0)
    for rate in (0.1, 0.5, 0.9):
        out = np.asarray(ops.dropout(jax.random.key(0), X, rate))
        dropped = np.mean(out == 0)
        # binomial standard error of the dropped fraction: sqrt(p(1-p)/n) <= 0.0012
        assert abs(dropped - rate) < 0.006
        # kept values are scaled by exactly 1/(1-rate)
        np.testing.assert_allclose(out[out != 0], 3.0 / (1 - rate), rtol=1e-6)
        # mean of X*B/(1-p): standard error 3*sqrt(p/(1-p)/n) <= 0.02 for p = 0.9
        assert abs(out.mean() - 3.0) < 0.1


def test_dropout_mean_over_many_keys_is_unchanged():
    X = jnp.linspace(-1.0, 2.0, 12)
    keys = jax.random.split(jax.random.key(1), 20_000)
    mean = jax.vmap(lambda k: ops.dropout(k, X, 0.5))(keys).mean(axis=0)
    np.testing.assert_allclose(mean, X, atol=0.05)


def test_dropout_keys():
    X = jnp.ones((64, 64))
    a = ops.dropout(jax.random.key(2), X, 0.5)
    b = ops.dropout(jax.random.key(2), X, 0.5)
    c = ops.dropout(jax.random.key(3), X, 0.5)
    np.testing.assert_array_equal(a, b)
    assert np.any(np.asarray(a) != np.asarray(c))


def test_dropout_edge_rates():
    X = jnp.arange(1.0, 7.0).reshape(2, 3)
    np.testing.assert_array_equal(ops.dropout(jax.random.key(0), X, 0.0), X)
    ones = ops.dropout(jax.random.key(0), X, 1.0)
    np.testing.assert_array_equal(ones, np.zeros((2, 3)))
    assert bool(jnp.all(jnp.isfinite(ones)))


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "0.5", None])
def test_dropout_rejects_bad_rates(rate):
    with pytest.raises(ValueError, match="rate"):
        ops.dropout(jax.random.key(0), jnp.ones(3), rate)


def test_l2_penalty_is_half_the_squared_norm():
    rng = np.random.default_rng(10)
    params = {"w": rng.normal(size=(3, 4)), "v": [rng.normal(size=5)]}
    expected = 0.5 * (np.sum(params["w"] ** 2) + np.sum(params["v"][0] ** 2))
    np.testing.assert_allclose(ops.l2_penalty(params), expected, rtol=1e-5)
    assert float(ops.l2_penalty({})) == 0.0


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ops.corr2d(np.ones((2, 3, 3)), np.ones((2, 2))), r"\(height, width\)"),
        (lambda: ops.corr2d(np.ones((3, 3)), np.ones((1, 2, 2))), r"\(kh, kw\)"),
        (lambda: ops.corr2d(np.ones((3, 3)), np.ones((4, 4))), r"floor\(\(3 - 4 \+ 0 \+ 1\) / 1\)"),
        (lambda: ops.corr2d(np.ones((3, 3)), np.ones((2, 2)), stride=0), "stride"),
        (lambda: ops.corr2d(np.ones((3, 3)), np.ones((2, 2)), padding=-1), "padding"),
        (lambda: ops.corr2d(np.ones((3, 3)), np.ones((2, 2)), stride=1.5), "integer"),
        (lambda: ops.corr2d_multi_in(np.ones((2, 4, 4)), np.ones((3, 2, 2))), "channels"),
        (lambda: ops.corr2d_multi_in_out(np.ones((2, 4, 4)), np.ones((2, 2, 2))), "c_out, c_in"),
        (lambda: ops.conv1x1(np.ones((2, 4, 4)), np.ones((3, 3))), r"\(c_out, 2\)"),
        (lambda: ops.pool2d(np.ones((3, 3)), 2, mode="median"), "mode"),
        (lambda: ops.pool2d(np.ones((3, 3)), 4), "kernel larger"),
        (lambda: ops.pool2d(np.ones((1, 2, 3, 3)), 2), "channels, height, width"),
    ],
)
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
