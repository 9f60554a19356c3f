# %% [markdown]
# # 0. JAX for readers of the PyTorch notes
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/00_jax_primer.ipynb)
#
# The notes follow the PyTorch edition of the book; these notebooks are JAX and Flax. Most of the
# code reads the same (`jnp` is NumPy's API), but eight ideas differ, and every later chapter
# uses them:
#
# 1. arrays are **immutable**: `x.at[i].set(v)` returns a new array;
# 2. randomness takes an explicit **key**: the same key always gives the same numbers;
# 3. `jax.jit` **compiles** a function for the shapes it sees, and compiles again for new ones;
# 4. `jax.grad` and `jax.value_and_grad` **differentiate functions**, not tensors (no
#    `.backward()`);
# 5. `jax.vmap` turns a function of one example into a function of a batch;
# 6. parameters are **pytrees** (nested dicts of arrays) that `jax.tree` functions map over;
# 7. a Flax module holds no weights: `init` makes them, `apply` uses them;
# 8. images are **NHWC** (channels last) where PyTorch's are NCHW, and everything is
#    **float32** by default.
#
# Each idea is one short cell and one check.
#
# **Size.** No sizes: nothing here trains, so every cell runs in seconds on any runtime (the
# stored outputs are from a CPU).

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

from jaxnotes import plots

# %% [markdown]
# ## 1. Arrays are immutable
#
# PyTorch writes into a tensor in place (`x[2] = 10`). A JAX array cannot change; `x.at[2]`
# describes the change and `.set`, `.add`, `.multiply` return a **new** array. (Under `jit` the
# compiler reuses the memory when the old array is no longer needed, so this costs nothing.)

# %%
x = jnp.arange(5.0)
y = x.at[2].set(10.0)
print("x =", x, " y =", y)
try:
    x[2] = 10.0
except TypeError as error:
    print("x[2] = 10.0 ->", type(error).__name__)
assert x[2] == 2.0 and y[2] == 10.0

# %% [markdown]
# > **Compared with your notes.** Chapter 7 of the notes:
# > "view不改变内存存储,reshape改变内存存储方式" (view does not change
# > how the data is stored, reshape does). In PyTorch, `view` never copies (it needs
# > contiguous memory) and `reshape` returns a view when it can and copies
# > only when it must. JAX has only `reshape`: arrays cannot be changed, so whether XLA copies
# > is invisible and its business.

# %% [markdown]
# ## 2. Random numbers take a key
#
# There is no global random state. A **key** goes in, numbers come out, and the same key always
# gives the same numbers: that is why a dropout mask drawn twice from one key is the same mask,
# and why the training loop derives a new key for every step. `jax.random.split(key)` makes
# independent new keys; `jax.random.fold_in(key, step)` derives the key of step `step` (the same
# step always gets the same key, however the steps are grouped or resumed).

# %%
key = jax.random.key(0)
mask = jax.random.bernoulli(key, 0.5, (8, 8))
again = jax.random.bernoulli(key, 0.5, (8, 8))
step_1 = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, (8, 8))
first, second = jax.random.split(key)
print("same key, same mask:", bool((mask == again).all()))
print("fold_in(key, 1) gives another:", not bool((mask == step_1).all()))
assert (mask == again).all() and not (mask == step_1).all()
assert not (jax.random.uniform(first, (4,)) == jax.random.uniform(second, (4,))).any()
fig = plots.images(
    [mask, again, step_1],
    ["key 0", "key 0 again", "fold_in(key 0, 1)"],
    ncols=3,
    cmap="gray",
)

# %% [markdown]
# ## 3. `jit` compiles, once per shape
#
# `jax.jit(f)` traces `f` with abstract arrays (shapes and dtypes, no values) and compiles what
# it did. A second call with the same shapes reuses the program; a new shape (or dtype) traces
# and compiles again. Python code in `f` (a `print`, a counter) runs only while tracing, which
# makes the recompiles visible. Arguments marked `static_argnames` are Python values baked into
# the program: each new value compiles again.

# %%
traces = []


@jax.jit
def scaled_sum(x):
    traces.append(x.shape)  # runs only while tracing
    return 2.0 * x.sum()


