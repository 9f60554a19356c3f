# %% [markdown]
# # 2. Weight decay
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/02_weight_decay.ipynb)
#
# Weight decay (L2 regularization) adds the squared norm of the weights to the loss,
# $$L(\mathbf w, b) + \frac{\lambda}{2} \lVert \mathbf w \rVert^2,$$
# and since the gradient of $\frac{\lambda}{2} \lVert \mathbf w \rVert^2$ is
# $\lambda \mathbf w$, every SGD step first shrinks the weights, then follows the gradient:
# $$\mathbf w \leftarrow (1 - \eta\lambda)\, \mathbf w - \eta\, \nabla_{\mathbf w} L.$$
# Biases are not decayed (they do not make the model more complex).
#
# Two ways to write it, identical for plain SGD:
#
# * **from scratch**: $\lambda$ times the penalty $\sum w^2 / 2$ added to the loss;
# * **decoupled**, in the optimizer: `optax.add_decayed_weights(λ, mask)` before the learning
#   rate (`jaxnotes.optim.make_optimizer(..., weight_decay=λ)`), with a mask
#   (`jaxnotes.optim.decay_mask`) that skips every 1-D parameter (the biases). With momentum
#   or Adam the two differ; decoupled is what AdamW does.
#
# **The book's demo**: linear regression with $d = 200$ inputs and only 20 training
# examples, $y = 0.05 + \sum_i 0.01 x_i + \epsilon$. Without decay the model fits the noise
# (training loss near 0, validation loss large); decay trades a little training loss for a
# much smaller validation loss.

# %% [markdown]
# **Size.** The demo's data are small (20 training examples of 200 features), so it runs in
# seconds anywhere. The stored outputs are the small size, run on a CPU: the book's 100 epochs
# for 9 values of $\lambda$ from 0 to 300. The book size sweeps 11 values on the same data
# (`nbk.settings("weight_decay")` lists the current size's).

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

from jaxnotes import ops, optim, plots, regularization, shapes
from jaxnotes.models import get_model

settings = nbk.settings("weight_decay")
lambdas = settings["lambdas"]
print(settings)

# %% [markdown]
# ## The data
#
# `regularization.weight_decay_data` draws $\mathbf x \sim \mathcal N(0, I_{200})$ and
# $y = 0.05 + 0.01 \sum_i x_i + \epsilon$ with $\epsilon \sim \mathcal N(0, 0.01^2)$: 20
# examples to train on, 100 to validate. What is left of $y$ after the true model is the
# noise alone:

# %%
demo_data = regularization.weight_decay_data(seed=0)
print("train", demo_data.X_train.shape, " validation", demo_data.X_val.shape)
residual = demo_data.y_train - 0.05 - 0.01 * demo_data.X_train.sum(axis=1)
print(f"noise std on the training set: {residual.std():.4f}")

# %% [markdown]
# ## The penalty and the update, by hand
#
# The book's `l2_penalty` is half the sum of the squared weights. Checked against
# `jaxnotes.ops.l2_penalty`, then used: the gradient of the penalized loss gives exactly the
# "shrink, then step" update above.


# %%
def l2_penalty(w):
    return jnp.sum(w**2) / 2


def squared_loss(params, X, y):
    """The book's (y_hat - y)^2 / 2, averaged over the batch."""
    y_hat = X @ params["w"][:, 0] + params["b"][0]
    return jnp.mean((y_hat - y) ** 2 / 2)


def penalized_loss(params, X, y, lambd):
    return squared_loss(params, X, y) + lambd * l2_penalty(params["w"])


key = jax.random.key(0)
params = {"w": jax.random.normal(key, (200, 1)), "b": jnp.zeros(1)}  # the book's init
assert np.isclose(l2_penalty(params["w"]), ops.l2_penalty(params["w"]), rtol=1e-5)

X, y = jnp.asarray(demo_data.X_train), jnp.asarray(demo_data.y_train)
lr, lambd = 0.003, 3.0
step = params["w"] - lr * jax.grad(penalized_loss)(params, X, y, lambd)["w"]
shrink_then_step = (1 - lr * lambd) * params["w"] - lr * jax.grad(squared_loss)(params, X, y)["w"]
assert np.allclose(step, shrink_then_step, atol=1e-4)
print(f"penalty of the initial weights: {float(l2_penalty(params['w'])):.1f}")

# %% [markdown]
# ## The sweep over λ, from scratch and as optax's decoupled decay
#
# `regularization.weight_decay_sweep` trains the linear model once per $\lambda$ (the book's
# SGD: learning rate 0.003, batch 5, 100 epochs, $\mathbf w$ initialised from
# $\mathcal N(0, 1)$), every value of $\lambda$ at once in one vmapped, jitted program, with
# the same initial weights and batches. The two ways of writing the decay give the same
# weights. The sweep runs from no decay to a decay far too strong:
#
# * at $\lambda = 0$ the training loss is almost 0 and the validation loss huge: 20 examples
#   pin down only 20 of the 200 directions of $\mathbf w$, and the other 180 keep their large
#   random initial values ($\lVert \mathbf w \rVert$ stays above 10, while the true weights
#   have norm $0.01 \sqrt{200} \approx 0.14$): **over-fitting**;
# * as $\lambda$ grows, $\lVert \mathbf w \rVert$ falls, the training loss rises, and the
#   validation loss falls by four orders of magnitude, to its lowest at an interior
#   $\lambda$;
# * past it the decay wins over the data: the weights shrink towards 0, the training loss
#   climbs to the level of predicting $y$ by its mean, and the validation loss rises again:
#   **under-fitting**. The third panel zooms in on that end (linear scale).

