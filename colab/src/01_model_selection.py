# %% [markdown]
# # 1. Model selection: under- and over-fitting, K-fold, random search
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/01_model_selection.ipynb)
#
# The **training error** is measured on the data the model was fit to; the
# **generalization error** is its expected error on new data from the same distribution,
# which we estimate on data the model never saw. A model too simple for the data
# **underfits** (both errors high); one with too much **capacity** for the amount of data
# **overfits** (training error low, generalization error high).
#
# This notebook:
#
# * fits the book's polynomial $y = 5 + 1.2x - 3.4\frac{x^2}{2!} + 5.6\frac{x^3}{3!} +
#   \epsilon$ with 4, 2 and 20 features $x^i / i!$ (a good fit, an underfit, an overfit),
#   then every degree from 1 to 20 (the **capacity curve**), and lists the remedies;
# * counts the parameters of an MLP (its capacity);
# * holds out a test set (30%) looked at once, at the very end, and chooses models on the rest
#   by **K-fold cross-validation** (K trainings, each validated on one fold);
# * runs a **random search** over learning rate, weight decay, dropout;
# * shows two traps: standardizing with statistics that include the test set, and a
#   9:1 **class imbalance**.
#
# The from-scratch pieces (features, folds, one fold's training, standardization) are written
# on the page and checked against `jaxnotes.data` and `jaxnotes.selection`, whose trainers run
# the K folds, and the search's trials, together as one vmapped, jitted program.

# %% [markdown]
# **Size.** All of this uses small data sets (a synthetic polynomial, scikit-learn's 8x8
# `digits`), at both sizes. The stored outputs are the small size, run on a CPU: the K folds
# and the search's trials train 5 epochs, and the search tries 8 settings. The book size trains
# them 20 epochs and tries the notes' 100 random settings, in a minute or two on a CPU
# (`nbk.settings("model_selection")` prints the current size's).

# %% tags=["setup"]
# The shared set-up cell (colab/src/_setup.py: size form, install on Colab, device) replaces
# this one in the notebook; run as a script, this is all of it that matters.
import time

from jaxnotes import notebook as nbk

START = time.perf_counter()
SIZE = nbk.start("small")
nbk.as_script()  # run as a script: figures are saved to files (or shown in windows)

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

from jaxnotes import data, selection, shapes, training
from jaxnotes.models import get_model

settings = nbk.settings("model_selection")
print(settings)

# %% [markdown]
# ## Polynomial features, by hand
#
# Feature $i$ of an input $x$ is $x^i / i!$, for $i = 0, \dots, 19$ (feature 0 is the constant
# 1: the intercept). Dividing by $i!$ keeps the high powers, and their gradients, from
# exploding. `selection.polynomial_data` builds the book's 100 training and 100 test points
# this way; its column 1 is $x^1 / 1! = x$ itself, so we rebuild every column from it.


# %%
def polynomial_features(x, max_degree):
    """x (n,) -> (n, max_degree): column i is x**i / i!."""
    powers = np.arange(max_degree)
    factorials = np.array([math.factorial(i) for i in powers], dtype=np.float64)
    return x[:, None] ** powers / factorials


poly = selection.polynomial_data(seed=0)
x = poly.features[:, 1].astype(np.float64)
assert np.allclose(polynomial_features(x, 20), poly.features, rtol=1e-5, atol=1e-6)

# The labels: the cubic's four weights on the first four features, plus noise of std 0.1.
noise = poly.labels - poly.features[:, :4] @ np.array(selection.TRUE_POLY_WEIGHTS)
print(f"{len(x)} points, x in [{x.min():.2f}, {x.max():.2f}]; noise std {noise.std():.3f}")
largest = np.abs(x).max()
print(f"largest |x|^19: {largest**19:.1e}; divided by 19!: {largest**19 / math.factorial(19):.1e}")

