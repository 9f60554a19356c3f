# %% [markdown]
# # 6. Pooling: max and average, padding and stride, per channel
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/06_pooling.ipynb)
#
# A pooling layer slides a window over its input like a convolution but has **no
# parameters**: it outputs the window's **maximum** or its **average**. Max pooling makes a
# detector tolerant to small shifts (an edge one pixel away still wins the window), and both
# kinds shrink the map, so that later layers see a wider part of the image.
#
# * Output size: $\lfloor (n - k + 2p + s) / s \rfloor$ as for a convolution, with the
#   stride defaulting to the window ($s = k$, windows that do not overlap): a 2x2 window
#   **halves** height and width.
# * **Per channel**: each channel is pooled on its own, so $c$ channels in give $c$ channels
#   out (no sum over channels as in a convolution).
# * Padding: max pooling pads with $-\infty$ (padding never wins); average pooling pads with
#   zeros and divides by the full window (PyTorch's default, and the book's).
#
# The pooling below is written by hand and checked against `jaxnotes.ops.pool2d`; sizes come
# from `jaxnotes.shapes.pool_output_shape`.
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
import jax.numpy as jnp
import numpy as np

from jaxnotes import data, demo, ops, plots, shapes

np.set_printoptions(precision=3, suppress=True)

# %% [markdown]
# ## Max and average pooling by hand
#
# The book's loop over output pixels, with padding and stride added: pad (with $-\infty$ for
# max, $0$ for average), then take every window $s$ pixels apart.


