"""The engine's open policies, each against an independent reference.

Your optimizer (an optax chain applied by hand here), gradient accumulation (one step on the
concatenated batch), the EMA of the weights (a NumPy recurrence over separately trained
prefixes), fp16 loss scaling (an overflow forced at the step), early stopping (the rule
re-applied to the run's own history), the best checkpoint (the history's best epoch), TensorBoard
(its event files parsed here), load and export (the run's own predictions), and every bad input
refused before the first step.
"""

import dataclasses
import math
import re
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import quick_config, run_runner, subset

from jaxnotes import callbacks, data, export, losses, runs, steps, training
from jaxnotes.models import get_model

MLP = {"dropout": 0.0}


def _one_batch(digits, n=64):
    """(train of n examples, test): with batch n, one step per epoch."""
    return subset(digits[0], np.arange(n)), digits[1]


def _mlp_init(seed=0):
    """The parameters fit starts from: the zoo MLP's init with fold_in(key(seed), 0)."""
    model = get_model("mlp", **MLP)
    x = jnp.zeros((1, 8, 8, 1))
    return model, model.init(jax.random.fold_in(jax.random.key(seed), 0), x, train=False)["params"]


def _grads(model, params, train):
    def loss(p):
        logits = model.apply({"params": p}, jnp.asarray(train.images))
        return optax.softmax_cross_entropy_with_integer_labels(logits, train.labels).mean()

    return jax.grad(loss)(params)


