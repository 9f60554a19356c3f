"""Chapters 11-13: batch normalization, ResNet and DenseNet, against independent references.

- ``ops.batch_norm`` against the book's formulas in float64 NumPy (three training steps, then
  inference); the from-scratch ``BatchNorm`` layer against the ``flax.linen.BatchNorm`` the zoo
  uses (same outputs, same running statistics, step after step);
- ``lenet_bn``, ``resnet18``, ``densenet`` against d2l's PyTorch code (``benchmarks/
  torch_models.py``) with copied weights and running statistics: parameter totals (literal
  numbers, read off the twins), logits in eval and in train mode, and the running statistics
  the training-mode pass leaves. Live on Python 3.11, stored on 3.12 (``torch_reference``,
  ``fixtures/torch_references_modern.npz``);
- shapes and input checks, the batch-of-one rule, the CPU fast paths, the presets, and (marked
  ``accuracy``) the runner's resnet18 digits preset to 0.95.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_reference import MODERN_FIXTURE, reference

from jaxnotes import cli, ops, presets
from jaxnotes.models import (
    BOOK_INPUT_SIZE,
    MODELS,
    BatchNorm,
    DenseBlock,
    DenseNet,
    LeNetBN,
    Residual,
    ResNet,
    cpu_kernels,
    get_model,
    layers,
    transition_block,
)
from jaxnotes.shapes import count_params, summarize

KEY = jax.random.key(0)
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NAMES = ("lenet_bn", "resnet18", "densenet")


def _torch_models():
    # d2l's PyTorch networks; imported inside the live computations only (no torch on 3.12).
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    import torch_models

    return torch_models


# ---- batch norm from scratch -------------------------------------------------------------------


def numpy_batch_norm(X, gamma, beta, moving_mean, moving_var, train, eps=1e-5, momentum=0.9):
    """The book's batch norm in float64: statistics over every axis but the last (channels)."""
    X = np.asarray(X, np.float64)
    if not train:
        return gamma * (X - moving_mean) / np.sqrt(moving_var + eps) + beta, moving_mean, moving_var
    axes = tuple(range(X.ndim - 1))
    mean, var = X.mean(axis=axes), X.var(axis=axes, ddof=0)  # the biased variance
    Y = gamma * (X - mean) / np.sqrt(var + eps) + beta
    new_mean = momentum * moving_mean + (1 - momentum) * mean
    return Y, new_mean, momentum * moving_var + (1 - momentum) * var


def _batches(shape, steps=3, seed=0):
    """Batches with a channel-dependent offset and spread (so mean and variance both matter)."""
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    offset, spread = rng.normal(size=channels) * 3, rng.uniform(0.5, 3, size=channels)
    return [(rng.normal(size=shape) * spread + offset).astype(np.float32) for _ in range(steps)]


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (8, 7)], ids=["nhwc", "dense"])
def test_ops_batch_norm_equals_float64_numpy_over_three_steps(shape):
    rng = np.random.default_rng(1)
    channels = shape[-1]
    gamma, beta = rng.uniform(0.5, 2, channels), rng.normal(size=channels)
    jax_stats = np_stats = (np.zeros(channels), np.ones(channels))
    for X in _batches(shape):
        Y, *jax_stats = ops.batch_norm(
            X, jnp.float32(gamma), jnp.float32(beta), *map(jnp.float32, jax_stats), train=True
        )
        expected, *np_stats = numpy_batch_norm(X, gamma, beta, *np_stats, train=True)
        np.testing.assert_allclose(Y, expected, rtol=1e-5, atol=1e-5)
        for got, want in zip(jax_stats, np_stats, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Training normalised each channel of the batch to mean beta, standard deviation ~gamma.
    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(np.mean(Y, axis=axes), beta, atol=1e-5)
    # Inference: the moving averages standardise, and come back unchanged.
    X = _batches(shape, steps=1, seed=9)[0]
    Y, mean, var = ops.batch_norm(X, gamma, beta, *jax_stats, train=False)
    expected, _, _ = numpy_batch_norm(X, gamma, beta, *np_stats, train=False)
    np.testing.assert_allclose(Y, expected, rtol=1e-5, atol=1e-5)
    assert mean is jax_stats[0] and var is jax_stats[1]


def test_ops_batch_norm_refuses_one_value_per_channel_and_bad_shapes():
    ones = jnp.ones(3)
    for X in (jnp.ones((1, 3)), jnp.ones((1, 1, 1, 3))):
        with pytest.raises(ValueError, match="more than one value per channel"):
            ops.batch_norm(X, ones, ones, ones, ones, train=True)
        Y, _, _ = ops.batch_norm(X, ones, ones, ones, ones, train=False)  # inference: any batch
        assert Y.shape == X.shape
    # One image of 2x2 is four values per channel: fine (as PyTorch).
    ops.batch_norm(jnp.arange(12.0).reshape(1, 2, 2, 3), ones, ones, ones, ones, train=True)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\)"):
        ops.batch_norm(jnp.ones((4, 3)), jnp.ones(4), ones, ones, ones, train=True)
    with pytest.raises(ValueError, match="layout"):
        ops.batch_norm(jnp.ones((4, 2, 3)), ones, ones, ones, ones, train=True)


