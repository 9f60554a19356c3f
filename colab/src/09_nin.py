# %% [markdown]
# # 9. Network in Network: 1x1 convolutions and global average pooling
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/09_nin.ipynb)
#
# AlexNet and VGG end with huge dense layers. **Network in Network** (NiN) drops them twice over:
#
# - a **NiN block** is one ordinary convolution followed by two **1x1 convolutions**, each with
#   ReLU. A 1x1 convolution is a dense layer applied at every pixel (to that pixel's channel
#   vector), so the block is "a convolution, then a small MLP per pixel";
# - the network has **no dense layer at all**: the last block has one channel per class, and
#   **global average pooling** turns each channel's map into one logit, whatever the input size.
#
# We write the block on the page and check it against `jaxnotes.models.nin_block`, build NiN
# from it, count what global average pooling saves, and train it.
#
# **Size.** The stored outputs are the small size, run on a CPU: scikit-learn's 8x8 `digits`
# scaled up to 68x68 (1,257 training images), a few epochs of Adam from He initialisation (the
# training cell prints the settings), in about a minute; the accuracy is digits', not the
# book's. The book size trains on Fashion-MNIST at 224x224 (60,000 images, 10 epochs, the
# book's SGD at 0.1): minutes on a GPU, about 5 hours on a CPU (the first cell then runs the
# small size unless INSIST).

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

from jaxnotes import models, plots, shapes

# %% [markdown]
# ## A 1x1 convolution is a dense layer at every pixel
#
# Its kernel has shape $(1, 1, c_i, c_o)$: each output pixel is the input pixel's channel
# vector times a $c_i \times c_o$ matrix, plus a bias, exactly a dense layer's
# $x W + b$ with the same $W$ at every position.

# %%
x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
conv1x1 = nn.Conv(4, (1, 1))
variables = conv1x1.init(jax.random.key(1), x)
W, b = variables["params"]["kernel"][0, 0], variables["params"]["bias"]  # (8, 4), (4,)
assert np.allclose(conv1x1.apply(variables, x), x @ W + b, atol=1e-5)
print("kernel", variables["params"]["kernel"].shape, "acts as W", W.shape, "at every pixel")

# %% [markdown]
# ## The NiN block on the page
#
# As the book writes it: a `kernel_size` convolution (with its stride and padding, which set
# the output size), then two 1x1 convolutions with the same number of channels, ReLU after
# each.


# %%
class NiNBlock(nn.Module):
    channels: int
    kernel_size: int
    strides: int = 1
    padding: int = 0

    @nn.compact
    def __call__(self, x):
        k, s = self.kernel_size, self.strides
        x = nn.relu(nn.Conv(self.channels, (k, k), strides=(s, s), padding=self.padding)(x))
        x = nn.relu(nn.Conv(self.channels, (1, 1))(x))
        return nn.relu(nn.Conv(self.channels, (1, 1))(x))


def nin_block(channels, kernel_size, strides=1, padding=0):
    return NiNBlock(channels, kernel_size, strides, padding)


fig = plots.block_diagram(
    [["k x k conv (stride, pad)", "ReLU", "1x1 conv", "ReLU", "1x1 conv", "ReLU"]],
    "NiN block",
    output="next block",
)

# %% [markdown]
# The package's `jaxnotes.models.nin_block` is the same block with the same parameter names
# (`Conv_0`, `Conv_1`, `Conv_2`), so the page's block runs on the package's parameters and
# must give the same output: here the book's first block, 96 channels of 11x11 with stride 4,
# on a 68x68 input (out: $\lfloor (68 - 11 + 4)/4 \rfloor = 15$).

# %%
x = jax.random.normal(jax.random.key(0), (2, 68, 68, 1))
page, zoo = nin_block(96, 11, strides=4), models.nin_block(96, 11, strides=4)
variables = zoo.init(jax.random.key(1), x)
assert np.allclose(page.apply(variables, x), zoo.apply(variables, x), atol=1e-5)
assert page.apply(variables, x).shape == (2, 15, 15, 96)
print(jax.tree.map(jnp.shape, variables["params"]))

