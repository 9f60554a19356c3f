"""Model selection: polynomial under/over-fitting, vmapped K-fold and random search, the demos.

References are independent of the code under test: NumPy least squares and forward passes,
trainings run one at a time, scikit-learn's recall.
"""

import jax
import numpy as np
import pytest

from jaxnotes import data as jdata
from jaxnotes import selection
from jaxnotes.selection import TrainSpec

# --- polynomial ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def poly():
    return selection.polynomial_demo(seed=0)


def test_polynomial_data_is_the_books_formula():
    data = selection.polynomial_data(seed=3)
    x = data.features[:, 1].astype(np.float64)
    np.testing.assert_allclose(data.features[:, 0], 1.0)
    np.testing.assert_allclose(data.features[:, 3], x**3 / 6, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.features[:, 5], x**5 / 120, rtol=1e-5, atol=1e-6)
    clean = 5 + 1.2 * x - 3.4 * x**2 / 2 + 5.6 * x**3 / 6
    noise = data.labels - clean
    assert data.features.shape == (200, 20) and data.n_train == 100
    assert 0.07 < noise.std() < 0.13 and abs(noise.mean()) < 0.03


def test_polynomial_normal_fit_recovers_the_weights(poly):
    normal = poly["normal (4 features)"]
    np.testing.assert_allclose(normal.weights, selection.TRUE_POLY_WEIGHTS, atol=0.15)
    # and agrees with the least-squares solution computed by NumPy on the same data
    data = selection.polynomial_data(seed=0)
    lstsq = np.linalg.lstsq(data.features[:100, :4], data.labels[:100], rcond=None)[0]
    np.testing.assert_allclose(normal.weights, lstsq, atol=0.15)
    assert normal.train_loss[-1] < 0.05 and normal.test_loss[-1] < 0.05


def test_polynomial_underfit_and_overfit_relations(poly):
    normal = poly["normal (4 features)"]
    under = poly["underfit (2 features)"]
    over = poly["overfit (20 features, 10 points)"]
    # a line cannot follow a cubic: both losses stay high, far above the normal fit's
    assert under.train_loss[-1] > 1.0 and under.test_loss[-1] > 1.0
    assert under.train_loss[-1] > 20 * normal.train_loss[-1]
    assert under.test_loss[-1] > 20 * normal.test_loss[-1]
    # 20 features, 10 points: the training loss ends clearly below the test loss
    assert over.train_loss[-1] * 2 < over.test_loss[-1]
    assert len(over.train_loss) == 1500 and len(normal.test_loss) == 400


def test_polynomial_fit_is_reproducible_and_checks_input(poly):
    again = selection.polynomial_fit(4, seed=0)
    np.testing.assert_array_equal(again.weights, poly["normal (4 features)"].weights)
    with pytest.raises(ValueError, match="num_features"):
        selection.polynomial_fit(21)
    with pytest.raises(ValueError, match="learning_rate"):
        selection.polynomial_fit(4, learning_rate=0.0)


def test_plot_polynomial_fits(poly, tmp_path):
    fig = selection.plot_polynomial_fits(poly, tmp_path / "poly.png")
    assert len(fig.axes) == 3 and (tmp_path / "poly.png").stat().st_size > 0


# --- K-fold --------------------------------------------------------------------------------------

# dropout on, so per-fold keys matter; 150 examples in 4 folds: sizes 38, 38, 37, 37 (padding)
SPEC = TrainSpec(hidden=(32,), dropout=0.2, learning_rate=0.1, epochs=3, batch_size=16)


@pytest.fixture(scope="module")
def digits_small():
    train = jdata.load("digits", "train")
    return train.images[:150], train.labels[:150]


@pytest.fixture(scope="module")
def kfold(digits_small):
    X, y = digits_small
    return selection.k_fold_cv(X, y, 4, spec=SPEC, seed=1)


def _numpy_logits(params, X):
    """The zoo MLP (one hidden layer) in NumPy, inference mode."""
    h = np.maximum(
        X.reshape(len(X), -1) @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"], 0
    )
    return h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def test_k_fold_equals_k_sequential_trainings(digits_small, kfold):
    X, y = digits_small
    assert sorted(len(va) for _, va in kfold.folds) == [37, 37, 38, 38]
    for i, (train_idx, val_idx) in enumerate(kfold.folds):
        alone = selection.train_on_indices(
            X, y, train_idx, val_idx, key=selection.fold_key(1, i), spec=SPEC, num_classes=10
        )
        leaves = zip(
            jax.tree.leaves(alone.params), jax.tree.leaves(kfold.fold_params(i)), strict=True
        )
        for a, b in leaves:
            np.testing.assert_allclose(a, b, atol=1e-5)
        for name, value in alone.metrics.items():
            np.testing.assert_allclose(kfold.metrics[name][i], value, atol=1e-5)
        for name, curve in alone.history.items():
            np.testing.assert_allclose(kfold.history[name][i], curve, atol=1e-5)


