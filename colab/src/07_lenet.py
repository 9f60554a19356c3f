# %% [markdown]
# # 7. LeNet: the first convolutional network
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/07_lenet.ipynb)
#
# LeNet-5 puts the pieces of the last three chapters together: two stages of **convolution +
# sigmoid + average pooling** turn an image into 16 small feature maps, and three **dense
# layers** classify them. We write it on the page as a small Flax module, check it against the
# package's `jaxnotes.models.LeNet`, read its shapes and parameter counts layer by layer, write
# one training step by hand and check it against the engine's, train it, and look at what its
# first layer learned and at its predictions.
#
# **Size.** The stored outputs are the small size, run on a CPU: scikit-learn's 8x8 `digits`
# scaled up to 28x28 (1,257 training images), 8 epochs of Adam (batch 16), in seconds. The
# book size trains on Fashion-MNIST (28x28, 60,000 images) as the book does: 10 epochs of SGD
# at learning rate 0.9, batch 256; about a minute on a CPU (the first cell then simply runs
# it), seconds on a GPU. Its accuracy is the book's 0.78-0.81, not the stored digits'.

# %% tags=["setup"]
# The shared set-up cell (colab/src/_setup.py: size form, install on Colab, device) replaces
# this one in the notebook; run as a script, this is all of it that matters.
import time

from jaxnotes import notebook as nbk

START = time.perf_counter()
SIZE = nbk.start("small")
nbk.as_script()  # run as a script: figures are saved to files (or shown in windows)

# %%
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnotes import data, models, plots, shapes, steps, training

# %% [markdown]
# ## LeNet on the page
#
# The book's layers, in order (NHWC: batch, height, width, channels):
#
# | layer | output (28x28x1 input) |
# |---|---|
# | conv 6@5x5, padding 2, sigmoid | 28x28x6 |
# | average pool 2x2, stride 2 | 14x14x6 |
# | conv 16@5x5, no padding, sigmoid | 10x10x16 |
# | average pool 2x2, stride 2 | 5x5x16 |
# | flatten, dense 120, sigmoid; dense 84, sigmoid; dense 10 | 10 |
#
# In Flax a module's `__call__` is the forward pass; `@nn.compact` lets it create its layers
# where it uses them.


