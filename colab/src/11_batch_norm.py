# %% [markdown]
# # 11. Batch normalization
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/11_batch_norm.ipynb)
#
# A deep network's layers keep changing what the next layer sees: as the weights move, the
# scale of each layer's output drifts, and a saturating activation like the sigmoid stops
# passing gradients back. **Batch normalization** standardises every channel of a layer's output
# over the minibatch (mean 0, variance 1), then lets the network rescale it with two learned
# numbers per channel, $\gamma$ (scale) and $\beta$ (shift):
#
# $$\mathrm{BN}(x) = \gamma \odot \frac{x - \hat\mu_B}{\sqrt{\hat\sigma_B^2 + \epsilon}} + \beta .$$
#
# In training, $\hat\mu_B$ and $\hat\sigma^2_B$ are the batch's own mean and variance; for
# prediction the layer uses moving averages of them kept during training, so one image's output
# no longer depends on the others in its batch. This chapter writes batch norm from scratch and
# checks it against the package and against Flax's own layer, puts it into LeNet, and shows what
# it changes: the same sigmoid LeNet that stalls at a too-large learning rate trains with batch
# norm, because the sigmoids' inputs stay where the sigmoid has a slope.
#
# **Size.** The outputs stored in this notebook are the small size, run on a CPU: scikit-learn's
# 8x8 `digits` scaled up to 28x28 (1,257 training images), 6 epochs with batch 32. The book size
# (`SIZE = "book"` in the first cell, on a GPU) runs the same cells on Fashion-MNIST at 28x28,
# 10 epochs with batch 256 (the book's), the comparison keeping its Adam rates; its numbers are
# not the ones stored here.

# %% tags=["setup"]
# The shared set-up cell (colab/src/_setup.py: size form, install on Colab, device) replaces
# this one in the notebook; run as a script, this is all of it that matters.
import time

from jaxnotes import notebook as nbk

START = time.perf_counter()
SIZE = nbk.start("small")

# %%
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxnotes import data, models, ops, plots, shapes
from jaxnotes.training import fit

# %% [markdown]
# ## Batch norm from scratch
#
# The book's function. After a dense layer the input is (batch, features) and every feature
# gets its own mean and variance over the batch; after a convolution it is (batch, height,
# width, channels) and every channel gets one mean and one variance over the batch **and** all
# positions (a channel is one feature detector, used everywhere in the image). In training the
# function also moves the running averages towards the batch's statistics,
# $m \leftarrow \text{momentum} \cdot m + (1 - \text{momentum}) \cdot \hat\mu_B$ (the book's
# momentum 0.9); in inference it uses those averages instead of the batch's.


# %%
def batch_norm(X, gamma, beta, moving_mean, moving_var, *, train, eps=1e-5, momentum=0.9):
    """(Y, new_moving_mean, new_moving_var); X is (N, C) or (N, H, W, C), the rest (C,)."""
    if not train:  # inference: the averages kept during training
        X_hat = (X - moving_mean) / jnp.sqrt(moving_var + eps)
        return gamma * X_hat + beta, moving_mean, moving_var
    if X.ndim == 2:  # after a dense layer: one mean and variance per feature
        mean = X.mean(axis=0)
        var = ((X - mean) ** 2).mean(axis=0)
    else:  # after a convolution (NHWC): one per channel, over the batch, height and width
        mean = X.mean(axis=(0, 1, 2))
        var = ((X - mean) ** 2).mean(axis=(0, 1, 2))
    X_hat = (X - mean) / jnp.sqrt(var + eps)
    moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
    moving_var = momentum * moving_var + (1.0 - momentum) * var
    return gamma * X_hat + beta, moving_mean, moving_var


# %% [markdown]
# In training mode every channel of the output has exactly the mean $\beta$ and the standard
# deviation $\gamma$, whatever the input's scale (here inputs with mean 3 and standard deviation
# 5). The package's `jaxnotes.ops.batch_norm` is the same function: on a conv-shaped and a
# dense-shaped input, in both modes, it must give the same outputs and the same new averages.

