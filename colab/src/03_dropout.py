# %% [markdown]
# # 3. Dropout
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/03_dropout.ipynb)
#
# During training, dropout zeroes each hidden unit with probability $p$ and scales the
# survivors by $1/(1-p)$:
# $$h' = \begin{cases} 0 & \text{with probability } p \\ \dfrac{h}{1-p} & \text{otherwise,}
# \end{cases} \qquad \mathbb E[h'] = p \cdot 0 + (1 - p) \frac{h}{1-p} = h.$$
# The expectation is unchanged, so at inference dropout is simply the identity. In JAX every
# mask comes from an explicit PRNG key: the same key gives the same mask, and the training
# loop derives a fresh key for each step (`jax.random.fold_in(key, step)`), never reusing one.
#
# The book's MLP: the flattened image, two hidden layers of 256 with ReLU, dropout 0.2 after
# the first and 0.5 after the second (the layer nearer the input gets the smaller rate).
#
# **Numerics** (the notes): a NaN comes from 0/0, an inf from a too-large learning rate or
# initialisation; the training loop checks every step's loss on the device and stops with the
# step and the likely cause.

# %% [markdown]
# **Size.** The stored outputs are the small size, run on a CPU: the MLP trains on
# scikit-learn's 8x8 `digits` (1,257 training images) for 5 epochs, in seconds. The book size
# trains it on Fashion-MNIST (28x28, 60,000 images, 10 epochs, learning rate 0.5, batch 256):
# about two minutes for its two runs on a CPU (the first cell then simply runs it), seconds on
# a GPU. The over-fitting demos use digits at both sizes.

# %% tags=["setup"]
# The shared set-up cell (colab/src/_setup.py: size form, install on Colab, device) replaces
# this one in the notebook; run as a script, this is all of it that matters.
import time

from jaxnotes import notebook as nbk

START = time.perf_counter()
SIZE = nbk.start("small")
nbk.as_script()  # run as a script: figures are saved to files (or shown in windows)

# %%
import jax
import jax.numpy as jnp
import numpy as np

from jaxnotes import data, ops, plots, regularization, shapes
from jaxnotes.models import get_model
from jaxnotes.training import TrainingDivergedError

settings = nbk.settings("dropout")

# %% [markdown]
# ## Dropout by hand
#
# The book's `dropout_layer`: draw a uniform number per element, keep the element where it
# falls below $1 - p$ (so with probability $1 - p$), and scale what is kept by $1/(1-p)$.
# $p = 1$ drops everything (and must not divide by zero). With the same key it gives exactly
# what `jaxnotes.ops.dropout` gives.


# %%
def dropout_layer(key, X, p):
    """Zero each element of X with probability p; scale the others by 1 / (1 - p)."""
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if p == 1:
        return jnp.zeros_like(X)
    if p == 0:
        return X
    keep = jax.random.uniform(key, X.shape) < 1 - p  # True with probability 1 - p
    return keep * X / (1 - p)


key = jax.random.key(0)
X = jnp.arange(16.0).reshape(2, 8)
for p in (0.0, 0.5, 1.0):
    print(f"p = {p}:\n{np.asarray(dropout_layer(key, X, p))}")
assert all(np.allclose(dropout_layer(key, X, p), ops.dropout(key, X, p)) for p in (0, 0.2, 0.5, 1))

mask = dropout_layer(key, X, 0.5)
same = np.array_equal(mask, dropout_layer(key, X, 0.5))
other = np.array_equal(mask, dropout_layer(jax.random.fold_in(key, 1), X, 0.5))
print("the same key gives the same mask:", same, "; a new key another one:", not other)
assert same and not other

# %% [markdown]
# ## The expectation is preserved
#
# Over 100,000 masks (one key each), a share $p$ of the units is zero, and the average output
# of every unit is its input $h$: the $1/(1-p)$ scaling exactly makes up for the dropped ones.

# %%
h = jnp.arange(1.0, 9.0)  # 8 units with values 1..8
keys = jax.random.split(jax.random.key(1), 100_000)
expectation = {}  # p -> (share of zeros, mean output per unit)
for p in (0.2, 0.5, 0.8):
    outputs = jax.vmap(lambda k, p=p: dropout_layer(k, h, p))(keys)  # (100_000, 8)
    expectation[p] = float(jnp.mean(outputs == 0)), np.asarray(outputs.mean(axis=0))
    zeros, mean = expectation[p]
    print(f"p = {p}: share of zeros {zeros:.3f}, mean output {np.round(mean, 2)}")