def test_your_optax_chain_is_what_one_fit_step_applies(digits):
    train, test = _one_batch(digits)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.05, 3, 20)
    chain = lambda: optax.chain(
        optax.clip_by_global_norm(0.5), optax.adamw(schedule, weight_decay=0.1)
    )
    config = quick_config(epochs=1, batch_size=64, model_kwargs=MLP)
    result = training.fit(config, train_data=train, test_data=test, tx=chain(), log=lambda s: None)
    model, params = _mlp_init()
    tx = chain()  # the same chain, applied by hand
    updates, _ = tx.update(_grads(model, params, train), tx.init(params), params)
    expected = optax.apply_updates(params, updates)
    for a, b in zip(jax.tree.leaves(result.state.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_accumulating_four_micro_batches_is_one_step_on_their_union(digits):
    train, test = _one_batch(digits)
    kw = dict(epochs=1, model_kwargs=MLP, learning_rate=0.5)
    whole = training.fit(quick_config(batch_size=64, **kw), train_data=train, test_data=test,
                         log=lambda s: None)  # fmt: skip
    parts = training.fit(quick_config(batch_size=16, accumulate=4, **kw), train_data=train,
                         test_data=test, log=lambda s: None)  # fmt: skip
    assert parts.summary["steps"] == 4 and parts.summary["optimizer_steps"] == 1
    for a, b in zip(jax.tree.leaves(parts.state.params), jax.tree.leaves(whole.state.params),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_moving_average_follows_its_recurrence_and_scores_the_run(digits):
    # One step per epoch: fits of 1..5 epochs give the weights after each step (a constant
    # rate makes each a prefix of the next); the average is then a NumPy recurrence.
    train, test = _one_batch(digits)
    decay = 0.6
    base = quick_config(batch_size=64, model_kwargs=MLP, learning_rate=0.5)
    fit = lambda **kw: training.fit(dataclasses.replace(base, **kw), train_data=train,
                                    test_data=test, log=lambda s: None)  # fmt: skip
    _, average = _mlp_init()
    average = jax.tree.map(np.asarray, average)
    for epochs in range(1, 6):
        weights = fit(epochs=epochs).state.params
        average = jax.tree.map(lambda e, p: decay * e + (1 - decay) * np.asarray(p), average,
                               weights)  # fmt: skip
    result = fit(epochs=5, ema_decay=decay)
    for a, b in zip(jax.tree.leaves(result.state.extras["ema"]), jax.tree.leaves(average),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    model = get_model("mlp", **MLP)
    logits = model.apply({"params": average}, jnp.asarray(test.images))
    expected = float(losses.per_example_cross_entropy(logits, test.labels).mean())
    assert result.summary["test_loss"] == pytest.approx(expected, rel=1e-5)  # scored with it


def test_fp16_skips_an_overflowing_step_and_backs_off_the_scale():
    model = get_model("lenet", dtype=jnp.float16)
    tx = optax.sgd(0.1)
    state = steps.create_train_state(model, tx, (28, 28, 1), 0, loss_scaling=True)
    huge = state.extras["loss_scale"].replace(scale=jnp.float32(1e30))  # fp16 tops out at 65504
    state = state.replace(extras={"loss_scale": huge})
    step = steps.jit_train_step(steps.make_train_step(model, tx))
    batch = {"image": jnp.ones((8, 28, 28, 1)), "label": jnp.arange(8, dtype=jnp.int32)}
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, batch, steps.empty_metrics())
    assert int(metrics["skipped"]) == 1
    assert float(state.extras["loss_scale"].scale) == pytest.approx(5e29, rel=1e-6)  # halved
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state.params))


def test_fp16_trains_lenet_to_the_fp32_band(digits):
    # The digits preset's LeNet reaches >= 0.95 in fp32 (jaxnotes.presets.DIGITS).
    config = training.TrainConfig(
        model="lenet", precision="fp16", optimizer="adam", learning_rate=3e-3, batch_size=16,
        epochs=12, resize=28, progress=False,
    )  # fmt: skip
    result = training.fit(config, train_data=digits[0], test_data=digits[1], log=lambda s: None)
    assert result.summary["test_acc"] >= 0.95
    assert result.summary["skipped_steps"] >= 0 and "loss_scale" in result.state.extras


@pytest.fixture(scope="module")
def rising(digits, tmp_path_factory):
    """A run whose validation loss rises after epoch 3 (the learning rate jumps 10x there),
    with early stopping (patience 2), the best checkpoint kept, and TensorBoard."""
    workdir = tmp_path_factory.mktemp("rising") / "run"
    config = quick_config(
        epochs=10, model_kwargs=MLP, validation_fraction=0.3, early_stopping=2, keep_best=1,
        keep_checkpoints=1, tensorboard=True,
    )  # fmt: skip
    return training.fit(config, workdir, train_data=digits[0], test_data=digits[1],
                        tx=_rising_tx(digits), log=lambda s: None), config  # fmt: skip


def _rising_tx(digits):
    per_epoch = (len(digits[0]) - math.ceil(0.3 * len(digits[0]))) // 64
    return optax.sgd(optax.piecewise_constant_schedule(0.1, {3 * per_epoch: 10.0}))


def test_early_stopping_stops_patience_epochs_after_the_best(rising):
    result, config = rising
    losses_seen = [h["val_loss"] for h in result.history]
    best, waited, stop = math.inf, 0, None  # the rule, re-applied to the run's own history
    for epoch, value in enumerate(losses_seen, 1):
        if value < best - config.min_delta:
            best, waited = value, 0
        else:
            waited += 1
        if waited == config.early_stopping:
            stop = epoch
            break
    assert stop == len(result.history) < config.epochs and result.summary["stopped_early"]
    assert "test_acc" in result.summary and "test_acc" not in result.history[-1]


def test_the_best_checkpoint_outlives_worse_and_newer_ones(rising, digits):
    result, _ = rising
    best = min(result.history, key=lambda h: h["val_loss"])
    loaded = runs.load_run(result.workdir, "best")
    assert loaded.epoch == best["epoch"] < len(result.history)
    assert loaded.record["val_acc"] == best["val_acc"]
    latest = runs.load_run(result.workdir, "latest")
    assert latest.epoch == len(result.history)
    # What the best checkpoint predicts is what that epoch scored on the validation split.
    _, val_idx = data.holdout_split(len(digits[0]), 0.3, 0, stratify=digits[0].labels)
    val = subset(digits[0], val_idx)
    accuracy = np.mean(loaded.predict(val.images).argmax(-1) == val.labels)
    assert accuracy == pytest.approx(best["val_acc"], abs=1e-9)


def test_a_resume_continues_from_the_newest_checkpoint_not_the_best(rising, digits, tmp_path):
    import shutil

    result, config = rising
    shutil.copytree(result.workdir, tmp_path / "run")
    (tmp_path / "run" / "summary.json").unlink()
    lines = []
    longer = dataclasses.replace(config, early_stopping=0, epochs=len(result.history) + 1)
    training.fit(longer, tmp_path / "run", resume=True, train_data=digits[0],
                 test_data=digits[1], tx=_rising_tx(digits), log=lines.append)  # fmt: skip
    newest = result.summary["steps"]
    assert lines[0] == f"resumed from step {newest} ({tmp_path / 'run' / 'checkpoints'}/{newest})"


def _events(folder):
    """Every scalar in a folder's TensorBoard event files: tag -> [(step, value)] (TFRecord
    framing read here; the records are tensorboardX's Event protos)."""
    from tensorboardX.proto import event_pb2

    found = {}
    for path in folder.rglob("events.out.tfevents.*"):
        raw = path.read_bytes()
        at = 0
        while at < len(raw):
            (length,) = struct.unpack("<Q", raw[at : at + 8])
            event = event_pb2.Event.FromString(raw[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_tensorboard_event_files_hold_every_epochs_scalars(rising):
    result, _ = rising
    found = _events(result.workdir / "tensorboard")
    for name in ("val_loss", "val_acc", "train_loss", "train_acc"):
        assert found[f"epoch/{name}"] == [
            (h["epoch"], pytest.approx(h[name], rel=1e-6)) for h in result.history
        ]
    assert "step/train_loss" in found


def test_tensorboard_writes_on_process_0_only(tmp_path):
    board = callbacks.TensorBoard()
    board.on_train_begin(callbacks.RunInfo(quick_config(), tmp_path, 10, primary=False))
    board.on_epoch_end({"epoch": 1, "val_loss": 1.0})
    board.on_train_end({})
    assert not list(tmp_path.rglob("*"))


def test_an_export_predicts_what_the_run_predicts_and_lowers_for_gpu_and_tpu(rising, tmp_path):
    result, _ = rising
    path = export.export_run(result.workdir, tmp_path / "model.export", "best")
    predict = export.load_exported(path)
    run = runs.load_run(result.workdir, "best")
    images = data.load("digits", "test").images
    for n in (7, 64):
        np.testing.assert_allclose(np.asarray(predict(images[:n])), run.predict(images[:n]),
                                   atol=1e-5)  # fmt: skip
    assert predict.exported.platforms == ("cpu", "cuda", "tpu")
    text = predict.exported.mlir_module()
    assert "stablehlo.dot_general" in text and "custom_vjp" not in text
    # float32 as float32 on a GPU too (TF32 moved an H200's probabilities by 2.3e-4)
    products = re.findall(r"stablehlo\.(?:dot_general|convolution)[^\n]*", text)
    assert products and all("HIGHEST" in line for line in products)


def test_a_module_of_your_own_loads_with_model(tmp_path, digits):
    from user_models import TinyResNet

    config = quick_config(model=None, epochs=1, batch_size=32, optimizer="adam")
    training.fit(config, tmp_path / "run", model=TinyResNet(), train_data=digits[0],
                 test_data=digits[1], log=lambda s: None)  # fmt: skip
    with pytest.raises(ValueError, match="not a zoo model: pass load_run"):
        runs.load_run(tmp_path / "run")
    with pytest.raises(ValueError, match="parameters are not those of MLP"):
        runs.load_run(tmp_path / "run", model=get_model("mlp"))
    run = runs.load_run(tmp_path / "run", "latest", model=TinyResNet())
    assert run.predict(digits[1].images[:5]).shape == (5, 10)


def _refused(match, *, error=ValueError, **kwargs):
    config = kwargs.pop("config", quick_config())
    with pytest.raises(error, match=match):
        training.fit(config, log=lambda s: None, **kwargs)


def test_bad_policies_are_refused_before_the_first_step(digits, monkeypatch):
    compiled = []
    monkeypatch.setattr(steps, "create_train_state", lambda *a, **k: compiled.append(1))
    d = dict(train_data=digits[0], test_data=digits[1])
    _refused("tx must be an optax.GradientTransformation", error=TypeError, tx="adam", **d)
    _refused(r"loss_fn must return per-example losses, shape \(batch,\)",
             loss_fn=lambda out, y: jnp.mean(out), **d)  # fmt: skip
    _refused("metric name 'acc' clashes with a built-in", metrics={"acc": lambda z, y: y}, **d)
    _refused(r"metric 'top' must return one value per example",
             metrics={"top": lambda z, y: z}, **d)  # fmt: skip
    _refused(
        "monitor 'val_f1' is not a metric this run reports",
        config=quick_config(early_stopping=2, validation_fraction=0.2, monitor="val_f1"),
        **d,
    )
    _refused(r"validation_fraction must be 0 \(off\) or in \(0, 1\)",
             config=quick_config(validation_fraction=1.5), **d)  # fmt: skip
    labels = digits[0].labels
    one_of_class_9 = subset(
        digits[0], np.r_[np.flatnonzero(labels != 9), np.flatnonzero(labels == 9)[:1]]
    )
    _refused("leaves class 9 .* with none on one side", train_data=one_of_class_9,
             test_data=digits[1], config=quick_config(validation_fraction=0.3))  # fmt: skip
    _refused("accumulate 4 does not divide the epoch's 19 batches",
             config=quick_config(accumulate=4), **d)  # fmt: skip
    _refused("give val_data or TrainConfig.validation_fraction, not both", val_data=digits[1],
             config=quick_config(validation_fraction=0.2), **d)  # fmt: skip
    _refused("computes its matrix products in float32", model=_Float32Net(),
             config=quick_config(precision="fp16"), **d)  # fmt: skip
    assert not compiled  # nothing got as far as initialising a state


class _Float32Net(__import__("flax.linen", fromlist=["Module"]).Module):
    """A module with a dtype field it ignores: it computes in float32 whatever it is told."""

    dtype: object = jnp.float32

    @__import__("flax.linen", fromlist=["compact"]).compact
    def __call__(self, x, train=False):
        import flax.linen as nn

        return nn.Dense(10)(x.reshape(x.shape[0], -1).astype(jnp.float32))


def test_a_resume_with_another_optimizer_loss_or_metric_names_it(tmp_path, digits):
    d = dict(train_data=digits[0], test_data=digits[1], log=lambda s: None)
    config = quick_config(epochs=1)
    training.fit(config, tmp_path, tx=optax.sgd(0.1), **d)
    again = dataclasses.replace(config, epochs=2)
    with pytest.raises(ValueError, match="optimizer: .* -> .*ScaleByAdamState"):
        training.fit(again, tmp_path, resume=True, tx=optax.adam(0.1), **d)
    with pytest.raises(ValueError, match="loss_fn: null -> .*per_example_cross_entropy"):
        training.fit(again, tmp_path, resume=True, tx=optax.sgd(0.1),
                     loss_fn=losses.per_example_cross_entropy, **d)  # fmt: skip
    with pytest.raises(ValueError, match="metric_fns"):
        training.fit(again, tmp_path, resume=True, tx=optax.sgd(0.1),
                     metrics={"error": lambda z, y: (z.argmax(-1) != y)}, **d)  # fmt: skip


def test_your_metric_is_summed_like_accuracy(digits):
    error = lambda logits, labels: (jnp.argmax(logits, -1) != labels).astype(jnp.float32)
    result = training.fit(quick_config(epochs=1), train_data=digits[0], test_data=digits[1],
                          metrics={"error": error}, log=lambda s: None)  # fmt: skip
    record = result.history[0]
    assert record["test_error"] == pytest.approx(1 - record["test_acc"], abs=1e-9)
    assert record["train_error"] == pytest.approx(1 - record["train_acc"], abs=1e-9)


def test_the_runner_takes_the_policies_and_exports(tmp_path):
    done = run_runner(
        ["--model", "mlp", "--epochs", "2", "--no-progress", "--workdir", "w",
         "--validation-fraction", "0.2", "--keep-best", "1", "--export", "m.export"], tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "m.export").stat().st_size > 1000
    bad = run_runner(["--model", "mlp", "--accumulate", "7", "--no-progress"], tmp_path)
    assert bad.returncode == 2 and "accumulate 7 does not divide" in bad.stderr


def test_a_loss_that_is_negative_is_not_taken_for_divergence(digits):
    # The guard's "1000 x the first loss" needs a positive first loss; -cross-entropy - 5 is
    # negative throughout (and grows in size as the model fits): only NaN/inf may stop it.
    shifted = lambda outputs, labels: losses.per_example_cross_entropy(outputs, labels) - 5.0
    result = training.fit(quick_config(epochs=2), train_data=digits[0], test_data=digits[1],
                          loss_fn=shifted, log=lambda s: None)  # fmt: skip
    assert result.history[-1]["train_loss"] < 0 and len(result.history) == 2