# %%
keys = jax.random.split(jax.random.key(0), 4)
X = 3.0 + 5.0 * jax.random.normal(keys[0], (16, 6, 6, 4))  # a batch of 16 maps, 4 channels
gamma, beta = jnp.array([1.0, 2.0, 0.5, 1.0]), jnp.array([0.0, 1.0, -1.0, 4.0])
Y, new_mean, new_var = batch_norm(X, gamma, beta, jnp.zeros(4), jnp.ones(4), train=True)
print("per-channel mean of Y:", np.round(Y.mean(axis=(0, 1, 2)), 3), " (beta)")
print("per-channel std of Y: ", np.round(Y.std(axis=(0, 1, 2)), 3), " (gamma)")
print("moving mean after one step:", np.round(new_mean, 3), " (0.1 x the batch mean, about 3)")
assert np.allclose(Y.mean(axis=(0, 1, 2)), beta, atol=1e-4)
assert np.allclose(Y.std(axis=(0, 1, 2)), gamma, atol=1e-3)

for shape in [(16, 6, 6, 4), (16, 4)]:  # after a convolution, after a dense layer
    X = 3.0 + 5.0 * jax.random.normal(keys[1], shape)
    stats = (
        gamma,
        beta,
        jax.random.normal(keys[2], (4,)),
        jnp.exp(jax.random.normal(keys[3], (4,))),
    )
    for train in (True, False):
        ours, package = batch_norm(X, *stats, train=train), ops.batch_norm(X, *stats, train=train)
        assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(ours, package, strict=True))
print("same outputs and averages as jaxnotes.ops.batch_norm: conv and dense inputs, both modes")

# %% [markdown]
# ## The layer
#
# As a Flax layer, $\gamma$ and $\beta$ are parameters (trained by the optimizer) and the moving
# averages are **state**, a second variable collection `batch_stats` that training updates and
# the optimizer never touches. The names are Flax's own (`scale`, `bias`; `mean`, `var`), so the
# page's layer and `flax.linen.BatchNorm` (with the book's momentum and epsilon) share their
# variables and must agree: in training (output and updated averages) and in inference.


# %%
class BatchNorm(nn.Module):
    """Batch norm over the last axis: (N, C) or (N, H, W, C)."""

    @nn.compact
    def __call__(self, x, train: bool):
        channels = x.shape[-1]
        gamma = self.param("scale", nn.initializers.ones, (channels,))
        beta = self.param("bias", nn.initializers.zeros, (channels,))
        mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,))
        var = self.variable("batch_stats", "var", jnp.ones, (channels,))
        y, new_mean, new_var = batch_norm(x, gamma, beta, mean.value, var.value, train=train)
        if train and not self.is_initializing():  # init creates the averages, leaves them
            mean.value, var.value = new_mean, new_var
        return y


x = 3.0 + 5.0 * jax.random.normal(keys[1], (16, 6, 6, 4))
flax_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
variables = flax_bn.init(keys[2], x, use_running_average=True)
ours, ours_stats = BatchNorm().apply(variables, x, train=True, mutable=["batch_stats"])
theirs, theirs_stats = flax_bn.apply(
    variables, x, use_running_average=False, mutable=["batch_stats"]
)
assert np.allclose(ours, theirs, atol=1e-5)
assert jax.tree.all(jax.tree.map(lambda a, b: np.allclose(a, b), ours_stats, theirs_stats))
trained = {"params": variables["params"], **theirs_stats}
inference = BatchNorm().apply(trained, x, train=False)
assert np.allclose(inference, flax_bn.apply(trained, x, use_running_average=True), atol=1e-5)
print("same as flax.linen.BatchNorm(momentum=0.9, epsilon=1e-5): training and inference")

# %% [markdown]
# ## LeNet with batch norm
#
# The book puts batch norm **between** each convolution or dense layer and its sigmoid (and
# drops the first convolution's padding). The page's LeNet takes `norm=False` to leave the
# batch norms out, everything else equal, for the comparison below. One more layer, `Probe`,
# passes its input through unchanged and only takes notes: at every training step it writes 5
# percentiles of what the second convolution's sigmoid receives (for the batch's first four
# images) into a variable collection `probe` (the engine carries every collection, as it does
# `batch_stats`), so after training we can see how that distribution moved.

