"""Direct tests for the planted bugs the suite let through or caught by a single test.

Each test states an independent truth: NumPy in float64, a closed form, or the PyTorch twin of a
model with copied weights (stored in ``fixtures/torch_references_survivors.npz`` for Python 3.12).
``tools/mutants.py`` plants each bug in a scratch copy and checks that these tests fail; the table
in ``TESTING.md`` says which test catches which bug.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from torch_reference import reference

from jaxnotes import data, population, selection, steps, training
from jaxnotes.models import cpu_kernels, get_model, layers

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "torch_references_survivors.npz"
BENCHMARKS = HERE.parent / "benchmarks"


# --- NumPy references ----------------------------------------------------------------------------


def np_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def np_cross_entropy(logits, labels):
    """Per-example softmax cross-entropy, float64."""
    return -np_log_softmax(logits)[np.arange(len(labels)), labels]


def np_softmax_grad(logits, labels):
    """d mean(CE) / d logits, float64."""
    probs = np.exp(np_log_softmax(logits))
    probs[np.arange(len(labels)), labels] -= 1.0
    return probs / len(labels)


def fixed_init(seed: int, scale: float):
    """An initialiser that ignores the key: N(0, scale^2) values from NumPy's ``seed``, so a
    test knows the initial weights without asking the library."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.asarray(np.random.default_rng(seed).normal(0.0, scale, shape), dtype)

    return init


def fixed_values(seed: int, scale: float, shape) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, shape).astype(np.float32)


class FixedLinear(nn.Module):
    """logits = flatten(x) @ W + b with W, b drawn from NumPy seeds 11 and 12."""

    classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        dense = nn.Dense(
            self.classes, kernel_init=fixed_init(11, 0.5), bias_init=fixed_init(12, 0.1)
        )
        return dense(x)


def linear_weights(inputs: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    return fixed_values(11, 0.5, (inputs, classes)), fixed_values(12, 0.1, (classes,))


def _quiet(line):
    return None


def _digits_part(dataset, idx):
    return data.from_arrays(dataset.images[idx], dataset.labels[idx], dataset.num_classes)


# --- 1. global average pooling (NiN, GoogLeNet) ------------------------------------------------


def test_global_avg_pool_is_the_mean_over_height_and_width():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype(np.float32)
    got = layers.GlobalAvgPool().apply({}, jnp.asarray(x))
    np.testing.assert_allclose(got, x.astype(np.float64).mean(axis=(1, 2)), rtol=1e-6, atol=1e-7)


def _torch_models():
    sys.path.insert(0, str(BENCHMARKS))
    import torch_models

    return torch_models


def _filled_params(model, side: int, seed: int):
    """Random weights for ``model`` at side x side x 1, kernels scaled by fan-in (no init)."""
    init = lambda x: model.init(jax.random.key(0), x, train=False)["params"]
    abstract = jax.eval_shape(init, jax.ShapeDtypeStruct((1, side, side, 1), jnp.float32))
    rng = np.random.default_rng(seed)

    def fill(leaf):
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 100
        values = rng.standard_normal(leaf.shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))
        return jnp.asarray(values)

    return jax.tree.map(fill, abstract)


# NiN at 112: 26 -> pool 12 -> 12 -> pool 5 -> 5 -> pool 2: the last block's map is 2x2.
# GoogLeNet at 64: 32 -> 16 -> 8 -> 4 -> 2: b5's map is 2x2. (The benchmarks' twins run NiN at
# 72 and GoogLeNet at 32, where that map is 1x1 and a max equals the mean.)
WIDE_TWINS = [("nin", 112), ("googlenet", 64)]