class _ZooNorm(nn.Module):
    """The zoo's batch norm exactly as the models call it."""

    @nn.compact
    def __call__(self, x, train):
        return layers.batch_norm(x, train, name="bn")


class _ScratchNorm(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        return BatchNorm(use_running_average=not train, name="bn")(x)


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (8, 7)], ids=["nhwc", "dense"])
def test_scratch_layer_equals_the_zoos_flax_batch_norm(shape):
    zoo, scratch = _ZooNorm(), _ScratchNorm()
    batches = _batches(shape, steps=4)
    zoo_vars = zoo.init(KEY, batches[0], train=True)
    scratch_vars = scratch.init(KEY, batches[0], train=True)
    tree = lambda v: jax.tree.map(lambda a: (a.shape, a.dtype), v)  # noqa: E731
    assert tree(zoo_vars) == tree(scratch_vars)  # same names, shapes, dtypes: interchangeable
    assert set(zoo_vars["params"]["bn"]) == {"scale", "bias"}
    assert set(zoo_vars["batch_stats"]["bn"]) == {"mean", "var"}
    rng = np.random.default_rng(3)
    params = {"bn": {"scale": rng.uniform(0.5, 2, shape[-1]), "bias": rng.normal(size=shape[-1])}}
    params = jax.tree.map(jnp.float32, params)
    zoo_stats = scratch_stats = zoo_vars["batch_stats"]
    np_stats = (np.zeros(shape[-1]), np.ones(shape[-1]))
    for X in batches[:3]:
        y_zoo, zoo_new = zoo.apply(
            {"params": params, "batch_stats": zoo_stats}, X, True, mutable=["batch_stats"]
        )
        y_scratch, scratch_new = scratch.apply(
            {"params": params, "batch_stats": scratch_stats}, X, True, mutable=["batch_stats"]
        )
        zoo_stats, scratch_stats = zoo_new["batch_stats"], scratch_new["batch_stats"]
        np.testing.assert_allclose(y_scratch, y_zoo, rtol=1e-5, atol=1e-5)
        for name in ("mean", "var"):
            np.testing.assert_allclose(
                scratch_stats["bn"][name], zoo_stats["bn"][name], rtol=1e-5, atol=1e-6
            )
        # What flax stores is the biased variance, with the book's momentum convention.
        p = params["bn"]
        _, *np_stats = numpy_batch_norm(X, p["scale"], p["bias"], *np_stats, train=True)
        np.testing.assert_allclose(zoo_stats["bn"]["var"], np_stats[1], rtol=1e-5, atol=1e-6)
    # Evaluation uses the running averages the three steps left, the same in both.
    X = batches[3]
    y_zoo = zoo.apply({"params": params, "batch_stats": zoo_stats}, X, False)
    y_scratch = scratch.apply({"params": params, "batch_stats": scratch_stats}, X, False)
    np.testing.assert_allclose(y_scratch, y_zoo, rtol=1e-5, atol=1e-5)


