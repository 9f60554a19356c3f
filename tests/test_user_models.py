"""The engine trains the user's own modules: linen with BatchNorm state, and NNX.

References: a NumPy float64 computation of BatchNorm's running-average update on the first batch;
the linen version of the same architecture (weights copied across) for one NNX step; an
uninterrupted run for a SIGKILLed and resumed one.
"""

import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from processes import signal_when
from user_models import MOMENTUM, NNXTinyResNet, TinyResNet, nnx_from_linen

from jaxnotes import data, optim, training

HERE = Path(__file__).parent


def _config(**overrides) -> training.TrainConfig:
    base = dict(
        dataset="digits",
        epochs=8,
        batch_size=32,
        optimizer="adam",
        learning_rate=3e-3,
        progress=False,
    )
    return training.TrainConfig(**{**base, **overrides})


def _fit(config, digits, workdir=None, **kwargs):
    train, test = digits
    return training.fit(
        config, workdir, train_data=train, test_data=test, log=lambda line: None, **kwargs
    )


def _conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3x3 'SAME' cross-correlation, NHWC x HWIO, in float64 NumPy (an independent reference)."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros((*x.shape[:3], kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,cd->nhwd", padded[:, i : i + h, j : j + w], kernel[i, j])
    return out + bias


def test_linen_batchnorm_model_trains_and_its_statistics_follow_numpy(digits):
    result = _fit(_config(), digits, model=TinyResNet())
    assert result.summary["model"] == "TinyResNet"  # the label defaults to the class name
    assert result.summary["test_acc"] >= 0.93, result.history
    assert result.compilations == 1
    stats = result.state.model_state["batch_stats"]
    assert set(stats) == {"BatchNorm_0", "ResBlock_0"}

    # One step, then the stem BatchNorm's running averages against NumPy on the same batch.
    config = _config()
    parts = training.build(config, digits[0], model=TinyResNet())
    state = training.create_train_state(parts.fns, parts.tx, (8, 8, 1), config.seed)
    kernel = np.asarray(state.params["Conv_0"]["kernel"], np.float64)
    bias = np.asarray(state.params["Conv_0"]["bias"], np.float64)
    batch = next(data.train_batches(digits[0], 32, seed=config.seed, epoch=0))
    pre_bn = _conv_same(np.asarray(batch["image"], np.float64), kernel, bias)
    mean, var = pre_bn.mean(axis=(0, 1, 2)), pre_bn.var(axis=(0, 1, 2))  # biased, as BN uses
    state, _ = parts.train_step(state, batch, training.empty_metrics())
    got = state.model_state["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(got["mean"], (1 - MOMENTUM) * mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["var"], MOMENTUM + (1 - MOMENTUM) * var, rtol=1e-5)


def test_evaluation_uses_the_running_averages(digits):
    # Eval mode must read batch_stats: with the statistics zeroed and variances huge, the logits
    # change; with the trained ones they are what linen's own apply gives.
    result = _fit(_config(epochs=1), digits, model=TinyResNet())
    state = result.state
    images = jnp.asarray(digits[1].images[:64])
    expected = TinyResNet().apply(
        {"params": state.params, **state.model_state}, images, train=False
    )
    eval_fn = training.make_eval_step(TinyResNet())
    batch = {"image": images, "label": digits[1].labels[:64], "mask": np.ones(64)}
    metrics = eval_fn(state, batch, training.empty_eval_metrics())
    labels = digits[1].labels[:64]
    np.testing.assert_allclose(
        float(metrics["correct"]), np.sum(np.argmax(expected, -1) == labels), atol=0
    )
    blown = jax.tree.map(lambda v: v * 0 + 1e6, state.model_state)
    wrong = TinyResNet().apply({"params": state.params, **blown}, images, train=False)
    assert not np.allclose(wrong, expected, atol=1e-3)


def test_nnx_model_trains_in_the_same_band(digits):
    model = NNXTinyResNet(rngs=jax_rngs(0))
    result = _fit(_config(), digits, model=model)
    assert result.summary["model"] == "NNXTinyResNet"
    assert result.summary["test_acc"] >= 0.93, result.history
    assert set(result.state.model_state) == {"bn", "block"}


def jax_rngs(seed):
    from flax import nnx

    return nnx.Rngs(seed)


def test_one_nnx_step_equals_one_linen_step(digits):
    linen = TinyResNet()
    tx = optim.make_optimizer("momentum", 0.1, momentum=0.9)
    linen_state = training.create_train_state(linen, tx, (8, 8, 1), seed=3)
    variables = {"params": linen_state.params, **linen_state.model_state}
    nnx_model = nnx_from_linen(jax.tree.map(np.asarray, variables))
    nnx_state = training.create_train_state(nnx_model, tx, (8, 8, 1), seed=3)
    batch = next(data.train_batches(digits[0], 32, seed=0, epoch=0))
    linen_new, linen_metrics = training.jit_train_step(training.make_train_step(linen, tx))(
        linen_state, batch, training.empty_metrics()
    )
    nnx_new, nnx_metrics = training.jit_train_step(training.make_train_step(nnx_model, tx))(
        nnx_state, batch, training.empty_metrics()
    )
    np.testing.assert_allclose(nnx_metrics["loss_sum"], linen_metrics["loss_sum"], rtol=1e-5)
    linen_stats = linen_new.model_state["batch_stats"]
    pairs = [
        (nnx_new.params["conv"]["kernel"], linen_new.params["Conv_0"]["kernel"]),
        (nnx_new.params["bn"]["scale"], linen_new.params["BatchNorm_0"]["scale"]),
        (
            nnx_new.params["block"]["conv2"]["kernel"],
            linen_new.params["ResBlock_0"]["Conv_1"]["kernel"],
        ),
        (nnx_new.params["head"]["kernel"], linen_new.params["Dense_0"]["kernel"]),
        (nnx_new.model_state["bn"]["mean"], linen_stats["BatchNorm_0"]["mean"]),
        (
            nnx_new.model_state["block"]["bn2"]["var"],
            linen_stats["ResBlock_0"]["BatchNorm_1"]["var"],
        ),
    ]
    for got, expected in pairs:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_nnx_dropout_uses_the_engines_keys(digits):
    # Same seed -> same masks (the module's own stream counter does not leak into the run);
    # another seed -> other masks.
    def run(seed):
        model = NNXTinyResNet(dropout=0.5, rngs=jax_rngs(0))
        return _fit(_config(epochs=1, seed=seed), digits, model=model).history[0]["train_loss"]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_rgb_and_non_square_images_train():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (96, 12, 20, 3), dtype=np.uint8)
    labels = (images[..., 0].mean(axis=(1, 2)) > 127).astype(np.int32)
    train = data.from_arrays(images[:64], labels[:64], num_classes=2)
    test = data.from_arrays(images[64:], labels[64:], num_classes=2)
    result = training.fit(
        _config(epochs=2, batch_size=16),
        model=TinyResNet(num_classes=2, width=8),
        train_data=train,
        test_data=test,
        log=lambda line: None,
    )
    assert result.state.params["Conv_0"]["kernel"].shape == (3, 3, 3, 8)
    assert np.isfinite(result.summary["train_loss"])