# %%
sweep = regularization.weight_decay_sweep(
    lambdas, method="scratch", data=demo_data, epochs=settings["epochs"]
)
sweep_optax = regularization.weight_decay_sweep(
    lambdas, method="optax", data=demo_data, epochs=settings["epochs"]
)
gap = float(np.abs(sweep["w"] - sweep_optax["w"]).max())
print(f"max |w_scratch - w_optax| over all λ: {gap:.2e} (the same update for SGD)")
print(f"{'lambda':>8} {'||w||':>8} {'train loss':>11} {'val loss':>10}")
for lam, norm, train, val in zip(
    sweep["lambdas"], sweep["w_norm"], sweep["train_loss"], sweep["val_loss"], strict=True
):
    print(f"{lam:8g} {norm:8.4f} {train:11.2e} {val:10.4g}")
norms, train_loss, val_loss = sweep["w_norm"], sweep["train_loss"], sweep["val_loss"]
best = int(np.argmin(val_loss))
print(f"lowest validation loss at lambda = {lambdas[best]:g}")

import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
positive = np.asarray(lambdas)[1:]
left = {"||w||": {"||w||": norms}, "loss": {"train": train_loss, "validation": val_loss}}
for ax, (label, values) in zip(axes[:2], left.items(), strict=True):
    for name, v in values.items():
        ax.plot(lambdas, v, "o-", label=name)
    ax.set_xscale("symlog", linthresh=float(positive.min()))
    ax.set_yscale("log")
    ax.set_ylabel(label)
zoom = np.asarray(lambdas) >= 10
axes[2].plot(np.asarray(lambdas)[zoom], val_loss[zoom], "s-", color="C1", label="validation")
axes[2].plot(np.asarray(lambdas)[zoom], train_loss[zoom], "o-", color="C0", label="train")
axes[2].set_xscale("log")
axes[2].set_ylabel("loss (linear scale)")
axes[2].set_title("the strong end: under-fitting")
axes[0].set_title("the weights shrink")
axes[1].set_title(f"lowest validation loss: lambda = {lambdas[best]:g}")
for ax in axes:
    ax.axvline(lambdas[best], color="gray", ls=":")
    ax.set_xlabel("lambda")
    ax.grid(True, alpha=0.3)
    if len(ax.get_lines()) > 2:
        ax.legend()
fig.tight_layout()

# %% [markdown]
# **The notes' values.** The notes suggest $\lambda$ = 0.01, 0.001, 0.0001. Here they do
# almost nothing: $\lVert \mathbf w \rVert$ barely moves from its value at $\lambda = 0$.
# Both are right: each SGD step multiplies the weights by $1 - \eta \lambda$, so what
# matters is $\eta \lambda$ times the number of steps. This demo takes 400 steps at
# $\eta = 0.003$; a deep network trains for tens of thousands of steps, where $10^{-4}$
# already shrinks the weights a lot, and its data term (many examples) is far stronger than
# 20 examples' is here. A good $\lambda$ is found by a sweep like this one, on a log scale,
# for each problem: the notes' values are where to start for a deep network.

# %% [markdown]
# The book's two figures, and a third: training and validation loss per epoch without decay,
# at the best $\lambda$ and at the largest, on one (log) scale. On a log scale the gap
# between the two curves is their ratio: without decay the validation loss ends many orders
# of magnitude above the training loss; at the best $\lambda$ and beyond, the two are close,
# and at the largest both stay at the level of a model that predicts almost a constant.

# %%
strong = int(np.argmax(sweep["lambdas"]))
panels = {
    f"lambda = {sweep['lambdas'][i]:g}{note}": {
        "train": sweep["train_curve"][i],
        "validation": sweep["val_curve"][i],
    }
    for i, note in ((0, " (no decay)"), (best, " (best)"), (strong, " (too strong)"))
}
ratios = val_loss / train_loss
for i in (0, best, strong):
    print(f"validation / training loss at λ = {lambdas[i]:g}: {ratios[i]:.3g}")
fig = plots.loss_panels(panels, log_y=True)

# %% [markdown]
# ## Which parameters decay
#
# On the book's MLP (its layers below), `optim.decay_mask` marks the kernels (2-D) for decay
# and the biases (1-D) not. One optimizer step with zero gradients shows it: all that moves a
# kernel is the decay, $-\eta \lambda \mathbf w$, and the biases do not move at all.