# %% [markdown]
# ## Under- and over-fitting: three fits of the same data
#
# `selection.polynomial_demo` fits a linear model on the first 4, 2 or 20 features by
# minibatch SGD (the book's 400 epochs, batch 10, learning rate 0.01), measuring the mean
# squared error on the training and the test points after every epoch:
#
# * **4 features** (the true degree): the weights come out close to $[5, 1.2, -3.4, 5.6]$ and
#   both losses fall to the noise level ($0.1^2 = 0.01$);
# * **2 features** (a line): it cannot follow the curve, and both losses stay high;
# * **20 features on only 10 training points**: the training loss falls far below the test
#   loss, which stays high: the extra weights fit the noise of those 10 points.
#
# The over-fitted panel departs from the book: the book fits the 20 features on all 100
# training points for 1,500 epochs; here the 1,500 epochs see only 10 of them. On $x^i / i!$
# with 100 points, SGD barely moves the tiny high-degree weights in 1,500 epochs, and that fit
# ends almost like the good one (train loss close to test loss): it shows no over-fitting.
# With 10 points the 20 weights have too few constraints, and the gap opens. The three panels
# share one (log) scale, so the levels compare across them.

# %%
fits = selection.polynomial_demo()
print("true weights:", list(selection.TRUE_POLY_WEIGHTS))
for name, fit in fits.items():
    print(
        f"{name:34} train {fit.train_loss[-1]:8.4f}  test {fit.test_loss[-1]:8.4f}  "
        f"first weights {np.round(fit.weights[:4].astype(float), 3).tolist()}"
    )
normal = fits["normal (4 features)"]
underfit = fits["underfit (2 features)"]
overfit = fits["overfit (20 features, 10 points)"]
fig = selection.plot_polynomial_fits(fits)

# %% [markdown]
# ## Capacity: the error against the degree
#
# The classic picture of model selection: fit a polynomial of every degree $d = 1, \dots, 20$
# (features $x^0, \dots, x^d / d!$) to 20 training points and measure the mean squared error on
# them and on the 100 points the fit never saw. Each fit is exact least squares
# (`np.linalg.lstsq`, the minimum-norm solution once there are more weights than points), so
# what changes is only the capacity. The training error can only fall as the degree grows (a
# higher degree can always reproduce a lower one); the validation error falls while the model
# is too simple (**under-fitting**, degrees 1-2), is lowest near the true degree 3, then rises,
# by orders of magnitude once the polynomial can wiggle through the 20 points and their noise
# (**over-fitting**). The log scale is needed: a degree-20 fit misses new points by thousands.


# %%
def capacity_curve(x, y, n_train, degrees):
    """Train and validation MSE of the least-squares polynomial of each degree."""
    train_error, val_error = [], []
    for degree in degrees:
        X = polynomial_features(x, degree + 1)
        w = np.linalg.lstsq(X[:n_train], y[:n_train], rcond=None)[0]
        train_error.append(np.mean((X[:n_train] @ w - y[:n_train]) ** 2))
        val_error.append(np.mean((X[n_train:] @ w - y[n_train:]) ** 2))
    return np.array(train_error), np.array(val_error)


x_all = np.concatenate([x[:20], x[poly.n_train :]])  # 20 training points, then the 100 others
y_all = np.concatenate([poly.labels[:20], poly.labels[poly.n_train :]]).astype(np.float64)
degrees = np.arange(1, 21)
train_error, val_error = capacity_curve(x_all, y_all, 20, degrees)
best_degree = int(degrees[np.argmin(val_error)])
for d in (1, 2, 3, 5, 10, 20):
    print(f"degree {d:2}: train {train_error[d - 1]:10.4f}  validation {val_error[d - 1]:12.4g}")
print(f"lowest validation error at degree {best_degree}")

fig, ax = plt.subplots(figsize=(7.5, 3.4))
ax.semilogy(degrees, train_error, "o-", label="training error")
ax.semilogy(degrees, val_error, "s-", label="validation error")
ax.axvline(best_degree, color="gray", ls=":")
ax.axvspan(0.5, 2.5, color="#fde7cf", alpha=0.6, label="under-fitting")
ax.axvspan(5.5, 20.5, color="#dbe8f7", alpha=0.6, label="over-fitting")
ax.set_xlim(0.5, 20.5)
ax.set_xticks([1, 3, 5, 10, 15, 20])
ax.set_xlabel("polynomial degree (model capacity)")
ax.set_ylabel("mean squared error")
ax.set_title("20 training points, 100 validation points")
ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
ax.grid(True, alpha=0.3)
fig.tight_layout()