# %% [markdown]
# ## NiN from blocks
#
# Three NiN blocks with AlexNet's first kernels (11x11 stride 4, 5x5, 3x3), each followed by a
# 3x3 max pool with stride 2; dropout; a last block with one channel per class; global average
# pooling (the mean of each channel's map, `x.mean(axis=(1, 2))`). The ReLU of the last block
# is the book's too. Built from the page's block it has the package's parameter tree, so it
# runs on the parameters of `jaxnotes.models.NiN` and gives the same logits:


# %%
class NiN(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train=False):
        for channels, kernel_size, strides, padding in ((96, 11, 4, 0), (256, 5, 1, 2),
                                                        (384, 3, 1, 1)):  # fmt: skip
            x = nin_block(channels, kernel_size, strides, padding)(x)
            x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        x = nin_block(self.num_classes, 3, strides=1, padding=1)(x)
        return x.mean(axis=(1, 2))  # global average pooling: (N, H, W, classes) -> (N, classes)


zoo_nin = models.NiN()
variables = zoo_nin.init(jax.random.key(1), x)
assert np.allclose(NiN().apply(variables, x), zoo_nin.apply(variables, x), atol=1e-4)

# %% [markdown]
# Layer by layer at the book's 224x224x1 input (`jaxnotes.shapes.summarize`, shapes alone):
# the 1x1 convolutions keep every map's size, each max pool roughly halves it, and the last
# block leaves a 5x5 map per class.

# %%
nin_summary = shapes.summarize(models.get_model("nin"), (1, 224, 224, 1), train=False)
print(nin_summary)
assert not any(r.kind == "Dense" for r in nin_summary.rows)
assert nin_summary.rows[-2].output_shape == (1, 5, 5, 10)
nin_labels = {
    "NiNBlock_0": "nin_block(96, 11x11, stride 4)", "MaxPool_0": "max pool 3x3, stride 2",
    "NiNBlock_1": "nin_block(256, 5x5, pad 2)", "MaxPool_1": "max pool 3x3, stride 2",
    "NiNBlock_2": "nin_block(384, 3x3, pad 1)", "MaxPool_2": "max pool 3x3, stride 2",
    "Dropout_0": "dropout 0.5", "NiNBlock_3": "nin_block(10, 3x3, pad 1): one map per class",
    "GlobalAvgPool_0": "global average pool (the logits)",
}  # fmt: skip
fig = plots.network_diagram(
    nbk.network_rows(nin_summary, nin_labels), "NiN (no dense layer)", input_shape="224x224x1"
)

# %% [markdown]
# ## What global average pooling saves
#
# NiN's classifier is its last block (a 3x3 convolution to 10 channels and two 10x10 1x1
# convolutions) and a parameter-free average. AlexNet's head on the same $5 \times 5 \times 384$
# features would be dense layers of 4096, 4096 and 10 units: $(9600 + 1) \cdot 4096 + \dots$
# parameters, more than 25 times the whole of NiN. And a dense head is tied to one input size
# (its first layer's width is the flattened map), while global average pooling takes any map:
# NiN has the same parameters at 68x68 as at 224x224; AlexNet does not.

# %%
nin_head = sum(r.params for r in nin_summary.rows if r.path.startswith("NiNBlock_3"))
dense_head = (
    shapes.dense_params(5 * 5 * 384, 4096)
    + shapes.dense_params(4096, 4096)
    + shapes.dense_params(4096, 10)
)
print(f"NiN's head: {nin_head:,} parameters; a dense head as AlexNet's: {dense_head:,}")
print(f"the whole of NiN: {nin_summary.total_params:,} parameters")

small_nin = shapes.summarize(models.get_model("nin"), (1, 68, 68, 1), train=False)
alexnet_224 = shapes.summarize(models.get_model("alexnet"), (1, 224, 224, 1), train=False)
alexnet_68 = shapes.summarize(models.get_model("alexnet"), (1, 68, 68, 1), train=False)
assert small_nin.total_params == nin_summary.total_params
for label, summary in (("NiN", small_nin), ("NiN", nin_summary),
                       ("AlexNet", alexnet_68), ("AlexNet", alexnet_224)):  # fmt: skip
    size = summary.input_shape[1]
    print(f"{label:8} at {size:3}x{size}: {summary.total_params:>11,} parameters")