# %%
fig = plots.block_diagram(
    [
        [
            "conv 5x5 (6, then 16 channels)\nor dense (120, then 84 features)",
            "batch norm: per channel after a conv,\nper feature after a dense layer",
            "sigmoid",
            "avg pool 2x2 (after a conv)",
        ]
    ],
    "where batch norm goes in LeNet: between each layer and its activation",
    output="the next layer (the last: dense 10, no batch norm)",
)


# %%
class Probe(nn.Module):
    """Identity; in training, writes the 5th/25th/50th/75th/95th percentiles of x per step."""

    steps: int  # rows to keep (0: no notes at all)

    @nn.compact
    def __call__(self, x):
        if self.steps == 0 or not self.is_mutable_collection("probe"):
            return x  # evaluation, or no probe: nothing written
        notes = self.variable("probe", "percentiles", jnp.zeros, (self.steps, 5))
        step = self.variable("probe", "step", jnp.zeros, (), jnp.int32)
        if not self.is_initializing():
            sample = jax.lax.stop_gradient(x[:4])  # 4 images of the batch: cheap to sort
            q = jnp.percentile(sample, jnp.array([5.0, 25.0, 50.0, 75.0, 95.0]))
            notes.value = notes.value.at[step.value].set(q)
            step.value = step.value + 1
        return x


class LeNet(nn.Module):
    """The book's LeNet with batch norm (norm=True) or without: (N, 28, 28, 1) -> (N, 10)."""

    norm: bool = True
    probe_steps: int = 0

    @nn.compact
    def __call__(self, x, train: bool = False):
        def bn(x):  # between the layer and its sigmoid
            return BatchNorm()(x, train) if self.norm else x

        init = nn.initializers.xavier_uniform()  # d2l's initialisation
        x = nn.sigmoid(bn(nn.Conv(6, (5, 5), padding=0, kernel_init=init)(x)))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = bn(nn.Conv(16, (5, 5), padding=0, kernel_init=init)(x))
        x = nn.sigmoid(Probe(self.probe_steps)(x))  # the probe: what this sigmoid receives
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)  # (N, 4 * 4 * 16)
        x = nn.sigmoid(bn(nn.Dense(120, kernel_init=init)(x)))
        x = nn.sigmoid(bn(nn.Dense(84, kernel_init=init)(x)))
        return nn.Dense(10, kernel_init=init)(x)


# %% [markdown]
# The package's `jaxnotes.models.LeNetBN` is the same network, with Flax's batch norm. The
# layers are named alike (`Conv_0`, `BatchNorm_0`, `Dense_0`...), so the page's LeNet runs on
# the package's variables: the same logits in inference and in training, and the same updated
# averages.

# %%
x = jax.random.uniform(keys[0], (8, 28, 28, 1))
zoo = models.LeNetBN()
variables = zoo.init(keys[1], x)
for train in (False, True):
    ours, ours_state = LeNet().apply(variables, x, train=train, mutable=["batch_stats"])
    theirs, theirs_state = zoo.apply(variables, x, train=train, mutable=["batch_stats"])
    assert np.allclose(ours, theirs, atol=1e-5), train
    assert jax.tree.all(
        jax.tree.map(lambda a, b: np.allclose(a, b, atol=1e-6), ours_state, theirs_state)
    )
print("the page's LeNet on the package's variables: same logits, same averages")

# %% [markdown]
# Layer by layer (`jaxnotes.shapes.summarize`, shapes only): each batch norm adds two
# parameters per channel or feature ($\gamma$, $\beta$); its moving averages are state, not
# parameters, and are not counted.

# %%
summary = shapes.summarize(zoo, (1, 28, 28, 1), train=False)
print(summary)
bn_params = sum(r.params for r in summary.rows if r.kind == "BatchNorm")
assert bn_params == 2 * (6 + 16 + 120 + 84) and summary.total_params == 44_878
print(f"{summary.total_params:,} parameters, {bn_params} of them in the four batch norms")