# %% [markdown]
# What to do about each, when the two errors say which it is:
#
# | | training error | validation error | remedies |
# |---|---|---|---|
# | **under-fitting** | high | high too | more capacity, train longer, less regularization |
# | **over-fitting** | low | much higher | more data, less capacity, more regularization |
#
# More capacity: more features, a wider or deeper model. Less capacity: fewer features, a
# smaller model. More regularization: a larger weight decay $\lambda$ (chapter 2), more
# dropout (chapter 3), stopping earlier; more data includes data augmentation.

# %% [markdown]
# > **Compared with your notes.** The notes list the remedies under the wrong headings:
# > "(欠拟合) 1.获得更多的训练数据 2.降维 3.正则化" (under-fitting: more training data, fewer
# > dimensions, regularization) and "(过拟合) 1.添加新特征 2.增加模型复杂度 3.减小正则化系数"
# > (over-fitting: add features, a more complex model, a smaller regularization coefficient).
# > It is the other way round, as the table says: more data, fewer dimensions and more
# > regularization fight **over**-fitting; new features, more complexity and less
# > regularization fight **under**-fitting. The curve above shows why: moving right (more
# > capacity) helps on the left of the best degree and hurts on its right.

# %% [markdown]
# ## Capacity: parameters of an MLP on 8x8 digits
#
# A dense layer from $n_{in}$ to $n_{out}$ units has $(n_{in} + 1)\, n_{out}$ parameters (a
# weight per pair and a bias per output), so one hidden layer of width $h$ on the 64 pixels of
# a digit has $(64 + 1) h + (h + 1) 10$. The MLP trained below has $h = 64$; its layer table
# agrees with the formula.

# %%
for width in (8, 32, 128, 512):
    count = shapes.dense_params(64, width) + shapes.dense_params(width, 10)
    print(f"hidden width {width:4}: {count:7,} parameters")

mlp_64 = get_model("mlp", hidden=(64,), dropout=0.0)
summary = shapes.summarize(mlp_64, (1, 8, 8, 1), train=False)
print(summary)
assert summary.total_params == (64 + 1) * 64 + (64 + 1) * 10

# %% [markdown]
# ## Splits: a 30% test set, then K folds of the rest, by hand
#
# The test set is set aside first (a random 30%) and not touched until the very end. The other
# 70%, the **development** set, is shuffled once and cut into $K$ folds of (nearly) equal
# size; training $i$ validates on fold $i$ and trains on the other $K - 1$. The folds are
# disjoint and together cover the development set, so every example is validated on exactly
# once. Our version agrees with `jaxnotes.data.k_fold_indices`, the one the trainer uses.


# %%
def k_fold_indices(n, k, seed):
    """K pairs (train_idx, val_idx) over 0..n-1: shuffle once, cut into k folds."""
    order = np.random.default_rng(seed).permutation(n)
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]  # the first n % k get one more
    bounds = np.cumsum([0, *sizes])
    folds = []
    for i in range(k):
        val = order[bounds[i] : bounds[i + 1]]
        train = np.setdiff1d(order, val)  # every other example, sorted
        folds.append((train, val))
    return folds


digits_train, digits_test = data.load("digits", "train"), data.load("digits", "test")
images = np.concatenate([digits_train.images, digits_test.images])
y = np.concatenate([digits_train.labels, digits_test.labels])
k = settings["k"]
dev_idx, test_idx = data.holdout_split(len(y), 0.3, seed=0)
folds = k_fold_indices(len(dev_idx), k, seed=0)
package_folds = data.k_fold_indices(len(dev_idx), k, seed=0)
assert all(
    np.array_equal(tr, tr_pkg) and np.array_equal(va, va_pkg)
    for (tr, va), (tr_pkg, va_pkg) in zip(folds, package_folds, strict=True)
)
all_val = np.sort(np.concatenate([va for _, va in folds]))
assert np.array_equal(all_val, np.arange(len(dev_idx)))  # disjoint, and they cover it all
print(f"{len(y)} examples: {len(dev_idx)} development, {len(test_idx)} test")
print("fold sizes (train, validation):", [(len(tr), len(va)) for tr, va in folds])

assignment = np.zeros((k, len(dev_idx)))
for i, (_, val) in enumerate(folds):
    assignment[i, val] = 1
