"""The CPU fast paths (jaxnotes.models.cpu_kernels) compute the same functions as the plain ops.

Every formulation (gemm with several block widths, shift, native) of every op (forward, input
gradient, kernel gradient) is checked against ``lax.conv_general_dilated`` and its autodiff, and
the max-pooling path against flax's, over strides, paddings (asymmetric, larger than the kernel's
reach), 1-channel inputs, 1x1 to 5x5 kernels and maps smaller than the kernel. Tolerance: 1e-5
relative to the largest reference value (float32 sums of many products, in another order).
The models' parameter trees and outputs do not depend on whether the fast paths are on.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxnotes.models import cpu_kernels as ck
from jaxnotes.models import get_model, layers

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the fast paths are CPU-only by design"
)

TOL = 1e-5


def assert_close(actual, expected, tol: float = TOL) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def plain_conv(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=ck.NHWC)


def conv_and_grads(fn, x, kernel, cotangent):
    """(output, d/dx, d/dkernel) of fn at (x, kernel) for the given output cotangent, jitted."""

    @jax.jit
    def run(x, kernel, cotangent):
        y, vjp = jax.vjp(fn, x, kernel)
        return (y, *vjp(cotangent))

    return run(x, kernel, cotangent)


@functools.cache
def reference(n, h, w, c, o, kh, kw, strides, padding, seed):
    """Inputs, cotangent and lax's (output, d/dx, d/dkernel) for one case (computed once)."""
    kx, kk, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, h, w, c))
    kernel = jax.random.normal(kk, (kh, kw, c, o))
    y = jax.eval_shape(lambda: plain_conv(x, kernel, strides, padding))
    cotangent = jax.random.normal(kg, y.shape)
    expected = conv_and_grads(lambda x, k: plain_conv(x, k, strides, padding), x, kernel, cotangent)
    return x, kernel, cotangent, expected


def check_conv(fn, n, h, w, c, o, kh, kw, strides, padding, seed=0):
    x, kernel, cotangent, expected = reference(n, h, w, c, o, kh, kw, strides, padding, seed)
    actual = conv_and_grads(fn, x, kernel, cotangent)
    for name, a, e in zip(("output", "d/dx", "d/dkernel"), actual, expected, strict=True):
        try:
            assert_close(a, e)
        except AssertionError as error:
            raise AssertionError(f"{name} differs") from error


# (h, w, c, o, kh, kw, strides, padding): LeNet's and GoogLeNet's shapes and awkward ones.
CASES = [
    (12, 12, 1, 6, 5, 5, (1, 1), ((2, 2), (2, 2))),  # LeNet conv 1 (smaller map)
    (9, 9, 6, 16, 5, 5, (1, 1), ((0, 0), (0, 0))),  # LeNet conv 2
    (11, 11, 1, 8, 7, 7, (2, 2), ((3, 3), (3, 3))),  # GoogLeNet b1
    (4, 4, 8, 12, 3, 3, (1, 1), ((1, 1), (1, 1))),
    (4, 4, 4, 6, 5, 5, (1, 1), ((2, 2), (2, 2))),  # kernel larger than the map
    (2, 2, 5, 7, 5, 5, (1, 1), ((2, 2), (2, 2))),  # taps that only see padding
    (1, 1, 6, 5, 3, 3, (1, 1), ((1, 1), (1, 1))),  # a 3x3 conv that is a 1x1 conv
    (5, 5, 7, 3, 1, 1, (1, 1), ((0, 0), (0, 0))),  # 1x1
    (7, 6, 3, 4, 1, 1, (2, 2), ((0, 0), (0, 0))),  # strided 1x1
    (8, 7, 2, 3, 3, 2, (2, 1), ((1, 0), (2, 1))),  # rectangular, asymmetric
    (9, 10, 1, 3, 3, 3, (3, 3), ((1, 1), (0, 2))),  # stride 3
    (6, 6, 3, 2, 2, 2, (2, 2), ((0, 0), (0, 0))),  # stride = kernel
    (5, 8, 2, 4, 3, 5, (1, 2), ((2, 3), (1, 0))),  # padding past the kernel's reach
    (10, 10, 3, 5, 4, 4, (3, 2), ((1, 2), (2, 1))),
]