# %%
def pool2d(X, pool_size, mode="max", padding=(0, 0), stride=None):
    """X: (h, w); pool_size, padding (per side) and stride are (height, width) pairs."""
    (kh, kw), (ph, pw) = pool_size, padding
    sh, sw = stride or pool_size  # by default the windows do not overlap
    fill = -jnp.inf if mode == "max" else 0.0
    X = jnp.pad(X, ((ph, ph), (pw, pw)), constant_values=fill)
    Y = jnp.zeros(((X.shape[0] - kh) // sh + 1, (X.shape[1] - kw) // sw + 1))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            window = X[i * sh : i * sh + kh, j * sw : j * sw + kw]
            Y = Y.at[i, j].set(window.max() if mode == "max" else window.mean())
    return Y


X = jnp.arange(9.0).reshape(3, 3)
max_pool = pool2d(X, (2, 2), "max", stride=(1, 1))
avg_pool = pool2d(X, (2, 2), "avg", stride=(1, 1))
print("X =\n", X, "\nmax 2x2, stride 1:\n", max_pool, "\navg 2x2, stride 1:\n", avg_pool)
assert np.allclose(max_pool, [[4, 5], [7, 8]]) and np.allclose(avg_pool, [[2, 3], [5, 6]])

# %% [markdown]
# The same results as `ops.pool2d` (a vectorised version: a max or sum over the window offsets
# of shifted slices), for both modes, with and without padding and stride:

# %%
X_rand = jnp.asarray(np.random.default_rng(0).normal(size=(7, 6)), jnp.float32)
settings = [((2, 2), (0, 0), (1, 1)), ((3, 3), (1, 1), (2, 2)), ((2, 3), (0, 1), (2, 3))]
assert all(
    np.allclose(pool2d(X_rand, k, m, p, s), ops.pool2d(X_rand, k, m, p, s), atol=1e-5)
    for k, p, s in settings
    for m in ("max", "avg")
)

# %% [markdown]
# ## Padding and stride
#
# The book's 4x4 input: a 3x3 window (stride 3 by default) fits once; padding 1 with stride 2
# gives 2x2; a 2x3 window with padding (0, 1) and stride (2, 3) gives 2x2 too. Each shape is
# the one `shapes.pool_output_shape` predicts. Then the padding conventions: on an image of
# ones padded by 1, a 2x2 corner window holds one real pixel and three padded ones, so
# max pooling still gives 1 but average pooling gives $1/4$.

# %%
X4 = jnp.arange(16.0).reshape(4, 4)
pool_cases = [  # (window, padding per side, stride or None for the window)
    ((3, 3), (0, 0), None, [[10]]),
    ((3, 3), (1, 1), (2, 2), [[5, 7], [13, 15]]),
    ((2, 3), (0, 1), (2, 3), [[5, 7], [13, 15]]),
]
for window, padding, stride, book in pool_cases:
    out = pool2d(X4, window, "max", padding, stride)
    assert out.shape == shapes.pool_output_shape((4, 4), window, stride, padding)
    assert np.allclose(out, book), out  # the book's numbers
    print(f"window {window}, padding {padding}, stride {stride}: {out.shape}\n{out}")

ones = jnp.ones((2, 2))
assert np.all(pool2d(ones, (2, 2), "max", (1, 1)) == 1)
assert np.all(pool2d(ones, (2, 2), "avg", (1, 1)) == 0.25)
assert np.all(ops.pool2d(ones, 2, "avg", 1) == 0.25)
print("average pooling of 2x2 ones padded by 1:\n", pool2d(ones, (2, 2), "avg", (1, 1)))

# %% [markdown]
# ## Several channels: pooled one by one
#
# Stack `X4` and `X4 + 1` as two channels: two channels come out, each pooled on its own
# (`ops.pool2d` takes the whole $(c, h, w)$ stack at once).

# %%
X2 = jnp.stack([X4, X4 + 1])
pooled2 = ops.pool2d(X2, 3, padding=1, stride=2)
print(X2.shape, "->", pooled2.shape, "\n", pooled2)
assert pooled2.shape == (2, 2, 2) and np.allclose(pooled2[1], pooled2[0] + 1)
assert np.allclose(pooled2, jnp.stack([pool2d(x, (3, 3), "max", (1, 1), (2, 2)) for x in X2]))

# %% [markdown]
# ## Pooling digits
#
# Four 8x8 test digits, stacked as four channels, pooled 2x2 with stride 2 (the default) in
# one call: each becomes 4x4. Max pooling keeps a stroke at full strength wherever it touches
# a window, so it looks bolder; average pooling smooths it. The maximum of a window is never
# below its average. (Images in grey: black 0, white the brightest pixel.)

# %%
digits = data.load("digits", "test")
images = jnp.asarray(digits.images[:4, :, :, 0])  # (4, 8, 8): four "channels"
max_digits = ops.pool2d(images, 2, mode="max")
avg_digits = ops.pool2d(images, 2, mode="avg")
print("digits", images.shape, "-> pooled", max_digits.shape)
assert max_digits.shape == avg_digits.shape == (4, 4, 4)
names = [str(label) for label in digits.labels[:4]]
fig = plots.images(
    [*images, *max_digits, *avg_digits],
    [f"digit {n}" for n in names] + [f"max pool {n}" for n in names]
    + [f"avg pool {n}" for n in names],
    ncols=4,
    cmap="gray",
)  # fmt: skip

# %% [markdown]
# ## Tolerance to a one-pixel shift
#
# The edge map $|\mathrm{corr2d}(X, [1, -1])|$ of the book's image (chapter 4) marks its two
# vertical edges, at columns 1 and 5. Shift the image one pixel to the right and the edges
# move to columns 2 and 6: a unit that reads column 1 or 5 of the edge map now sees nothing
# (the columns are numbered under each panel).
# After a 2x2 max pool with stride 1, pooled column $j$ is the maximum over edge columns $j$
# and $j + 1$, so columns 1 and 5 fire at full strength for the image **and** for its shifted
# copy.

# %%
X_edge = demo.edge_image()  # (6, 8): white, with a black band in columns 2-5
X_shifted = jnp.roll(X_edge, 1, axis=1)  # the band moves to columns 3-6
K_edge = jnp.array([[1.0, -1.0]])
edges = jnp.abs(ops.corr2d(X_edge, K_edge))  # (6, 7)
edges_shifted = jnp.abs(ops.corr2d(X_shifted, K_edge))
pooled = ops.pool2d(edges, 2, stride=1)  # (5, 6)
pooled_shifted = ops.pool2d(edges_shifted, 2, stride=1)


def fires(m):
    """The columns where a map is nonzero."""
    return np.flatnonzero(np.asarray(m).any(axis=0)).tolist()


assert fires(edges) == [1, 5] and fires(edges_shifted) == [2, 6]
assert fires(pooled) == [0, 1, 4, 5] and fires(pooled_shifted) == [1, 2, 5]
columns = [1, 5]  # read by both pooled maps, at full strength
assert np.all(pooled[:, columns] == 1) and np.all(pooled_shifted[:, columns] == 1)
fig = plots.signed_maps(
    [X_edge, edges, pooled, X_shifted, edges_shifted, pooled_shifted],
    [
        "X (input)",
        f"|edges|\ncolumns {fires(edges)}",
        f"max pool 2x2\ncolumns {fires(pooled)}",
        "X shifted by 1 (input)",
        f"|edges|\ncolumns {fires(edges_shifted)}",
        f"max pool 2x2\ncolumns {fires(pooled_shifted)}",
    ],
    ncols=3,
    grey=[0, 3],
    column_ticks=True,
)

# %% [markdown]
# > **Compared with your notes.** The notes ask "为什么池化用的越来越少了?" (why is pooling used
# > less and less?) and answer: convolutions now often have a stride, and data augmentation
# > (rotations, shifts, scaling) already gives the tolerance to shifts. Both hold, with two
# > additions. A 3x3 convolution with stride 2 and padding 1 halves the size as a 2x2 pool
# > does, but its downsampling is **learned** (pooling's max or mean is fixed), so later
# > networks (ResNet's stages) downsample that way. And one pooling stayed everywhere: the
# > **global** average pooling that ends NiN, GoogLeNet and ResNet (chapter 9), which replaces
# > the dense head.

# %%
halved = {
    "2x2 max pool, stride 2": shapes.pool_output_size(28, 2, 2),
    "3x3 conv, stride 2, padding 1": shapes.conv_output_size(28, 3, 2, 1),
}
for name, size in halved.items():
    print(f"{name}: 28 -> {size}")
assert set(halved.values()) == {14}

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell where you set `answer`, and a check cell after it that tells you
# whether your answer is right (without telling you the answer).
#
# **1 (compute).** LeNet's first pool: 2x2 max pooling with stride 2 on a 28x28 map with 6
# channels. The output's shape (height, width, channels)?

# %%
answer = None  # a tuple

# %%
pooled_map = ops.pool2d(jnp.zeros((6, 28, 28)), 2)  # (c, h, w): channels first here
nbk.check_answer(answer, (*pooled_map.shape[1:], pooled_map.shape[0]), "per channel, halved")

# %% [markdown]
# **2 (compute).** Average pooling 3x3, stride 1, padding 1 on an image of ones: the value at
# a corner of the output?

# %%
answer = None  # a number

# %%
corner = float(pool2d(jnp.ones((4, 4)), (3, 3), "avg", (1, 1), (1, 1))[0, 0])
nbk.check_answer(answer, corner, "how many of the 9 window pixels are real at a corner?")

# %% [markdown]
# **3 (predict, then run).** Is a ReLU followed by a 2x2 max pool the same as the max pool
# followed by the ReLU, for any input? Answer `True` or `False` (the check tries a random
# input).

# %%
answer = None  # True or False

# %%
Z = jnp.asarray(np.random.default_rng(7).normal(size=(8, 8)), jnp.float32)
relu = lambda a: jnp.maximum(a, 0)  # noqa: E731
same_order = bool(np.allclose(ops.pool2d(relu(Z), 2), relu(ops.pool2d(Z, 2))))
nbk.check_answer(answer, same_order, "both are monotone: does the max of ReLUs change?")

# %% [markdown]
# **4 (compute).** How many parameters does a 3x3 max-pooling layer on 64 channels have?

# %%
answer = None  # a number

# %%
nbk.check_answer(answer, 0, "what would it learn?")

# %% [markdown]
# ## Checks
#
# The claims this page makes, checked on the numbers above.

# %%
assert bool(jnp.all(max_digits >= avg_digits))  # a window's max is never below its mean
assert np.all(pooled[:, columns] == 1) and np.all(pooled_shifted[:, columns] == 1)
print("the checks hold")

# %%
# Results
print("max pool of the book's example:", max_pool.tolist())
print("avg pool of the book's example:", avg_pool.tolist())
print(f"{len(pool_cases)} padding/stride cases: the book's numbers and pool_output_shape")
print(f"two channels in -> {pooled2.shape[0]} out; digits 8x8 -> {max_digits.shape[1:]}")
print(f"after a 2x2 max pool, columns {columns} fire for the image and its 1-pixel shift")
print(f"notebook time: {time.perf_counter() - START:.1f} s")