fig, ax = plt.subplots(figsize=(7, 2.2))
ax.imshow(assignment, aspect="auto", cmap="Greys", interpolation="nearest")
ax.set_xlabel("development example")
ax.set_ylabel("fold")
ax.set_title(f"{k}-fold validation sets (black: validated on in that training)", fontsize=11)
fig.tight_layout()

# %% [markdown]
# Time-ordered data is never shuffled: the **last** period is the test set, so the model is
# never trained on the future of what it is tested on.

# %%
series_train, series_test = data.time_series_split(100, 0.2)
ends = [idx[[0, -1]].tolist() for idx in (series_train, series_test)]
print(f"time series of 100 steps: train from/to {ends[0]}, test from/to {ends[1]}")
assert np.array_equal(np.concatenate([series_train, series_test]), np.arange(100))  # in order

# %% [markdown]
# ## One fold's training, in plain code
#
# Before a library trains all K folds at once, one of them written out: the MLP on fold 0's
# training part, plain minibatch SGD with momentum (the settings the protocol below uses:
# learning rate 0.1, momentum 0.9, batch 32), a jitted step built from `jax.value_and_grad`,
# then the accuracy on fold 0's validation part. Nothing else is hidden in a K-fold trainer:
# it repeats this K times (here, as one vmapped program) and averages the K scores.


# %%
import jax
import jax.numpy as jnp
import optax