def _ids(cases):
    return [f"{h}x{w}x{c}->{o}_k{kh}x{kw}_s{s[0]}{s[1]}_p{p}" for h, w, c, o, kh, kw, s, p in cases]


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_planned_conv_matches_lax(case):
    h, w, c, o, kh, kw, strides, padding = case
    check_conv(lambda x, k: ck.fast_conv(x, k, strides, padding), 2, *case)


FORMULATIONS = {
    "gemm_im2col": ck.Plan("gemm", "gemm", "gemm", bw=1, input_grad_bw=1),
    "gemm_blocks2": ck.Plan("gemm", "gemm", "gemm", bw=2, input_grad_bw=2),
    "gemm_blocks3_full": ck.Plan("gemm", "gemm", "gemm", bw=3, input_grad_bw=99),
    "gemm_full_blocks3": ck.Plan("gemm", "gemm", "gemm", bw=99, input_grad_bw=3),
    "native": ck.Plan("native", "native", "native"),
}


@pytest.mark.parametrize("how", list(FORMULATIONS))
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_every_formulation_matches_lax(case, how):
    h, w, c, o, kh, kw, strides, padding = case
    plan = FORMULATIONS[how]
    check_conv(lambda x, k: ck.conv2d(x, k, strides, padding, plan), 2, *case)


@pytest.mark.parametrize(
    "case", [c for c in CASES if c[2] == 1], ids=_ids([c for c in CASES if c[2] == 1])
)
def test_shift_forward_matches_lax(case):
    h, w, c, o, kh, kw, strides, padding = case
    plan = ck.Plan("shift", "gemm", "gemm", bw=2, input_grad_bw=4)
    check_conv(lambda x, k: ck.conv2d(x, k, strides, padding, plan), 2, *case)


def test_lenet_sized_batch_matches_lax():
    """LeNet's two convs at batch 64, through the plan (shift forward, blocked gemm)."""
    for h, c, o, pad in ((28, 1, 6, 2), (14, 6, 16, 0)):
        strides, padding = (1, 1), ((pad, pad), (pad, pad))
        fn = lambda x, k, s=strides, p=padding: ck.fast_conv(x, k, s, p)  # noqa: E731
        check_conv(fn, 64, h, h, c, o, 5, 5, strides, padding)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_trimmed_taps_change_nothing(case):
    h, w, c, o, kh, kw, strides, padding = case
    rows, cols, trimmed = ck.trim_padding_taps(h, w, kh, kw, strides, padding)
    x = jax.random.normal(jax.random.key(3), (2, h, w, c))
    kernel = jax.random.normal(jax.random.key(4), (kh, kw, c, o))
    full = plain_conv(x, kernel, strides, padding)
    assert_close(plain_conv(x, kernel[rows, cols], strides, trimmed), full)
    # Only taps that never meet the input are dropped: their kernel gradient is exactly zero.
    grad = jax.grad(lambda k: jnp.sum(plain_conv(x, k, strides, padding) ** 2))(kernel)
    mask = np.ones(kernel.shape, bool)
    mask[rows, cols] = False
    assert np.all(np.asarray(grad)[mask] == 0)


def test_plan_choices():
    """The formulations the plan picks for the zoo's shapes (see cpu_kernels.plan)."""
    same = ((2, 2), (2, 2))
    lenet1 = ck.plan((256, 28, 28, 1), (5, 5, 1, 6), (1, 1), same)
    assert (lenet1.forward, lenet1.input_grad, lenet1.kernel_grad) == ("shift", "gemm", "gemm")
    assert lenet1.bw == 7  # 7 * 6 >= 32 columns, 7 divides 28
    lenet2 = ck.plan((256, 14, 14, 6), (5, 5, 6, 16), (1, 1), ((0, 0), (0, 0)))
    assert lenet2 == ck.Plan("gemm", "gemm", "gemm", bw=2, input_grad_bw=5)
    tiny = ck.plan((32, 2, 2, 160), (3, 3, 160, 320), (1, 1), ((1, 1), (1, 1)))
    assert (tiny.forward, tiny.input_grad, tiny.kernel_grad) == ("gemm", "gemm", "native")
    assert ck.plan((32, 8, 8, 64), (3, 3, 64, 192), (1, 1), ((1, 1), (1, 1))).forward == "native"
    assert ck.plan((32, 8, 8, 64), (1, 1, 64, 64), (1, 1), ((0, 0), (0, 0))).forward == "gemm"


