"""The model zoo against independent references.

Parameter counts against sums of ``dense_params`` / ``conv_params`` written out here layer by layer
(and the book's published totals), shapes against the formulas, the loss against NumPy, LeNet and
an Inception block against PyTorch modules written here. The big models (VGG, AlexNet at 224) are
only traced (``jax.eval_shape``), which runs every shape assertion without any compute.
"""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_reference import reference

import jaxnotes.models as models
from jaxnotes import shapes
from jaxnotes.models import (
    BOOK_INPUT_SIZE,
    MLP,
    MODELS,
    VGG,
    VGG11_ARCH,
    VGG16_ARCH,
    AlexNet,
    GoogLeNet,
    Inception,
    LeNet,
    NiN,
    classification_loss,
    get_model,
    layers,
    stage_receptive_fields,
)
from jaxnotes.shapes import conv_params as cp
from jaxnotes.shapes import dense_params as dp

KEY = jax.random.key(0)


def abstract_variables(model: nn.Module, shape: tuple[int, ...], **kw) -> dict:
    """Variables as ShapeDtypeStructs: traces init (and every shape assertion), computes nothing."""
    init = lambda x: model.init({"params": KEY, "dropout": KEY}, x, **kw)
    return jax.eval_shape(init, jax.ShapeDtypeStruct(shape, jnp.float32))


def fast_init(model: nn.Module, x: jax.Array, **kw) -> dict:
    """``model.init`` for real, compiled at LLVM level 0: the one-off init's random-number code
    compiles 2-3x faster (the values may differ from level 3 by an ulp; these tests check
    statistics and behaviour, not bits)."""
    init = jax.jit(lambda x: model.init(KEY, x, **kw))
    return init.lower(x).compile(compiler_options={"xla_backend_optimization_level": 0})(x)


def random_variables(model: nn.Module, x: jax.Array, seed: int = 0, **kw) -> dict:
    """Variables of the right structure filled from NumPy, scaled by fan-in (kernels) so that
    activations stay O(1). Much cheaper on CPU than compiling ``init`` of a big model, whose
    per-parameter random-number code dominates compile time; real ``init`` runs for the small
    models and, traced, for all of them."""
    rng = np.random.default_rng(seed)

    def fill(leaf):
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 100
        return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), jnp.float32)

    return jax.tree.map(fill, abstract_variables(model, x.shape, **kw))


def abstract_output(model: nn.Module, shape: tuple[int, ...], train: bool = False):
    def run(x):
        variables = model.init(KEY, x)
        return model.apply(variables, x, train=train, rngs={"dropout": KEY})

    return jax.eval_shape(run, jax.ShapeDtypeStruct(shape, jnp.float32))


# ---- parameter counts: hand-written layer sums ---------------------------------------------


def inception_params(c_in, c1, c2, c3, c4):
    return (
        cp(c_in, c1, 1)
        + cp(c_in, c2[0], 1)
        + cp(c2[0], c2[1], 3)
        + cp(c_in, c3[0], 1)
        + cp(c3[0], c3[1], 5)
        + cp(c_in, c4, 1)
    )


GOOGLENET_BLOCKS = [  # (c_in, c1, c2, c3, c4), the book's table
    (192, 64, (96, 128), (16, 32), 32),
    (256, 128, (128, 192), (32, 96), 64),
    (480, 192, (96, 208), (16, 48), 64),
    (512, 160, (112, 224), (24, 64), 64),
    (512, 128, (128, 256), (24, 64), 64),
    (512, 112, (144, 288), (32, 64), 64),
    (528, 256, (160, 320), (32, 128), 128),
    (832, 256, (160, 320), (32, 128), 128),
    (832, 384, (192, 384), (48, 128), 128),
]


def googlenet_params(c_in, classes, aux_pooled=None):
    total = cp(c_in, 64, 7) + cp(64, 64, 1) + cp(64, 192, 3)
    total += sum(inception_params(*block) for block in GOOGLENET_BLOCKS)
    total += dp(1024, classes)
    if aux_pooled is not None:  # aux heads after 4a (512 channels) and 4d (528 channels)
        for channels in (512, 528):
            total += cp(channels, 128, 1) + dp(128 * aux_pooled**2, 1024) + dp(1024, classes)
    return total


def vgg_params(arch, c_in, classes, last_side=7):
    total = 0
    for num_convs, channels in arch:
        for _ in range(num_convs):
            total += cp(c_in, channels, 3)
            c_in = channels
    return total + dp(c_in * last_side**2, 4096) + dp(4096, 4096) + dp(4096, classes)