# %%
mlp = get_model("mlp")
print(shapes.summarize(mlp, (1, 28, 28, 1), train=False))
mlp_params = mlp.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
mask = optim.decay_mask(mlp_params)
decayed = sum(
    shapes.count_params(leaf)
    for leaf, decays in zip(jax.tree.leaves(mlp_params), jax.tree.leaves(mask), strict=True)
    if decays
)
total = shapes.count_params(mlp_params)
print(f"{decayed:,} of {total:,} parameters decay")
assert decayed == 784 * 256 + 256 * 256 + 256 * 10  # the kernels, exactly

tx = optim.make_optimizer("sgd", 0.1, weight_decay=1e-3)
zero_grads = jax.tree.map(jnp.zeros_like, mlp_params)
updates, _ = tx.update(zero_grads, tx.init(mlp_params), mlp_params)
for layer in mlp_params:
    for name in ("kernel", "bias"):
        decays = bool(mask[layer][name])
        largest = float(jnp.abs(updates[layer][name]).max())
        print(f"{layer}/{name:6} decays: {decays!s:5}  largest update {largest:.2e}")
    kernel = mlp_params[layer]["kernel"]
    assert np.allclose(updates[layer]["kernel"], -0.1 * 1e-3 * kernel, atol=1e-9)
    assert not jnp.any(updates[layer]["bias"])

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell where you set `answer`, and a check cell after it that tells you
# whether your answer is right (without telling you the answer).
#
# **1 (compute).** With the book's learning rate $\eta = 0.003$ and $\lambda = 3$, by what
# factor does one SGD step multiply the weights before it follows the data's gradient?

# %%
answer = None  # a number

# %%
nbk.check_answer(answer, 1 - 0.003 * 3, "w <- (1 - lr * lambda) w - lr * grad")

# %% [markdown]
# **2 (compute).** How many of the book MLP's parameters above are **not** decayed?

# %%
answer = None  # a number

# %%
nbk.check_answer(answer, total - decayed, "the biases: one per unit of each layer")

# %% [markdown]
# **3 (predict, then run).** Does the notes' largest value, $\lambda = 0.01$, change
# $\lVert \mathbf w \rVert$ by more than 5% in this demo's 100 epochs? Answer `True` or
# `False`.

# %%
answer = None  # True or False

# %%
one = regularization.weight_decay_sweep([0.0, 1e-2], data=demo_data, epochs=settings["epochs"])
nbk.check_answer(answer, bool(one["w_norm"][1] < 0.95 * one["w_norm"][0]),
                 "lr * lambda * steps = 0.003 * 0.01 * 400")  # fmt: skip

# %% [markdown]
# **4 (change, predict, then run).** Train 10 times longer: `EPOCHS = 1000`. Will the best
# $\lambda$ then be smaller than it is at 100 epochs? Predict `True` or `False`; the check
# runs the sweep at `EPOCHS` (a few seconds) once `answer` is set.

# %%
answer = None  # True or False
EPOCHS = 1000

# %%
smaller = None
if answer is not None:  # trains once you have predicted
    longer = regularization.weight_decay_sweep(lambdas, data=demo_data, epochs=EPOCHS)
    best_longer = lambdas[int(np.argmin(longer["val_loss"]))]
    print(f"best lambda after {EPOCHS} epochs: {best_longer:g} (after 100: {lambdas[best]:g})")
    smaller = bool(best_longer < lambdas[best])
nbk.check_answer(answer, smaller, "more steps: each decays the weights again")

# %% [markdown]
# ## Checks
#
# The claims this page makes about its runs, checked on the numbers above.

# %%
assert residual.std() < 0.02  # the book's noise, 0.01
assert gap < 1e-3  # from scratch and optax's decoupled decay: the same weights
assert train_loss[0] < 1e-3 and val_loss[0] > 1000 * train_loss[0]  # over-fitting at λ = 0
assert norms[0] > 10
# As λ grows (allowing for float rounding between neighbouring small λ): ||w|| falls and the
# training loss rises...
assert np.all(np.diff(norms) < 1e-3 * norms[:-1]) and norms[-1] < norms[0] / 1000
assert np.all(np.diff(train_loss) > -1e-3 * train_loss[:-1])
# ...the validation loss falls by orders of magnitude to an interior optimum, then rises again.
assert 0 < best < len(lambdas) - 1 and val_loss[best] < val_loss[0] / 1000
assert val_loss[-1] > 1.05 * val_loss[best] and train_loss[-1] > 100 * train_loss[0]
assert ratios[0] > 1e4 and ratios[best] < 10
print("the checks hold")

# %%
# Results
for label, i in (("lambda = 0", 0), ("best lambda", best), ("largest lambda", strong)):
    print(
        f"{label} ({sweep['lambdas'][i]:g}): ||w|| {sweep['w_norm'][i]:.4f}, "
        f"train loss {sweep['train_loss'][i]:.2e}, "
        f"validation loss {sweep['val_loss'][i]:.4g}"
    )
print(f"scratch vs optax decoupled decay: max weight difference {gap:.2e}")
print(f"MLP parameters: {total:,}, of which decayed: {decayed:,}")
print(f"notebook time: {time.perf_counter() - START:.1f} s")
