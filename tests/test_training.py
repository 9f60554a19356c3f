"""The training engine: the step against a hand-written reference, determinism, resume, guard."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from helpers import fit_quietly, quick_config

from jaxnotes import data, optim, training
from jaxnotes.models import get_model


def _mlp_config(**overrides) -> training.TrainConfig:
    return quick_config(**{"epochs": 3, **overrides})


_fit = fit_quietly


def test_train_step_equals_a_hand_written_sgd_step():
    model = get_model("lenet")
    tx = optim.make_optimizer("sgd", 0.5)
    state = training.create_train_state(model, tx, (28, 28, 1), seed=0)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.random((8, 28, 28, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32),
    }
    params = jax.tree.map(np.asarray, state.params)  # copies: the state is donated below

    def reference_loss(p):
        logits = model.apply({"params": p}, batch["image"])
        return optax.softmax_cross_entropy(logits, jax.nn.one_hot(batch["label"], 10)).mean()

    grads = jax.jit(jax.grad(reference_loss))(params)  # jitted: eager LeNet costs seconds
    expected = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    step = training.jit_train_step(training.make_train_step(model, tx))
    new_state, metrics = step(state, batch, training.empty_metrics())
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
        new_state.params,
        expected,
    )
    assert int(new_state.step) == 1
    np.testing.assert_allclose(metrics["loss_sum"] / 8, jax.jit(reference_loss)(params), rtol=1e-5)


def test_public_train_and_eval_step(digits):
    model = get_model("mlp")
    tx = optim.make_optimizer("sgd", 0.1)
    state = training.create_train_state(model, tx, (8, 8, 1), seed=0)
    batch = next(data.train_batches(digits[0], 32, seed=0, epoch=0))
    state, metrics = training.train_step(state, batch, training.empty_metrics(), model=model, tx=tx)
    assert int(state.step) == 1 and float(metrics["count"]) == 32
    eval_batch = next(data.eval_batches(digits[1], 64))
    result = training.eval_step(
        state.params, eval_batch, training.empty_eval_metrics(), model=model
    )
    assert float(result["count"]) == 64


def test_evaluation_covers_every_example_once(digits):
    train, test = digits
    model = get_model("mlp")
    tx = optim.make_optimizer("sgd", 0.1)
    state = training.create_train_state(model, tx, (8, 8, 1), seed=3)
    eval_step = training.jit_eval_step(training.make_eval_step(model))
    result = training.evaluate(eval_step, state.params, test, batch_size=128)  # 540 = 4*128 + 28
    # Reference: one forward pass over the whole test set, NumPy metrics.
    logits = np.asarray(model.apply({"params": state.params}, jnp.asarray(test.images)))
    expected_acc = np.mean(np.argmax(logits, -1) == test.labels)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected_loss = -np.mean(log_probs[np.arange(len(test)), test.labels])
    np.testing.assert_allclose(result["acc"], expected_acc, atol=1e-6)
    np.testing.assert_allclose(result["loss"], expected_loss, rtol=1e-4)


def test_same_seed_same_results_different_seed_different(digits):
    first = _fit(_mlp_config(seed=1), digits)
    second = _fit(_mlp_config(seed=1), digits)
    other = _fit(_mlp_config(seed=2), digits)
    strip = lambda history: [{k: v for k, v in h.items() if k != "wall_s"} for h in history]
    assert strip(first.history) == strip(second.history)
    assert strip(first.history) != strip(other.history)
    assert first.compilations == 1  # no recompilation after the first step


def test_resume_in_process_gives_the_same_parameters(digits, tmp_path):
    # MLP with dropout: exercises the per-step keys (fold_in(key, step)) and the data order.
    straight = _fit(_mlp_config(epochs=4), digits, tmp_path / "straight")
    _fit(_mlp_config(epochs=2), digits, tmp_path / "split")
    resumed = _fit(_mlp_config(epochs=4), digits, tmp_path / "split", resume=True)
    assert len(resumed.history) == 4 and resumed.history[1]["epoch"] == 2
    jax.tree.map(np.testing.assert_array_equal, straight.state.params, resumed.state.params)
    assert (tmp_path / "split" / "metrics.jsonl").read_text().count("\n") == 4
    assert (tmp_path / "split" / "learning_curves.png").stat().st_size > 1000


def test_resume_needs_a_checkpoint_and_the_same_settings(digits, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _fit(_mlp_config(), digits, tmp_path / "empty", resume=True)
    _fit(_mlp_config(epochs=1), digits, tmp_path / "run")
    with pytest.raises(ValueError, match="learning_rate"):
        _fit(_mlp_config(epochs=2, learning_rate=0.2), digits, tmp_path / "run", resume=True)


def test_non_finite_loss_stops_with_the_step_and_causes(digits):
    config = training.TrainConfig(
        model="lenet", resize=28, epochs=1, batch_size=32, learning_rate=1e38, progress=False
    )
    with pytest.raises(training.TrainingDivergedError) as error:
        _fit(config, digits)
    assert error.value.kind == "non-finite"
    assert f"at step {error.value.step}" in str(error.value)
    assert "learning rate too large" in str(error.value) and "division by zero" in str(error.value)


def test_exploding_but_finite_loss_stops_as_divergence(digits):
    with pytest.raises(training.TrainingDivergedError) as error:
        _fit(_mlp_config(learning_rate=20.0, model_kwargs={"dropout": 0.0}), digits)
    assert error.value.kind == "diverged" and np.isfinite(error.value.loss)
    assert "over 1000 x the first loss" in str(error.value)


def test_guard_keeps_the_last_good_checkpoint(digits, tmp_path):
    train, test = digits
    # One poisoned example (0 * inf = NaN in the first layer) placed at a known step of epoch 0.
    images = train.images.copy()
    images[7] = np.inf
    poisoned = dataclasses.replace(train, images=images)
    config = _mlp_config(epochs=1, batch_size=16, checkpoint_every_steps=10, log_every=10**6)
    order = data.epoch_permutation(len(train), config.seed, 0)
    bad_step = int(np.where(order == 7)[0][0]) // 16
    assert bad_step >= 10, "pick another example index for this seed"
    with pytest.raises(training.TrainingDivergedError) as error:
        _fit(config, (poisoned, test), tmp_path)
    assert error.value.step == bad_step and error.value.kind == "non-finite"
    last_good = (bad_step // 10) * 10
    assert error.value.checkpoint.endswith(f"checkpoints/{last_good}")
    manager = ocp.CheckpointManager(tmp_path / "checkpoints")
    assert manager.latest_step() == last_good  # nothing saved after the bad step
    restored = manager.restore(last_good, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    leaves = jax.tree.leaves(restored["state"]["params"])
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)


def test_bf16_computes_in_bf16_and_keeps_float32_parameters(digits):
    config = _mlp_config(precision="bf16")
    assert training.build(config, digits[0]).model.dtype == jnp.bfloat16
    result = _fit(config, digits)
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(result.state.params)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    fp32 = _fit(_mlp_config(), digits)
    assert result.summary["test_acc"] > 0.8
    assert abs(result.summary["test_acc"] - fp32.summary["test_acc"]) < 0.05
    assert abs(result.summary["train_loss"] / fp32.summary["train_loss"] - 1) < 0.15


def test_config_validation_names_every_rule():
    # Every rule of TrainConfig.validate, each with the field and the value in its message
    # (the API sweep in tests/test_faults.py covers the same rules through fit).
    from jaxnotes.config import _rules

    cases = {
        "epochs": (0, "epochs must be >= 1"),
        "batch_size": (0, "batch_size must be >= 1"),
        "eval_batch_size": (-1, "eval_batch_size must be >= 1"),
        "learning_rate": (0.0, "learning_rate must be a finite number > 0"),
        "optimizer": ("rmsprop", "optimizer must be one of"),
        "momentum": (1.0, r"momentum must be in \[0, 1\)"),
        "weight_decay": (-1.0, "weight_decay must be a finite number >= 0"),
        "decoupled": ("no", "decoupled must be True or False"),
        "schedule": ("step", "schedule must be one of constant, cosine"),
        "model_kwargs": ([], "model_kwargs must be a dict"),
        "resize": (0, "resize must be >= 1"),
        "normalization": ("whiten", "normalization must be one of"),
        "precision": ("fp8", "precision must be one of fp32, bf16, fp16"),
        "seed": (-1, r"seed must be an integer in \[0, 2\*\*32\)"),
        "log_every": (0, "log_every must be >= 1"),
        "checkpoint_every": (-1, "checkpoint_every must be >= 0"),
        "checkpoint_every_steps": (-1, "checkpoint_every_steps must be >= 0"),
        "keep_checkpoints": (0, "keep_checkpoints must be >= 1"),
        "divergence_factor": (0.5, "divergence_factor must be a finite number > 1"),
        "aux_weight": (-1.0, "aux_weight must be a finite number >= 0"),
        "devices": (0, "devices must be >= 1"),
        "parallel": ("ddp", "parallel must be one of sharded, pmap"),
        "steps_per_dispatch": (0, "steps_per_dispatch must be >= 1"),
        "model": (7, "model must be a name"),
        "dataset": ("", "dataset must be a name"),
        "validation_fraction": (1.0, r"validation_fraction must be 0 \(off\) or in \(0, 1\)"),
        "test_every_epoch": (1, "test_every_epoch must be True or False"),
        "warmup_steps": (-1, "warmup_steps must be >= 0"),
        "clip_norm": (-1.0, "clip_norm must be a finite number >= 0"),
        "accumulate": (0, "accumulate must be >= 1"),
        "ema_decay": (1.0, r"ema_decay must be 0 \(off\) or in \(0, 1\)"),
        "early_stopping": (-2, "early_stopping must be >= 0"),
        "monitor": (3, "monitor must be a metric name"),
        "mode": ("up", "mode must be one of min, max"),
        "min_delta": (float("nan"), "min_delta must be a finite number >= 0"),
        "keep_best": (-1, "keep_best must be >= 0"),
        "tensorboard": ("yes", "tensorboard must be True or False"),
    }
    for field, (value, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            _mlp_config(**{field: value}).validate()
    with pytest.raises(ValueError, match="steps_per_dispatch > 1 runs on one device only"):
        _mlp_config(steps_per_dispatch=2, devices=2).validate()
    with pytest.raises(ValueError, match="accumulate and steps_per_dispatch cannot be combined"):
        _mlp_config(steps_per_dispatch=2, accumulate=2).validate()
    assert len(_rules(_mlp_config())) == len(cases) + 2  # no rule left untested


def test_scanned_steps_equal_single_steps(digits):
    # 39 steps per epoch: groups of 4 plus a tail of 3 single steps, with dropout (MLP).
    single = _fit(_mlp_config(epochs=2, batch_size=32), digits)
    scanned = _fit(_mlp_config(epochs=2, batch_size=32, steps_per_dispatch=4), digits)
    for a, b in zip(
        jax.tree.leaves(single.state.params), jax.tree.leaves(scanned.state.params), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert scanned.summary["steps"] == single.summary["steps"] == 78
    assert scanned.compilations == single.compilations == 1
    np.testing.assert_allclose(
        scanned.history[-1]["train_loss"], single.history[-1]["train_loss"], rtol=1e-5
    )
