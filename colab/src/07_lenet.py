# %% [markdown]
# # 7. LeNet: the first convolutional network
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/07_lenet.ipynb)
#
# LeNet-5 puts the pieces of the last three chapters together: two stages of **convolution +
# sigmoid + average pooling** turn an image into 16 small feature maps, and three **dense
# layers** classify them. We write it on the page as a small Flax module, check it against the
# package's `jaxnotes.models.LeNet`, read its shapes and parameter counts layer by layer, train
# it, and look at what its first layer learned and at its predictions.
#
# At the small size (`JAXNOTES_SIZE=small`) it trains on the 8x8 `digits` images scaled up to
# 28x28; at the book size on Fashion-MNIST, as the book does.

# %% tags=["setup"]
# The shared set-up cell (colab/src/_setup.py: size form, install on Colab, device) replaces
# this one in the notebook; run as a script, this is all of it that matters.
import time

from jaxnotes import notebook as nbk

START = time.perf_counter()
SIZE = nbk.start("small")

# %%
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxnotes import data, models, plots, shapes

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
assert dense_share > 0.9 and conv_share > 0.8
print(f"{by_formula:,} parameters, {dense_share:.0%} of them in the three dense layers;")
print(f"{summary.total_macs:,} mult-adds per image, {conv_share:.0%} of them in the convolutions")

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
assert history[-1]["train_loss"] < history[0]["train_loss"]
if SIZE == "small":
    assert test_acc >= 0.9, test_acc
else:
    assert test_acc >= 0.7, test_acc  # the book reports about 0.8 on Fashion-MNIST

# %% [markdown]
# ## What the first layer learned
#
# The six 5x5 kernels of the first convolution, and the six feature maps they produce on one
# test image: the first layer alone (`nn.Conv` with the trained `Conv_0` parameters), before the
# sigmoid. Red is positive, blue negative, one scale per figure: a kernel with a red and a blue
# side responds to an edge across it.

# %%
config, limits = nbk.chapter_config("lenet")
_, test = nbk.load_chapter_data(config, limits)
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
if SIZE == "small":
    assert correct >= 12, correct

# %%
# Results
print(nbk.results_line("LeNet", result, seconds, params=shapes.count_params(params)))
print(f"notebook time: {time.perf_counter() - START:.1f} s")
