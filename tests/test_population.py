"""Populations: every member is exactly the run it would be alone, and K-fold / search on them.

The references: ``training.fit`` run separately with member i's settings and subset (the engine
alone), a plain optax loop written here, and NumPy averaging of separately trained fold models.
"""

import json
import signal
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from helpers import subset
from processes import checkpoints_at_least, signal_when
from user_models import TinyResNet

from jaxnotes import data, optim, population, selection, training
from jaxnotes.models import get_model


def _alone(config, member, train, test, model=None):
    """The reference: ``fit`` with member's settings on its subset, nothing shared."""
    overrides = {
        name: value
        for name, value in member.settings(config).items()
        if name != "dropout" and value is not None
    }
    kwargs = dict(config.model_kwargs)
    if member.dropout is not None:
        kwargs["dropout"] = member.dropout
    alone = training.TrainConfig(
        **{**_fields(config), **overrides, "seed": member.seed, "model_kwargs": kwargs}
    )
    part = train if member.train_indices is None else subset(train, member.train_indices)
    return training.fit(alone, model=model, train_data=part, test_data=test, log=lambda s: None)


def _fields(config):
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _assert_member_equals(result, index, alone):
    ours = result.member_state(index)
    for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(alone.state.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(
        jax.tree.leaves(ours.model_state), jax.tree.leaves(alone.state.model_state), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for ours_epoch, alone_epoch in zip(result.history[index], alone.history, strict=True):
        np.testing.assert_allclose(ours_epoch["train_loss"], alone_epoch["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(ours_epoch["val_loss"], alone_epoch["test_loss"], rtol=1e-5)
        assert ours_epoch["val_acc"] == pytest.approx(alone_epoch["test_acc"], abs=1e-9)


def test_members_equal_separate_fits_with_dropout_rates_and_subsets(digits):
    train, test = digits
    config = training.TrainConfig(
        model="mlp", epochs=2, batch_size=64, learning_rate=0.1, schedule="cosine", progress=False
    )
    rng = np.random.default_rng(0)
    members = [
        population.Member(seed=3, dropout=0.2),  # all of the data
        population.Member(
            seed=1,
            learning_rate=0.05,
            weight_decay=1e-3,
            momentum=0.9,
            dropout=0.5,
            train_indices=np.sort(rng.choice(len(train), 900, replace=False)),
        ),
        population.Member(  # 958 examples: 14 batches, one fewer than the others' 15+
            seed=1,
            learning_rate=0.2,
            momentum=0.5,
            dropout=0.0,
            train_indices=np.sort(rng.choice(len(train), 958, replace=False)),
        ),
    ]
    result = population.fit_population(
        config, members, train_data=train, eval_data=test, log=lambda s: None
    )
    assert result.summary["compiled_programs"] == 3  # init, the population step, evaluation
    for i, member in enumerate(members):
        _assert_member_equals(result, i, _alone(config, member, train, test))


def test_a_member_is_bit_identical_whatever_the_other_members_are(digits):
    # The same compiled program (same P, same shapes, the settings traced): member 0's numbers
    # may not depend on its partner's rate, seed or subset. Bit-equality is claimed only here,
    # where the program is the same one.
    train, test = digits
    config = training.TrainConfig(
        epochs=2, batch_size=32, optimizer="momentum", learning_rate=0.05, progress=False
    )
    first = population.Member(seed=0, train_indices=np.arange(0, 1000))
    partners = [
        population.Member(seed=4, learning_rate=0.02, train_indices=np.arange(200, 1257)),
        population.Member(seed=9, learning_rate=0.3, train_indices=np.arange(0, 600)),
    ]
    results = [
        population.fit_population(
            config,
            [first, partner],
            model=TinyResNet(),
            train_data=train,
            eval_data=test,
            log=lambda s: None,
        )  # fmt: skip
        for partner in partners
    ]
    a, b = (r.member_state(0) for r in results)
    assert "batch_stats" in a.model_state
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert results[0].history[0] == results[1].history[0]
    assert results[0].history[1] != results[1].history[1]  # the partners did differ


# A population and a separate fit are two differently compiled programs: on another CPU, or
# with another XLA codegen, their last bits differ, and momentum + BatchNorm grow that over the
# steps (the conv biases before a BatchNorm get gradients of pure float noise). The noise floor,
# measured on the same run compiled two other ways (``steps_per_dispatch`` 2 instead of 1, and
# XLA_FLAGS=--xla_cpu_enable_fast_math=true), on an Intel Xeon and an AMD EPYC host: validation
# loss within 1.3e-3 (relative 8e-4), accuracy within 1 of 540 examples, test predictions
# agreeing on >= 99.6%. The bounds below are about 4x those.
LOSS_RTOL, ACC_EXAMPLES, AGREEMENT = 3e-3, 3, 0.985


def test_members_with_batchnorm_state_match_separate_fits_to_the_noise_floor(digits):
    train, test = digits
    config = training.TrainConfig(
        epochs=2, batch_size=32, optimizer="momentum", learning_rate=0.05, progress=False
    )
    members = [
        population.Member(seed=0, train_indices=np.arange(0, 1000)),
        population.Member(seed=4, learning_rate=0.02, train_indices=np.arange(200, 1257)),
    ]
    result = population.fit_population(
        config, members, model=TinyResNet(), train_data=train, eval_data=test, log=lambda s: None
    )
    probabilities = result.predict(test.images)
    for i, member in enumerate(members):
        alone = _alone(config, member, train, test, TinyResNet())
        for ours, theirs in zip(result.history[i], alone.history, strict=True):
            assert ours["val_loss"] == pytest.approx(theirs["test_loss"], rel=LOSS_RTOL)
            assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=LOSS_RTOL)
            assert abs(ours["val_acc"] - theirs["test_acc"]) * len(test) <= ACC_EXAMPLES
        agree = np.mean(probabilities[i].argmax(-1) == alone.predict(test.images).argmax(-1))
        assert agree >= AGREEMENT


def test_members_at_once_follows_the_backend_and_the_devices():
    # On CPU the largest divisor of P up to 4 (cache-bound there); on an accelerator every member
    # at once; on several devices each device's share.
    assert [population.members_at_once(p, 1, "cpu") for p in (1, 4, 5, 6, 8, 64)] == [
        1, 4, 1, 3, 4, 4,
    ]  # fmt: skip
    assert [population.members_at_once(p, 1, "gpu") for p in (1, 5, 64)] == [1, 5, 64]
    assert population.members_at_once(64, 1, "tpu") == 64
    assert population.members_at_once(8, 4, "cpu") == 2


def test_all_members_at_once_as_on_an_accelerator_equal_separate_fits(digits, monkeypatch):
    # The accelerators' path (one vmap, no lax.map over chunks) run here by naming no CPU limit.
    monkeypatch.setattr(population, "CHUNK", {})
    train, test = digits
    config = training.TrainConfig(
        model="mlp", epochs=1, batch_size=64, learning_rate=0.1, progress=False
    )
    members = [population.Member(seed=s, learning_rate=0.05 * (1 + s)) for s in range(6)]
    result = population.fit_population(
        config, members, train_data=train, eval_data=test, log=lambda s: None
    )
    for i in (0, 5):
        _assert_member_equals(result, i, _alone(config, members[i], train, test))


def test_one_program_whatever_the_population_size(digits):
    train, test = digits
    config = training.TrainConfig(model="mlp", epochs=1, batch_size=128, progress=False)
    for size in (1, 4, 7):
        members = [population.Member(seed=s, learning_rate=0.01 * (s + 1)) for s in range(size)]
        result = population.fit_population(
            config, members, train_data=train, eval_data=test, log=lambda s: None
        )
        names = set(result.summary["profile"]["compiles"]["by_function"])
        assert result.summary["compiled_programs"] <= 3 and len(names) <= 3, names


def test_a_diverging_member_is_marked_and_the_others_train_on(digits):
    train, test = digits
    config = training.TrainConfig(
        model="mlp", epochs=2, batch_size=64, model_kwargs={"dropout": 0.0}, progress=False
    )
    members = [population.Member(learning_rate=0.1), population.Member(learning_rate=50.0)]
    result = population.fit_population(
        config, members, train_data=train, eval_data=test, log=lambda s: None
    )
    assert not result.rows[0]["diverged"] and result.rows[0]["val_acc"] > 0.7
    assert result.rows[1]["diverged"] and result.rows[1]["bad_step"] is not None


@pytest.fixture(scope="module")
def kfold(digits):
    config = training.TrainConfig(model="mlp", epochs=2, batch_size=64, progress=False)
    return selection.k_fold_cv("mlp", digits[0], 4, config=config, seed=1)


def test_k_fold_folds_equal_separate_fits_and_the_ensemble_uses_every_fold(digits, kfold):
    train, _ = digits
    config = training.TrainConfig(model="mlp", epochs=2, batch_size=64, progress=False)
    probabilities = []
    for i, (train_idx, val_idx) in enumerate(kfold.folds):
        alone = _alone(
            config, population.Member(train_indices=train_idx), train, subset(train, val_idx)
        )
        np.testing.assert_allclose(
            kfold.metrics["val_acc"][i], alone.summary["test_acc"], atol=1e-9
        )
        np.testing.assert_allclose(
            kfold.metrics["val_loss"][i], alone.summary["test_loss"], rtol=1e-5
        )
        model = get_model("mlp")
        logits = model.apply({"params": alone.state.params}, train.images[:200])
        probabilities.append(np.asarray(jax.nn.softmax(logits, -1)))
    ensemble = selection.ensemble_predict(kfold, train.images[:200])
    np.testing.assert_allclose(ensemble, np.mean(probabilities, axis=0), atol=1e-5)
    # the d2l JAX K-fold's bug: predicting with the last fold's parameters k times
    assert not np.allclose(ensemble, probabilities[-1], atol=1e-3)
    assert np.allclose(kfold.std["val_acc"], np.std(kfold.metrics["val_acc"]))


def test_a_search_trial_equals_a_plain_optax_loop(digits):
    # The reference written out: flax init, the epoch permutation of the training part, SGD
    # with decoupled decay on the kernels only, cross-entropy; no engine code.
    train, _ = digits
    config = training.TrainConfig(
        model="mlp", epochs=2, batch_size=64, model_kwargs={"dropout": 0.0}, progress=False
    )
    space = {"learning_rate": ("log", 0.05, 0.5), "weight_decay": ("log", 1e-4, 1e-2)}
    rows = selection.random_search("mlp", train, space, 3, config=config, seed=2)
    trial = next(r for r in rows if r["trial"] == 1)
    train_idx, val_idx = data.holdout_split(len(train), 0.3, 2)
    x, y = np.asarray(train.images, np.float32), train.labels
    model = get_model("mlp", dropout=0.0)
    params = model.init(jax.random.fold_in(jax.random.key(config.seed), 0), x[:1], train=False)[
        "params"
    ]
    lr, wd = trial["learning_rate"], trial["weight_decay"]

    def loss(p, xb, yb):
        logits = model.apply({"params": p}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    grad = jax.jit(jax.grad(loss))
    for epoch in range(2):
        order = train_idx[data.epoch_permutation(len(train_idx), config.seed, epoch)]
        for b in range(len(train_idx) // 64):
            batch = order[b * 64 : (b + 1) * 64]
            g = grad(params, x[batch], y[batch])
            params = jax.tree.map(
                lambda w, gw: w - lr * (gw + (wd * w if w.ndim > 1 else 0.0)), params, g
            )
    logits = np.asarray(model.apply({"params": params}, x[val_idx]))
    expected_acc = float(np.mean(logits.argmax(-1) == y[val_idx]))
    log_p = logits - logits.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    expected_loss = float(-np.mean(log_p[np.arange(len(val_idx)), y[val_idx]]))
    assert trial["val_acc"] == pytest.approx(expected_acc, abs=1e-9)
    assert trial["val_loss"] == pytest.approx(expected_loss, rel=1e-4)


def test_search_rows_are_sorted_with_the_diverged_last(digits):
    config = training.TrainConfig(
        model="mlp", epochs=1, batch_size=64, model_kwargs={"dropout": 0.0}, progress=False
    )
    space = {"learning_rate": [0.1, 1e3], "weight_decay": 0.0}
    rows = selection.random_search("mlp", digits[0], space, 6, config=config, seed=0)
    flags = [r["diverged"] for r in rows]
    assert any(flags) and not all(flags) and flags == sorted(flags)  # all finite ones first
    finite = [r["val_acc"] for r in rows if not r["diverged"]]
    assert finite == sorted(finite, reverse=True)
    assert all(r["learning_rate"] == 1e3 for r in rows if r["diverged"])


def test_width_is_searched_as_one_population_per_width(digits):
    config = training.TrainConfig(model="mlp", epochs=1, batch_size=64, progress=False)
    rows = selection.random_search(
        "mlp", digits[0], {"learning_rate": 0.1, "width": [16, 48]}, 6, config=config, seed=5
    )
    assert {r["width"] for r in rows} == {16, 48}
    with pytest.raises(ValueError, match="'width' applies to the chapter's MLP"):
        selection.random_search("lenet", digits[0], {"width": [8]}, 2, config=config)


@pytest.mark.parametrize(
    "space, match",
    [
        ({}, "search space is empty"),
        ({"lr": ("log", 0.1, 1)}, r"unknown parameter\(s\) \['lr'\]"),
        ({"learning_rate": ("log", 0.0, 0.1)}, "low must be > 0"),
        ({"learning_rate": ("uniform", -0.5, 0.1)}, "learning_rate must be a finite number > 0"),
        ({"dropout": ("uniform", 0.5, 1.5)}, r"dropout must be in \[0, 1\)"),
        ({"momentum": [0.5, 1.0]}, r"momentum must be in \[0, 1\)"),
        ({"width": [16, 2.5]}, "width must be a positive integer"),
        ({"weight_decay": ("normal", 1, 2)}, "must be \\('log', low, high\\)"),
        ({"learning_rate": []}, "empty list of choices"),
    ],
)
def test_bad_search_spaces_name_the_rule(space, match):
    with pytest.raises(ValueError, match=match):
        selection.sample_space(space, 20, seed=0)


def test_sample_space_is_reproducible_and_in_range():
    a = selection.sample_space(selection.DEFAULT_SPACE, 500, seed=7)
    b = selection.sample_space(selection.DEFAULT_SPACE, 500, seed=7)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    lr = a["learning_rate"]
    assert lr.min() >= 1e-3 and lr.max() <= 1.0
    # log-uniform: the log of the samples is uniform, so each decade holds about a third
    decades = np.histogram(np.log10(lr), bins=[-3, -2, -1, 0])[0] / len(lr)
    np.testing.assert_allclose(decades, 1 / 3, atol=0.07)


def test_runner_k_fold_and_search_write_their_tables(tmp_path):
    def run(*args):
        done = subprocess.run(
            [sys.executable, "-m", "train", *args, "--epochs", "2", "--no-progress"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout

    summary, out = run("--model", "mlp", "--k-fold", "3", "--workdir", "kf")
    folds = [
        json.loads(line) for line in (tmp_path / "kf" / "folds.jsonl").read_text().splitlines()
    ]
    assert len(folds) == 3 and summary["k_fold"] == 3
    assert summary["val_acc"] == pytest.approx(np.mean([f["val_acc"] for f in folds]))
    assert (tmp_path / "kf" / "folds.png").stat().st_size > 1000
    assert summary["test_acc"] is None and "fold" in out
    summary, _ = run(
        "--model",
        "mlp",
        "--search",
        "4",
        "--search-space",
        "lr=0.01:0.5,dropout=0:0.5",
        "--workdir",
        "s",
    )
    trials = [
        json.loads(line) for line in (tmp_path / "s" / "trials.jsonl").read_text().splitlines()
    ]
    assert len(trials) == 4 and summary["best"] == trials[0]
    assert (tmp_path / "s" / "search.png").stat().st_size > 1000


K_FOLD_RUN = ["-m", "train", "--model", "mlp", "--k-fold", "3", "--epochs", "4", "--no-progress"]


def _runner(tmp_path, *args, **kwargs):
    return subprocess.run(
        [sys.executable, *K_FOLD_RUN, *args], cwd=tmp_path, capture_output=True, text=True,
        timeout=600, **kwargs,
    )  # fmt: skip


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def straight_k_fold(tmp_path_factory):
    """The uninterrupted K-fold run the interrupted ones must end equal to."""
    tmp_path = tmp_path_factory.mktemp("straight")
    done = _runner(tmp_path, "--workdir", "straight")
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp_path / "straight"


def test_a_killed_population_resumes_to_the_uninterrupted_result(tmp_path, straight_k_fold):
    command = [sys.executable, *K_FOLD_RUN, "--workdir", "crashed"]
    signal_when(command, checkpoints_at_least(tmp_path / "crashed" / "checkpoints", 2),
                cwd=tmp_path).wait()  # fmt: skip
    resumed = _runner(tmp_path, "--workdir", "crashed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step" in resumed.stdout
    assert _rows(straight_k_fold / "folds.jsonl") == _rows(tmp_path / "crashed" / "folds.jsonl")


def test_ctrl_c_stops_a_population_in_one_line_and_it_resumes_exactly(tmp_path, straight_k_fold):
    command = [sys.executable, *K_FOLD_RUN, "--workdir", "stopped"]
    process = signal_when(
        command, checkpoints_at_least(tmp_path / "stopped" / "checkpoints", 1), signal.SIGINT,
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("python -m train: interrupted at step "), stderr[-2000:]
    assert "--resume continues from checkpoint" in lines[-1] and "Traceback" not in stderr
    assert not (tmp_path / "stopped" / "summary.json").exists()  # the run did not go on
    resumed = _runner(tmp_path, "--workdir", "stopped", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for ours, theirs in zip(
        _rows(tmp_path / "stopped" / "folds.jsonl"), _rows(straight_k_fold / "folds.jsonl"),
        strict=True,
    ):  # fmt: skip
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            assert ours[key] == (
                pytest.approx(value, rel=1e-6) if isinstance(value, float) else value
            )


def test_overwrite_with_a_setting_that_fails_leaves_the_finished_population_intact(
    tmp_path, straight_k_fold
):
    import hashlib
    import shutil

    shutil.copytree(straight_k_fold, tmp_path / "kf")
    digests = lambda: {
        str(p.relative_to(tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((tmp_path / "kf").rglob("*")) if p.is_file() and p.name != ".lock"
    }  # fmt: skip
    before = digests()
    # LeNet cannot take 2x2 inputs: the population's own model check refuses it, after the
    # runner's checks passed and before the folder's old run is touched.
    failed = _runner(
        tmp_path, "--workdir", "kf", "--overwrite", "--model", "lenet", "--resize", "2"
    )
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    assert "lenet" in failed.stderr.lower() and len(failed.stderr.strip().splitlines()) <= 2
    assert digests() == before


def test_bad_members_are_refused_before_training(digits):
    train, test = digits
    config = training.TrainConfig(model="mlp", epochs=1, batch_size=64, progress=False)
    cases = [
        ([], "at least one member"),
        (
            [population.Member(learning_rate=-1.0)],
            "member 0: learning_rate must be a finite number > 0",
        ),
        ([population.Member(dropout=1.0)], r"dropout must be in \[0, 1\)"),
        ([population.Member(train_indices=np.array([0, 5000]))], "outside the data set's"),
        ([population.Member(train_indices=np.arange(10))], "fewer than one batch of 64"),
        (["not a member"], "must be a jaxnotes.population.Member"),
    ]
    for members, match in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            population.fit_population(config, members, train_data=train, eval_data=test)
    with pytest.raises(ValueError, match="has no 'dropout' field"):
        population.fit_population(
            training.TrainConfig(model="lenet", epochs=1, batch_size=64, resize=28),
            [population.Member(dropout=0.3)],
            train_data=train,
            eval_data=test,
        )


def test_optim_chain_with_zero_momentum_and_decay_is_the_plain_chain():
    # A population always carries the momentum and decay transforms; at 0 they change nothing.
    params = {"w": np.ones((3, 2), np.float32), "b": np.ones(2, np.float32)}
    grads = {"w": np.full((3, 2), 0.5, np.float32), "b": np.full(2, 0.25, np.float32)}
    plain = optim.make_optimizer("sgd", 0.1)
    full = optim.chain("sgd", 0.1, 0.0, 0.0)
    a, _ = plain.update(grads, plain.init(params), params)
    b, _ = full.update(grads, full.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_a_tx_factory_varies_each_members_rates_like_separate_fits_with_its_optimizer(digits):
    # optax.inject_hyperparams(optax.adamw) as the population's optimizer: each member's
    # learning rate and weight decay reach it, as each separate fit's own optax.adamw.
    train, test = digits
    config = training.TrainConfig(
        model="mlp", epochs=2, batch_size=64, model_kwargs={"dropout": 0.0}, progress=False
    )
    members = [
        population.Member(seed=0, learning_rate=1e-3, weight_decay=1e-2),
        population.Member(seed=1, learning_rate=3e-3, weight_decay=1e-4),
    ]
    factory = optax.inject_hyperparams(optax.adamw)
    result = population.fit_population(
        config, members, train_data=train, eval_data=test, tx=factory, log=lambda s: None
    )
    for i, member in enumerate(members):
        alone = training.fit(
            training.TrainConfig(**{**_fields(config), "seed": member.seed}), train_data=train,
            test_data=test, tx=optax.adamw(member.learning_rate, weight_decay=member.weight_decay),
            log=lambda s: None,
        )  # fmt: skip
        # Two programs: Adam turns a last-bit difference of a near-zero gradient into a step
        # of up to 2 x lr (measured: 1 weight of 65,536 off by 1.7e-5, on an Intel Xeon);
        # every other weight agrees to 1e-5 and the validation loss to 1e-4.
        ours = np.concatenate([np.ravel(a) for a in jax.tree.leaves(result.member_state(i).params)])
        theirs = np.concatenate([np.ravel(a) for a in jax.tree.leaves(alone.state.params)])
        assert np.mean(~np.isclose(ours, theirs, rtol=1e-4, atol=1e-5)) < 1e-3
        assert result.history[i][-1]["val_loss"] == pytest.approx(
            alone.summary["test_loss"], rel=1e-4
        )
    with pytest.raises(ValueError, match="sets momentum, which the tx factory does not take"):
        population.fit_population(config, [population.Member(momentum=0.5)], train_data=train,
                                  eval_data=test, tx=factory)  # fmt: skip
    with pytest.raises(ValueError, match="ema_decay: a population .* does not take"):
        population.fit_population(training.TrainConfig(model="mlp", ema_decay=0.9),
                                  members, train_data=train, eval_data=test)  # fmt: skip