def test_k_fold_metrics_match_a_numpy_evaluation(digits_small, kfold):
    X, y = digits_small
    for i, (train_idx, val_idx) in enumerate(kfold.folds):
        params = jax.tree.map(np.asarray, kfold.fold_params(i))
        for name, idx in (("train_acc", train_idx), ("val_acc", val_idx)):
            acc = np.mean(_numpy_logits(params, X[idx]).argmax(-1) == y[idx])
            np.testing.assert_allclose(kfold.metrics[name][i], acc, atol=1e-6)
    np.testing.assert_allclose(kfold.mean["val_acc"], np.mean(kfold.metrics["val_acc"]))
    np.testing.assert_allclose(kfold.std["val_loss"], np.std(kfold.metrics["val_loss"]))
    assert kfold.history["val_acc"].shape == (4, SPEC.epochs)
    assert kfold.mean["val_acc"] > 0.5  # 3 epochs on 112 images: learning, not chance (0.1)


def test_ensemble_averages_each_folds_own_model(kfold):
    X = jdata.load("digits", "test").images[:60]
    ensemble = selection.ensemble_predict(kfold, X)
    singles = [
        _softmax(_numpy_logits(jax.tree.map(np.asarray, kfold.fold_params(i)), X))
        for i in range(kfold.k)
    ]
    np.testing.assert_allclose(ensemble, np.mean(singles, axis=0), atol=1e-5)
    np.testing.assert_allclose(ensemble.sum(-1), 1.0, atol=1e-5)
    for single in singles:  # the k models really differ, so the average is none of them
        assert np.abs(ensemble - single).max() > 1e-2


def test_plot_k_fold(kfold, tmp_path):
    fig = selection.plot_k_fold(kfold, tmp_path / "kfold.png")
    assert len(fig.axes[0].lines) == 4 and (tmp_path / "kfold.png").exists()


def test_train_spec_is_hashable_with_lists():
    assert hash(TrainSpec(hidden=[32, 16], dropout=[0.1, 0.2])) == hash(
        TrainSpec(hidden=(32, 16), dropout=(0.1, 0.2))
    )
    with pytest.raises(ValueError, match="learning_rate"):
        TrainSpec(learning_rate=-1.0)


def test_k_fold_is_reproducible_and_checks_k(digits_small, kfold):
    X, y = digits_small
    again = selection.k_fold_cv(X, y, 4, spec=SPEC, seed=1)
    np.testing.assert_array_equal(again.metrics["val_loss"], kfold.metrics["val_loss"])
    for k in (1, 0, 151):
        with pytest.raises(ValueError, match="k must"):
            selection.k_fold_cv(X, y, k, spec=SPEC)
    with pytest.raises(ValueError, match="X must be"):
        selection.k_fold_cv(X, y[:-1], 4, spec=SPEC)


def test_holdout_kfold_protocol():
    # 215 examples: 65 held out, 150 left, so the K-fold reuses the fixture's compiled program
    train = jdata.load("digits", "train")
    X, y = train.images[:215], train.labels[:215]
    result = selection.holdout_kfold(X, y, k=4, spec=SPEC, seed=0)
    assert len(result.test_idx) == 65 and len(result.dev_idx) == 150
    assert not set(result.test_idx) & set(result.dev_idx)
    assert result.cv.k == 4 and sum(len(va) for _, va in result.cv.folds) == 150
    # the final model is trained on all of dev; its test accuracy, recomputed in NumPy
    params = jax.tree.map(np.asarray, result.final.params)
    acc = np.mean(_numpy_logits(params, X[result.test_idx]).argmax(-1) == y[result.test_idx])
    np.testing.assert_allclose(result.test_acc, acc, atol=1e-6)
    assert result.test_acc > 0.5 and 0.0 < result.ensemble_test_acc <= 1.0


# --- random search -------------------------------------------------------------------------------

SPACE = {
    "learning_rate": ("log", 1e-2, 0.2),
    "weight_decay": ("log", 1e-5, 1e-2),
    "dropout": ("uniform", 0.0, 0.5),
    "width": [8, 16],
}


def _search_data():
    train = jdata.load("digits", "train")
    X, y = train.images.reshape(len(train), -1), train.labels
    return X[:200], y[:200], X[200:300], y[200:300]


@pytest.fixture(scope="module")
def search():
    return selection.random_search(8, SPACE, seed=3, data=_search_data(), epochs=3, batch_size=32)


def test_sample_space_is_reproducible_and_in_range():
    a = selection.sample_space(selection.DEFAULT_SPACE, 500, seed=7)
    b = selection.sample_space(selection.DEFAULT_SPACE, 500, seed=7)
    for name in selection.SEARCH_PARAMS:
        np.testing.assert_array_equal(a[name], b[name])
    lr = a["learning_rate"]
    assert lr.min() >= 1e-3 and lr.max() <= 1.0
    # log-uniform: each decade holds about a third of the draws
    decades = np.histogram(np.log10(lr), bins=[-3, -2, -1, 0])[0]
    assert np.all(np.abs(decades - 500 / 3) < 50)
    assert set(a["width"]) == {32, 64, 128} and a["width"].dtype.kind == "i"
    assert 0 <= a["dropout"].min() and a["dropout"].max() <= 0.8
    c = selection.sample_space(selection.DEFAULT_SPACE, 500, seed=8)
    assert not np.array_equal(a["learning_rate"], c["learning_rate"])