def test_batch_of_one_in_training_is_a_clear_error_not_nans():
    model = get_model("lenet_bn")
    variables = jax.eval_shape(lambda x: model.init(KEY, x), jnp.zeros((2, 28, 28, 1)))
    one = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)

    def train(v, x):
        return model.apply(v, x, train=True, mutable=["batch_stats"])

    # The dense layers' batch norm would see one value per feature: refused, naming the fix.
    with pytest.raises(ValueError, match=r"more than one value per channel.*shape \(1, 120\)"):
        jax.eval_shape(train, variables, one)
    assert jax.eval_shape(lambda v, x: model.apply(v, x), variables, one).shape == (1, 10)
    assert jax.eval_shape(train, variables, jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32))
    # A conv net with a last map above 1x1 trains on one image (several values per channel),
    # but not where the last map is 1x1 (input 32x32 for ResNet-18).
    resnet = get_model("resnet18")
    resnet_vars = jax.eval_shape(lambda x: resnet.init(KEY, x), jnp.zeros((1, 33, 33, 1)))
    for side, ok in ((33, True), (32, False)):
        x = jax.ShapeDtypeStruct((1, side, side, 1), jnp.float32)
        run = lambda v, x: resnet.apply(v, x, train=True, mutable=["batch_stats"])  # noqa: E731
        if ok:
            assert jax.eval_shape(run, resnet_vars, x)[0].shape == (1, 10)
        else:
            with pytest.raises(ValueError, match=r"shape \(1, 1, 1, 512\)"):
                jax.eval_shape(run, resnet_vars, x)


# ---- the zoo: totals, shapes, checks -----------------------------------------------------------

# Read off d2l's PyTorch networks (torch_models.count_params: their nn.Parameters, which are our
# "params": batch norm's scale and bias, not its running statistics).
PARAM_TOTALS = {"lenet_bn": 44_878, "resnet18": 11_178_378, "densenet": 758_226}


def _abstract_variables(model, side, batch=2):
    init = lambda x: model.init(KEY, x)  # noqa: E731
    return jax.eval_shape(init, jax.ShapeDtypeStruct((batch, side, side, 1), jnp.float32))


@pytest.mark.parametrize("name", NAMES)
def test_parameter_totals_equal_the_torch_twins(name):
    variables = _abstract_variables(get_model(name), BOOK_INPUT_SIZE[name])
    assert count_params(variables["params"]) == PARAM_TOTALS[name]

    def torch_count(torch):
        torch_models = _torch_models()
        return np.array([torch_models.count_params(torch_models.get_model(name))], np.int64)

    stored = reference(f"twin_params_{name}", torch_count, fixture=MODERN_FIXTURE)
    assert int(stored[0]) == PARAM_TOTALS[name]
    # One running mean and variance per batch-normalised channel (one per scale), float32.
    stats = variables["batch_stats"]
    assert {leaf.dtype for leaf in jax.tree.leaves(stats)} == {jnp.dtype(jnp.float32)}
    flat = jax.tree_util.tree_leaves_with_path(variables["params"])
    scales = sum(leaf.size for path, leaf in flat if path[-1].key == "scale")
    assert count_params(stats) == 2 * scales


def test_registry_and_book_sizes():
    assert {"lenet_bn", "resnet18", "densenet"} <= set(MODELS) == set(BOOK_INPUT_SIZE)
    assert (BOOK_INPUT_SIZE["lenet_bn"], BOOK_INPUT_SIZE["resnet18"]) == (28, 96)
    assert BOOK_INPUT_SIZE["densenet"] == 96
    assert set(NAMES) <= set(cli.MODELS)
    assert isinstance(get_model("lenet_bn", num_classes=3), LeNetBN)
    resnet = get_model("resnet18", num_classes=3, weight_init="he", dtype=jnp.bfloat16)
    assert isinstance(resnet, ResNet) and resnet.arch == ((2, 64), (2, 128), (2, 256), (2, 512))
    assert (resnet.num_classes, resnet.weight_init, resnet.dtype) == (3, "he", jnp.bfloat16)
    densenet = get_model("densenet")
    assert isinstance(densenet, DenseNet)
    assert (densenet.num_convs, densenet.growth_rate) == ((4, 4, 4, 4), 32)
    with pytest.raises(TypeError, match="no field"):
        get_model("resnet18", dropout=0.5)