@pytest.mark.parametrize(("name", "side"), WIDE_TWINS)
def test_nin_and_googlenet_match_their_torch_twin_where_the_last_map_is_2x2(name, side):
    model = get_model(name)
    params = _filled_params(model, side, seed=5)
    x = np.random.default_rng(6).uniform(size=(2, side, side, 1)).astype(np.float32)
    ours = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, x))

    def torch_twin(torch):
        torch_models = _torch_models()
        net = torch_models.get_model(name).eval()
        torch_models.load_flax_params(net, model, params, (1, side, side, 1))
        image = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        with torch.no_grad():
            mean = net(image).numpy()
            # The same network with a global MAX pool: the answer a wrong pool would give.
            for parent in net.modules():
                for child_name, child in parent.named_children():
                    if isinstance(child, torch.nn.AdaptiveAvgPool2d):
                        setattr(parent, child_name, torch.nn.AdaptiveMaxPool2d((1, 1)))
            maximum = net(image).numpy()
        return np.stack([mean, maximum])

    theirs = reference(f"wide_twin_{name}_{side}", torch_twin, fixture=FIXTURE)
    scale = max(float(np.abs(theirs[0]).max()), 1.0)
    np.testing.assert_allclose(ours, theirs[0], atol=1e-4 * scale, rtol=1e-3)
    # The inputs tell the two pools apart (else this test could not catch one for the other).
    assert np.abs(theirs[1] - theirs[0]).max() > 100 * 1e-4 * scale


# --- AlexNet against its twin (its ReLUs) ---------------------------------------------------------


def test_alexnet_logits_match_the_torch_twin_with_copied_weights():
    model = get_model("alexnet")
    params = _filled_params(model, 224, seed=7)
    x = np.random.default_rng(8).uniform(size=(1, 224, 224, 1)).astype(np.float32)
    ours = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, x))

    def torch_twin(torch):
        torch_models = _torch_models()
        net = torch_models.get_model("alexnet").eval()
        torch_models.load_flax_params(net, model, params, (1, 224, 224, 1))
        with torch.no_grad():
            return net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()

    theirs = reference("twin_alexnet_224_logits", torch_twin, fixture=FIXTURE)
    scale = max(float(np.abs(theirs).max()), 1.0)
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * scale, rtol=1e-3)


# --- the CPU max pool's padding ------------------------------------------------------------------