scaled_sum(jnp.ones(3))
scaled_sum(jnp.zeros(3))  # same shape: no new trace
scaled_sum(jnp.ones(4))  # new shape: traced and compiled again
print("traced for shapes:", traces)
assert traces == [(3,), (4,)]


def power(x, n):
    return x**n


power_jit = jax.jit(power, static_argnames="n")
print(power_jit(jnp.float32(2.0), n=3), power_jit(jnp.float32(2.0), n=4))
assert power_jit(jnp.float32(2.0), n=3) == 8.0

# %% [markdown]
# ## 4. `grad` differentiates a function
#
# PyTorch records operations on tensors and `loss.backward()` fills `.grad`. In JAX,
# `jax.grad(f)` is a new function returning the gradient of `f` with respect to its first
# argument; `jax.value_and_grad(f)` returns the value and the gradient together (a training step
# needs both). For $f(\mathbf w) = \tfrac12 \lVert \mathbf w \rVert^2$ the gradient is
# $\mathbf w$ itself.


# %%
def half_squared_norm(w):
    return 0.5 * jnp.sum(w**2)


w = jnp.array([1.0, -2.0, 3.0])
value, gradient = jax.value_and_grad(half_squared_norm)(w)
print("value", value, "gradient", gradient)
assert value == 7.0 and (jax.grad(half_squared_norm)(w) == w).all() and (gradient == w).all()

# %% [markdown]
# ## 5. `vmap` adds the batch dimension
#
# Write the function for ONE example; `jax.vmap` makes it work on a batch (the first axis by
# default) without a Python loop, as if the batch dimension had been written in.


# %%
def predict(weights, x):  # one example: x has shape (3,)
    return jnp.tanh(weights @ x)


weights = jnp.arange(6.0).reshape(2, 3) / 10
batch = jnp.arange(12.0).reshape(4, 3)  # four examples
batched = jax.vmap(predict, in_axes=(None, 0))(weights, batch)  # weights shared
print(batched.shape)
assert np.allclose(batched, jnp.stack([predict(weights, x) for x in batch]), atol=1e-6)

# %% [markdown]
# ## 6. Parameters are pytrees
#
# A model's parameters are a nested dict of arrays (a **pytree**). `jax.tree.map` applies a
# function to every leaf (an SGD step is one line), `jax.tree.leaves` lists them; `jax.grad` of a
# function of a pytree returns a pytree of the same structure.

# %%
params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}, "scale": jnp.ones(())}
grads = jax.grad(lambda p: jnp.sum(p["dense"]["kernel"]) * p["scale"])(params)
new_params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)  # one SGD step
sizes = [leaf.size for leaf in jax.tree.leaves(params)]
print(jax.tree.map(jnp.shape, grads), sizes)
assert jax.tree.structure(grads) == jax.tree.structure(params) and sum(sizes) == 9
assert (new_params["dense"]["bias"] == 0).all() and np.isclose(new_params["scale"], 1.0 - 0.1 * 6)

# %% [markdown]
# ## 7. A Flax module: `init` makes the weights, `apply` uses them
#
# A PyTorch `nn.Linear(4, 3)` holds its weights. A Flax `nn.Dense(3)` is only a description:
# `init(key, x)` traces it on an example input (which fixes the input size, 4) and returns the
# variables; `apply(variables, x)` runs it. Flax stores the kernel as (in, out), so
# `y = x @ kernel + bias`, where PyTorch stores `weight` as (out, in).

# %%
layer = nn.Dense(3)
x = jnp.ones((2, 4))  # a batch of 2 examples with 4 features
variables = layer.init(jax.random.key(0), x)
out = layer.apply(variables, x)
kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
print(jax.tree.map(jnp.shape, variables), "->", out.shape)
assert kernel.shape == (4, 3) and np.allclose(out, x @ kernel + bias, atol=1e-6)

# %% [markdown]
# ## 8. Channels last, float32
#
# PyTorch's images are NCHW (batch, channels, height, width) and its convolution kernels
# (out, in, kh, kw); Flax's are NHWC and (kh, kw, in, out). The same convolution, written both
# ways with `jax.lax.conv_general_dilated`, agrees once the axes are moved. JAX computes in
# float32 unless told otherwise (64-bit is off: a float64 NumPy array becomes float32).

