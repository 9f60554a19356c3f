# %% [markdown]
# # 5. Multiple input and output channels, 1x1 convolution, parameter counts
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/05_channels.ipynb)
#
# Real inputs and hidden layers have **channels**: an RGB image has 3, a hidden layer often
# dozens, stored as $(c, h, w)$.
#
# * **Several input channels.** The kernel has one 2-D slice per input channel, shape
#   $(c_i, k_h, k_w)$; each channel is correlated with its slice and the results are
#   **summed**: $Y = \sum_{c} \mathrm{corr2d}(X_c, K_c)$ is one output channel.
# * **Several output channels.** One such 3-D kernel per output channel, shape
#   $(c_o, c_i, k_h, k_w)$; the $c_o$ results are **stacked**. Each output channel can learn
#   its own pattern (an edge direction, a colour, a texture).
# * **1x1 convolution.** With $k_h = k_w = 1$ a layer sees no neighbours: at every pixel it
#   multiplies the $c_i$ channel values by one $(c_o, c_i)$ matrix. It is a dense layer applied
#   at every pixel, used to mix and to reduce channels (NiN, GoogLeNet).
# * **Parameters:** $c_o c_i k_h k_w$ weights plus $c_o$ biases, whatever the image size.
#
# Each piece is written by hand below and checked against `jaxnotes.ops`
# (`corr2d_multi_in`, `corr2d_multi_in_out`, `conv1x1`); parameter counts come from
# `jaxnotes.shapes.conv_params`.
#
# **Size.** No sizes: nothing here depends on one; every cell runs in seconds on any runtime
# (the stored outputs are from a CPU).

# %% tags=["setup"]
# The shared set-up cell (colab/src/_setup.py: size form, install on Colab, device) replaces
# this one in the notebook; run as a script, this is all of it that matters.
import time

from jaxnotes import notebook as nbk

START = time.perf_counter()
SIZE = nbk.start(None)
nbk.as_script()  # run as a script: figures are saved to files (or shown in windows)

# %%
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxnotes import data, ops, plots, shapes

np.set_printoptions(precision=3, suppress=True)

# %% [markdown]
# ## Several input channels: correlate per channel, then sum
#
# Built on the 2-D correlation of the previous chapter, `ops.corr2d`. The book's example: two
# 3x3 input channels and a $(2, 2, 2)$ kernel give one 2x2 output.


# %%
def corr2d_multi_in(X, K):
    """X: (c_i, h, w), K: (c_i, kh, kw) -> (h - kh + 1, w - kw + 1)."""
    return sum(ops.corr2d(x, k) for x, k in zip(X, K, strict=True))


X = jnp.stack([jnp.arange(9.0), jnp.arange(1.0, 10.0)]).reshape(2, 3, 3)
K = jnp.array([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]])
Y = corr2d_multi_in(X, K)
print("X", X.shape, "* K", K.shape, "->", Y.shape, "\n", Y)
assert np.allclose(Y, [[56, 72], [104, 120]])  # the book's numbers
assert np.allclose(corr2d_multi_in(X, K), ops.corr2d_multi_in(X, K), atol=1e-5)

# %% [markdown]
# ## Several output channels: one 3-D kernel each, stacked
#
# Three kernels `K`, `K + 1`, `K + 2` give three output channels; the first is the result
# above.


# %%
def corr2d_multi_in_out(X, K):
    """X: (c_i, h, w), K: (c_o, c_i, kh, kw) -> (c_o, out_h, out_w)."""
    return jnp.stack([corr2d_multi_in(X, k) for k in K])


K3 = jnp.stack([K, K + 1, K + 2])
Y3 = corr2d_multi_in_out(X, K3)
print("K3", K3.shape, "->", Y3.shape, "\n", Y3)
assert np.allclose(Y3[0], Y)
assert np.allclose(corr2d_multi_in_out(X, K3), ops.corr2d_multi_in_out(X, K3), atol=1e-5)

# %% [markdown]
# > **Compared with your notes.** The notes: "一般多个输入通道,输出通道一般只有一个" (there
# > are usually several input channels but only one output channel). That holds for the
# > operation that makes **one** output channel, $\sum_c \mathrm{corr2d}(X_c, K_c)$. A
# > convolutional **layer** almost always has many output channels, one such 3-D kernel each
# > (their own point 2, $c_o \times c_i \times k_h \times k_w$): every convolution of the
# > networks in these chapters outputs more than one channel, except where the network ends in
# > one channel per class.

# %%
from jaxnotes import models

