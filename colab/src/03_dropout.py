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
# **Size.** The book size trains the MLP on Fashion-MNIST (28x28, 10 epochs, learning rate
# 0.5, batch 256), on the GPU/TPU when the runtime has one (on Colab: *Runtime > Change runtime
# type*). The small size trains it on scikit-learn's 8x8 `digits` for 5 epochs, in seconds on a
# CPU. The over-fitting demo uses digits at both sizes.

# %% tags=["setup"]
# The shared set-up cell (colab/src/_setup.py: size form, install on Colab, device) replaces
# this one in the notebook; run as a script, this is all of it that matters.
import time

import jax

from jaxnotes import notebook as nbk

START = time.perf_counter()
SIZE = nbk.start("small")

# %%
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
    assert 0 <= p <= 1
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
for p in (0.2, 0.5, 0.8):
    outputs = jax.vmap(lambda k, p=p: dropout_layer(k, h, p))(keys)  # (100_000, 8)
    zeros, mean = float(jnp.mean(outputs == 0)), outputs.mean(axis=0)
    print(f"p = {p}: share of zeros {zeros:.3f}, mean output {np.round(np.asarray(mean), 2)}")
    assert abs(zeros - p) < 0.01
    assert np.allclose(mean, h, rtol=0.05), mean

# %% [markdown]
# ## Dropout narrows the gap between training and test accuracy
#
# `regularization.dropout_demo` over-fits on purpose: the 256-256 MLP on 200 digits, 40% of
# their labels redrawn at random, so that fitting them means memorising (100 epochs of SGD).
# Without dropout the training accuracy reaches 100% and the test accuracy lags far behind;
# with dropout 0.5 after each hidden layer (from scratch with `ops.dropout`, or Flax's
# `nn.Dropout`) the gap shrinks a lot and the test accuracy is higher. All three start from the
# same weights and see the same batches.

# %%
demo = regularization.dropout_demo(epochs=settings["demo_epochs"])
for variant, r in demo.items():
    print(
        f"{variant:8} train acc {r['train_acc']:.3f}  test acc {r['test_acc']:.3f}  "
        f"gap {r['gap']:+.3f}"
    )
assert demo["none"]["train_acc"] > 0.97  # memorised, noisy labels included
assert demo["none"]["gap"] > 0.2
for variant in ("scratch", "flax"):
    assert demo[variant]["gap"] < demo["none"]["gap"] - 0.1, variant
    assert demo[variant]["test_acc"] > demo["none"]["test_acc"] + 0.03, variant
fig = regularization.plot_dropout(demo)

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
    history = result.history
    print(f"{label}: test acc {result.summary['test_acc']:.4f}")
    assert history[-1]["train_loss"] < history[0]["train_loss"], label
    assert result.summary["test_acc"] > 0.75, (label, result.summary["test_acc"])
    if SIZE == "small":
        assert result.summary["test_acc"] > 0.85, (label, result.summary["test_acc"])
with_dropout, without = (runs[label][0].history[-1]["train_acc"] for label in runs)
print(f"training accuracy during the last epoch: {with_dropout:.4f} vs {without:.4f}")
if SIZE == "small":
    assert with_dropout < without

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
assert abs(accuracy - result.summary["test_acc"]) < 1e-3

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

# %%
# Results
for variant, r in demo.items():
    print(
        f"dropout demo, {variant}: train acc {r['train_acc']:.4f}, test acc "
        f"{r['test_acc']:.4f}, gap {r['gap']:+.4f}, test loss {r['test_loss']:.4f}"
    )
for label, (result, seconds) in runs.items():
    params = shapes.count_params(result.state.params)
    print(nbk.results_line(f"MLP, {label}", result, seconds, params=params))
print(f"lr 1000: stopped at step {diverged.step} ({diverged.kind})")
print(f"notebook time: {time.perf_counter() - START:.1f} s")