# %%
images_nhwc = jax.random.normal(jax.random.key(1), (2, 5, 5, 3))  # 2 RGB 5x5 images
conv = nn.Conv(4, (3, 3), padding=1)
conv_vars = conv.init(jax.random.key(2), images_nhwc)
flax_out = conv.apply(conv_vars, images_nhwc)  # (2, 5, 5, 4)
images_nchw = images_nhwc.transpose(0, 3, 1, 2)  # PyTorch's layout
kernel_oihw = conv_vars["params"]["kernel"].transpose(3, 2, 0, 1)
torch_style = jax.lax.conv_general_dilated(
    images_nchw, kernel_oihw, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW")
)
torch_style = torch_style + conv_vars["params"]["bias"][None, :, None, None]
print("NHWC", flax_out.shape, "NCHW", torch_style.shape)
assert np.allclose(flax_out.transpose(0, 3, 1, 2), torch_style, atol=1e-5)
print(jnp.array(1.0).dtype, jnp.asarray(np.zeros(2, np.float64)).dtype)
assert jnp.array(1.0).dtype == jnp.float32 == jnp.asarray(np.zeros(2)).dtype

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell where you set `answer`, and a check cell after it that tells you
# whether your answer is right (without telling you the answer).
#
# **1 (predict, then run).** `jax.random.uniform(jax.random.key(7), (3,))` is called twice. Are
# the two results equal? Answer `True` or `False`.

# %%
answer = None  # True or False

# %%
u = jax.random.uniform(jax.random.key(7), (3,))
nbk.check_answer(answer, bool((u == jax.random.uniform(jax.random.key(7), (3,))).all()),
                 "what decides the numbers: a global state, or the key?")  # fmt: skip

# %% [markdown]
# **2 (compute).** The gradient of $f(\mathbf w) = \sum_i w_i^3$ at $\mathbf w = (1, 2)$.
# Answer as a pair, e.g. `(0.5, 1.0)`.

# %%
answer = None  # (df/dw1, df/dw2)

# %%
expected = tuple(float(g) for g in jax.grad(lambda w: jnp.sum(w**3))(jnp.array([1.0, 2.0])))
nbk.check_answer(answer, expected, "the derivative of w**3 is 3 w**2")

# %% [markdown]
# **3 (predict, then run).** A jitted function is called with arrays of shapes (3,), (3,),
# (4,), (3,) and (4, 1). How many times is it traced?

# %%
answer = None  # a number

# %%
seen = []
counted = jax.jit(lambda x: seen.append(x.shape) or x.sum())
for shape in [(3,), (3,), (4,), (3,), (4, 1)]:
    counted(jnp.ones(shape))
nbk.check_answer(answer, len(seen), "a shape it has already compiled for is not traced again")

# %% [markdown]
# **4 (compute).** A batch of 8 RGB images of 32x32 has shape `(8, 3, 32, 32)` in PyTorch. What
# is its shape for a Flax `nn.Conv`? And the shape of the kernel of `nn.Conv(16, (5, 5))` on it?
# Answer as a pair of tuples.

# %%
answer = None  # ((N, H, W, C), (kh, kw, in, out))

# %%
batch_shape = (8, 32, 32, 3)
kernel_shape = nn.Conv(16, (5, 5)).init(jax.random.key(0), jnp.zeros(batch_shape))
kernel_shape = kernel_shape["params"]["kernel"].shape
nbk.check_answer(answer, (batch_shape, kernel_shape), "channels go last, for the kernel too")

# %% [markdown]
# ## Checks
#
# What this page showed, checked once more on the numbers above.

# %%
assert traces == [(3,), (4,)]  # jit traced once per shape
assert (mask == again).all() and not (mask == step_1).all()  # a key decides the mask
assert kernel.shape == (4, 3) and flax_out.shape == (2, 5, 5, 4)
print("the checks hold")

# %%
# Results
print(f"jit traced {len(traces)} times for 3 calls; a 4 -> 3 dense kernel: {kernel.shape}")
print(f"notebook time: {time.perf_counter() - START:.1f} s")