# %% [markdown]
# ## Training
#
# `nbk.run_chapter_training("nin", curves=...)` trains the package's NiN with the chapter's
# settings for the current size (`jaxnotes.training.fit`: forward, loss, backward and update in
# one jitted step) and draws the learning curves as the epochs finish. Without dense layers to
# fall back on, NiN starts slowly, and a ReLU on the class scores can die (stay at 0 for every
# input) at a large learning rate: at the small size it trains from He initialisation with Adam
# at a modest rate, and ends well above chance (0.1).

# %%
result, seconds = nbk.run_chapter_training("nin", curves="NiN")
test_acc = result.summary["test_acc"]
print(f"test accuracy {test_acc:.3f} after {len(result.history)} epochs ({seconds:.1f} s)")

# %% [markdown]
# **Test above train?** The curves can show a test accuracy above the training accuracy. The
# training accuracy is the mean over the epoch's batches, measured while the weights were
# still improving and with **dropout on** (half of the last pooled features zeroed in every
# batch); the test accuracy is measured after the epoch with every unit on.

# %% [markdown]
# ## Predictions on test images
#
# The trained network on 16 test images: the prediction, with the true class in brackets and in
# red where they differ.

# %%
fig, predictions, labels = nbk.show_predictions("nin", result)
print(f"{int((predictions == labels).sum())} of 16 correct")

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell where you set `answer`, and a check cell after it that tells you
# whether your answer is right (without telling you the answer).
#
# **1 (compute).** How many parameters has the book's first block, `nin_block(96, 11,
# strides=4)`, on a 1-channel input (with biases)?

# %%
answer = None  # a number

# %%
first_block = shapes.summarize(nin_block(96, 11, strides=4), (1, 68, 68, 1)).total_params
nbk.check_answer(answer, first_block, "an 11x11 conv 1 -> 96, then two 1x1 convs 96 -> 96")

# %% [markdown]
# **2 (compute).** NiN on 96x96 images: what height and width have the class maps that global
# average pooling averages? Answer as a pair.

# %%
answer = None  # (height, width)

# %%
at_96 = shapes.summarize(models.get_model("nin"), (1, 96, 96, 1), train=False)
nbk.check_answer(answer, tuple(at_96.rows[-2].output_shape[1:3]), "follow 96 through the blocks")

# %% [markdown]
# **3 (predict, then run).** Does NiN have the same number of parameters at 96x96 as at
# 224x224? Answer `True` or `False`.

# %%
answer = None  # True or False

# %%
nbk.check_answer(answer, at_96.total_params == nin_summary.total_params,
                 "which of its layers has a size tied to the input's?")  # fmt: skip

# %% [markdown]
# **4 (compute).** Instead of NiN's last block and global average pooling, one dense layer
# from the flattened 5x5x384 features straight to 10 classes: how many parameters?

# %%
answer = None  # a number

# %%
nbk.check_answer(answer, shapes.dense_params(5 * 5 * 384, 10), "(n_in + 1) * n_out")

# %% [markdown]
# ## Checks
#
# The claims this page makes about its run, checked on the numbers above (the training at the
# small size; at the book size it is printed, not asserted).

# %%
assert dense_head > 25 * nin_summary.total_params  # a dense head would dwarf the whole of NiN
assert alexnet_68.total_params < alexnet_224.total_params  # a dense head is tied to the input
print(f"test accuracy {test_acc:.3f}")
if SIZE == "small":
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert test_acc > 0.5, test_acc  # chance is 0.1
print("the checks hold" if SIZE == "small" else "book size: the numbers above, not asserted")

# %%
# Results
trained_params = shapes.count_params(result.state.params)
print(nbk.results_line("NiN", result, seconds, params=trained_params))
print(f"notebook time: {time.perf_counter() - START:.1f} s")