@pytest.mark.parametrize(
    ("name", "last_map"),
    [("resnet18", "Residual_7/bn2"), ("densenet", "BatchNorm_1")],
)
def test_the_docstrings_stage_shapes(name, last_map):
    rows = {row.path: row.output_shape for row in summarize(get_model(name), (1, 96, 96, 1)).rows}
    if name == "resnet18":
        expected = {"MaxPool_0": 24, "Residual_1/bn2": 24, "Residual_3/bn2": 12}
        expected |= {"Residual_5/bn2": 6, "Residual_7/bn2": 3}
        assert rows[last_map] == (1, 3, 3, 512)
        assert rows["Residual_2/conv3"] == (1, 12, 12, 128)  # the 1x1 stride-2 shortcut
        assert "Residual_0/conv3" not in rows and "Residual_3/conv3" not in rows
    else:
        expected = {"MaxPool_0": 24, "TransitionBlock_0/AvgPool_0": 12}
        expected |= {"TransitionBlock_1/AvgPool_0": 6, "TransitionBlock_2/AvgPool_0": 3}
        assert rows[last_map] == (1, 3, 3, 248)  # 64 + 4 * 32 = 192 -> 96 -> 224 -> ... -> 248
        assert [rows[f"TransitionBlock_{i}/Conv_0"][-1] for i in range(3)] == [96, 112, 120]
    for path, side in expected.items():
        assert rows[path][1:3] == (side, side), path


def test_blocks_alone():
    x = jnp.zeros((2, 7, 7, 3))

    def out(block):
        def run(x):
            variables = block.init(KEY, x)
            return block.apply(variables, x, True, mutable=["batch_stats"])[0]

        return jax.eval_shape(run, x).shape

    assert out(Residual(3)) == (2, 7, 7, 3)
    assert out(Residual(6, use_1x1conv=True, strides=2)) == (2, 4, 4, 6)  # ceil(7 / 2)
    assert out(DenseBlock(2, 10)) == (2, 7, 7, 3 + 2 * 10)
    assert out(transition_block(10)) == (2, 3, 3, 10)
    for bad in (Residual(6), Residual(3, strides=2)):
        with pytest.raises(ValueError, match="use_1x1conv=True"):
            out(bad)


# By hand from floor((n - k + 2p + s) / s): ResNet pads every stride-2 step (1x1 runs);
# DenseNet's three 2x2 average pools need 8 after the stem, which needs 29.
MIN_SIZES = {"lenet_bn": 16, "resnet18": 1, "densenet": 29}


@pytest.mark.parametrize(("name", "expected"), MIN_SIZES.items())
def test_min_input_size_and_its_message(name, expected, monkeypatch):
    model = get_model(name)
    assert model.min_input_size() == expected
    assert _abstract_variables(model, expected)["params"]  # the smallest size initialises
    if expected == 1:  # nothing is too small; the layout is still checked
        nchw = jax.ShapeDtypeStruct((2, 1, 96, 96), jnp.float32)
        with pytest.raises(ValueError, match="channels-first"):
            jax.eval_shape(lambda x: model.init(KEY, x), nchw)
        return
    message = re.escape("(N, H, W, C)") + f".*H and W >= {expected}"
    with pytest.raises(ValueError, match=message):
        _abstract_variables(model, expected - 1)
    monkeypatch.setattr(layers, "check_input", lambda *a, **k: None)  # the bound is tight
    with pytest.raises(ValueError, match="kernel larger than the padded input"):
        _abstract_variables(model, expected - 1)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_computation_float32_params_statistics_and_logits(name):
    model = get_model(name, dtype=jnp.bfloat16)
    variables = _abstract_variables(model, BOOK_INPUT_SIZE[name])
    kinds = {leaf.dtype for leaf in jax.tree.leaves(variables)}
    assert kinds == {jnp.dtype(jnp.float32)}
    x = jax.ShapeDtypeStruct((2, BOOK_INPUT_SIZE[name], BOOK_INPUT_SIZE[name], 1), jnp.float32)
    logits, updates = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x
    )
    assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
    assert {leaf.dtype for leaf in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize(("name", "convs", "max_pools"), [("resnet18", 20, 1), ("densenet", 20, 1)])
def test_convolutions_and_max_pools_take_the_cpu_fast_paths(name, convs, max_pools, monkeypatch):
    # Every conv goes through cpu_kernels.conv_general_dilated (nn.Conv's field, set by
    # layers.conv) and every max pool through layers.max_pool, which picks cpu_kernels' on CPU.
    calls = {"conv": 0, "max_pool": 0}
    conv, pool = cpu_kernels.conv_general_dilated, cpu_kernels.max_pool

    def counted_conv(*args, **kw):
        calls["conv"] += 1
        return conv(*args, **kw)

    def counted_pool(*args, **kw):
        calls["max_pool"] += 1
        return pool(*args, **kw)

    monkeypatch.setattr(cpu_kernels, "conv_general_dilated", counted_conv)
    monkeypatch.setattr(cpu_kernels, "max_pool", counted_pool)
    monkeypatch.setattr(cpu_kernels, "fast_path_enabled", lambda *arrays: True)
    model = get_model(name)
    variables = _abstract_variables(model, 64)
    calls.update(conv=0, max_pool=0)
    x = jax.ShapeDtypeStruct((2, 64, 64, 1), jnp.float32)
    jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x
    )
    assert calls == {"conv": convs, "max_pool": max_pools}