for name, shape in (("lenet", (1, 28, 28, 1)), ("vgg11_small", (1, 32, 32, 1))):
    rows = shapes.summarize(models.get_model(name), shape, train=False).rows
    outs = [row.output_shape[-1] for row in rows if row.kind == "Conv"]
    print(f"{name}: output channels of its convolutions {outs}")

# %% [markdown]
# ## 1x1 convolution is a matrix product over channels
#
# Reshape $X$ to $(c_i, h w)$, one column per pixel, and multiply by the $(c_o, c_i)$ matrix
# of weights: the same dense layer at every pixel. It equals the general correlation with
# $1 \times 1$ kernels (the book's check) and `ops.conv1x1`.


# %%
def corr2d_multi_in_out_1x1(X, K):
    """X: (c_i, h, w), K: (c_o, c_i, 1, 1) -> (c_o, h, w), as one matrix product."""
    c_i, h, w = X.shape
    c_o = K.shape[0]
    Y = K.reshape(c_o, c_i) @ X.reshape(c_i, h * w)
    return Y.reshape(c_o, h, w)


rng = np.random.default_rng(0)
X_rand = jnp.asarray(rng.normal(size=(3, 3, 3)), jnp.float32)
K_rand = jnp.asarray(rng.normal(size=(2, 3, 1, 1)), jnp.float32)
Y_1x1 = corr2d_multi_in_out_1x1(X_rand, K_rand)
print("X", X_rand.shape, "* K", K_rand.shape, "->", Y_1x1.shape)
assert np.allclose(Y_1x1, corr2d_multi_in_out(X_rand, K_rand), atol=1e-5)
assert np.allclose(Y_1x1, ops.conv1x1(X_rand, K_rand[:, :, 0, 0]), atol=1e-5)

# %% [markdown]
# ## Output channels as feature detectors, on a real digit
#
# One 8x8 test digit ($c_i = 1$) and four hand-made 3x3 kernels ($c_o = 4$): the identity
# (copies the image), a vertical-edge kernel (left column minus right column, averaged), its
# transpose for horizontal edges, and a blur (the mean of the window). Padding 1 keeps 8x8.
# Top row: the kernels; bottom row: the feature map each one makes. Red is positive, blue
# negative, white zero, on one scale for all panels: the vertical-edge map is red along the
# right side of a vertical stroke (bright to the left, dark to the right) and blue along its
# left side; the horizontal-edge map does the same for the bottom and top of a stroke.

# %%
digits = data.load("digits", "test")
index = int(np.flatnonzero(digits.labels == 4)[0])  # the first 4 in the test set
image = jnp.asarray(digits.images[index, :, :, 0])  # (8, 8), values in [0, 1]

identity = jnp.zeros((3, 3)).at[1, 1].set(1.0)
vertical = jnp.array([[1.0, 0.0, -1.0]] * 3) / 3
horizontal = vertical.T
blur = jnp.full((3, 3), 1 / 9)
K1 = jnp.stack([identity, vertical, horizontal, blur])[:, None]  # (c_o, c_i, 3, 3) = (4, 1, 3, 3)
features = ops.corr2d_multi_in_out(image[None], K1, padding=1)  # (4, 8, 8)
print("digit", image[None].shape, "* kernels", K1.shape, "->", features.shape)
assert features.shape == (4, 8, 8)
assert np.allclose(features[0], image)  # the identity kernel copies the image
names = ["identity", "vertical", "horizontal", "blur"]
fig = plots.signed_maps([*K1[:, 0], *features], names + names, ncols=4)

# %% [markdown]
# ## Mixing channels with a 1x1 convolution
#
# The four maps are now a 4-channel input. A 1x1 convolution with a $(3, 4)$ matrix mixes them
# at every pixel: vertical + horizontal edges (one diagonal), vertical - horizontal (the other
# diagonal), and image - blur (what blurring removes: fine detail).
#
# Without a nonlinearity in between, a 3x3 layer followed by a 1x1 layer is still a single
# 3x3 convolution: its kernels are the mixed kernels $\sum_c M_{o,c} K_c$ (top row), and they
# produce exactly the mixed maps (bottom row).

# %%
M = jnp.array(
    [
        [0.0, 1.0, 1.0, 0.0],  # vertical + horizontal
        [0.0, 1.0, -1.0, 0.0],  # vertical - horizontal
        [1.0, 0.0, 0.0, -1.0],  # image - blur
    ]
)
mixed = ops.conv1x1(features, M)  # (3, 8, 8)
K_combined = jnp.einsum("oc,cihw->oihw", M, K1)  # (3, 1, 3, 3)
assert np.allclose(mixed, ops.corr2d_multi_in_out(image[None], K_combined, padding=1), atol=1e-5)
mixed_names = ["vert + horiz", "vert - horiz", "image - blur"]
fig = plots.signed_maps([*K_combined[:, 0], *mixed], mixed_names + mixed_names, ncols=3)