LENET_28 = cp(1, 6, 5) + cp(6, 16, 5) + dp(16 * 5 * 5, 120) + dp(120, 84) + dp(84, 10)
ALEXNET_224 = (
    cp(1, 96, 11)
    + cp(96, 256, 5)
    + cp(256, 384, 3)
    + cp(384, 384, 3)
    + cp(384, 256, 3)
    + dp(256 * 5 * 5, 4096)
    + dp(4096, 4096)
    + dp(4096, 10)
)
NIN = sum(
    cp(c_in, c_out, k) + 2 * cp(c_out, c_out, 1)
    for c_in, c_out, k in [(1, 96, 11), (96, 256, 5), (256, 384, 3), (384, 10, 3)]
)

PARAM_CASES = [
    # name, kwargs, input shape, independent count
    ("mlp", {}, (1, 28, 28, 1), dp(784, 256) + dp(256, 256) + dp(256, 10)),
    ("lenet", {}, (1, 28, 28, 1), LENET_28),
    ("lenet", {}, (1, 32, 32, 1), LENET_28 - dp(400, 120) + dp(16 * 6 * 6, 120)),
    ("alexnet", {}, (1, 224, 224, 1), ALEXNET_224),
    ("vgg11", {}, (1, 224, 224, 1), vgg_params(VGG11_ARCH, 1, 10)),
    ("vgg11_small", {}, (1, 224, 224, 1), vgg_params([(n, c // 4) for n, c in VGG11_ARCH], 1, 10)),
    ("vgg16", {"num_classes": 1000}, (1, 224, 224, 3), vgg_params(VGG16_ARCH, 3, 1000)),
    ("nin", {}, (1, 224, 224, 1), NIN),
    ("googlenet", {}, (1, 96, 96, 1), googlenet_params(1, 10)),
    ("googlenet", {"aux_logits": True}, (1, 96, 96, 1), googlenet_params(1, 10, aux_pooled=1)),
    ("googlenet", {"aux_logits": True}, (1, 224, 224, 3), googlenet_params(3, 10, aux_pooled=4)),
]


@pytest.mark.parametrize(("name", "kw", "shape", "expected"), PARAM_CASES)
def test_param_count_equals_layer_sum(name, kw, shape, expected):
    variables = abstract_variables(get_model(name, **kw), shape)
    assert set(variables) == {"params"}  # no BatchNorm state: the book's versions have none
    assert shapes.count_params(variables) == expected


def test_published_totals():
    assert LENET_28 == 61_706
    assert vgg_params(VGG16_ARCH, 3, 1000) == 138_357_544
    assert shapes.count_params(abstract_variables(LeNet(), (1, 28, 28, 1))) == 61_706
    vgg16 = get_model("vgg16", num_classes=1000)
    assert shapes.count_params(abstract_variables(vgg16, (1, 224, 224, 3))) == 138_357_544


@pytest.mark.parametrize(("name", "kw", "shape", "expected"), PARAM_CASES)
def test_summarize_total_equals_count_params(name, kw, shape, expected):
    model = get_model(name, **kw)
    summary = shapes.summarize(model, shape, train=False)
    assert summary.total_params == shapes.count_params(abstract_variables(model, shape)) == expected
    assert sum(row.params for row in summary.rows) == summary.total_params


def test_lenet_summary_table_and_macs():
    summary = shapes.summarize(LeNet(), (1, 28, 28, 1), train=False)
    macs = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 25 * 6 + 400 * 120 + 120 * 84 + 84 * 10
    assert summary.total_macs == macs
    assert [row.output_shape for row in summary.rows][:4] == [
        (1, 28, 28, 6),
        (1, 14, 14, 6),
        (1, 10, 10, 16),
        (1, 5, 5, 16),
    ]
    assert "61,706" in str(summary)


# ---- output shapes --------------------------------------------------------------------------

SHAPE_CASES = [(name, size) for name, size in BOOK_INPUT_SIZE.items()] + [
    ("lenet", 32),
    ("lenet", 12),
    ("alexnet", 65),
    ("alexnet", 100),
    ("vgg11_small", 32),
    ("vgg11_small", 64),
    ("nin", 67),
    ("nin", 96),
    ("googlenet", 1),
    ("googlenet", 28),
    ("googlenet", 224),
]


@pytest.mark.parametrize(("name", "size"), SHAPE_CASES)
def test_output_shape_batch_2(name, size):
    out = abstract_output(get_model(name, num_classes=7), (2, size, size, 3))
    assert out.shape == (2, 7)
    assert out.dtype == jnp.float32


def test_rectangular_input_and_feature_rows():
    assert abstract_output(get_model("lenet"), (2, 28, 40, 1)).shape == (2, 10)
    assert abstract_output(get_model("googlenet"), (2, 96, 64, 3)).shape == (2, 10)
    assert abstract_output(MLP(hidden=(32,), dropout=0.1), (2, 20)).shape == (2, 10)


@pytest.mark.parametrize("size", [1, 28, 64, 65, 96, 224])
def test_googlenet_aux_outputs_at_any_size(size):
    model = GoogLeNet(num_classes=5, aux_logits=True)
    outputs = abstract_output(model, (2, size, size, 1), train=True)
    assert [o.shape for o in outputs] == [(2, 5)] * 3


def test_googlenet_aux_pool_sees_what_the_docstring_says():
    # 4a / 4d map side: the stem and the b3 pool, each stride-2 step padded.
    def map_side(n):
        n = shapes.conv_output_size(n, 7, 2, 3)
        for _ in range(3):
            n = shapes.pool_output_size(n, 3, 2, 1)
        return n

    assert map_side(96) == 6 and shapes.pool_output_size(6, 5, 3) == 1
    assert map_side(224) == 14 and shapes.pool_output_size(14, 5, 3) == 4
    assert map_side(65) == 5 and map_side(64) == 4  # below 65 the 5x5 window is clamped
    for size, pooled in [(96, 1), (224, 4), (64, 1)]:
        variables = abstract_variables(GoogLeNet(aux_logits=True), (1, size, size, 1))
        kernel = variables["params"]["aux_4a"]["Dense_0"]["kernel"]
        assert kernel.shape == (128 * pooled**2, 1024)


# ---- smallest input, bad input ----------------------------------------------------------------

# By hand from floor((n - k + 2p + s) / s), walking down from one output unit.
MIN_SIZES = {"lenet": 12, "alexnet": 65, "vgg11": 32, "vgg16": 32, "nin": 67, "googlenet": 1}


@pytest.mark.parametrize(("name", "expected"), MIN_SIZES.items())
def test_min_input_size(name, expected, monkeypatch):
    model = get_model(name)
    assert model.min_input_size() == expected
    assert abstract_output(model, (2, expected, expected, 1)).shape == (2, 10)
    if expected == 1:
        return
    too_small = (2, expected - 1, expected - 1, 1)
    message = re.escape("(N, H, W, C)") + f".*H and W >= {expected}"
    with pytest.raises(ValueError, match=message):
        abstract_output(model, too_small)
    # The bound is tight: with the check off, the layers themselves reject the input (a shape
    # formula error from inside, which is what the check exists to replace).
    monkeypatch.setattr(layers, "check_input", lambda *a, **k: None)
    with pytest.raises(ValueError, match="kernel larger than the padded input"):
        abstract_output(model, too_small)


def test_min_input_size_matches_a_brute_force_search():
    rng = np.random.default_rng(0)

    def passes(n, windows):
        try:
            for k, s, p in windows:
                n = shapes.conv_output_size(n, k, s, p)
        except ValueError:
            return False
        return True

    for _ in range(200):
        windows = []
        for _ in range(rng.integers(1, 6)):
            k = int(rng.integers(1, 8))
            windows.append((k, int(rng.integers(1, 4)), int(rng.integers(0, k))))
        brute = next(n for n in range(1, 2000) if passes(n, windows))
        assert layers.min_input_size(windows) == brute, windows


@pytest.mark.parametrize("name", ["lenet", "alexnet", "vgg11", "nin", "googlenet"])
@pytest.mark.parametrize(
    ("shape", "pattern"),
    [
        ((28, 28), "rank 2"),
        ((2, 28, 28), "rank 3"),
        ((2, 1, 28, 28, 1), "rank 5"),
        ((2, 1, 224, 224), "channels-first"),
        ((2, 3, 96, 96), "channels-first"),
    ],
)
def test_bad_input_names_layout_and_smallest_size(name, shape, pattern):
    model = get_model(name)
    with pytest.raises(ValueError, match=pattern) as info:
        abstract_output(model, shape)
    assert "(N, H, W, C)" in str(info.value)
    assert f">= {model.min_input_size()}" in str(info.value)


def test_mlp_input_checks():
    with pytest.raises(ValueError, match="rank 3"):
        abstract_output(MLP(), (2, 28, 28))
    with pytest.raises(ValueError, match="one dropout rate per hidden layer"):
        abstract_output(MLP(hidden=(8, 8, 8), dropout=(0.1, 0.2)), (2, 28, 28, 1))


@pytest.mark.parametrize("formula", ["conv_output_shape", "pool_output_shape"])
def test_a_wrong_formula_fails_at_init(formula, monkeypatch):
    right = getattr(shapes, formula)
    monkeypatch.setattr(shapes, formula, lambda *a, **k: tuple(d + 1 for d in right(*a, **k)))
    with pytest.raises(AssertionError):
        abstract_variables(LeNet(), (1, 28, 28, 1))


# ---- dropout ----------------------------------------------------------------------------------

DROPOUT_CASES = [
    ("mlp", 28),
    ("alexnet", 65),
    ("vgg11_small", 32),
    ("nin", 67),
]


@pytest.mark.parametrize(("name", "size"), DROPOUT_CASES)
def test_dropout_only_in_train_mode_and_driven_by_the_key(name, size):
    model = get_model(name)
    x = jax.random.normal(jax.random.key(1), (2, size, size, 1))
    variables = random_variables(model, x)
    apply = jax.jit(model.apply, static_argnames="train")

    def train(seed):
        return np.asarray(apply(variables, x, train=True, rngs={"dropout": jax.random.key(seed)}))

    evaluation = np.asarray(apply(variables, x))  # no rng needed at all
    np.testing.assert_array_equal(evaluation, np.asarray(apply(variables, x, train=False)))
    np.testing.assert_array_equal(train(3), train(3))
    assert not np.allclose(train(3), train(4))
    assert not np.allclose(train(3), evaluation)


def test_dropout_rates_can_be_overridden():
    assert get_model("mlp", dropout=0.3, hidden=(64, 32, 16)).rates() == (0.3, 0.3, 0.3)
    assert get_model("mlp").rates() == (0.2, 0.5)
    for name in ["alexnet", "vgg11", "nin"]:
        assert get_model(name, dropout=0.1).dropout == 0.1
    assert get_model("googlenet", aux_dropout=0.5).aux_dropout == 0.5
    # dropout 0 makes training deterministic
    model = get_model("mlp", dropout=0.0)
    x = jnp.ones((2, 28, 28, 1))
    variables = model.init(KEY, x)
    a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_allclose(a, model.apply(variables, x))


# ---- GoogLeNet auxiliary heads ------------------------------------------------------------------


@functools.cache
def _googlenet_setup():
    x = jax.random.normal(jax.random.key(2), (2, 64, 64, 1))
    plain, aux = GoogLeNet(), GoogLeNet(aux_logits=True)
    aux_vars = random_variables(aux, x, train=False)  # structure from an eval-mode init
    plain_vars = {"params": {k: v for k, v in aux_vars["params"].items() if "aux" not in k}}
    return x, plain, aux, plain_vars, aux_vars


def test_googlenet_aux_params_exist_only_with_aux_logits():
    shape = (1, 96, 96, 1)
    plain = abstract_variables(GoogLeNet(), shape)["params"]
    for train in (False, True):  # created by init whatever the train flag
        aux = dict(abstract_variables(GoogLeNet(aux_logits=True), shape, train=train)["params"])
        assert not any(k.startswith("aux") for k in plain)
        assert {"aux_4a", "aux_4d"} <= set(aux)
        del aux["aux_4a"], aux["aux_4d"]
        assert jax.tree.map(lambda a: a.shape, aux) == jax.tree.map(lambda a: a.shape, plain)
    # Param init keys depend on the module path alone, so with aux heads the rest is unchanged.
    # (jit keeps only the random numbers of the one kernel compared: fast to compile.)
    x = jnp.ones((1, 8, 8, 1))
    kernel = lambda model: model.init(KEY, x)["params"]["inception_4e"]["p2_2"]["kernel"]
    np.testing.assert_array_equal(
        jax.jit(kernel, static_argnums=0)(GoogLeNet()),
        jax.jit(kernel, static_argnums=0)(GoogLeNet(aux_logits=True)),
    )


def test_googlenet_aux_heads_change_only_the_training_output():
    x, plain, aux, plain_vars, aux_vars = _googlenet_setup()
    eval_plain = jax.jit(plain.apply)(plain_vars, x)
    apply_aux = jax.jit(aux.apply, static_argnames="train")
    eval_aux = apply_aux(aux_vars, x)
    assert isinstance(eval_aux, jax.Array)  # inference: logits only
    np.testing.assert_allclose(eval_aux, eval_plain, rtol=1e-6, atol=1e-6)

    outputs = apply_aux(aux_vars, x, train=True, rngs={"dropout": jax.random.key(5)})
    assert isinstance(outputs, tuple) and len(outputs) == 3
    assert all(o.shape == (2, 10) and o.dtype == jnp.float32 for o in outputs)
    # the main path has no dropout: its training logits are the inference logits
    np.testing.assert_allclose(outputs[0], eval_plain, rtol=1e-5, atol=1e-5)
    other = apply_aux(aux_vars, x, train=True, rngs={"dropout": jax.random.key(6)})
    assert not np.allclose(outputs[1], other[1])  # aux dropout 0.7 follows the key
    # without aux heads, training returns plain logits
    assert isinstance(abstract_output(plain, x.shape, train=True), jax.ShapeDtypeStruct)


def test_googlenet_eval_initialised_aux_heads_get_gradients():
    x, _, aux, _, aux_vars = _googlenet_setup()
    labels = jnp.array([1, 7])
    heads = {k: v for k, v in aux_vars["params"].items() if k.startswith("aux")}
    body = {k: v for k, v in aux_vars["params"].items() if not k.startswith("aux")}

    def loss(heads):  # differentiate the heads only: a much smaller backward pass to compile
        outputs = aux.apply({"params": {**body, **heads}}, x, train=True, rngs={"dropout": KEY})
        return classification_loss(outputs, labels)

    grads = jax.jit(jax.grad(loss))(heads)
    for head in ("aux_4a", "aux_4d"):
        norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads[head])]
        assert all(np.isfinite(norms)) and sum(norms) > 0


# ---- loss -------------------------------------------------------------------------------------


def _numpy_xent(logits, labels):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels].mean()


def test_classification_loss_against_numpy():
    rng = np.random.default_rng(0)
    logits, aux1, aux2 = (rng.normal(size=(6, 5)).astype(np.float32) * 3 for _ in range(3))
    labels = rng.integers(0, 5, size=6)
    main = _numpy_xent(logits, labels)
    total = main + 0.3 * (_numpy_xent(aux1, labels) + _numpy_xent(aux2, labels))
    np.testing.assert_allclose(classification_loss(jnp.asarray(logits), labels), main, rtol=1e-5)
    np.testing.assert_allclose(classification_loss((logits, aux1, aux2), labels), total, rtol=1e-5)
    np.testing.assert_allclose(classification_loss([logits, aux1, aux2], labels), total, rtol=1e-5)
    half = main + 0.5 * (_numpy_xent(aux1, labels) + _numpy_xent(aux2, labels))
    got = classification_loss((logits, aux1, aux2), labels, aux_weight=0.5)
    np.testing.assert_allclose(got, half, rtol=1e-5)
    bf16 = classification_loss(jnp.asarray(logits, jnp.bfloat16), labels)
    assert bf16.dtype == jnp.float32


# ---- dtype ------------------------------------------------------------------------------------


def test_bfloat16_computation_float32_params_and_logits():
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    model32, model16 = LeNet(activation="relu"), LeNet(activation="relu", dtype=jnp.bfloat16)
    assert all(
        p.dtype == jnp.float32 for p in jax.tree.leaves(abstract_variables(model16, x.shape))
    )
    variables = random_variables(model32, x)
    apply16 = jax.jit(functools.partial(model16.apply, capture_intermediates=True))
    logits, state = apply16(variables, x)
    assert logits.dtype == jnp.float32
    assert state["intermediates"]["Conv_0"]["__call__"][0].dtype == jnp.bfloat16
    # bf16 keeps 8 bits of mantissa: the logits may differ by ~1% of their scale, no more.
    reference = np.asarray(jax.jit(model32.apply)(variables, x))
    scale = np.abs(reference).max()
    np.testing.assert_allclose(logits, reference, atol=1e-2 * scale, rtol=0)
    assert not np.array_equal(np.asarray(logits), reference)  # bf16 really ran


# ---- registry ---------------------------------------------------------------------------------


def test_registry():
    expected = {"mlp", "lenet", "alexnet", "vgg11", "vgg11_small", "vgg16", "nin", "googlenet"}
    expected |= {"lenet_bn", "resnet18", "densenet"}  # chapters 11-13: tests/test_modern_cnn.py
    assert set(MODELS) == set(BOOK_INPUT_SIZE) == expected
    kinds = {"mlp": MLP, "lenet": LeNet, "alexnet": AlexNet, "nin": NiN, "googlenet": GoogLeNet}
    kinds |= {"lenet_bn": models.LeNetBN, "resnet18": models.ResNet, "densenet": models.DenseNet}
    for name in expected:
        model = get_model(name, num_classes=3)
        assert isinstance(model, kinds.get(name, VGG)) and model.num_classes == 3
        assert model.dtype == jnp.float32
    assert get_model("vgg11").arch == VGG11_ARCH and get_model("vgg16").arch == VGG16_ARCH
    assert get_model("vgg11_small").arch == ((1, 16), (1, 32), (2, 64), (2, 128), (2, 128))
    assert get_model("googlenet", aux_logits=True).aux_logits
    assert get_model("lenet", activation="relu").activation == "relu"
    with pytest.raises(ValueError, match="valid names: mlp, lenet, alexnet, vgg11"):
        get_model("resnet")
    with pytest.raises(TypeError, match="no field"):
        get_model("lenet", dropout=0.5)
    assert models.Inception is Inception


# Smallest cheap input per model for the initialiser tests (AlexNet / NiN at their minimum).
INIT_SIZES = {"mlp": 8, "lenet": 28, "alexnet": 65, "vgg11_small": 32, "nin": 67, "googlenet": 1}
# GoogLeNet (with its aux heads) compiles slowly on CPU: He only; Xavier is the default and the
# test below shows the two differ there.
INIT_CASES = [(n, w) for n in INIT_SIZES if n != "googlenet" for w in ("xavier", "he")]


@pytest.mark.parametrize(("name", "weight_init"), [*INIT_CASES, ("googlenet", "he")])
def test_kernel_variance_follows_the_initialiser_formula(name, weight_init):
    """Every kernel's sample variance against the closed form of its initialiser.

    Xavier (Glorot) uniform: 2 / (fan_in + fan_out); He (Kaiming) normal: 2 / fan_in, with
    fan_in = kh * kw * c_in and fan_out = kh * kw * c_out for a conv (c_in, c_out for a dense).
    Biases start at zero either way.
    """
    side = INIT_SIZES[name]
    extra = {"aux_logits": True} if name == "googlenet" else {}
    model = get_model(name, weight_init=weight_init, **extra)
    params = fast_init(model, jnp.zeros((1, side, side, 1)))["params"]
    checked = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        leaf = np.asarray(leaf, np.float64)
        if path[-1].key == "bias":
            assert not leaf.any(), path
            continue
        receptive = int(np.prod(leaf.shape[:-2]))  # kh * kw (1 for a dense kernel)
        fan_in, fan_out = receptive * leaf.shape[-2], receptive * leaf.shape[-1]
        expected = 2 / fan_in if weight_init == "he" else 2 / (fan_in + fan_out)
        if leaf.size >= 2000:  # small kernels: too few samples for a 15% check
            assert leaf.var() == pytest.approx(expected, rel=0.15), (path, leaf.shape)
            checked += 1
    assert checked >= 3
    if name == "googlenet":
        assert "aux_4a" in params and "aux_4d" in params  # the heads' kernels were checked too


@pytest.mark.slow
def test_he_init_keeps_googlenets_activations_alive():
    """Why the digits preset trains GoogLeNet from He init: the mean square of the Inception
    outputs at init, on unit-variance input. Xavier halves a ReLU layer's signal, so it decays
    ~400x from block 3a to 5b; He keeps it within one order of magnitude."""
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 1))
    is_inception = lambda module, _: isinstance(module, Inception)
    # The forward does not depend on weight_init: one compiled apply serves both inits.
    apply = jax.jit(
        functools.partial(
            GoogLeNet().apply, capture_intermediates=is_inception, mutable=["intermediates"]
        )
    )
    mean_squares = {}
    for weight_init in ("xavier", "he"):
        _, state = apply(fast_init(GoogLeNet(weight_init=weight_init), x), x)
        blocks = state["intermediates"]
        mean_squares[weight_init] = [
            float(jnp.mean(blocks[f"inception_{name}"]["__call__"][0] ** 2))
            for name in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")
        ]
    xavier, he = mean_squares["xavier"], mean_squares["he"]
    assert xavier[-1] / xavier[0] < 0.01
    assert he[-1] / he[0] > 0.1 and he[-1] > 0.3
    assert he[-1] > 1000 * xavier[-1]


