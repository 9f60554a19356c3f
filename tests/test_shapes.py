"""Shape formulas against what real layers produce: our ops, flax.linen.Conv, lax.conv."""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxnotes import ops, shapes


def _grid():
    """(n, k, padding, s) combinations where the kernel fits the padded input."""
    for n, k, s in itertools.product((1, 2, 5, 8, 13), (1, 2, 3, 5), (1, 2, 3)):
        for padding in (0, 1, 2, (0, 1), (2, 0)):
            before, after = (padding, padding) if isinstance(padding, int) else padding
            if n + before + after >= k:
                yield n, k, padding, s


def _shape(fn, *shapes_):
    """Output shape of fn on inputs of the given shapes, traced only (nothing compiled or run)."""
    return jax.eval_shape(fn, *(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes_)).shape


def test_conv_output_size_matches_corr2d_flax_conv_and_lax_conv():
    cases = list(_grid())
    assert len(cases) > 200
    for n, k, padding, s in cases:
        predicted = shapes.conv_output_size(n, k, stride=s, padding=padding)
        pad = [shapes.padding_pair(padding), (0, 0)]
        ours = _shape(functools.partial(ops.corr2d, stride=(s, 1), padding=pad), (n, 3), (k, 1))
        via_lax = _shape(
            functools.partial(lax.conv_general_dilated, window_strides=(s, 1), padding=pad),
            (1, 1, n, 1),
            (1, 1, k, 1),
        )
        conv = nn.Conv(1, (k, 1), strides=(s, 1), padding=pad)
        via_flax = _shape(
            lambda x, conv=conv: conv.init_with_output(jax.random.key(0), x)[0], (1, n, 1, 1)
        )
        assert (ours[0], via_lax[2], via_flax[1]) == (predicted,) * 3, (n, k, padding, s)


def test_pool_output_size_matches_pool2d_and_flax_pooling():
    for n, k, padding, s in _grid():
        predicted = shapes.pool_output_size(n, k, stride=s, padding=padding)
        pad = [shapes.padding_pair(padding), (0, 0)]
        ours = _shape(
            functools.partial(ops.pool2d, pool_size=(k, 1), stride=(s, 1), padding=pad), (n, 1)
        )
        via_flax = _shape(
            functools.partial(nn.max_pool, window_shape=(k, 1), strides=(s, 1), padding=pad),
            (1, n, 1, 1),
        )
        assert (ours[0], via_flax[1]) == (predicted, predicted), (n, k, padding, s)


def test_pool_stride_defaults_to_the_window():
    assert shapes.pool_output_size(8, 2) == 4
    assert shapes.pool_output_shape((9, 9), 3) == (3, 3)


def test_conv_output_shape_book_examples():
    assert shapes.conv_output_shape((8, 8), 3, padding=1) == (8, 8)
    assert shapes.conv_output_shape((8, 8), (5, 3), padding=(2, 1)) == (8, 8)
    assert shapes.conv_output_shape((8, 8), 3, stride=2, padding=1) == (4, 4)
    assert shapes.conv_output_shape((8, 8), (3, 5), stride=(3, 4), padding=(0, 1)) == (2, 2)


@pytest.mark.parametrize("k", range(1, 12))
def test_same_padding_keeps_the_size_and_matches_xla_same(k):
    before, after = shapes.same_padding(k)
    assert before + after == k - 1
    for n in (k, 7, 16):
        if n >= 1:
            assert shapes.conv_output_size(n, k, padding=(before, after)) == n
    assert lax.padtype_to_pads((16,), (k,), (1,), "SAME") == [(before, after)]


def _receptive_field_by_gradient(layers) -> int:
    """Independent reference: how many input pixels move the centre output of a conv stack."""
    size = 64

    def net(x):
        for k, s in layers:
            x = lax.conv_general_dilated(x, jnp.ones((1, 1, k, 1)), (s, 1), "VALID")
        return x[0, 0, x.shape[2] // 2, 0]

    grad = jax.grad(net)(jnp.ones((1, 1, size, 1)))
    nonzero = np.nonzero(np.asarray(grad[0, 0, :, 0]))[0]
    return int(nonzero.max() - nonzero.min() + 1)


@pytest.mark.parametrize(
    "layers",
    [
        [(3, 1)] * 2,
        [(3, 1)] * 3,
        [(7, 1)],
        [(2, 2), (3, 1)],
        [(3, 2), (3, 2), (5, 1)],
        [(11, 4), (3, 2), (5, 1)],
    ],
)
def test_receptive_field_matches_gradient_support(layers):
    assert shapes.receptive_field(layers) == _receptive_field_by_gradient(layers)


def test_receptive_field_book_facts():
    assert shapes.receptive_field([(3, 1)] * 3) == 7  # three 3x3 convs see what one 7x7 sees
    assert shapes.receptive_field([(3, 1)] * 2) == 5
    assert shapes.receptive_field([]) == 1


def _flax_param_count(module, shape) -> int:
    variables = jax.eval_shape(
        module.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32)
    )
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables))