def train_fold(train_idx, val_idx, epochs, seed=0):
    """The MLP trained on images[dev_idx][train_idx]; its accuracy on the val_idx part."""
    X_dev, y_dev = jnp.asarray(images[dev_idx]), jnp.asarray(y[dev_idx])
    model = get_model("mlp", hidden=(64,), dropout=0.0)
    params = model.init(jax.random.key(seed), X_dev[:1])["params"]
    tx = optax.sgd(0.1, momentum=0.9)
    opt_state = tx.init(params)

    def loss_fn(params, X, labels):
        logits = model.apply({"params": params}, X)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(params, opt_state, X, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, X, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(train_idx)  # a new order of the examples every epoch
        for start in range(0, len(order) - 31, 32):  # full batches of 32
            batch = order[start : start + 32]
            params, opt_state, loss = step(params, opt_state, X_dev[batch], y_dev[batch])
    logits = model.apply({"params": params}, X_dev[val_idx])
    return float(jnp.mean(jnp.argmax(logits, -1) == y_dev[val_idx]))


by_hand_acc = train_fold(*folds[0], epochs=settings["cv_epochs"])
print(f"fold 0 by hand: validation accuracy {by_hand_acc:.4f}")

# %% [markdown]
# ## K-fold cross-validation, then one final test
#
# `selection.holdout_kfold` runs the whole protocol with the split above: K-fold on the
# development set (the K MLPs train together as one population, one vmapped program), then one
# model trained on all of it and tested once on the held-out 30%; the K fold models averaged
# (an ensemble) are tested too. Every fold ends well above chance (10%), and the K-fold
# estimate is close to what the final model scores on the test set.

# %%
all_digits = data.from_arrays(images, y, num_classes=10, name="digits")
config = training.TrainConfig(
    model="mlp",
    epochs=settings["cv_epochs"],
    batch_size=32,
    learning_rate=0.1,
    momentum=0.9,
    model_kwargs={"hidden": (64,), "dropout": 0.0},
    progress=False,
)
protocol = selection.holdout_kfold("mlp", all_digits, k=k, config=config, seed=0)
cv = protocol.cv
assert np.array_equal(protocol.dev_idx, dev_idx)  # the same split and folds as ours
assert all(np.array_equal(va, cv_va) for (_, va), (_, cv_va) in zip(folds, cv.folds, strict=True))
print("validation accuracy per fold:", [round(float(a), 4) for a in cv.metrics["val_acc"]])
print(f"K-fold estimate: {cv.mean['val_acc']:.4f} +- {cv.std['val_acc']:.4f}")
print(
    f"final model on the test set: {protocol.test_acc:.4f}; "
    f"fold ensemble: {protocol.ensemble_test_acc:.4f}"
)
print(f"fold 0: {cv.metrics['val_acc'][0]:.4f} here, {by_hand_acc:.4f} by hand (other init)")
fig = selection.plot_k_fold(cv)

# %% [markdown]
# ## Random hyper-parameter search
#
# Learning rate and weight decay are drawn log-uniformly (they matter by orders of
# magnitude), dropout uniformly, the width from a list; each trial trains an MLP on 70% of
# digits' training split and is scored on the other 30% (the test split is not used). The
# trials of one width are one population: one compiled program for all of them. The best
# trial is well above chance, and the spread between trials shows how much the settings
# matter.

# %%
space = {**selection.DEFAULT_SPACE, "width": list(settings["search_widths"])}
search_config = training.TrainConfig(
    model="mlp",
    epochs=settings["search_epochs"],
    batch_size=64,
    momentum=0.9,
    progress=False,
)
rows = selection.random_search(
    "mlp", digits_train, space, settings["search_trials"], config=search_config, seed=0
)
finite = [row for row in rows if not row["diverged"]]
print(f"{len(rows)} trials ({len(rows) - len(finite)} diverged); best five:")
for row in rows[:5]:
    print(
        f"  lr {row['learning_rate']:.4f}  wd {row['weight_decay']:.1e}  "
        f"dropout {row['dropout']:.2f}  width {row['width']:3}  "
        f"val acc {row['val_acc']:.4f}"
    )
best, worst = rows[0], finite[-1]
print(f"worst finite trial: lr {worst['learning_rate']:.4f}, val acc {worst['val_acc']:.4f}")
# one panel per setting that varies (momentum is fixed, and at the small size so is the width)
fixed = [name for name in ("momentum", "width") if len({row[name] for row in rows}) == 1]
fig = selection.plot_search([{k: v for k, v in row.items() if k not in fixed} for row in rows])

# %% [markdown]
# ## Standardization: statistics of the training split only
#
# Standardizing means $z = (x - \mu) / \sigma$, with $\mu$ and $\sigma$ computed on some
# data: the result has mean 0 and standard deviation 1 on that data. Take a series whose level
# drifts upwards, $x_t = 2t/n + \epsilon_t$ with
# $\epsilon_t \sim \mathcal N(0, 1)$, $n = 1000$, and its last 30% as the test set:
#
# * with $\mu, \sigma$ of the **training part**, the standardized test part has a mean of
#   about $+0.84$: the level has moved since training, which is exactly what a deployed
#   model would meet;
# * with $\mu, \sigma$ of **all the data** (test set included), its mean drops to about
#   $+0.57$. It is still off-centre (the test part is only 30% of the data the statistics
#   were pooled over), but a third of the real shift is hidden: the test set leaked into the
#   preprocessing, and the evaluation looks closer to the training conditions than deployment
#   will be.
#
# By hand, then checked against `selection.standardization_demo`:


# %%
def standardize(x, reference):
    """(x - mean) / std, with the mean and std of `reference`."""
    return (x - reference.mean()) / reference.std()


n = 1000
series = 2.0 * np.arange(n) / n + np.random.default_rng(0).normal(size=n)
train_part, test_part = series[: int(0.7 * n)], series[int(0.7 * n) :]
by_hand = {
    "fit_on_train": standardize(test_part, train_part),
    "fit_on_all": standardize(test_part, series),
}
standardization = selection.standardization_demo()
for name, z in by_hand.items():
    stats = standardization[name]
    print(f"{name:13} test mean {stats['test_mean']:+.3f}, std {stats['test_std']:.3f}")
    assert np.isclose(z.mean(), stats["test_mean"]) and np.isclose(z.std(), stats["test_std"])
honest = standardization["fit_on_train"]["test_mean"]
leaky = standardization["fit_on_all"]["test_mean"]

fig, ax = plt.subplots(figsize=(7, 2.8))
t = np.arange(n)
ax.plot(t[: len(train_part)], train_part, ".", ms=2, label="training part")
ax.plot(t[len(train_part) :], test_part, ".", ms=2, label="test part")
ax.axhline(train_part.mean(), color="k", label="mean of the training part")
ax.axhline(series.mean(), color="crimson", ls="--", label="mean of all data (leaks)")
ax.set_xlabel("t")
ax.set_ylabel("x_t")
ax.set_title("a drifting series: which mean standardizes it")
ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
fig.tight_layout()

# %% [markdown]
# > **Compared with your notes.** The notes write standardization as "数据-均值 / 方差" (data
# > minus the mean, divided by the **variance**). It divides by the **standard deviation**
# > $\sigma$, the square root of the variance $\sigma^2$: only then is the result's spread 1
# > whatever the data's unit (dividing a length in metres by a variance in square metres leaves
# > 1/metres). The two agree only when $\sigma = 1$. Their other point stands: compute $\mu$
# > and $\sigma$ on the training data only.

# %%
heights = 170 + 10 * np.random.default_rng(1).normal(size=1000)  # in cm: sigma 10, variance 100
z_std = (heights - heights.mean()) / heights.std()
z_var = (heights - heights.mean()) / heights.var()
print(f"heights in cm, divided by the std: spread {z_std.std():.3f}")
print(f"divided by the variance: spread {z_var.std():.3f} (in mm: 10 times smaller again)")
assert np.isclose(z_std.std(), 1.0)

# %% [markdown]
# ## Class imbalance: 9 to 1
#
# Two overlapping classes, 450 training examples of the majority and 50 of the minority,
# fit by logistic regression (`selection.imbalance_demo`) and tested on a fresh set with the
# same 9:1 ratio. Trained as is, the model scores a high **accuracy** (always answering
# "majority" would already score 90%) while it finds only a small share of the minority:
# accuracy hides it. Oversampling the minority to 1:1 (`data.oversample_indices` repeats its
# examples) makes it count as much as the majority in the loss: its recall jumps and the
# **balanced accuracy** (the mean of the two recalls) rises, at the price of some majority
# recall and of plain accuracy.

# %%
X_imb, y_imb = selection.imbalance_data(0, 450, 50)
balanced = data.oversample_indices(y_imb, seed=0)
print("class counts:", np.bincount(y_imb), "-> oversampled:", np.bincount(y_imb[balanced]))
assert np.bincount(y_imb[balanced]).tolist() == [450, 450]

imbalance = selection.imbalance_demo()
for name, r in imbalance.items():
    print(
        f"{name:12} minority recall {r['minority_recall']:.3f}  "
        f"majority recall {r['majority_recall']:.3f}  "
        f"balanced acc {r['balanced_accuracy']:.3f}  accuracy {r['accuracy']:.3f}"
    )
plain, over = imbalance["plain"], imbalance["oversampled"]

fig, ax = plt.subplots(figsize=(6.4, 3.2))
names = list(imbalance)
positions = np.arange(len(names))
for j, metric in enumerate(["minority_recall", "majority_recall", "balanced_accuracy"]):
    values = [imbalance[name][metric] for name in names]
    ax.bar(positions + 0.27 * (j - 1), values, 0.27, label=metric.replace("_", " "))
ax.set_xticks(positions, names)
ax.set_ylim(0, 1.35)
ax.set_ylabel("recall / accuracy")
ax.legend(ncols=3, loc="upper center", fontsize=10)
ax.set_title("9:1 classes: plain vs oversampled")
fig.tight_layout()

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell where you set `answer`, and a check cell after it that tells you
# whether your answer is right (without telling you the answer).
#
# **1 (compute).** How many parameters has an MLP from the 64 pixels of a digit to one hidden
# layer of 128 units, then to 10 classes (weights and biases)?

# %%
answer = None  # a number

# %%
mlp_128 = shapes.summarize(get_model("mlp", hidden=(128,), dropout=0.0), (1, 8, 8, 1))
nbk.check_answer(answer, mlp_128.total_params, "(n_in + 1) * n_out for each dense layer")

# %% [markdown]
# **2 (compute).** The development set above has `len(dev_idx)` examples, cut into $K = 5$
# folds the way `k_fold_indices` does. How many examples does fold 0 validate on?

# %%
answer = None  # a number

# %%
nbk.check_answer(answer, len(folds[0][1]), "n // k, plus one for the first n % k folds")

# %% [markdown]
# **3 (change, predict, then run).** Fit the capacity curve on all 100 training points
# instead of 20: `capacity_curve(x, poly.labels.astype(np.float64), 100, degrees)` (x holds the
# 100 training points, then the 100 others). Predict first: is the degree with the lowest
# validation error still below 6? Answer `True` or `False`.

# %%
answer = None  # True or False

# %%
_, val_100 = capacity_curve(x, poly.labels.astype(np.float64), 100, degrees)
nbk.check_answer(answer, bool(degrees[np.argmin(val_100)] < 6), "print the curve and look")

# %% [markdown]
# **4 (compute).** A feature has mean 10 and standard deviation 2 on the training data. What
# is the standardized value of 14? (And what would the notes' formula, which divides by the
# variance, give? Not asked: but check how far apart they are.)

# %%
answer = None  # a number

# %%
nbk.check_answer(answer, (14 - 10) / 2, "subtract the mean, divide by the standard deviation")

# %% [markdown]
# **5 (compute).** Oversampling made the 50 minority examples as many as the 450 majority
# ones. How many times is a minority example repeated, on average?

# %%
answer = None  # a number

# %%
nbk.check_answer(answer, float(np.mean(np.bincount(balanced)[np.flatnonzero(y_imb == 1)])),
                 "450 rows drawn from 50 examples")  # fmt: skip

# %% [markdown]
# ## Checks
#
# The claims this page makes about its runs, checked on the numbers above (at the small size;
# at the book size they are printed, not asserted).

# %%
# The polynomial fits: the cubic recovers its weights; a line underfits; 20 features on 10
# points overfit.
assert np.abs(normal.weights - np.array(selection.TRUE_POLY_WEIGHTS)).max() < 0.1
assert normal.train_loss[-1] < 0.05 and normal.test_loss[-1] < 0.05
assert underfit.train_loss[-1] > 1.0 and underfit.test_loss[-1] > 1.0
assert overfit.test_loss[-1] > 5 * overfit.train_loss[-1]
# The capacity curve: training error never rises; validation is lowest at the true degree 3
# and far higher at both ends.
assert np.all(np.diff(train_error) <= 1e-6 * train_error[:-1]) and best_degree == 3
assert val_error[0] > 100 * val_error[2] and val_error[-1] > 1000 * val_error[2]
# The noise of the polynomial data is the book's 0.1.
assert 0.08 < noise.std() < 0.12
if SIZE == "small":
    # K-fold: every fold well above chance, the estimate close to the final test score, and the
    # fold trained by hand as good as the population's.
    assert cv.metrics["val_acc"].min() > 0.85, cv.metrics["val_acc"]
    assert protocol.test_acc > 0.85 and protocol.ensemble_test_acc > 0.85
    assert abs(protocol.test_acc - cv.mean["val_acc"]) < 0.05
    assert abs(by_hand_acc - cv.metrics["val_acc"][0]) < 0.05, by_hand_acc
    # Random search: the best trial well above chance, and the settings matter.
    assert best["val_acc"] > 0.85, best
    assert best["val_acc"] - worst["val_acc"] > 0.02
# Standardization: the test part is well above the training level; the leak hides about a
# third of that shift.
assert honest > 0.7
assert 0.3 < leaky < honest - 0.2 and 0.25 < 1 - leaky / honest < 0.4
# Imbalance: accuracy hides the minority; oversampling finds it, at some majority recall.
assert plain["accuracy"] > 0.85 and plain["minority_recall"] < 0.5
assert over["minority_recall"] > plain["minority_recall"] + 0.3
assert over["balanced_accuracy"] > plain["balanced_accuracy"] + 0.05
assert over["majority_recall"] < plain["majority_recall"] and over["accuracy"] < plain["accuracy"]
print("the checks hold")

# %%
# Results
for name, fit in fits.items():
    losses = f"train loss {fit.train_loss[-1]:.4f}, test loss {fit.test_loss[-1]:.4f}"
    print(f"polynomial {name}: {losses}")
print(
    f"{k}-fold val acc {cv.mean['val_acc']:.4f} +- {cv.std['val_acc']:.4f} "
    f"(loss {cv.mean['val_loss']:.4f}); test acc {protocol.test_acc:.4f}"
)
print(
    f"random search, {len(rows)} trials: best val acc {best['val_acc']:.4f} "
    f"(lr {best['learning_rate']:.4f}, wd {best['weight_decay']:.1e}, "
    f"dropout {best['dropout']:.2f}, width {best['width']})"
)
print(f"capacity curve: lowest validation error at degree {best_degree}")
print(f"standardized test mean: {honest:+.3f} (training statistics), {leaky:+.3f} (all data)")
print(
    f"imbalance: minority recall {plain['minority_recall']:.3f} -> "
    f"{over['minority_recall']:.3f} with oversampling"
)
print(f"notebook time: {time.perf_counter() - START:.1f} s")