def test_unknown_weight_init_is_refused():
    for name in ("lenet", "googlenet", "mlp"):
        model = get_model(name, weight_init="kaiming")
        with pytest.raises(ValueError, match=r"weight_init must be one of \['he', 'xavier'\]"):
            model.init(KEY, jnp.zeros((1, 28, 28, 1)))


def test_vgg_receptive_fields():
    assert stage_receptive_fields(VGG11_ARCH) == (
        (3, 4),
        (8, 10),
        (26, 30),
        (62, 70),
        (134, 150),
    )
    assert stage_receptive_fields(VGG16_ARCH)[-1] == (196, 212)
    assert stage_receptive_fields([(3, 64)])[0][0] == 7  # three 3x3 convs see a 7x7


# ---- PyTorch cross-checks ---------------------------------------------------------------------


def _tensor(torch, array):
    return torch.from_numpy(np.array(array, np.float32))  # a writable, contiguous copy


def _conv_weights(torch, conv, params):
    """Flax HWIO kernel -> PyTorch OIHW."""
    conv.weight.data = _tensor(torch, np.transpose(params["kernel"], (3, 2, 0, 1)))
    conv.bias.data = _tensor(torch, params["bias"])


def _dense_weights(torch, linear, params, kernel=None):
    """Flax (in, out) kernel -> PyTorch (out, in) weight."""
    kernel = params["kernel"] if kernel is None else kernel
    linear.weight.data = _tensor(torch, np.transpose(kernel))
    linear.bias.data = _tensor(torch, params["bias"])


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_lenet_matches_torch(activation):
    model = LeNet(activation=activation)
    x = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
    params = model.init(KEY, x)["params"]

    def torch_lenet(torch):
        tnn = torch.nn
        act = {"sigmoid": tnn.Sigmoid, "relu": tnn.ReLU}[activation]
        net = tnn.Sequential(
            tnn.Conv2d(1, 6, kernel_size=5, padding=2), act(), tnn.AvgPool2d(2, stride=2),
            tnn.Conv2d(6, 16, kernel_size=5), act(), tnn.AvgPool2d(2, stride=2),
            tnn.Flatten(),
            tnn.Linear(400, 120), act(), tnn.Linear(120, 84), act(), tnn.Linear(84, 10),
        )  # fmt: skip
        _conv_weights(torch, net[0], params["Conv_0"])
        _conv_weights(torch, net[3], params["Conv_1"])
        # Flax flattens (h, w, c), PyTorch (c, h, w): reorder the first dense layer's input rows.
        first = np.asarray(params["Dense_0"]["kernel"]).reshape(5, 5, 16, 120)
        first = first.transpose(2, 0, 1, 3).reshape(400, 120)
        _dense_weights(torch, net[7], params["Dense_0"], kernel=first)
        _dense_weights(torch, net[9], params["Dense_1"])
        _dense_weights(torch, net[11], params["Dense_2"])
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()

    expected = reference(f"lenet_{activation}", torch_lenet)
    np.testing.assert_allclose(model.apply({"params": params}, x), expected, atol=1e-4)


def test_inception_block_matches_torch():
    c_in, *config = GOOGLENET_BLOCKS[0]
    block = Inception(*config)
    x = np.random.default_rng(1).normal(size=(1, 6, 6, c_in)).astype(np.float32)
    params = block.init(KEY, x)["params"]

    def torch_inception(torch):
        # d2l's PyTorch block, the one the benchmarks' twins are built from.
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
        from torch_models import Inception as TorchInception

        net = TorchInception(c_in, *config)
        for name in ["p1_1", "p2_1", "p2_2", "p3_1", "p3_2", "p4_2"]:
            _conv_weights(torch, getattr(net, name), params[name])
        out = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
        return out.transpose(0, 2, 3, 1)

    got = np.asarray(block.apply({"params": params}, x))
    assert got.shape == (1, 6, 6, 64 + 128 + 32 + 32)
    np.testing.assert_allclose(got, reference("inception_3a", torch_inception), atol=1e-4)