@pytest.mark.parametrize("n_in, n_out", [(1, 1), (784, 256), (400, 120), (4096, 1000)])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_params_match_flax_dense(n_in, n_out, bias):
    assert shapes.dense_params(n_in, n_out, bias) == _flax_param_count(
        nn.Dense(n_out, use_bias=bias), (1, n_in)
    )
    if bias:
        assert shapes.dense_params(n_in, n_out) == (n_in + 1) * n_out


@pytest.mark.parametrize(
    "c_in, c_out, kernel",
    [(1, 6, 5), (6, 16, 5), (3, 64, (3, 3)), (192, 64, (1, 1)), (2, 3, (3, 5))],
)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_params_match_flax_conv(c_in, c_out, kernel, bias):
    kernel_size = (kernel, kernel) if isinstance(kernel, int) else kernel
    conv = nn.Conv(c_out, kernel_size, use_bias=bias)
    assert shapes.conv_params(c_in, c_out, kernel, bias) == _flax_param_count(conv, (1, 8, 8, c_in))


def test_count_params_counts_every_scalar():
    tree = {
        "a": np.zeros((3, 4)),
        "b": [np.zeros(5), jax.ShapeDtypeStruct((2, 2, 2), jnp.float32)],
        "c": np.float32(1),
    }
    assert shapes.count_params(tree) == 12 + 5 + 8 + 1


class _Tiny(nn.Module):
    """Conv (padded) + pooling + a nested block + dense, to exercise summarize's bookkeeping."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3), padding=1, name="conv")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = _Block(name="block")(x)
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


class _Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))  # own parameter
        return nn.Conv(6, (1, 1), name="mix")(x * scale)


def test_summarize_rows_totals_and_mult_adds():
    summary = shapes.summarize(_Tiny(), (2, 8, 8, 3), train=False)
    variables = _Tiny().init(jax.random.key(0), jnp.ones((2, 8, 8, 3)))
    assert summary.total_params == shapes.count_params(variables["params"])
    assert sum(r.params for r in summary.rows) == summary.total_params
    by_path = {r.path: r for r in summary.rows}
    assert by_path["conv"].output_shape == (2, 8, 8, 4)
    assert by_path["conv"].params == shapes.conv_params(3, 4, 3)
    # multiply-adds per example: every output value of a conv costs kh*kw*c_in
    assert by_path["conv"].macs == 8 * 8 * 4 * 3 * 3 * 3
    assert by_path["block/mix"].macs == 4 * 4 * 6 * 4
    assert by_path["block"].params == 4  # its own scale vector, not its child's
    assert by_path["head"].macs == 4 * 4 * 6 * 10
    assert summary.total_macs == 8 * 8 * 4 * 27 + 4 * 4 * 6 * 4 + 96 * 10
    assert summary.output_shape == (2, 10)
    table = str(summary)
    assert "block/mix" in table and f"{summary.total_params:,}" in table


def test_summarize_does_no_real_compute():
    # A dense layer of 2**21 x 2**21 inputs and outputs: 4.4e12 parameters, 17.6 TB of float32,
    # that no machine here could initialise (this one has 24 GB). summarize must only trace it.
    wide = 2**21
    summary = shapes.summarize(nn.Dense(wide), (1, wide))
    assert summary.total_params == shapes.dense_params(wide, wide) == wide * wide + wide
    assert summary.total_params * 4 > 17e12


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: shapes.conv_output_size(3, 5), r"floor\(\(3 - 5 \+ 0 \+ 1\) / 1\)"),
        (lambda: shapes.conv_output_size(3, 6, padding=1), r"3 \+ 2 < 6"),
        (lambda: shapes.conv_output_size(8, 3, stride=0), "stride s must be >= 1"),
        (lambda: shapes.conv_output_size(8, 3, padding=-1), "padding must be >= 0"),
        (lambda: shapes.conv_output_size(8.5, 3), "integer"),
        (lambda: shapes.conv_output_size(8, 3, padding=(1, 2, 3)), "pair"),
        (lambda: shapes.pool_output_size(2, 3), "kernel larger"),
        (lambda: shapes.conv_output_shape((8, 8), (3, 3, 3)), "pair"),
        (lambda: shapes.receptive_field([(3,)]), r"\(kernel, stride\)"),
        (lambda: shapes.receptive_field([(3, 0)]), "stride"),
        (lambda: shapes.dense_params(0, 3), "n_in"),
        (lambda: shapes.conv_params(3, 4, (3, 0)), "kernel"),
        (lambda: shapes.summarize(nn.Dense(3), ()), "batch"),
    ],
)
def test_impossible_combinations_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_integral_floats_are_accepted():
    assert shapes.conv_output_size(8.0, 3.0, padding=1.0) == 8