# %% [markdown]
# ## Dropout narrows the gap between training and test accuracy
#
# `regularization.dropout_demo` over-fits on purpose: the 256-256 MLP on 200 digits, 40% of
# their labels redrawn at random, so that fitting them means memorising (100 epochs of SGD).
# Without dropout the training accuracy reaches 100% and the test accuracy lags far behind;
# with dropout 0.5 after each hidden layer (from scratch with `ops.dropout`, or Flax's
# `nn.Dropout`) the gap shrinks a lot and the test accuracy is higher. All three start from the
# same weights and see the same batches; the three panels share their accuracy scale.

# %%
demo = regularization.dropout_demo(epochs=settings["demo_epochs"])
for variant, r in demo.items():
    print(
        f"{variant:8} train acc {r['train_acc']:.3f}  test acc {r['test_acc']:.3f}  "
        f"gap {r['gap']:+.3f}"
    )
titles = {
    "none": "no dropout",
    "scratch": "dropout 0.5, by hand (ops.dropout)",
    "flax": "dropout 0.5, Flax nn.Dropout",
}
fig = plots.loss_panels(
    {
        titles[variant]: {
            "train acc": r["history"]["train_acc"],
            "test acc": r["history"]["test_acc"],
        }
        for variant, r in demo.items()
    },
    ylabel="accuracy",
)

# %% [markdown]
# ## The dropout rate, and dropout against weight decay
#
# The same recipe (a 64-256-256-10 MLP on 200 digits with 40% of their labels redrawn, SGD at
# 0.1, batch 20, 100 epochs) written out on the page, for several dropout rates $p$ and, with
# no dropout, several weight decays $\lambda$ (chapter 2, the kernels only): seven trainings
# in ONE jitted program (`jax.vmap` over $(p, \lambda)$; a traced $p$ needs `jnp.where`
# instead of the Python `if`s of `dropout_layer`). The notes' usual rates are 0.1, 0.5 and 0.9:
#
# * $p = 0.1$ is too little to stop the memorising here; $p = 0.5$ narrows the gap and raises
#   the test accuracy;
# * $p = 0.9$ keeps one unit in ten: the network can no longer fit even the clean labels
#   (**under-fitting**: training and test accuracy both low). 0.9 suits a very wide layer, not
#   this one;
# * weight decay does the same job: a small $\lambda$ nothing, a moderate one about as well as
#   dropout 0.5, a large one under-fits. The notes find dropout usually works better than L2;
#   on this problem the best of each is close. Which wins depends on the problem: sweep both.


# %%
import optax