def test_fast_path_only_for_float32_on_cpu():
    assert ck.fast_path_enabled(jnp.zeros(2, jnp.float32))
    assert not ck.fast_path_enabled(jnp.zeros(2, jnp.bfloat16))


def test_drop_in_falls_back_for_what_it_does_not_cover():
    x = jax.random.normal(jax.random.key(5), (2, 7, 7, 4))
    kernel = jax.random.normal(jax.random.key(6), (3, 3, 2, 6))
    dims = lax.conv_dimension_numbers(x.shape, kernel.shape, ck.NHWC)
    grouped = ck.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims, feature_group_count=2
    )
    expected = lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims, feature_group_count=2
    )
    assert_close(grouped, expected)
    same = ck.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=dims, feature_group_count=2
    )
    assert same.shape == (2, 7, 7, 6)


# ---- pooling -----------------------------------------------------------------------------------

POOLS = [
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (2, 9, 9, 3)),  # GoogLeNet's stage pools
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (2, 4, 4, 5)),  # Inception's path 4
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (2, 2, 2, 4)),  # on a 2x2 map
    ((3, 3), (2, 2), ((0, 0), (0, 0)), (2, 7, 8, 2)),  # AlexNet / NiN
    ((2, 2), (2, 2), ((0, 0), (0, 0)), (3, 6, 5, 2)),
    ((3, 3), (3, 3), ((1, 1), (1, 1)), (2, 8, 7, 2)),
    ((2, 3), (1, 2), ((1, 0), (0, 2)), (2, 5, 6, 3)),
]


def _tied_input(shape, seed):
    """ReLU'd values on a coarse grid: many ties, many zeros, as after a ReLU in a network."""
    x = jax.random.normal(jax.random.key(seed), shape)
    return jnp.round(jax.nn.relu(x) * 2) / 2


@pytest.mark.parametrize("window, strides, padding, shape", POOLS)
def test_max_pool_matches_flax_with_ties(window, strides, padding, shape):
    x = _tied_input(shape, seed=7)
    cotangent_shape = jax.eval_shape(lambda: nn.max_pool(x, window, strides, padding)).shape
    cotangent = jax.random.normal(jax.random.key(8), cotangent_shape)

    def value_and_vjp(pool):
        @jax.jit
        def run(x, cotangent):
            y, vjp = jax.vjp(lambda x: pool(x, window, strides, padding), x)
            return y, vjp(cotangent)[0]

        return run(x, cotangent)

    y, dx = value_and_vjp(ck.max_pool)
    y_ref, dx_ref = value_and_vjp(lambda x, w, s, p: nn.max_pool(x, w, strides=s, padding=p))
    np.testing.assert_array_equal(y, y_ref)
    assert_close(dx, dx_ref)  # the same element of each window (the first maximum) gets it


# ---- the models --------------------------------------------------------------------------------


def _without_fast_paths(monkeypatch):
    monkeypatch.setattr(ck, "fast_path_enabled", lambda *arrays: False)


MODEL_INPUTS = {"lenet": 28, "googlenet": 32, "nin": 67, "alexnet": 68, "vgg11_small": 32}


@pytest.mark.parametrize("name", list(MODEL_INPUTS))
def test_parameter_trees_do_not_depend_on_the_fast_paths(name, monkeypatch):
    model = get_model(name)
    x = jnp.zeros((1, MODEL_INPUTS[name], MODEL_INPUTS[name], 1))
    fast = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    _without_fast_paths(monkeypatch)
    plain = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    assert jax.tree.structure(fast) == jax.tree.structure(plain)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), fast) == jax.tree.map(
        lambda a: (a.shape, a.dtype), plain
    )