def test_strided_conv_to_a_tiny_map_takes_the_gemm_input_gradient_and_is_exact():
    # ResNet-18's stride-2 3x3 convs at a 32x32 input (4x4 -> 2x2): XLA's own input gradient
    # is 5-15x slower there (cpu_kernels.plan); the product computes the same gradient.
    strides, padding = (2, 2), ((1, 1), (1, 1))
    how = cpu_kernels.plan((32, 4, 4, 128), (3, 3, 128, 256), strides, padding)
    assert (how.forward, how.input_grad, how.kernel_grad) == ("native", "gemm", "native")
    assert cpu_kernels.plan((32, 8, 8, 64), (3, 3, 64, 128), strides, padding).input_grad == (
        "native"
    )  # an 8x8 -> 4x4 one keeps XLA's
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 4, 4, 24)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 24, 40)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(2, 2, 2, 40)), jnp.float32)

    def grads(conv):
        return jax.grad(lambda x, k: jnp.sum(conv(x, k) * cotangent), argnums=(0, 1))(x, kernel)

    fast = grads(lambda x, k: cpu_kernels.fast_conv(x, k, strides, padding))
    plain = grads(
        lambda x, k: jax.lax.conv_general_dilated(
            x, k, strides, padding, dimension_numbers=cpu_kernels.NHWC
        )
    )
    for ours, xla in zip(fast, plain, strict=True):
        np.testing.assert_allclose(ours, xla, rtol=1e-4, atol=1e-4)


# ---- against d2l's PyTorch networks ------------------------------------------------------------

# Sizes where the last map is at least 2x2 (global average pooling really averages) yet the
# CPU cost stays low: ResNet-18 48 -> 24 -> 12 -> 12 -> 6 -> 3 -> 2; DenseNet 64 -> ... -> 2.
TWINS = [("lenet_bn", 28), ("resnet18", 48), ("densenet", 64)]
BATCH = 8


def _twin_variables(model, side: int, seed: int = 1) -> dict:
    """Variables of the right tree filled from NumPy: kernels scaled by fan-in, batch norm's
    scale around 1, shifts and running means around 0, running variances around 1."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif name in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, size=leaf.shape)
        else:  # bias, mean
            value = rng.normal(size=leaf.shape) * 0.1
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, _abstract_variables(model, side))


def _norm_paths(model, side: int) -> list[tuple[str, ...]]:
    """Paths of the model's nn.BatchNorm layers in the order its forward pass calls them."""
    paths = []

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            paths.append(tuple(context.module.path))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        _abstract_variables(model, side)
    return paths


def _running_stats(batch_stats, paths) -> np.ndarray:
    def leaf(path, name):
        tree = batch_stats
        for key in path:
            tree = tree[key]
        return np.asarray(tree[name])

    return np.concatenate([leaf(p, n) for n in ("mean", "var") for p in paths])


