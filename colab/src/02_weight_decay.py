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
# seconds anywhere: both sizes train the book's 100 epochs, and the small size sweeps fewer
# values of $\lambda$ (`nbk.settings("weight_decay")` lists them).

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
assert residual.std() < 0.02

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
# weights. What the table shows:
#
# * at $\lambda = 0$ the training loss is almost 0 and the validation loss huge: 20 examples
#   pin down only 20 of the 200 directions of $\mathbf w$, and the other 180 keep their large
#   random initial values ($\lVert \mathbf w \rVert$ stays above 10, while the true weights
#   have norm $0.01 \sqrt{200} \approx 0.14$);
# * as $\lambda$ grows, $\lVert \mathbf w \rVert$ falls, the training loss rises a little,
#   and the validation loss falls by orders of magnitude.

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
    print(f"{lam:8g} {norm:8.3f} {train:11.2e} {val:10.4f}")

assert gap < 1e-3
norms, train_loss, val_loss = sweep["w_norm"], sweep["train_loss"], sweep["val_loss"]
assert train_loss[0] < 1e-3 and val_loss[0] > 1000 * train_loss[0]  # overfitting at λ = 0
assert norms[0] > 10
# As λ grows (allowing for float rounding between neighbouring small λ): ||w|| falls,
assert np.all(np.diff(norms) < 1e-3 * norms[:-1]) and norms[-1] < norms[0] / 10
assert train_loss[-1] > train_loss[0]  # the training loss rises a little,
assert np.all(np.diff(val_loss) < 1e-2 * val_loss[:-1])  # the validation loss falls,
assert val_loss[-1] < val_loss[0] / 100  # by orders of magnitude
fig = regularization.plot_weight_decay(sweep)

# %% [markdown]
# The book's two figures: training and validation loss per epoch without decay and with the
# strongest one swept. On a log scale the gap between the two curves is their ratio: without
# decay the validation loss ends many orders of magnitude above the training loss; with the
# strongest decay, less than a couple of hundred times it.

# %%
strong = int(np.argmax(sweep["lambdas"]))
panels = {
    f"lambda = {sweep['lambdas'][i]:g}": {
        "train": sweep["train_curve"][i],
        "validation": sweep["val_curve"][i],
    }
    for i in (0, strong)
}
ratios = val_loss / train_loss
print(f"validation / training loss at λ = 0: {ratios[0]:.1e}")
print(f"validation / training loss at λ = {lambdas[strong]:g}: {ratios[strong]:.1e}")
assert ratios[0] > 1e4 and ratios[strong] < 200
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

# %%
# Results
best = int(np.argmin(sweep["val_loss"]))
for label, i in (("lambda = 0", 0), ("best lambda", best)):
    print(
        f"{label} ({sweep['lambdas'][i]:g}): ||w|| {sweep['w_norm'][i]:.3f}, "
        f"train loss {sweep['train_loss'][i]:.2e}, "
        f"validation loss {sweep['val_loss'][i]:.4f}"
    )
print(f"scratch vs optax decoupled decay: max weight difference {gap:.2e}")
print(f"MLP parameters: {total:,}, of which decayed: {decayed:,}")
print(f"notebook time: {time.perf_counter() - START:.1f} s")