# %%
class LeNet(nn.Module):
    """LeNet-5 as the book writes it: (N, 28, 28, 1) images -> (N, num_classes) logits."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):  # `train`: what fit passes (no dropout here)
        x = nn.sigmoid(nn.Conv(6, (5, 5), padding=2)(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.sigmoid(nn.Conv(16, (5, 5), padding=0)(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)  # (N, 5 * 5 * 16) = (N, 400)
        x = nn.sigmoid(nn.Dense(120)(x))
        x = nn.sigmoid(nn.Dense(84)(x))
        return nn.Dense(self.num_classes)(x)


# %% [markdown]
# The package's `jaxnotes.models.LeNet` is the same network (plus input checks, a choice of
# activation and initialiser, and fast CPU convolutions). Both name their layers the same way
# (`Conv_0`, `Conv_1`, `Dense_0`...), so the page's module runs on the package's parameters and
# must give the same logits:

# %%
x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
page, zoo = LeNet(), models.LeNet()
variables = zoo.init(jax.random.key(1), x)
same_tree = jax.tree.map(jnp.shape, page.init(jax.random.key(2), x)) == jax.tree.map(
    jnp.shape, variables
)
assert same_tree and np.allclose(page.apply(variables, x), zoo.apply(variables, x), atol=1e-5)
print("same parameter tree, same logits:", page.apply(variables, x)[0, :4])

# %% [markdown]
# ## The network, layer by layer
#
# `jaxnotes.shapes.summarize` traces the model with shapes alone (no compute) and lists every
# layer's output shape, parameters and multiply-adds per image. A convolution has
# $c_o c_i k_h k_w + c_o$ parameters, a dense layer $(n_{in} + 1) n_{out}$; sizes follow
# $\lfloor (n - k + 2p + s)/s \rfloor$, so the 5x5 convolution with padding 2 keeps 28x28
# and each pool halves the size. Most parameters sit in the dense layers, most of the compute
# (mult-adds) in the convolutions: each kernel is reused at every position of the image.

# %%
summary = shapes.summarize(models.LeNet(), (1, 28, 28, 1), train=False)
print(summary)
by_formula = (
    shapes.conv_params(1, 6, 5)
    + shapes.conv_params(6, 16, 5)
    + shapes.dense_params(16 * 5 * 5, 120)
    + shapes.dense_params(120, 84)
    + shapes.dense_params(84, 10)
)
assert summary.total_params == by_formula == 61_706
assert shapes.count_params(variables) == summary.total_params
dense_share = sum(r.params for r in summary.rows if r.kind == "Dense") / summary.total_params
conv_share = sum(r.macs for r in summary.rows if r.kind == "Conv") / summary.total_macs
print(f"{by_formula:,} parameters, {dense_share:.0%} of them in the three dense layers;")
print(f"{summary.total_macs:,} mult-adds per image, {conv_share:.0%} of them in the convolutions")
labels = {
    "Conv_0": "conv 6@5x5, pad 2, sigmoid", "AvgPool_0": "avg pool 2x2, stride 2",
    "Conv_1": "conv 16@5x5, sigmoid", "AvgPool_1": "avg pool 2x2, stride 2",
    "Dense_0": "flatten, dense 120, sigmoid", "Dense_1": "dense 84, sigmoid",
    "Dense_2": "dense 10 (logits)",
}  # fmt: skip
fig = plots.network_diagram(nbk.network_rows(summary, labels), "LeNet", input_shape="28x28x1")

# %% [markdown]
# ## One training step, by hand
#
# Training repeats one step: the loss of a batch and its gradient (`jax.value_and_grad`, one
# pass forward and one backward), then the optimizer's update (`tx.update`, then
# `optax.apply_updates`), the whole step compiled once by `jax.jit`. Written on the page, it
# is a few lines. The engine that trains below (`jaxnotes.training.fit`) builds its step from
# the same pieces (`training.build` makes the run's optimizer, preprocessing and jitted step);
# on the same batch, from the same weights, the two steps give the same loss and the same new
# weights. What the engine adds around it (batches, evaluation, checkpoints, the check for a
# diverging loss) is bookkeeping, not a different step.

# %%
config, limits = nbk.chapter_config("lenet")
train, test = nbk.load_chapter_data(config, limits)
built = training.build(config, train, model=LeNet(), test_data=test)
tx, preprocess = built.tx, built.preprocess  # the run's optimizer and preprocessing


@jax.jit
def train_step(params, opt_state, images, labels):
    def loss_fn(params):
        logits = LeNet().apply({"params": params}, preprocess(images))
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


state = steps.create_train_state(LeNet(), tx, built.input_shape, seed=0)
batch = {"image": train.images[: config.batch_size], "label": train.labels[: config.batch_size]}
params, opt_state, loss = train_step(state.params, state.opt_state, batch["image"], batch["label"])
print(f"one step on a batch of {config.batch_size}: loss {float(loss):.4f} ({config.optimizer})")

# %%
# The engine's step (it takes over the state's buffers: `state` is not used after this).
engine_state, sums = built.train_step(state, batch, steps.empty_metrics())
engine_loss = float(sums["loss_sum"] / sums["count"])
print(f"the engine's step: loss {engine_loss:.4f}")
assert np.allclose(float(loss), engine_loss, atol=1e-5)
same = jax.tree.map(lambda a, b: np.allclose(a, b, atol=1e-6), params, engine_state.params)
assert jax.tree.all(same)  # the same new weights, every one

# %% [markdown]
# ## Training
#
# `nbk.run_chapter_training("lenet", model_object=LeNet(), curves=...)` trains the LeNet we
# wrote on the page, with the chapter's settings for the current size
# (`jaxnotes.training.fit` takes any Flax module: forward, loss, backward and update in one
# jitted step) and draws the learning curves as the epochs finish. The sigmoid
# network starts on a plateau (every unit near 0.5, small gradients); at the small size Adam
# gets it off quickly, the book's plain SGD with a large learning rate more slowly.

# %%
result, seconds = nbk.run_chapter_training("lenet", model_object=LeNet(), curves="LeNet")
history = result.history
test_acc = result.summary["test_acc"]
print(f"test accuracy {test_acc:.3f} after {len(history)} epochs ({seconds:.1f} s)")

# %% [markdown]
# ## What the first layer learned
#
# The six 5x5 kernels of the first convolution, and the six feature maps they produce on one
# test image: the first layer alone (`nn.Conv` with the trained `Conv_0` parameters), before the
# sigmoid. Red is positive, blue negative, one scale per figure: a kernel with a red and a blue
# side responds to an edge across it.

# %%
preprocess = data.make_preprocess(config.resize, config.normalization)
params = result.state.params
names = test.class_names or [str(i) for i in range(test.num_classes)]
images = preprocess(jnp.asarray(test.images[:16]))  # (16, 28, 28, 1)

kernels = np.asarray(params["Conv_0"]["kernel"])  # (5, 5, 1, 6): height, width, in, out
first_layer = nn.Conv(6, (5, 5), padding=2)
feature_maps = first_layer.apply({"params": params["Conv_0"]}, images[:1])[0]  # (28, 28, 6)
assert feature_maps.shape == (28, 28, 6)
fig = plots.signed_maps(
    [kernels[:, :, 0, i] for i in range(6)],
    [f"kernel {i}" for i in range(6)],
    ncols=6,
    title="first-layer kernels (5x5)",
)
fig = plots.signed_maps(
    [feature_maps[:, :, i] for i in range(6)],
    [f"map {i}" for i in range(6)],
    ncols=6,
    title=f"their feature maps on a test image ({names[int(test.labels[0])]})",
)

# %% [markdown]
# ## Predictions on test images
#
# The trained package model on the first 16 test images: each title is the prediction, with
# the true class in brackets and in red where they differ.

# %%
model = models.get_model("lenet", num_classes=test.num_classes, **config.model_kwargs)
predictions = np.asarray(jnp.argmax(model.apply({"params": params}, images), axis=-1))
labels = test.labels[:16]
fig = plots.labelled_images(
    test.images[:16], labels, class_names=names, predictions=predictions, ncols=8
)
correct = int((predictions == labels).sum())
print(f"{correct} of 16 correct")

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell where you set `answer`, and a check cell after it that tells you
# whether your answer is right (without telling you the answer).
#
# **1 (compute).** How many parameters has LeNet's first dense layer (weights and biases)?

# %%
answer = None  # a number

# %%
first_dense = next(r.params for r in summary.rows if r.path == "Dense_0")
nbk.check_answer(answer, first_dense, "it sees the flattened 5x5x16 maps")

# %% [markdown]
# **2 (compute).** The original LeNet-5 read 32x32 images. With the page's layers unchanged
# (padding 2 in the first convolution), how many features reach the first dense layer from a
# 32x32 input?

# %%
answer = None  # a number

# %%
at_32 = shapes.summarize(models.LeNet(), (1, 32, 32, 1), train=False)
pooled = next(r.output_shape for r in at_32.rows if r.path == "AvgPool_1")
nbk.check_answer(answer, int(np.prod(pooled[1:])), "follow 32 through conv, pool, conv, pool")

# %% [markdown]
# **3 (predict, then run).** After the one step written by hand above, is the loss on that
# same batch lower than before the step? Answer `True` or `False`.

# %%
answer = None  # True or False

# %%
after = train_step(params, opt_state, batch["image"], batch["label"])[2]  # the loss at params
nbk.check_answer(answer, bool(float(after) < float(loss)), "a step goes down the gradient")

# %% [markdown]
# **4 (change, predict, then run).** Replace the sigmoids by ReLUs
# (`model_kwargs={"activation": "relu"}`, the zoo's LeNet) and train as above. Will the test
# accuracy be higher than the sigmoid LeNet's? Predict `True` or `False`; the check trains it
# (seconds at the small size) once `answer` is set.

# %%
answer = None  # True or False

# %%
higher = None
if answer is not None:  # trains once you have predicted
    relu_run, _ = nbk.run_chapter_training("lenet", model_kwargs={"activation": "relu"})
    relu_acc = relu_run.summary["test_acc"]
    print(f"ReLU LeNet: test acc {relu_acc:.3f} (sigmoid: {test_acc:.3f})")
    higher = bool(relu_acc > test_acc)
nbk.check_answer(answer, higher, "compare the two accuracies just printed")

# %% [markdown]
# ## Checks
#
# The claims this page makes about its run, checked on the numbers above (at the small size;
# at the book size they are printed, not asserted).

# %%
assert dense_share > 0.9 and conv_share > 0.8  # parameters in dense layers, compute in convs
print(f"test accuracy {test_acc:.3f}, {correct} of 16 shown correct")
if SIZE == "small":
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert test_acc >= 0.9, test_acc
    assert correct >= 12, correct
print("the checks hold" if SIZE == "small" else "book size: the numbers above, not asserted")

# %%
# Results
print(nbk.results_line("LeNet", result, seconds, params=shapes.count_params(params)))
print(f"notebook time: {time.perf_counter() - START:.1f} s")
