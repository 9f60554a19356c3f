"""Splitting data for model selection, and standardization fit on the training split only.

Every function returns integer index arrays into the data, never copies of it, so the same split
can index images, labels and anything else aligned with them. Randomness comes from an explicit
integer seed (NumPy's PCG64), so a split is reproducible from its arguments alone.
"""

from __future__ import annotations

import numpy as np


def holdout_split(
    n: int, test_fraction: float, seed: int, stratify=None
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle 0..n-1 and cut it in two: (train_idx, test_idx), disjoint, together all of 0..n-1.

    The test part has ceil(test_fraction * n) elements (as scikit-learn's train_test_split), and
    both parts must be non-empty. ``stratify``: labels (n,); then each class is cut on its own
    (round(test_fraction * n_c) of class c held out), so both parts keep the class proportions,
    and a class that would be missing from either part is an error naming it.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = int(np.ceil(test_fraction * n))
    if n < 2 or n_test >= n:
        raise ValueError(f"cannot split {n} examples with test_fraction={test_fraction}")
    rng = np.random.default_rng(seed)
    if stratify is None:
        order = rng.permutation(n)
        return order[n_test:], order[:n_test]
    labels = np.asarray(stratify)
    train, test = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)[rng.permutation(int(np.sum(labels == c)))]
        k = int(round(test_fraction * len(members)))
        if k < 1 or k >= len(members):
            raise ValueError(
                f"a split of {test_fraction:g} leaves class {c} ({len(members)} examples) with "
                "none on one side; use a fraction that keeps every class on both sides"
            )
        test.append(members[:k])
        train.append(members[k:])
    order = lambda parts: np.sort(np.concatenate(parts))
    return rng.permutation(order(train)), rng.permutation(order(test))


def k_fold_indices(n: int, k: int, seed: int | None = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold cross-validation: k pairs (train_idx, val_idx).

    The k validation folds are disjoint and cover 0..n-1; their sizes differ by at most 1 (the
    first n % k folds have one more). Each train_idx is the sorted complement of its fold.
    seed=None keeps the data order (contiguous folds); an integer shuffles first.
    """
    if k < 2 or k > n:
        raise ValueError(f"k must satisfy 2 <= k <= n, got k={k}, n={n}")
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    folds = np.array_split(order, k)
    result = []
    for fold in folds:
        in_fold = np.zeros(n, bool)
        in_fold[fold] = True
        result.append((np.flatnonzero(~in_fold), fold))
    return result


def time_series_split(n: int, test_size: int | float) -> tuple[np.ndarray, np.ndarray]:
    """Chronological split: the last ``test_size`` examples are the test set, in order.

    Never shuffled: with time-ordered data, a random split would let the model see the future
    ("the last week is the test set"). test_size is a count, or a fraction in (0, 1) (rounded up).
    """
    if isinstance(test_size, float):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"a fractional test_size must be in (0, 1), got {test_size}")
        test_size = int(np.ceil(test_size * n))
    if not 1 <= test_size < n:
        raise ValueError(f"test_size must satisfy 1 <= test_size < n, got {test_size}, n={n}")
    return np.arange(n - test_size), np.arange(n - test_size, n)


def oversample_indices(labels, seed: int) -> np.ndarray:
    """Indices that balance the classes by repeating minority examples (9:1 becomes 1:1).

    Every class ends with as many examples as the largest one: each minority example is repeated
    floor(max / count) times and a random subset of them once more for the remainder, so every
    original example appears at least once. Returned shuffled (a training order), length
    num_present_classes * max_count.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    target = counts.max()
    parts = []
    for cls, count in zip(classes, counts, strict=True):
        members = np.flatnonzero(labels == cls)
        repeats, extra = divmod(int(target), int(count))
        parts.append(np.tile(members, repeats))
        parts.append(rng.choice(members, size=extra, replace=False))
    return rng.permutation(np.concatenate(parts))


class Standardizer:
    """Per-feature standardization (x - mean) / std with statistics from ``fit`` data only.

    Statistics are over axis 0 (the examples), so x of shape (n, ...) gets mean and std of shape
    (...). A feature with std 0 is left unscaled (divided by 1), as scikit-learn's StandardScaler
    does. Fit it on the training split: fitting on all data leaks the test set into the model
    (see ``standardization_leak_demo``).
    """

    def __init__(self):
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, x) -> Standardizer:
        x = np.asarray(x, dtype=np.float64)
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)
        return self

    def _check_fitted(self):
        if self.mean is None:
            raise ValueError("Standardizer is not fitted; call fit(x_train) first")

    def transform(self, x) -> np.ndarray:
        """(x - mean) / std, computed in float64; float32 input gives float32 output."""
        self._check_fitted()
        x = np.asarray(x)
        return ((x.astype(np.float64) - self.mean) / self.std).astype(_float_dtype(x))

    def fit_transform(self, x) -> np.ndarray:
        return self.fit(x).transform(x)

    def inverse_transform(self, z) -> np.ndarray:
        self._check_fitted()
        z = np.asarray(z)
        return (z.astype(np.float64) * self.std + self.mean).astype(_float_dtype(z))


def _float_dtype(x: np.ndarray) -> np.dtype:
    return x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)


def standardization_leak_demo(seed: int = 0, n: int = 1000, drift: float = 2.0) -> dict:
    """Why the standardizer is fit on the training split only, on data whose level drifts in time.

    x_t = drift * t / n + noise; the last 30% is the test set. Fit on the training part, the
    standardized test set is visibly off-centre (mean well above 0): the shift a deployed model
    would really face. Fit on all data, the test set's own statistics pull it back towards mean 0
    and std 1: an evaluation that looks better than reality, because it peeked at the test set.

    Returns {"fit_on_train": (test_mean, test_std), "fit_on_all": (test_mean, test_std)} of the
    standardized test set.
    """
    rng = np.random.default_rng(seed)
    x = (drift * np.arange(n) / n + rng.normal(size=n))[:, None]
    train_idx, test_idx = time_series_split(n, 0.3)
    result = {}
    for name, fit_on in (("fit_on_train", x[train_idx]), ("fit_on_all", x)):
        z = Standardizer().fit(fit_on).transform(x[test_idx])
        result[name] = (float(z.mean()), float(z.std()))
    return result
