"""Split helpers on many random cases, and Standardizer against scikit-learn's StandardScaler."""

import numpy as np
import pytest
from sklearn.model_selection import KFold, train_test_split
from sklearn.preprocessing import StandardScaler

from jaxnotes.data import (
    Standardizer,
    holdout_split,
    k_fold_indices,
    oversample_indices,
    standardization_leak_demo,
    time_series_split,
)

CASES = np.random.default_rng(2024).integers(2, 300, size=40)


def test_holdout_split_many_cases():
    rng = np.random.default_rng(0)
    for n in CASES:
        fraction = float(rng.uniform(0.05, 0.6))
        if int(np.ceil(fraction * n)) >= n:
            continue
        train, test = holdout_split(int(n), fraction, seed=int(n))
        expected_train, expected_test = train_test_split(np.arange(n), test_size=fraction)
        assert (len(train), len(test)) == (len(expected_train), len(expected_test))
        assert np.intersect1d(train, test).size == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(n))
    a, b = holdout_split(100, 0.3, seed=1), holdout_split(100, 0.3, seed=1)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], holdout_split(100, 0.3, seed=2)[1])


@pytest.mark.parametrize(
    "args, message",
    [
        ((10, 0.0, 0), r"test_fraction must be in \(0, 1\), got 0.0"),
        ((10, 1.0, 0), r"test_fraction must be in \(0, 1\), got 1.0"),
        ((1, 0.5, 0), "cannot split 1 examples with test_fraction=0.5"),
        ((2, 0.9, 0), "cannot split 2 examples with test_fraction=0.9"),
    ],
)
def test_holdout_split_errors(args, message):
    with pytest.raises(ValueError, match=message):
        holdout_split(*args)


def test_k_fold_many_cases():
    rng = np.random.default_rng(1)
    for n in CASES:
        k = int(rng.integers(2, min(n, 12) + 1))
        folds = k_fold_indices(int(n), k, seed=int(rng.integers(1000)))
        assert len(folds) == k
        vals = [val for _, val in folds]
        sizes = [len(v) for v in vals]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n
        np.testing.assert_array_equal(np.sort(np.concatenate(vals)), np.arange(n))  # disjoint, all
        for train, val in folds:
            np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))
            assert np.intersect1d(train, val).size == 0


def test_k_fold_without_shuffle_matches_sklearn():
    for n, k in [(10, 3), (17, 5), (6, 6), (100, 10)]:
        ours = k_fold_indices(n, k, seed=None)
        theirs = list(KFold(n_splits=k).split(np.arange(n)))
        for (train, val), (ref_train, ref_val) in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(train, ref_train)
            np.testing.assert_array_equal(val, ref_val)


def test_k_fold_shuffles_with_seed():
    first = k_fold_indices(50, 5, seed=0)[0][1]
    assert not np.array_equal(first, np.arange(10))
    np.testing.assert_array_equal(first, k_fold_indices(50, 5, seed=0)[0][1])


@pytest.mark.parametrize("n,k", [(10, 1), (10, 0), (5, 6)])
def test_k_fold_errors(n, k):
    with pytest.raises(ValueError, match=f"k must satisfy 2 <= k <= n, got k={k}, n={n}"):
        k_fold_indices(n, k, seed=0)


def test_time_series_split_many_cases():
    for n in CASES:
        for test_size in (1, int(n) // 3 or 1, int(n) - 1):
            train, test = time_series_split(int(n), test_size)
            np.testing.assert_array_equal(train, np.arange(n - test_size))
            np.testing.assert_array_equal(test, np.arange(n - test_size, n))
            assert train.max() < test.min()  # the test set is the final period
    train, test = time_series_split(10, 0.3)
    assert list(test) == [7, 8, 9] and list(train) == list(range(7))


@pytest.mark.parametrize(
    "n, test_size, message",
    [
        (10, 0, "test_size must satisfy 1 <= test_size < n, got 0, n=10"),
        (10, 10, "test_size must satisfy 1 <= test_size < n, got 10, n=10"),
        (10, 1.0, r"a fractional test_size must be in \(0, 1\), got 1.0"),
        (10, -0.5, r"a fractional test_size must be in \(0, 1\), got -0.5"),
    ],
)
def test_time_series_split_errors(n, test_size, message):
    with pytest.raises(ValueError, match=message):
        time_series_split(n, test_size)


def test_oversample_nine_to_one_becomes_one_to_one():
    labels = np.array([0] * 90 + [1] * 10)
    idx = oversample_indices(labels, seed=0)
    assert np.bincount(labels[idx]).tolist() == [90, 90]
    assert np.unique(idx).size == 100  # every original example kept
    assert np.bincount(idx[labels[idx] == 1]).max() == 9  # each minority example repeated 9x


def test_oversample_many_cases():
    rng = np.random.default_rng(3)
    for trial in range(40):
        num_classes = int(rng.integers(2, 6))
        counts = rng.integers(1, 50, size=num_classes)
        labels = np.repeat(rng.permutation(10)[:num_classes], counts)
        rng.shuffle(labels)
        idx = oversample_indices(labels, seed=trial)
        balanced = np.unique(labels[idx], return_counts=True)[1]
        assert np.all(balanced == counts.max())
        assert np.unique(idx).size == len(labels)
        # Repeats of one class's examples differ by at most 1 (no example favoured twice over).
        for cls in np.unique(labels):
            reps = np.bincount(idx[labels[idx] == cls], minlength=len(labels))[labels == cls]
            assert reps.max() - reps.min() <= 1
    with pytest.raises(ValueError, match=r"labels must be a non-empty 1-D array, got shape \(0,\)"):
        oversample_indices(np.array([], int), seed=0)


@pytest.mark.parametrize("shape", [(50, 3), (20, 4, 2), (7,)])
def test_standardizer_equals_sklearn(shape):
    rng = np.random.default_rng(sum(shape))
    train = rng.normal(3.0, 2.0, size=shape) * rng.uniform(0.1, 10, size=shape[1:])
    test = rng.normal(1.0, 4.0, size=(11, *shape[1:]))
    if len(shape) > 1:
        train[:, 0] = 5.0  # a constant feature: std 0, left unscaled
    flat = lambda x: x.reshape(len(x), -1)
    scaler = StandardScaler().fit(flat(train))
    ours = Standardizer().fit(train)
    np.testing.assert_allclose(flat(ours.transform(test)), scaler.transform(flat(test)), atol=1e-12)
    np.testing.assert_allclose(
        flat(ours.transform(train)), scaler.transform(flat(train)), atol=1e-12
    )
    z = rng.normal(size=test.shape)
    np.testing.assert_allclose(
        flat(ours.inverse_transform(z)), scaler.inverse_transform(flat(z)), atol=1e-12
    )
    np.testing.assert_allclose(ours.inverse_transform(ours.transform(test)), test, atol=1e-12)


def test_standardizer_keeps_float32_and_needs_fit():
    x = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    assert Standardizer().fit_transform(x).dtype == np.float32
    with pytest.raises(ValueError, match="fit"):
        Standardizer().transform(x)


def test_leak_demo_shows_the_leak():
    result = standardization_leak_demo(seed=0)
    honest_mean, _ = result["fit_on_train"]
    leaky_mean, _ = result["fit_on_all"]
    # Fit on all data, the test set looks closer to standard than it really is.
    assert abs(leaky_mean) < abs(honest_mean)
    assert honest_mean > 0.5  # the drift the deployed model would face is visible