def _numpy_max_pool(x, k, s, p):
    """Max pooling with -inf padding (PyTorch's MaxPool2d), float64 loops."""
    n, h, w, c = x.shape
    padded = np.full((n, h + 2 * p, w + 2 * p, c), -np.inf)
    padded[:, p : p + h, p : p + w] = x
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.empty((n, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            out[:, i, j] = padded[:, i * s : i * s + k, j * s : j * s + k].max(axis=(1, 2))
    return out


def test_cpu_max_pool_pads_with_minus_infinity_on_negative_inputs():
    # All values negative: a zero padding would win every border window.
    x = -np.random.default_rng(0).uniform(1.0, 2.0, size=(2, 7, 7, 3)).astype(np.float32)
    expected = _numpy_max_pool(x, 3, 2, 1)
    pad = ((1, 1), (1, 1))
    fast = cpu_kernels.max_pool(jnp.asarray(x), (3, 3), (2, 2), pad)
    np.testing.assert_array_equal(np.asarray(fast), expected.astype(np.float32))
    module = layers.MaxPool(3, 2, 1).apply({}, jnp.asarray(x))  # the zoo's layer (fast on CPU)
    np.testing.assert_array_equal(np.asarray(module), expected.astype(np.float32))
    assert (expected < 0).all()


# --- 2. "momentum" means 0.9 ----------------------------------------------------------------------


def _tx_updates(config, train, grads):
    """The parameters after applying ``grads`` one by one with the optimizer ``fit`` builds."""
    tx = training.build(config, train, model=FixedLinear()).tx
    params = {"w": jnp.zeros(grads.shape[1:], jnp.float32)}
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
    return np.asarray(params["w"])


def _heavy_ball(grads, lr, momentum):
    w, v = np.zeros(grads.shape[1:]), np.zeros(grads.shape[1:])
    for g in grads.astype(np.float64):
        v = momentum * v + g
        w = w - lr * v
    return w


def test_momentum_optimizer_without_a_value_is_heavy_ball_with_0_9(digits):
    train = _digits_part(digits[0], np.arange(64))
    grads = np.random.default_rng(0).normal(size=(6, 3, 2)).astype(np.float32)
    base = dict(learning_rate=0.1, batch_size=16, progress=False)
    cases = [
        (training.TrainConfig(optimizer="momentum", **base), 0.9),  # momentum left 0
        (training.TrainConfig(optimizer="momentum", momentum=0.5, **base), 0.5),
        (training.TrainConfig(optimizer="sgd", **base), 0.0),
    ]
    for config, momentum in cases:
        got = _tx_updates(config, train, grads)
        np.testing.assert_allclose(got, _heavy_ball(grads, 0.1, momentum), rtol=1e-5, atol=1e-6)


# --- 3. train_acc is the training batches' accuracy ----------------------------------------------


def test_train_acc_is_counted_on_the_training_batches_and_test_acc_on_the_test_split(
    digits, tmp_path
):
    # A learning rate of 1e-30 leaves every float32 weight where it was, so the epoch's
    # training accuracy is the initial model's on all 64 examples (4 full batches of 16).
    train = _digits_part(digits[0], np.arange(64))
    kernel, bias = linear_weights(64, 10)
    predict = lambda images: images.reshape(len(images), -1).astype(np.float64) @ kernel + bias
    test_logits = predict(digits[1].images)
    # The test split: 50 examples, the last one classified correctly, so that evaluation's
    # padding (copies of the last example, eval batch 32) would count if it were not masked.
    right = np.flatnonzero(test_logits.argmax(-1) == digits[1].labels)
    chosen = np.concatenate([np.setdiff1d(np.arange(60), right)[:49], right[-1:]])
    test = _digits_part(digits[1], chosen)
    config = training.TrainConfig(
        epochs=1, batch_size=16, eval_batch_size=32, learning_rate=1e-30, checkpoint_every=0,
        progress=False,
    )  # fmt: skip
    result = training.fit(
        config, tmp_path, model=FixedLinear(), train_data=train, test_data=test, log=_quiet
    )
    train_logits = predict(train.images)
    train_acc = np.mean(train_logits.argmax(-1) == train.labels)
    test_acc = np.mean(predict(test.images).argmax(-1) == test.labels)
    assert train_acc != test_acc  # else swapping them could not be seen
    record = result.history[-1]
    assert record["train_acc"] == pytest.approx(train_acc, abs=1e-9)
    assert record["test_acc"] == pytest.approx(test_acc, abs=1e-9)
    train_loss = np_cross_entropy(train_logits, train.labels).mean()
    np.testing.assert_allclose(record["train_loss"], train_loss, rtol=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "summary.json").read_text())
    for written in (rows[-1], summary):
        assert written["train_acc"] == pytest.approx(train_acc, abs=1e-9)
        assert written["test_acc"] == pytest.approx(test_acc, abs=1e-9)


# --- unmasked evaluation ------------------------------------------------------------------------


def test_eval_step_counts_only_the_real_examples_of_a_padded_batch():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(8, 2, 2, 1)).astype(np.float32)
    kernel, bias = linear_weights(4, 3)
    logits = images.reshape(8, -1).astype(np.float64) @ kernel + bias
    labels = (logits.argmax(-1) + np.array([0, 1, 0, 2, 1, 0, 0, 0])) % 3  # 5 real, 3 padding
    mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)  # the padding is all "correct"
    model = FixedLinear(classes=3)
    params = model.init(jax.random.key(0), jnp.asarray(images))["params"]
    eval_step = jax.jit(steps.make_eval_step(model))
    batch = {"image": images, "label": labels.astype(np.int32), "mask": mask}
    sums = jax.device_get(eval_step(params, batch, steps.empty_eval_metrics()))
    real = mask == 1
    assert float(sums["count"]) == 5.0
    assert float(sums["correct"]) == float(np.sum(logits[real].argmax(-1) == labels[real])) == 2.0
    np.testing.assert_allclose(
        sums["loss_sum"], np_cross_entropy(logits[real], labels[real]).sum(), rtol=1e-5
    )


# --- 4. the fold ensemble's resize --------------------------------------------------------------