# %% [markdown]
# ## A learning rate too large for the plain LeNet
#
# Three runs of the same LeNet with the engine (`jaxnotes.training.fit`, given the page's
# module), with Adam at a constant rate, the same data and seed:
#
# 1. without batch norm at 0.003, chapter 7's rate for this LeNet;
# 2. without batch norm at 0.03, ten times larger;
# 3. with batch norm at 0.03.
#
# (The book's batch-norm LeNet uses plain SGD at a rate of 1.0; at this small size the plain
# sigmoid LeNet does not leave its plateau with SGD within a few hundred steps at any rate,
# too-large or not, so the comparison here uses Adam, where a rate can be too large for it.)

# %%
config, limits = nbk.chapter_config("lenet_bn", optimizer="adam", schedule="constant")
train, test = nbk.load_chapter_data(config, limits)
steps = config.epochs * (len(train) // config.batch_size)  # the probe's rows: one per step
print(f"{len(train):,} training images, {config.epochs} epochs of batch {config.batch_size}")

GOOD_RATE, LARGE_RATE = 0.003, 0.03
quiet = lambda line: None  # no line per epoch: one summary line per run below
RUNS = {  # label: (model, learning rate)
    f"no BN, lr {GOOD_RATE}": (LeNet(norm=False, probe_steps=steps), GOOD_RATE),
    f"no BN, lr {LARGE_RATE}": (LeNet(norm=False, probe_steps=steps), LARGE_RATE),
    f"BN, lr {LARGE_RATE}": (LeNet(norm=True, probe_steps=steps), LARGE_RATE),
}
results = {}
for label, (model, rate) in RUNS.items():
    run_config = dataclasses.replace(config, model=label, learning_rate=rate)
    start = time.perf_counter()
    results[label] = fit(run_config, model=model, train_data=train, test_data=test, log=quiet)
    s = results[label].summary
    print(
        f"{label:16} train loss {s['train_loss']:.3f}, test acc {s['test_acc']:.3f} "
        f"({time.perf_counter() - start:.1f} s)"
    )

fig = plots.run_comparison(
    {label: result.history for label, result in results.items()},
    keys=("train_loss", "test_acc"),
    title="sigmoid LeNet, Adam: the larger rate stalls without batch norm",
)

# %% [markdown]
# Chance is a loss of $\ln 10 \approx 2.30$ and an accuracy of 0.1: at the large rate the plain
# LeNet stays there. The probe shows why. Below, what the second convolution's sigmoid
# received at each training step (median, and the bands that hold the middle half and the
# middle 90% of its inputs). Beyond $\pm 4$ (dotted) the sigmoid is flat: its slope
# $\sigma'(z) = \sigma(z)(1 - \sigma(z))$ is below 0.018, so almost no gradient gets through.
# At the large rate the plain net's first few dozen updates push its inputs far beyond that,
# most of them 10 to 25 units from zero, and they stay there: the sigmoids are saturated and
# training stalls. With batch norm the same rate leaves the inputs standardised, within a few
# units of zero, where the sigmoid has a slope.

# %%
percentiles = {
    label: np.asarray(result.state.model_state["probe"]["Probe_0"]["percentiles"])
    for label, result in results.items()
}
fig = plots.percentile_bands(
    percentiles,
    ylabel="input of the 2nd conv's sigmoid",
    title="what the sigmoid sees during training",
    lines=(-4.0, 4.0),
)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell where you set `answer`, and a check cell after it that tells you
# whether your answer is right (without telling you the answer).
#
# **1 (compute).** A channel's moving mean starts at 0. With the book's momentum 0.9, what is
# it after two training steps whose batch means are 2.0 and then 4.0?

# %%
answer = None  # a number

# %%
m = 0.0
for batch_mean in (2.0, 4.0):
    _, m, _ = batch_norm(jnp.full((2, 1), batch_mean), 1.0, 0.0, m, 1.0, train=True)
hint = "each step keeps 0.9 of the old average and adds 0.1 of the batch's mean"
nbk.check_answer(answer, float(m[0]), hint)

# %% [markdown]
# **2 (compute).** How many parameters (trained by the optimizer) and how many running
# statistics (state) does one batch norm after a convolution with 32 output channels have?
# Answer as a pair `(parameters, statistics)`.

# %%
answer = None  # (parameters, statistics)

# %%
bn_variables = BatchNorm().init(keys[0], jnp.zeros((2, 5, 5, 32)), train=True)
counts = tuple(shapes.count_params(bn_variables[kind]) for kind in ("params", "batch_stats"))
hint = "per channel: gamma and beta are parameters; the moving mean and variance are state"
nbk.check_answer(answer, counts, hint)

# %% [markdown]
# **3 (predict, then run).** In inference mode (`train=False`), does one image's output depend
# on which other images are in its batch? Answer `True` or `False`, then run the check, which
# compares one image alone against the same image in a batch.

# %%
answer = None  # True or False

# %%
state = results[f"BN, lr {LARGE_RATE}"].state
trained = {"params": state.params, "batch_stats": state.model_state["batch_stats"]}
images = data.make_preprocess(config.resize, config.normalization)(test.images[:8])
alone, in_batch = LeNet().apply(trained, images[:1]), LeNet().apply(trained, images)[:1]
depends = not bool(np.allclose(alone, in_batch, atol=1e-5))
hint = "in inference, batch norm standardises with the moving averages: fixed numbers"
nbk.check_answer(answer, depends, hint)

# %% [markdown]
# **4 (change).** Raise the rate to 0.1, over 30 times chapter 7's. Does the batch-norm LeNet
# still reach a training loss below 0.5 in the same epochs? Predict, then run the check: it
# trains that LeNet at `RATE` (a few seconds) once `answer` is set. Then try other rates, or
# set `LARGE_RATE` above and rerun the comparison.

# %%
answer = None  # True or False
RATE = 0.1

# %%
below = None
if answer is not None:  # trains once you have predicted
    run_config = dataclasses.replace(config, model="BN, exercise", learning_rate=RATE)
    exercise = fit(run_config, model=LeNet(), train_data=train, test_data=test, log=quiet)
    print(f"training loss after {config.epochs} epochs: {exercise.summary['train_loss']:.3f}")
    below = exercise.summary["train_loss"] < 0.5
nbk.check_answer(answer, below, "compare the training loss this run printed with 0.5")

# %% [markdown]
# ## Checks
#
# The claims this page makes about its runs, checked on the numbers above (at the small size;
# at the book size they are printed, not asserted: the stored outputs do not show that size).

# %%
good = results[f"no BN, lr {GOOD_RATE}"].summary
plain = results[f"no BN, lr {LARGE_RATE}"].summary
normed = results[f"BN, lr {LARGE_RATE}"].summary
last_epoch = slice(steps - steps // config.epochs, steps)
spread = {label: q[last_epoch].mean(axis=0) for label, q in percentiles.items()}
for label, q in spread.items():
    print(f"{label:16} last epoch's sigmoid inputs, 5/25/50/75/95th percentiles: {np.round(q, 1)}")
if SIZE == "small":
    # The plain LeNet trains at chapter 7's rate...
    assert good["train_loss"] < 1.5 and good["test_acc"] > 0.6, good
    # ...stalls at chance (loss ln 10 = 2.30, accuracy 0.1) at ten times that rate...
    assert plain["train_loss"] > 2.2 and plain["test_acc"] < 0.2, plain
    # ...where the batch-norm LeNet trains well.
    assert normed["train_loss"] < 0.5 and normed["test_acc"] > 0.9, normed
    # Saturated: over half the plain net's sigmoid inputs beyond +-4 (percentiles 25 and 75)...
    q = spread[f"no BN, lr {LARGE_RATE}"]
    assert q[1] < -4 and q[3] > 4, q
    # ...while batch norm keeps 90% of them within +-4.
    q = spread[f"BN, lr {LARGE_RATE}"]
    assert -4 < q[0] and q[4] < 4, q
print("the checks hold" if SIZE == "small" else "book size: the numbers above, not asserted")

# %%
# Results
for label, result in results.items():
    print(nbk.results_line(label, result, result.summary["wall_s"]))
print(f"notebook time: {time.perf_counter() - START:.1f} s")