# %% [markdown]
# ## Parameter counts: $c_o c_i k_h k_w + c_o$
#
# The formula (`jaxnotes.shapes.conv_params`) against what a Flax `nn.Conv` really allocates,
# for layers from the book. Putting a 1x1 convolution in front of a 5x5 one to shrink the
# channels first (GoogLeNet's trick) cuts the cost more than tenfold.

# %%
layers = [  # (name, c_in, c_out, kernel)
    ("LeNet conv1", 1, 6, 5),
    ("LeNet conv2", 6, 16, 5),
    ("AlexNet conv1", 1, 96, 11),
    ("VGG 3x3, 256 -> 256", 256, 256, 3),
    ("1x1, 256 -> 64", 256, 64, 1),
    ("5x5, 256 -> 32", 256, 32, 5),
]
counts = {}
for name, c_in, c_out, k in layers:
    formula = shapes.conv_params(c_in, c_out, k)
    conv = nn.Conv(c_out, (k, k))
    variables = jax.eval_shape(conv.init, jax.random.key(0), jnp.zeros((1, 32, 32, c_in)))
    assert formula == shapes.count_params(variables), name
    counts[name] = formula
    print(f"{name:34} {formula:>9,}  = {c_out}*{c_in}*{k}*{k} + {c_out}")

bottleneck = shapes.conv_params(256, 16, 1) + shapes.conv_params(16, 32, 5)
counts["1x1 256 -> 16, then 5x5 16 -> 32"] = bottleneck
print(f"{'1x1 256 -> 16, then 5x5 16 -> 32':34} {bottleneck:>9,}")
saving = counts["5x5, 256 -> 32"] / bottleneck
print(f"the 1x1 bottleneck needs {saving:.1f}x fewer parameters than the plain 5x5")

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell where you set `answer`, and a check cell after it that tells you
# whether your answer is right (without telling you the answer).
#
# **1 (compute).** A 3x3 convolution from an RGB image (3 channels) to 64 channels, with
# biases: how many parameters?

# %%
answer = None  # a number

# %%
nbk.check_answer(answer, shapes.conv_params(3, 64, 3), "c_o * c_i * k_h * k_w + c_o")

# %% [markdown]
# **2 (compute).** `corr2d_multi_in` of an input of shape (3, 10, 10) with a kernel of shape
# (3, 3, 3): the output's shape? Answer as a tuple.

# %%
answer = None  # a tuple

# %%
out = corr2d_multi_in(jnp.ones((3, 10, 10)), jnp.ones((3, 3, 3)))
nbk.check_answer(answer, tuple(out.shape), "the channels are summed away")

# %% [markdown]
# **3 (compute).** A 1x1 convolution from 256 to 64 channels on a 28x28 map: how many
# multiply-adds per image?

# %%
answer = None  # a number

# %%
macs_1x1 = shapes.summarize(nn.Conv(64, (1, 1), use_bias=False), (1, 28, 28, 256)).total_macs
nbk.check_answer(answer, macs_1x1, "at every pixel, a (64, 256) matrix times a vector")

# %% [markdown]
# **4 (predict, then run).** Swap the two input channels of the book's example `X` but not
# the kernel's slices. Is the output the same as before? Answer `True` or `False`.

# %%
answer = None  # True or False

# %%
swapped = corr2d_multi_in(X[::-1], K)
nbk.check_answer(answer, bool(np.allclose(swapped, Y)), "each channel meets its own slice")

# %% [markdown]
# ## Checks
#
# The claims this page makes, checked on the numbers above.

# %%
assert saving > 10  # the 1x1 bottleneck cuts the 5x5 path's parameters more than tenfold
assert all(c > 1 for c in outs)  # a convolutional layer has many output channels
print("the checks hold")

# %%
# Results
print("multi-in example:", Y.tolist(), " multi-out shape:", tuple(Y3.shape))
print("1x1 convolution == matrix product over channels (checked against ops.conv1x1)")
print(f"digit {index} (label 4): 4 feature maps {tuple(features.shape)}, mixed {mixed.shape}")
for name, count in counts.items():
    print(f"parameters, {name}: {count:,}")
print(f"notebook time: {time.perf_counter() - START:.1f} s")