class PooledConv(nn.Module):
    """conv 4@3x3 (same) -> ReLU -> global mean -> dense: any input size, so a missing resize
    changes its answers without an error."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
        return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


def test_fold_ensemble_predicts_with_the_resize_its_folds_trained_with(digits):
    train = _digits_part(digits[0], np.arange(256))
    config = training.TrainConfig(
        epochs=1, batch_size=64, learning_rate=0.5, resize=12, progress=False
    )
    result = selection.k_fold_cv(PooledConv(), train, k=2, config=config)
    images = digits[1].images[:40]
    resized = jax.image.resize(jnp.asarray(images), (40, 12, 12, 1), "bilinear")
    by_hand, unresized = [], []
    for fold in range(2):
        params = {"params": result.fold_params(fold)}
        for x, out in ((resized, by_hand), (jnp.asarray(images), unresized)):
            logits = np.asarray(PooledConv().apply(params, x), np.float64)
            out.append(np.exp(np_log_softmax(logits)))
    expected = np.mean(by_hand, axis=0)
    assert np.abs(np.mean(unresized, axis=0) - expected).max() > 1e-3  # the resize matters
    np.testing.assert_allclose(selection.ensemble_predict(result, images), expected, atol=1e-5)
    np.testing.assert_allclose(result.population.predict(images), np.stack(by_hand), atol=1e-5)


# --- 5. the auxiliary heads' loss weight ----------------------------------------------------------


class TwoHeads(nn.Module):
    """(logits, aux_logits) in training, logits at inference, like GoogLeNet with aux heads; both
    heads' weights fixed from NumPy seeds."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        logits = nn.Dense(3, kernel_init=fixed_init(1, 0.5), name="main")(x)
        aux = nn.Dense(3, kernel_init=fixed_init(2, 0.5), name="aux")(x)
        return (logits, aux) if train else logits


@pytest.mark.parametrize("aux_weight", [None, 1.0])
def test_aux_loss_weight_is_0_3_by_default_and_the_configured_one_otherwise(aux_weight):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(8, 2, 2, 1)).astype(np.float32)
    labels = rng.integers(0, 3, size=8)
    dataset = data.from_arrays(images, labels, 3)
    weight = 0.3 if aux_weight is None else aux_weight  # the paper's 0.3, unless configured
    extra = {} if aux_weight is None else {"aux_weight": aux_weight}
    config = training.TrainConfig(
        epochs=1, batch_size=8, learning_rate=0.5, progress=False, **extra
    )  # one step on all 8 examples
    result = training.fit(
        config, model=TwoHeads(), train_data=dataset, test_data=dataset, log=_quiet
    )
    x = images.reshape(8, -1).astype(np.float64)
    w_main, w_aux = fixed_values(1, 0.5, (4, 3)), fixed_values(2, 0.5, (4, 3))
    main, aux = x @ w_main, x @ w_aux  # biases start at 0
    loss = np_cross_entropy(main, labels) + weight * np_cross_entropy(aux, labels)
    np.testing.assert_allclose(result.history[0]["train_loss"], loss.mean(), rtol=1e-5)
    # training accuracy is the main head's (the two heads score differently here)
    main_acc, aux_acc = (np.mean(out.argmax(-1) == labels) for out in (main, aux))
    assert main_acc != aux_acc
    assert result.history[0]["train_acc"] == pytest.approx(main_acc, abs=1e-9)
    params = result.state.params
    np.testing.assert_allclose(
        params["main"]["kernel"], w_main - 0.5 * x.T @ np_softmax_grad(main, labels), atol=1e-6
    )
    np.testing.assert_allclose(
        params["aux"]["kernel"],
        w_aux - 0.5 * weight * x.T @ np_softmax_grad(aux, labels),
        atol=1e-6,
    )
    # evaluation scores the main head alone, with the updated weights
    main_after = x @ np.asarray(params["main"]["kernel"]) + np.asarray(params["main"]["bias"])
    np.testing.assert_allclose(
        result.history[0]["test_loss"], np_cross_entropy(main_after, labels).mean(), rtol=1e-5
    )


# --- 8. the divergence guard's baseline is the run's first loss ----------------------------------


def test_reset_sums_zeroes_the_sums_and_keeps_the_guards_memory():
    metrics = jax.device_get(steps.empty_metrics())
    metrics.update(
        loss_sum=np.float32(7.0), correct=np.float32(3.0), count=np.float32(8.0),
        first_loss=np.float32(2.5), bad_step=np.int32(4), bad_kind=np.int32(2),
        bad_loss=np.float32(9e3),
    )  # fmt: skip
    reset = steps.reset_sums(metrics)
    assert [float(reset[k]) for k in ("loss_sum", "correct", "count")] == [0.0, 0.0, 0.0]
    assert float(reset["first_loss"]) == 2.5
    assert (int(reset["bad_step"]), int(reset["bad_kind"])) == (4, 2)
    assert float(reset["bad_loss"]) == 9e3