def test_lenet_computes_the_same_function(monkeypatch):
    """Logits and the loss gradient of the whole LeNet, fast paths on vs off."""
    from jaxnotes.models import classification_loss

    model = get_model("lenet")
    x = jax.random.uniform(jax.random.key(11), (3, 28, 28, 1))
    labels = jnp.arange(3)
    params = model.init(jax.random.key(12), x[:1])["params"]

    def loss_and_grad(params):
        def loss(params):
            out = model.apply({"params": params}, x, train=True)
            return classification_loss(out, labels), out

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (loss_fast, out_fast), grad_fast = loss_and_grad(params)
    _without_fast_paths(monkeypatch)
    (loss_plain, out_plain), grad_plain = loss_and_grad(params)
    assert_close(loss_fast, loss_plain)
    assert_close(out_fast, out_plain)
    jax.tree.map(assert_close, grad_fast, grad_plain)


@pytest.mark.slow
def test_googlenet_train_step_computes_the_same_function(monkeypatch):
    """One real train step of GoogLeNet with its aux heads, fast paths on vs off.

    The aux heads' dropout makes the step vmap the model over single examples (per-example
    keys), the case the kernel gradient's vmap rule exists for; their 5x5 / 3 average pool
    takes flax's path.
    """
    from jaxnotes import data, optim, training

    model = get_model("googlenet", aux_logits=True)
    tx = optim.make_optimizer("sgd", 0.1)
    images = jax.random.randint(jax.random.key(15), (3, 32, 32, 1), 0, 256).astype(jnp.uint8)
    batch = {"image": images, "label": jnp.arange(3, dtype=jnp.int32)}
    preprocess = data.make_preprocess(None, "scale")  # uint8 -> [0, 1] floats, as fit does

    def one_step():
        state = training.create_train_state(model, tx, (32, 32, 1), seed=0)
        step = training.jit_train_step(training.make_train_step(model, tx, preprocess))
        state, metrics = step(state, batch, training.empty_metrics())
        return state.params, metrics["loss_sum"]

    params_fast, loss_fast = one_step()
    _without_fast_paths(monkeypatch)
    params_plain, loss_plain = one_step()
    assert_close(loss_fast, loss_plain)
    jax.tree.map(assert_close, params_fast, params_plain)


def test_vmapped_conv_gradients(monkeypatch):
    """Per-example vmap (kernel shared) and ensemble vmap (kernel mapped): same gradients."""
    strides, padding = (1, 1), ((2, 2), (2, 2))
    x = jax.random.normal(jax.random.key(16), (4, 9, 9, 1))
    kernel = jax.random.normal(jax.random.key(17), (5, 5, 1, 6))
    kernels = jnp.stack([kernel, -0.5 * kernel])

    def per_example(conv):
        def loss(kernel, x):
            outputs = jax.vmap(lambda xi: conv(xi[None], kernel, strides, padding)[0])(x)
            return jnp.sum(jnp.sin(outputs))

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(kernel, x)

    def ensemble(conv):
        def loss(kernels):
            outputs = jax.vmap(lambda k: conv(x, k, strides, padding))(kernels)
            return jnp.sum(jnp.sin(outputs) * jnp.arange(2.0)[:, None, None, None, None])

        return jax.jit(jax.grad(loss))(kernels)

    jax.tree.map(assert_close, per_example(ck.fast_conv), per_example(plain_conv))
    assert_close(ensemble(ck.fast_conv), ensemble(plain_conv))


def test_layers_conv_builds_the_same_nn_conv(monkeypatch):
    """layers.conv keeps nn.Conv's parameters: a checkpoint from either path loads in the other."""

    class One(nn.Module):
        @nn.compact
        def __call__(self, x):
            return layers.conv(x, 5, 3, stride=2, padding=1, name="c")

    x = jax.random.normal(jax.random.key(13), (2, 9, 9, 3))
    variables = One().init(jax.random.key(14), x)
    assert variables["params"]["c"]["kernel"].shape == (3, 3, 3, 5)
    assert variables["params"]["c"]["bias"].shape == (5,)
    fast = One().apply(variables, x)
    _without_fast_paths(monkeypatch)
    assert_close(fast, One().apply(variables, x))
