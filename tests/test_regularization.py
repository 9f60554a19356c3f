"""Weight decay and dropout demos: the book's relations, and the two implementations agree.

The weight-decay runs are checked against plain NumPy SGD on the same batches.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnotes import regularization as reg
from jaxnotes.models import get_model
from jaxnotes.small_models import epoch_order


@pytest.fixture(scope="module")
def sweep():
    return reg.weight_decay_sweep(method="scratch", seed=0)


def test_lambda_zero_overfits_and_lambda_three_closes_the_gap(sweep):
    lambdas = list(sweep["lambdas"])
    zero, three = lambdas.index(0.0), lambdas.index(3.0)
    train, val, norm = sweep["train_loss"], sweep["val_loss"], sweep["w_norm"]
    # no decay: 200 weights interpolate 20 points; the validation loss stays huge
    assert train[zero] < 1e-3 * val[zero] and val[zero] > 10
    # lambda = 3: ||w|| shrinks by far, the validation loss falls and the gap nearly closes
    assert norm[three] < 0.1 * norm[zero]
    assert val[three] < 0.01 * val[zero]
    assert val[three] - train[three] < 0.01 * (val[zero] - train[zero])
    assert np.all(np.diff(norm) <= 1e-4)  # stronger decay, smaller weights
    assert sweep["train_curve"].shape == (6, 100) and sweep["val_curve"].shape == (6, 100)


def test_scratch_penalty_and_decoupled_optax_decay_agree(sweep):
    optax_sweep = reg.weight_decay_sweep(method="optax", seed=0)
    np.testing.assert_allclose(optax_sweep["w"], sweep["w"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(optax_sweep["val_loss"], sweep["val_loss"], rtol=1e-4)
    # and jaxnotes.optim.make_optimizer's own chain (one compiled run per lambda) agrees too
    static = reg.weight_decay_sweep((3.0,), method="optax", seed=0, vectorize=False)
    np.testing.assert_allclose(static["w"][0], sweep["w"][-1], rtol=1e-4, atol=1e-5)


def test_weight_decay_matches_numpy_sgd(sweep):
    """The book's loop in NumPy float64: minibatch SGD on (y_hat - y)^2 / 2 + lambda ||w||^2 / 2."""
    data = reg.weight_decay_data(seed=0)
    key = jax.random.key(0)
    n, d = data.X_train.shape
    n_total = n + len(data.y_val)
    orders = [
        np.asarray(epoch_order(jax.random.fold_in(jax.random.fold_in(key, 1), e),
                               jnp.arange(n), jnp.ones(n), n_total))
        for e in range(100)
    ]  # fmt: skip
    w0 = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), (d, 1)), np.float64)[:, 0]
    X, y = data.X_train.astype(np.float64), data.y_train.astype(np.float64)
    for row, lambd in enumerate(sweep["lambdas"]):
        w, b = w0.copy(), 0.0
        for order in orders:
            for batch in order.reshape(-1, 5):
                residual = X[batch] @ w + b - y[batch]
                w, b = (
                    w - 0.003 * (X[batch].T @ residual / 5 + lambd * w),
                    b - 0.003 * residual.mean(),
                )
        np.testing.assert_allclose(sweep["w"][row], w, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(sweep["b"][row], b, atol=1e-4)
        val = np.mean((data.X_val @ w + b - data.y_val) ** 2 / 2)
        np.testing.assert_allclose(sweep["val_loss"][row], val, rtol=1e-3)


def test_weight_decay_bad_input():
    with pytest.raises(ValueError, match="lambdas"):
        reg.weight_decay_sweep((0.0, -1.0))
    with pytest.raises(ValueError, match="method"):
        reg.weight_decay_sweep(method="adam")


def test_plot_weight_decay(sweep, tmp_path):
    fig = reg.plot_weight_decay(sweep, tmp_path / "wd.png")
    assert len(fig.axes) == 2 and (tmp_path / "wd.png").exists()


@pytest.fixture(scope="module")
def dropout_runs():
    return reg.dropout_demo(seed=0)


def test_dropout_shrinks_the_train_test_gap(dropout_runs):
    none = dropout_runs["none"]
    assert none["train_acc"] > 0.98  # the over-fitting setting: the noisy labels memorised
    for variant in ("scratch", "flax"):
        run = dropout_runs[variant]
        assert run["gap"] < none["gap"] - 0.08, (variant, run["gap"], none["gap"])
        assert run["test_acc"] > none["test_acc"]
        assert run["history"]["test_acc"].shape == (100,)


def test_plot_dropout(dropout_runs, tmp_path):
    fig = reg.plot_dropout(dropout_runs, tmp_path / "dropout.png")
    assert len(fig.axes) == 3 and (tmp_path / "dropout.png").exists()


def test_scratch_forward_is_the_zoo_mlp_at_inference():
    model = get_model("mlp", 10, hidden=(256, 256), dropout=(0.5, 0.5))
    x = jax.random.uniform(jax.random.key(1), (7, 8, 8, 1))
    params = model.init(jax.random.key(2), x)["params"]
    expected = model.apply({"params": params}, x, train=False)
    np.testing.assert_allclose(reg.scratch_mlp_apply(params, x, (0.5, 0.5)), expected, atol=1e-5)
    # training mode: each key its own mask, the same key the same output
    a = reg.scratch_mlp_apply(params, x, (0.5, 0.5), jax.random.key(3))
    b = reg.scratch_mlp_apply(params, x, (0.5, 0.5), jax.random.key(3))
    c = reg.scratch_mlp_apply(params, x, (0.5, 0.5), jax.random.key(4))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_dropout_demo_bad_input():
    with pytest.raises(ValueError, match="variants"):
        reg.dropout_demo(variants=("gaussian",))
    with pytest.raises(ValueError, match="label_noise"):
        reg.dropout_demo(label_noise=1.5)
