"""Model selection: polynomial under/over-fitting, K-fold and random search on populations, demos.

References are independent of the code under test: NumPy least squares and forward passes,
trainings run one at a time, scikit-learn's recall.
"""

import jax
import numpy as np
import pytest

from jaxnotes import data as jdata
from jaxnotes import selection
from jaxnotes.config import TrainConfig

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
    # The true weights, tightly (measured within 0.026: noise sd 0.1 on 100 points).
    np.testing.assert_allclose(normal.weights, selection.TRUE_POLY_WEIGHTS, atol=0.05)
    # NumPy's least squares is the smallest training error there is: SGD's (400 epochs, still
    # moving along the x^3/3! direction) is no lower, and within 10% of it (measured 5.0%).
    data = selection.polynomial_data(seed=0)
    X, y = data.features[:100, :4].astype(np.float64), data.labels[:100].astype(np.float64)
    lstsq = np.linalg.lstsq(X, y, rcond=None)[0]
    best, ours = np.mean((X @ lstsq - y) ** 2), np.mean((X @ normal.weights - y) ** 2)
    assert best <= ours <= 1.10 * best
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


# --- K-fold (populations: see tests/test_population.py for fold i == a separate fit) -----------

# dropout on, so per-fold keys matter; 150 examples in 4 folds: sizes 38, 38, 37, 37 (padding)
CONFIG = TrainConfig(
    model="mlp", epochs=3, batch_size=16, learning_rate=0.1, momentum=0.9,
    model_kwargs={"hidden": (32,), "dropout": 0.2}, progress=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def digits_small():
    train = jdata.load("digits", "train")
    return jdata.from_arrays(train.images[:150], train.labels[:150], 10)


@pytest.fixture(scope="module")
def kfold(digits_small):
    return selection.k_fold_cv("mlp", digits_small, 4, config=CONFIG, seed=1)


def _numpy_logits(params, X):
    """The zoo MLP (one hidden layer) in NumPy, inference mode."""
    h = np.maximum(
        X.reshape(len(X), -1) @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"], 0
    )
    return h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def test_k_fold_metrics_match_a_numpy_evaluation(digits_small, kfold):
    X, y = digits_small.images, digits_small.labels
    assert sorted(len(va) for _, va in kfold.folds) == [37, 37, 38, 38]
    for i, (_, val_idx) in enumerate(kfold.folds):
        params = jax.tree.map(np.asarray, kfold.fold_params(i))
        acc = np.mean(_numpy_logits(params, X[val_idx]).argmax(-1) == y[val_idx])
        np.testing.assert_allclose(kfold.metrics["val_acc"][i], acc, atol=1e-6)
    np.testing.assert_allclose(kfold.mean["val_acc"], np.mean(kfold.metrics["val_acc"]))
    np.testing.assert_allclose(kfold.std["val_loss"], np.std(kfold.metrics["val_loss"]))
    assert kfold.history["val_acc"].shape == (4, CONFIG.epochs)
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


def test_plot_k_fold_draws_each_folds_curve(kfold, tmp_path):
    fig = selection.plot_k_fold(kfold, tmp_path / "kfold.png")
    lines = fig.axes[0].lines
    assert len(lines) == 4 and (tmp_path / "kfold.png").stat().st_size > 1000
    for i, line in enumerate(lines):  # the plotted data is the history, epoch by epoch
        np.testing.assert_allclose(line.get_ydata(), kfold.history["val_acc"][i])
        np.testing.assert_array_equal(line.get_xdata(), np.arange(1, CONFIG.epochs + 1))


def test_k_fold_is_reproducible_and_checks_k(digits_small, kfold):
    again = selection.k_fold_cv("mlp", digits_small, 4, config=CONFIG, seed=1)
    np.testing.assert_array_equal(again.metrics["val_loss"], kfold.metrics["val_loss"])
    for k in (1, 0, 151, 2.5, True):
        with pytest.raises(ValueError, match="k must"):
            selection.k_fold_cv("mlp", digits_small, k, config=CONFIG)


def test_holdout_kfold_protocol():
    # 215 examples: 65 held out, 150 left for the K-fold
    train = jdata.load("digits", "train")
    dataset = jdata.from_arrays(train.images[:215], train.labels[:215], 10)
    result = selection.holdout_kfold("mlp", dataset, k=4, config=CONFIG, seed=0)
    assert len(result.test_idx) == 65 and len(result.dev_idx) == 150
    assert not set(result.test_idx) & set(result.dev_idx)
    assert result.cv.k == 4 and sum(len(va) for _, va in result.cv.folds) == 150
    X, y = dataset.images, dataset.labels
    # the final model is trained on all of dev; its test accuracy, recomputed in NumPy
    params = jax.tree.map(np.asarray, result.final.state.params)
    acc = np.mean(_numpy_logits(params, X[result.test_idx]).argmax(-1) == y[result.test_idx])
    np.testing.assert_allclose(result.test_acc, acc, atol=1e-6)
    # the ensemble's accuracy, recomputed from each fold model's NumPy probabilities
    test_x, test_y = X[result.test_idx], y[result.test_idx]
    folds = [jax.tree.map(np.asarray, result.cv.fold_params(i)) for i in range(4)]
    probs = np.mean([_softmax(_numpy_logits(p, test_x)) for p in folds], axis=0)
    np.testing.assert_allclose(
        result.ensemble_test_acc, np.mean(probs.argmax(-1) == test_y), atol=1e-9
    )
    assert result.test_acc > 0.5


# --- random search (populations: tests/test_population.py) ---------------------------------------


def test_plot_search_draws_the_score_against_each_parameter(tmp_path):
    rows = [
        {"trial": t, "learning_rate": lr, "weight_decay": wd, "momentum": 0.0, "dropout": None,
         "val_acc": acc, "diverged": False}
        for t, (lr, wd, acc) in enumerate([(0.1, 1e-4, 0.9), (0.01, 1e-3, 0.7), (0.3, 1e-5, 0.8)])
    ]  # fmt: skip
    fig = selection.plot_search(rows, tmp_path / "search.png")
    assert (tmp_path / "search.png").stat().st_size > 1000
    panels = {ax.get_xlabel(): ax for ax in fig.axes}
    assert set(panels) == {"learning_rate", "weight_decay", "momentum"}
    points = panels["learning_rate"].collections[0].get_offsets()
    np.testing.assert_allclose(points, [[0.1, 0.9], [0.01, 0.7], [0.3, 0.8]])
    assert panels["learning_rate"].get_xscale() == "log"


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


@pytest.mark.parametrize("normalization, channels", [("standardize", 1), ("imagenet", 3)])
def test_the_fold_ensemble_predicts_with_the_runs_own_preprocessing(
    digits, normalization, channels
):
    # The ensemble must see the test images as the folds saw theirs in training (normalized,
    # with the fold's own training statistics): then it scores like the folds do on their
    # held-out parts. Predicting with another preprocessing drops it far below.
    train, test = digits
    rgb = lambda d: jdata.from_arrays(np.repeat(d.images, channels, axis=-1), d.labels, 10)
    train, test = rgb(train), rgb(test)
    config = TrainConfig(
        model="mlp", epochs=4, batch_size=32, learning_rate=0.1, normalization=normalization,
        progress=False,
    )  # fmt: skip
    cv = selection.k_fold_cv("mlp", train, 3, config=config)
    ensemble = selection.ensemble_predict(cv, test.images)
    accuracy = float(np.mean(ensemble.argmax(-1) == test.labels))
    assert accuracy == pytest.approx(cv.mean["val_acc"], abs=0.05)
    assert cv.mean["val_acc"] > 0.8