class _NotLogits(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(10)(x)  # (B, H, W, 10): no flatten


class _Narrow(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(5)(x.reshape(x.shape[0], -1))


class _NeedsBigImages(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.shape[1] < 32:
            raise ValueError(f"_NeedsBigImages needs at least 32x32 inputs, got {x.shape[1:3]}")
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _identity(x):
    return x


@pytest.mark.parametrize(
    "model, error, message",
    [
        (_identity, TypeError, "got the function '_identity'"),
        (TinyResNet, TypeError, r"the class TinyResNet \(instantiate it"),
        ("lenet", TypeError, "expected a flax.linen.Module or a flax.nnx.Module"),
        (_NotLogits(), ValueError, r"must return logits of shape \(batch, classes\)"),
        (_Narrow(), ValueError, "labels 0..9 but _Narrow's outputs 5 logits"),
        (_NeedsBigImages(), ValueError, "needs at least 32x32 inputs, got"),
    ],
)
def test_bad_models_fail_before_training(model, error, message, digits, tmp_path):
    with pytest.raises(error, match=message):
        _fit(_config(), digits, tmp_path / "run", model=model)
    assert not (tmp_path / "run").exists()  # nothing written, nothing compiled


def test_resume_with_another_module_names_the_first_differing_path(digits, tmp_path):
    _fit(_config(epochs=1), digits, tmp_path, model=TinyResNet())
    differs = r"params\['BatchNorm_0'\]\['bias'\] is \(16,\) float32 in the checkpoint but \(8,\)"
    with pytest.raises(ValueError, match=differs):
        _fit(
            _config(epochs=2, model="TinyResNet"),
            digits,
            tmp_path,
            model=TinyResNet(width=8),
            resume=True,
        )
    with pytest.raises(ValueError, match="model: 'TinyResNet' -> 'NNXTinyResNet'"):
        _fit(
            _config(epochs=2), digits, tmp_path, model=NNXTinyResNet(rngs=jax_rngs(0)), resume=True
        )


@pytest.mark.slow
def test_killed_batchnorm_run_resumes_bit_identical(digits, tmp_path):
    # 3 epochs of 39 steps, a checkpoint every 20 steps; killed after step 20's lands.
    worker = [sys.executable, str(HERE / "user_model_worker.py")]
    straight = subprocess.run(
        [*worker, str(tmp_path / "straight")], capture_output=True, text=True, timeout=600
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    crashed = tmp_path / "crashed"
    signal_when([*worker, str(crashed)], crashed / "checkpoints" / "20").wait()
    resumed = subprocess.run(
        [*worker, str(crashed), "--resume"], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step" in resumed.stdout
    a = np.load(tmp_path / "straight" / "final.npz")
    b = np.load(crashed / "final.npz")
    assert sorted(a.files) == sorted(b.files) and any("batch_stats" in k for k in a.files)
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