def noisy_digits(n_train=200, label_noise=0.4, seed=0):
    """(X, y) of n_train digits with a share of labels redrawn, and the clean test split."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(digits_train))[:n_train]
    labels = digits_train.labels[chosen].copy()
    redraw = rng.random(n_train) < label_noise
    labels[redraw] = rng.integers(10, size=int(redraw.sum()))
    flat = lambda images: jnp.asarray(images).reshape(len(images), -1)  # noqa: E731
    return (flat(digits_train.images[chosen]), jnp.asarray(labels),
            flat(digits_test.images), jnp.asarray(digits_test.labels))  # fmt: skip


def sweep_forward(params, X, rate=0.0, key=None):
    """The MLP with dropout `rate` (traced) after both hidden layers when a key is given."""
    H = X
    for i in range(2):
        H = jax.nn.relu(H @ params[f"Dense_{i}"]["kernel"] + params[f"Dense_{i}"]["bias"])
        if key is not None:
            keep = jax.random.uniform(jax.random.fold_in(key, i), H.shape) >= rate
            H = jnp.where(keep, H / (1 - rate), 0.0)
    return H @ params["Dense_2"]["kernel"] + params["Dense_2"]["bias"]


digits_train, digits_test = data.load("digits", "train"), data.load("digits", "test")
X_noisy, y_noisy, X_clean, y_clean = noisy_digits()
init = get_model("mlp", dropout=0.0).init(jax.random.key(0), X_noisy[:1])["params"]
EPOCHS, BATCH, LR = 100, 20, 0.1
orders = np.stack([np.random.default_rng(e).permutation(200) for e in range(EPOCHS)])
batches = jnp.asarray(orders.reshape(-1, BATCH))  # the same batches for every setting


def train_setting(rate, wd):
    """(train acc on the noisy labels, test acc) after EPOCHS of SGD, inference mode."""

    def loss(params, idx, key):
        logits = sweep_forward(params, X_noisy[idx], rate, key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_noisy[idx]).mean()

    def step(params, inputs):
        i, idx = inputs
        grads = jax.grad(loss)(params, idx, jax.random.fold_in(jax.random.key(1), i))
        decay = lambda w, g: w - LR * (g + wd * w * (w.ndim > 1))  # noqa: E731 (kernels only)
        return jax.tree.map(decay, params, grads), None

    params, _ = jax.lax.scan(step, init, (jnp.arange(len(batches)), batches))
    accuracy = lambda X, y: jnp.mean(jnp.argmax(sweep_forward(params, X), -1) == y)  # noqa: E731
    return accuracy(X_noisy, y_noisy), accuracy(X_clean, y_clean)


settings_grid = [
    (0.0, 0.0),
    (0.1, 0.0),
    (0.5, 0.0),
    (0.9, 0.0),
    (0.0, 1e-3),
    (0.0, 1e-2),
    (0.0, 1e-1),
]
rates_, wds_ = (jnp.array(column) for column in zip(*settings_grid, strict=True))
train_accs, test_accs = (np.asarray(a) for a in jax.jit(jax.vmap(train_setting))(rates_, wds_))
grid = {setting: (float(a), float(b)) for setting, a, b in zip(settings_grid, train_accs, test_accs,
                                                                 strict=True)}  # fmt: skip
for (rate, wd), (train_acc, test_acc) in grid.items():
    print(f"dropout {rate:.1f}, weight decay {wd:g}: train {train_acc:.3f}  test {test_acc:.3f}")

import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
panels = {
    "dropout rate p (no weight decay)": settings_grid[:4],
    "weight decay (no dropout)": [settings_grid[0], *settings_grid[4:]],
}
for ax, (title, chosen) in zip(axes, panels.items(), strict=True):
    labels = [f"{r:g}" if title.startswith("dropout") else f"{w:g}" for r, w in chosen]
    positions = np.arange(len(chosen))
    ax.bar(positions - 0.2, [grid[c][0] for c in chosen], 0.4, label="train (noisy labels)")
    ax.bar(positions + 0.2, [grid[c][1] for c in chosen], 0.4, label="test")
    ax.set_xticks(positions, labels)
    ax.set_xlabel("p" if title.startswith("dropout") else "lambda (kernels only)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
axes[0].set_ylabel("accuracy")
axes[0].legend(loc="upper right")
fig.tight_layout()

# %% [markdown]
# ## The chapter's data set
#
# The images the MLP trains on below, with their class names.

# %%
config, limits = nbk.chapter_config("mlp")
train_data, test_data = nbk.load_chapter_data(config, limits)
print(f"{nbk.dataset_name()}: {len(train_data):,} training, {len(test_data):,} test images")
fig = plots.labelled_images(
    train_data.images[:16], train_data.labels[:16], train_data.class_names, ncols=8
)

# %% [markdown]
# ## The MLP, layer by layer, and its forward pass by hand
#
# Dropout layers have no parameters; in training mode each one zeroes its layer's units with
# its own key. Our forward pass on the zoo model's parameters gives the zoo model's outputs at
# inference, and, in training mode, the same outputs as the from-scratch variant of the demo
# (`regularization.scratch_mlp_apply`, same key, one `fold_in` per layer).

# %%
rates = (0.2, 0.5)
mlp = get_model("mlp", dropout=rates)
print(shapes.summarize(mlp, (1, *test_data.image_shape), train=False))


def mlp_forward(params, X, rates, key=None):
    """Logits of the MLP; with a key (training), dropout after every hidden layer."""
    H = X.reshape(X.shape[0], -1)
    for i, rate in enumerate(rates):
        layer = params[f"Dense_{i}"]
        H = jax.nn.relu(H @ layer["kernel"] + layer["bias"])
        if key is not None:
            H = dropout_layer(jax.random.fold_in(key, i), H, rate)
    out = params[f"Dense_{len(rates)}"]
    return H @ out["kernel"] + out["bias"]


preprocess = data.make_preprocess(config.resize, config.normalization)
x = preprocess(jnp.asarray(test_data.images[:32]))
init_params = mlp.init(jax.random.key(0), x[:1])["params"]
zoo_logits = mlp.apply({"params": init_params}, x)  # inference: no dropout
scratch_logits = regularization.scratch_mlp_apply(init_params, x, rates, key)  # training mode
assert np.allclose(mlp_forward(init_params, x, rates), zoo_logits, atol=1e-3)
assert np.allclose(mlp_forward(init_params, x, rates, key), scratch_logits, atol=1e-3)

# %% [markdown]
# ## The book's MLP on the chapter's data set, with and without dropout
#
# Trained by `jaxnotes.training.fit` with the book's settings (Fashion-MNIST, lr 0.5,
# batch 256, 10 epochs) or, at the small size, on digits for 5 epochs. The curves are drawn as
# the epochs finish. Both runs learn: the training loss falls and the test accuracy ends far
# above chance (10%). The training accuracy in these curves is measured during the epoch, on
# the thinned networks dropout makes (the test accuracy with every unit on), so with dropout
# it typically runs lower than without.

# %%
runs = {}
for label, dropout in (("dropout 0.2 / 0.5", rates), ("no dropout", 0.0)):
    runs[label] = nbk.run_chapter_training(
        "mlp", curves=f"MLP, {label}", model_kwargs={"dropout": dropout}
    )
for label, (result, _) in runs.items():
    print(f"{label}: test acc {result.summary['test_acc']:.4f}")
with_dropout, without = (runs[label][0].history[-1]["train_acc"] for label in runs)
print(f"training accuracy during the last epoch: {with_dropout:.4f} vs {without:.4f}")

# %% [markdown]
# ## Predictions of the MLP trained with dropout
#
# Our forward pass, in inference mode (no key: every unit on), on the trained parameters: over
# the whole test set it scores what `fit` reported. Below, the first eight test images, then
# eight mistakes picked across the test set: each title is the prediction, and for a mistake,
# in red, the true class in brackets.

# %%
result, _ = runs["dropout 0.2 / 0.5"]
logits = mlp_forward(result.state.params, preprocess(jnp.asarray(test_data.images)), rates)
predictions = np.asarray(jnp.argmax(logits, axis=-1))
accuracy = float(np.mean(predictions == test_data.labels))
print(f"our forward pass: test acc {accuracy:.4f}; fit: {result.summary['test_acc']:.4f}")
assert np.isclose(accuracy, result.summary["test_acc"], atol=1e-3)

mistakes = np.flatnonzero(predictions != test_data.labels)
spread = mistakes[:: max(1, len(mistakes) // 8)][:8]  # eight, from all over the test set
shown = np.concatenate([np.arange(8), spread])
fig = plots.labelled_images(
    test_data.images[shown],
    test_data.labels[shown],
    test_data.class_names,
    predictions=predictions[shown],
    ncols=8,
)

# %% [markdown]
# ## Numerics: a learning rate far too large
#
# The same MLP with a learning rate of 1000: the loss explodes within a step, and `fit`
# stops with the step and the likely causes instead of training on NaNs.

# %%
try:
    nbk.run_chapter_training("mlp", learning_rate=1000.0, epochs=1)
    diverged = None
except TrainingDivergedError as error:
    diverged = error
    print(f"{type(error).__name__} at step {error.step} ({error.kind}):\n{error}")
assert diverged is not None

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell where you set `answer`, and a check cell after it that tells you
# whether your answer is right (without telling you the answer).
#
# **1 (compute).** With $p = 0.2$, a unit whose value is 4 is kept. What does dropout output
# for it?

# %%
answer = None  # a number

# %%
kept = dropout_layer(jax.random.key(3), jnp.full((64,), 4.0), 0.2).max()
nbk.check_answer(answer, float(kept), "the survivors are scaled by 1 / (1 - p)")

# %% [markdown]
# **2 (compute).** A hidden layer of 8 units with $p = 0.5$: the probability that dropout
# zeroes all 8 at once?

# %%
answer = None  # a number

# %%
nbk.check_answer(answer, 0.5**8, "each unit is dropped independently", rel=1e-2)

# %% [markdown]
# **3 (predict, then run).** In inference mode (no key), does the MLP trained with dropout
# give exactly the same logits when called twice on the same images? Answer `True` or `False`.

# %%
answer = None  # True or False

# %%
x_test = preprocess(jnp.asarray(test_data.images[:64]))
twice = [mlp_forward(result.state.params, x_test, rates) for _ in range(2)]
nbk.check_answer(answer, bool(np.array_equal(*twice)), "at inference dropout is the identity")

# %% [markdown]
# **4 (change, predict, then run).** Set `RATE = 0.7`. Will its test accuracy in the sweep's
# recipe lie between those of $p = 0.5$ and $p = 0.9$? Predict `True` or `False`; the check
# trains that setting (a few seconds) once `answer` is set.

# %%
answer = None  # True or False
RATE = 0.7

# %%
between = None
if answer is not None:  # trains once you have predicted
    _, rate_test = (float(a) for a in jax.jit(train_setting)(RATE, 0.0))
    print(f"dropout {RATE}: test acc {rate_test:.3f}")
    between = bool(min(grid[(0.5, 0.0)][1], grid[(0.9, 0.0)][1]) < rate_test
                   < max(grid[(0.5, 0.0)][1], grid[(0.9, 0.0)][1]))  # fmt: skip
nbk.check_answer(answer, between, "compare with the sweep's printed accuracies")

# %% [markdown]
# ## Checks
#
# The claims this page makes about its runs, checked on the numbers above (the MLP's runs at
# the small size; at the book size they are printed, not asserted).

# %%
# Dropout keeps a share p of zeros and the mean of every unit (100,000 masks).
for p, (zeros, mean) in expectation.items():
    assert abs(zeros - p) < 0.01 and np.allclose(mean, h, rtol=0.05), (p, zeros, mean)
# The demo: without dropout the noisy labels are memorised; with it the gap shrinks and the
# test accuracy rises, from scratch and with Flax alike.
assert demo["none"]["train_acc"] > 0.97 and demo["none"]["gap"] > 0.2
for variant in ("scratch", "flax"):
    assert demo[variant]["gap"] < demo["none"]["gap"] - 0.1, variant
    assert demo[variant]["test_acc"] > demo["none"]["test_acc"] + 0.03, variant
# The sweep: 0.5 helps, 0.9 under-fits; a moderate weight decay helps about as much, a large
# one under-fits.
none_test = grid[(0.0, 0.0)][1]
assert grid[(0.5, 0.0)][1] > none_test + 0.02 and grid[(0.9, 0.0)][0] < 0.5
assert grid[(0.0, 1e-2)][1] > none_test + 0.02 and grid[(0.0, 1e-1)][0] < 0.5
assert abs(grid[(0.5, 0.0)][1] - grid[(0.0, 1e-2)][1]) < 0.05
if SIZE == "small":
    for label, (result, _) in runs.items():
        assert result.history[-1]["train_loss"] < result.history[0]["train_loss"], label
        assert result.summary["test_acc"] > 0.85, (label, result.summary["test_acc"])
    assert with_dropout < without  # dropout's thinned networks train below the full one
print("the checks hold" if SIZE == "small" else "book size: the MLP runs' numbers above")

# %%
# Results
for variant, r in demo.items():
    print(
        f"dropout demo, {titles[variant]}: train acc {r['train_acc']:.4f}, test acc "
        f"{r['test_acc']:.4f}, gap {r['gap']:+.4f}, test loss {r['test_loss']:.4f}"
    )
for (rate, wd), (train_acc, test_acc) in grid.items():
    print(
        f"sweep, dropout {rate:g}, weight decay {wd:g}: train {train_acc:.4f}, test {test_acc:.4f}"
    )
for label, (result, seconds) in runs.items():
    params = shapes.count_params(result.state.params)
    print(nbk.results_line(f"MLP, {label}", result, seconds, params=params))
print(f"lr 1000: stopped at step {diverged.step} ({diverged.kind})")
print(f"notebook time: {time.perf_counter() - START:.1f} s")