def test_a_loss_that_passes_1000x_the_first_loss_only_in_a_later_epoch_is_stopped():
    # The "optimizer" doubles every weight each step, the loss is the logits' square and every
    # example is the same image, so the loss at step s is exactly 4**s times the first: never
    # 1000x within one epoch of 4 steps, but 4**5 = 1024 times the run's FIRST loss at step 5,
    # in the second epoch.
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(1, 2, 2, 1)).astype(np.float32)
    dataset = data.from_arrays(np.repeat(image, 32, axis=0), rng.integers(0, 3, size=32), 3)
    double = optax.stateless(lambda updates, params: params)  # p + p: the weights double
    square = lambda outputs, labels: jnp.sum(outputs**2, axis=-1)
    config = training.TrainConfig(epochs=3, batch_size=8, progress=False)
    with pytest.raises(training.TrainingDivergedError) as caught:
        training.fit(
            config, model=FixedLinear(classes=3), train_data=dataset, test_data=dataset,
            tx=double, loss_fn=square, log=_quiet,
        )  # fmt: skip
    assert caught.value.step == 5 and caught.value.kind == "diverged"


# --- 7. pmap: each device its own dropout keys ----------------------------------------------------


def test_pmap_gives_each_device_its_own_dropout_key_for_a_batchnorm_model():
    # A BatchNorm model takes one dropout key per device (not per example): under pmap device d
    # must use fold_in(step_key, d). The worker runs on 4 fake CPU devices (set before JAX
    # starts) and compares one pmap step with the same step computed device by device.
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "4"}
    done = subprocess.run(
        [sys.executable, str(HERE / "survivors_pmap_worker.py")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "pmap dropout keys: ok" in done.stdout


# --- populations: every member against NumPy ------------------------------------------------------


class DropLinear(nn.Module):
    """Dropout on the input, then one dense layer; the default rate 0.5 is overridden by the
    members (a rate 0 member is plain softmax regression)."""

    dropout: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = layers.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(10)(x)


POP_CONFIG = dict(
    epochs=2, batch_size=32, eval_batch_size=16, optimizer="momentum", learning_rate=0.2,
    schedule="cosine", progress=False,
)  # fmt: skip


def _population_members():
    return [
        # 240 examples: 7 batches per epoch; momentum None: "momentum" means 0.9
        population.Member(seed=3, dropout=0.0, eval_indices=np.arange(20, 70)),
        # 100 examples: 3 batches, so it sits out 4 of every 7 steps; 37 evaluation examples
        population.Member(
            seed=5,
            dropout=0.0,
            learning_rate=0.1,
            momentum=0.5,
            train_indices=np.arange(100),
            eval_indices=np.arange(37),
        ),
        # member 0 with dropout 0.3: must train differently from member 0
        population.Member(seed=3, dropout=0.3, eval_indices=np.arange(20, 70)),
    ]


def _numpy_member(member, train, test, lr, momentum, epochs=2, batch=32):
    """Member's run in float64: its seed's initial weights (fit's: fold_in(key(seed), 0)), its
    subset in its seed's order, heavy-ball SGD with cosine decay over ITS updates."""
    x0 = jnp.zeros((1, 8, 8, 1), jnp.float32)
    init = DropLinear().init(jax.random.fold_in(jax.random.key(member.seed), 0), x0, train=False)
    w = np.asarray(init["params"]["Dense_0"]["kernel"], np.float64)
    b = np.asarray(init["params"]["Dense_0"]["bias"], np.float64)
    subset = np.arange(len(train)) if member.train_indices is None else member.train_indices
    x_all = train.images.reshape(len(train), -1).astype(np.float64)
    steps_per_epoch = len(subset) // batch
    total = epochs * steps_per_epoch
    vw, vb, t, history = np.zeros_like(w), np.zeros_like(b), 0, []
    x_eval = test.images[member.eval_indices].reshape(len(member.eval_indices), -1)
    y_eval = test.labels[member.eval_indices]
    for epoch in range(epochs):
        order = subset[data.epoch_permutation(len(subset), member.seed, epoch)]
        losses = []
        for s in range(steps_per_epoch):
            idx = order[s * batch : (s + 1) * batch]
            x, y = x_all[idx], train.labels[idx]
            logits = x @ w + b
            losses.append(np_cross_entropy(logits, y).mean())
            g = np_softmax_grad(logits, y)
            rate = lr * 0.5 * (1 + np.cos(np.pi * min(t, total) / total))
            vw, vb = momentum * vw + x.T @ g, momentum * vb + g.sum(0)
            w, b, t = w - rate * vw, b - rate * vb, t + 1
        val_logits = x_eval.astype(np.float64) @ w + b
        history.append({
            "train_loss": float(np.mean(losses)),
            "val_loss": float(np_cross_entropy(val_logits, y_eval).mean()),
            "val_acc": float(np.mean(val_logits.argmax(-1) == y_eval)),
        })  # fmt: skip
    return w, b, history


@pytest.fixture(scope="module")
def population_reference(digits):
    train = _digits_part(digits[0], np.arange(240))
    test = _digits_part(digits[1], np.arange(100))
    members = _population_members()
    settings = [(0.2, 0.9), (0.1, 0.5)]
    expected = [
        _numpy_member(m, train, test, *s) for m, s in zip(members[:2], settings, strict=True)
    ]
    return train, test, members, expected


def _assert_population_matches(result, expected):
    for m, (w, b, history) in enumerate(expected):
        params = result.member_state(m).params["Dense_0"]
        np.testing.assert_allclose(params["kernel"], w, rtol=1e-4, atol=1e-5, err_msg=f"{m}")
        np.testing.assert_allclose(params["bias"], b, rtol=1e-4, atol=1e-5, err_msg=f"{m}")
        for ours, theirs in zip(result.history[m], history, strict=True):
            np.testing.assert_allclose(ours["train_loss"], theirs["train_loss"], rtol=1e-4)
            np.testing.assert_allclose(ours["val_loss"], theirs["val_loss"], rtol=1e-4)
            assert ours["val_acc"] == pytest.approx(theirs["val_acc"], abs=1e-9)
    # member 2 is member 0 but for its dropout rate (its own, not another member's)
    a, c = (result.member_state(m).params["Dense_0"]["kernel"] for m in (0, 2))
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_population_members_equal_numpy_runs_of_their_own_settings(population_reference):
    train, test, members, expected = population_reference
    config = training.TrainConfig(**POP_CONFIG)
    result = population.fit_population(
        config, members, model=DropLinear(), train_data=train, eval_data=test, log=_quiet
    )
    _assert_population_matches(result, expected)


def test_an_interrupted_population_resumes_to_the_numpy_runs(
    population_reference, tmp_path, monkeypatch
):
    # SIGTERM while the second epoch's batches are being read: the run saves mid-epoch (no
    # epoch checkpoints, so that one is the only one) and stops; the resumed run must finish
    # exactly as the uninterrupted NumPy runs did (weights, momentum, the epoch's sums).
    train, test, members, expected = population_reference
    config = training.TrainConfig(**POP_CONFIG, checkpoint_every=0)
    reading = population.PopulationJob.epoch_batches

    def interrupting(self, epoch, start):
        for index, batch in enumerate(reading(self, epoch, start), start):
            if (epoch, index) == (1, 3):
                signal.raise_signal(signal.SIGTERM)  # the run stops between two steps
            yield batch

    monkeypatch.setattr(population.PopulationJob, "epoch_batches", interrupting)
    run = dict(model=DropLinear(), train_data=train, eval_data=test, log=_quiet)
    with pytest.raises(training.TrainingInterrupted) as stopped:
        population.fit_population(config, members, tmp_path, **run)
    assert 7 < stopped.value.step < 14  # mid second epoch (7 positions per epoch)
    monkeypatch.undo()
    result = population.fit_population(config, members, tmp_path, resume=True, **run)
    _assert_population_matches(result, expected)
