"""Weight decay: decoupled vs coupled against hand-written gradient descent; biases never decay."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnotes import optim


def _problem():
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(32, 5)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(32, 3)), jnp.float32)
    params = {
        "kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
        "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
    }

    def loss(p):
        return jnp.mean((X @ p["kernel"] + p["bias"] - y) ** 2)

    return params, loss


def _run(tx, params, loss, steps=20):
    state = tx.init(params)
    trajectory = []
    for _ in range(steps):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory


def test_decoupled_sgd_equals_gradient_descent_on_l2_penalised_loss():
    params, loss = _problem()
    lr, wd = 0.05, 0.3
    ours = _run(optim.make_optimizer("sgd", lr, weight_decay=wd), params, loss)

    # Reference: plain gradient descent on loss + wd/2 ||kernel||^2, written out by hand.
    def penalised(p):
        return loss(p) + wd / 2 * jnp.sum(p["kernel"] ** 2)

    reference = params
    for step in range(20):
        grads = jax.grad(penalised)(reference)
        reference = {k: reference[k] - lr * grads[k] for k in reference}
        for name in reference:
            np.testing.assert_allclose(ours[step][name], reference[name], atol=1e-6, rtol=0)


def test_coupled_sgd_is_the_same_trajectory():
    params, loss = _problem()
    decoupled = _run(optim.make_optimizer("sgd", 0.05, weight_decay=0.3), params, loss)
    coupled = _run(
        optim.make_optimizer("sgd", 0.05, weight_decay=0.3, decoupled=False), params, loss
    )
    np.testing.assert_allclose(decoupled[-1]["kernel"], coupled[-1]["kernel"], atol=1e-6)


def test_adam_coupled_is_l2_before_adam_and_decoupled_is_adamw():
    params, loss = _problem()
    decoupled = _run(optim.make_optimizer("adam", 0.05, weight_decay=0.3), params, loss)
    coupled = _run(
        optim.make_optimizer("adam", 0.05, weight_decay=0.3, decoupled=False), params, loss
    )
    gap = np.abs(np.asarray(decoupled[-1]["kernel"] - coupled[-1]["kernel"])).max()
    assert gap > 1e-2
    # Coupled Adam is the L2 gradient added before Adam's scaling, built here from optax's parts
    # (decay masked to the kernels, as ours).
    reference = optax.chain(optax.add_decayed_weights(0.3, mask=optim.decay_mask), optax.adam(0.05))
    expected = _run(reference, params, loss)
    for ours, theirs in zip(coupled, expected, strict=True):
        for name in ours:
            np.testing.assert_allclose(ours[name], theirs[name], atol=1e-6, rtol=0)
    # and decoupled Adam is optax.adamw (which multiplies the decay by the learning rate)
    adamw = _run(optax.adamw(0.05, weight_decay=0.3, mask=optim.decay_mask), params, loss)
    np.testing.assert_allclose(decoupled[-1]["kernel"], adamw[-1]["kernel"], atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("decoupled", [True, False])
def test_biases_never_decay(name, decoupled):
    params = {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((4,)), "scale": jnp.ones((4,))}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    tx = optim.make_optimizer(name, 0.1, weight_decay=0.5, decoupled=decoupled)
    state = tx.init(params)
    current = params
    for _ in range(5):
        updates, state = tx.update(zero_grads, state, current)
        current = optax.apply_updates(current, updates)
    np.testing.assert_array_equal(current["bias"], params["bias"])
    np.testing.assert_array_equal(current["scale"], params["scale"])
    assert float(current["kernel"][0, 0]) < 1.0
    if name == "sgd":
        # with zero gradients, w <- w (1 - lr wd) each step
        np.testing.assert_allclose(current["kernel"], (1 - 0.1 * 0.5) ** 5, rtol=1e-6)


def test_momentum_matches_the_heavy_ball_formula():
    params, loss = _problem()
    ours = _run(optim.make_optimizer("momentum", 0.01, momentum=0.9), params, loss, steps=10)
    w, v = params, jax.tree.map(jnp.zeros_like, params)
    for _ in range(10):
        g = jax.grad(loss)(w)
        v = {k: 0.9 * v[k] + g[k] for k in w}
        w = {k: w[k] - 0.01 * v[k] for k in w}
    np.testing.assert_allclose(ours[-1]["kernel"], w["kernel"], atol=1e-6)


def test_learning_rate_schedule_is_used():
    schedule = optax.linear_schedule(1.0, 0.0, 4)
    tx = optim.make_optimizer("sgd", schedule)
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    steps = []
    for _ in range(4):
        updates, state = tx.update({"w": jnp.ones(())}, state, params)
        steps.append(float(updates["w"]))
    np.testing.assert_allclose(steps, [-1.0, -0.75, -0.5, -0.25])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "rmsprop", "learning_rate": 0.1}, "unknown optimizer"),
        ({"name": "sgd", "learning_rate": 0.0}, "learning_rate"),
        ({"name": "sgd", "learning_rate": -1.0}, "learning_rate"),
        ({"name": "sgd", "learning_rate": 0.1, "momentum": 1.0}, "momentum"),
        ({"name": "sgd", "learning_rate": 0.1, "weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optim.make_optimizer(**kwargs)