def test_random_search_vectorised_equals_the_loop(search):
    loop = selection.random_search(
        8, SPACE, seed=3, data=_search_data(), epochs=3, batch_size=32, vectorize=False
    )
    assert [row["trial"] for row in loop] == [row["trial"] for row in search]
    for a, b in zip(search, loop, strict=True):
        for name in ("train_loss", "val_loss", "val_acc", "learning_rate", "width"):
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_random_search_table_is_sorted_and_reproducible(search):
    assert len(search) == 8 and sorted(row["trial"] for row in search) == list(range(8))
    scores = [row["val_acc"] for row in search]
    assert scores == sorted(scores, reverse=True)
    assert {row["width"] for row in search} <= {8, 16}
    sample = selection.sample_space(SPACE, 8, seed=3)
    for row in search:
        assert row["learning_rate"] == pytest.approx(sample["learning_rate"][row["trial"]])
        assert row["dropout"] == pytest.approx(sample["dropout"][row["trial"]])
    again = selection.random_search(8, SPACE, seed=3, data=_search_data(), epochs=3, batch_size=32)
    assert again == search


def test_random_search_flags_diverged_trials_and_sorts_them_last():
    # same shapes and static settings as the loop above: its compiled width-8 program is reused
    space = {**SPACE, "learning_rate": [1e5, 0.05], "width": [8]}
    rows = selection.random_search(
        6, space, seed=0, data=_search_data(), epochs=3, batch_size=32, vectorize=False
    )
    flags = [row["diverged"] for row in rows]
    assert flags == sorted(flags)  # all finite trials first
    for row in rows:
        assert row["diverged"] == (row["learning_rate"] > 1)
    assert any(flags) and not all(flags)


def test_traced_dropout_is_ops_dropout():
    from jaxnotes import ops

    key, x = jax.random.key(5), jax.numpy.ones((40, 30))
    np.testing.assert_array_equal(
        selection.traced_dropout(key, x, jax.numpy.float32(0.3)), ops.dropout(key, x, 0.3)
    )


def test_plot_search(search, tmp_path):
    fig = selection.plot_search(search, tmp_path / "search.png")
    assert len(fig.axes) == 4 and (tmp_path / "search.png").exists()


@pytest.mark.parametrize(
    ("space", "match"),
    [
        ({}, "empty"),
        ({**SPACE, "momentum": 0.9}, "unknown"),
        ({k: v for k, v in SPACE.items() if k != "width"}, "missing"),
        ({**SPACE, "learning_rate": ("log", 0.5, 0.1)}, "low <= high"),
        ({**SPACE, "learning_rate": ("log", 0.0, 0.1)}, "low must be > 0"),
        ({**SPACE, "learning_rate": ("uniform", -0.5, 0.1)}, "learning_rate must be > 0"),
        ({**SPACE, "learning_rate": 0.0}, "learning_rate must be > 0"),
        ({**SPACE, "dropout": ("uniform", 0.5, 1.5)}, "dropout must be in"),
        ({**SPACE, "width": []}, "empty list"),
        ({**SPACE, "width": ("normal", 1, 2)}, "must be"),
    ],
)
def test_bad_search_space(space, match):
    with pytest.raises(ValueError, match=match):
        selection.random_search(20, space, seed=0)


@pytest.mark.parametrize("n_trials", [0, -3, 2.5])
def test_bad_n_trials(n_trials):
    with pytest.raises(ValueError, match="n_trials"):
        selection.random_search(n_trials)


# --- imbalance and standardization ---------------------------------------------------------------


def test_oversampling_raises_minority_recall():
    from sklearn.metrics import recall_score

    result = selection.imbalance_demo(seed=0)
    plain, over = result["plain"], result["oversampled"]
    assert over["minority_recall"] > plain["minority_recall"] + 0.2
    assert plain["majority_recall"] > over["majority_recall"]  # the price: more false alarms
    assert over["balanced_accuracy"] > plain["balanced_accuracy"]
    predictions, labels = np.array([0, 1, 1, 0, 1, 0]), np.array([0, 1, 0, 0, 1, 1])
    np.testing.assert_allclose(
        selection.per_class_recall(predictions, labels, 2),
        recall_score(labels, predictions, average=None),
    )


def test_standardization_fit_on_train_vs_all():
    result = selection.standardization_demo(seed=0)
    # fit on train: the drifted test set is visibly off-centre; fit on all: pulled back to 0
    assert result["fit_on_train"]["test_mean"] > result["fit_on_all"]["test_mean"] + 0.1
    assert abs(result["fit_on_all"]["test_mean"]) < abs(result["fit_on_train"]["test_mean"])