@pytest.mark.parametrize(("name", "side"), TWINS)
def test_eval_and_train_mode_match_the_torch_twin(name, side):
    model = get_model(name)
    variables = _twin_variables(model, side)
    x = np.random.default_rng(2).uniform(size=(BATCH, side, side, 1)).astype(np.float32)
    paths = _norm_paths(model, side)

    @jax.jit
    def both_modes(variables, x):
        eval_logits = model.apply(variables, x, train=False)
        train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return eval_logits, train_logits, updates["batch_stats"]

    eval_logits, train_logits, new_stats = both_modes(variables, x)
    ours = np.concatenate(
        [np.ravel(eval_logits), np.ravel(train_logits), _running_stats(new_stats, paths)]
    )

    def torch_twin(torch):
        torch_models = _torch_models()
        net = torch_models.get_model(name)
        shape = (1, side, side, 1)
        torch_models.load_flax_params(
            net, model, variables["params"], shape, variables["batch_stats"]
        )
        kinds = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
        norms = [m for m in net.modules() if isinstance(m, kinds)]
        assert len(norms) == len(paths)
        counts = {}  # values per channel each batch norm sees (N * H * W)
        for norm in norms:
            norm.register_forward_pre_hook(
                lambda m, args: counts.__setitem__(m, args[0].numel() // args[0].shape[1])
            )
        image = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        old_vars = [norm.running_var.clone() for norm in norms]
        with torch.no_grad():
            eval_out = net.eval()(image).numpy()
            train_out = net.train()(image).numpy()
        means = [norm.running_mean.numpy() for norm in norms]
        # PyTorch moves its running variance towards the unbiased batch variance (n / (n - 1)
        # times the biased one it normalises with); the book and flax use the biased one.
        # Undo the factor: new = 0.9 old + 0.1 unbiased  ->  0.9 old + 0.1 biased.
        variances = []
        for norm, old in zip(norms, old_vars, strict=True):
            n = counts[norm]
            step = (norm.running_var - 0.9 * old) * (n - 1) / n
            variances.append((0.9 * old + step).numpy())
        return np.concatenate([np.ravel(eval_out), np.ravel(train_out), *means, *variances]).astype(
            np.float32
        )

    theirs = reference(f"modern_{name}_{side}", torch_twin, fixture=MODERN_FIXTURE)
    logits = 2 * BATCH * 10
    scale = max(np.abs(theirs[:logits]).max(), 1.0)
    assert np.abs(ours[: BATCH * 10]).max() > 1e-2  # eval logits are not all zero
    np.testing.assert_allclose(ours[:logits], theirs[:logits], atol=1e-4 * scale, rtol=1e-4)
    np.testing.assert_allclose(ours[logits:], theirs[logits:], atol=1e-5, rtol=1e-4)


# ---- presets and the runner --------------------------------------------------------------------

# (lr, batch, epochs, resize) as the book's cells set them; the cells are cited in SOURCES.
BOOK_CELLS = {
    "classic": {
        "lenet_bn": (1.0, 256, 10, 28),  # lr, num_epochs, batch_size = 1.0, 10, 256
        "resnet18": (0.05, 256, 10, 96),  # lr, num_epochs, batch_size = 0.05, 10, 256
        "densenet": (0.1, 256, 10, 96),  # lr, num_epochs, batch_size = 0.1, 10, 256
    },
    "d2l1": {
        "lenet_bn": (0.1, 128, 10, 28),  # BNLeNet(lr=0.1); FashionMNIST(batch_size=128)
        "resnet18": (0.01, 128, 10, 96),  # ResNet18(lr=0.01); resize=(96, 96)
        "densenet": (0.01, 128, 10, 96),  # DenseNet(lr=0.01); resize=(96, 96)
    },
}


@pytest.mark.parametrize("edition", ["classic", "d2l1"])
@pytest.mark.parametrize("name", NAMES)
def test_each_edition_trains_with_the_books_settings(edition, name):
    args = ["--model", name, "--dataset", "fashion_mnist", "--edition", edition]
    config = cli.build_config(cli.parse_args(args))
    got = (config.learning_rate, config.batch_size, config.epochs, config.resize)
    assert got == BOOK_CELLS[edition][name]
    assert ".md L" in presets.source(name, edition)  # file and line of the book's cell
    digits = cli.build_config(cli.parse_args(["--model", name]))
    assert digits.resize >= get_model(name).min_input_size()


def _run(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
@pytest.mark.accuracy
def test_resnet18_digits_preset_reaches_095(tmp_path):
    # SGD 0.05 with a cosine decay, batch 32, 4 epochs at 32x32 (preset): 0.980-0.981.
    done = _run(["--model", "resnet18", "--no-progress", "--checkpoint-every", "0"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["test_acc"] >= 0.95, summary
    assert summary["compilations"] == 1
