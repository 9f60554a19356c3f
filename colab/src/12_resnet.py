# %% [markdown]
# # 12. ResNet: residual blocks
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/12_resnet.ipynb)
#
# Adding layers to a network should never make it worse at fitting its training data: the
# extra layers could just learn the identity. In practice a deep **plain** stack of layers
# trains worse than a shallower one, even with batch norm: its training error is higher, not
# only its test error (He et al. called it *degradation*). ResNet makes the identity easy: a
# **residual block** computes $f(x) = g(x) + x$, so its layers only have to learn the residual
# $g(x) = f(x) - x$, and a block with $g = 0$ passes its input straight through.
#
# We write the residual block on the page, with and without the 1x1 convolution that reshapes
# the shortcut, and check it against `jaxnotes.models.Residual`; read ResNet-18 stage by stage;
# train a deep plain network and the same network with residual connections and compare their
# training losses; and train ResNet-18.
#
# **Size.** The outputs stored in this notebook are the small size, run on a CPU: scikit-learn's
# 8x8 `digits` (the plain-vs-residual comparison on the 8x8 images themselves, ResNet-18 on 640
# of them scaled up to 32x32, 2 epochs). The book size (`SIZE = "book"` in the first cell, on a
# GPU) trains on Fashion-MNIST: ResNet-18 at the book's 96x96 for 10 epochs (learning rate 0.05,
# batch 256); its numbers are not the ones stored here.

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
from jaxnotes.training import TrainConfig, fit

# %% [markdown]
# ## The residual block on the page
#
# Two 3x3 convolutions with padding 1 (the first with stride $s$), each followed by batch norm,
# a ReLU after the first; then the block's input is **added** and a last ReLU applied. The sum
# needs both terms to have the same shape: when the block halves the size (stride 2) or
# changes the number of channels, a 1x1 convolution with the same stride carries the input to
# the new shape (`use_1x1conv=True`). Batch norm is Flax's, with the book's momentum and
# epsilon (chapter 11 wrote it from scratch).


# %%
def batch_norm(train, name):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class Residual(nn.Module):
    """(N, H, W, C) -> (N, H / strides, W / strides, num_channels), rounded up."""

    num_channels: int
    use_1x1conv: bool = False
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        c, s = self.num_channels, self.strides
        y = nn.Conv(c, (3, 3), strides=s, padding=1, name="conv1")(x)
        y = nn.relu(batch_norm(train, "bn1")(y))
        y = nn.Conv(c, (3, 3), padding=1, name="conv2")(y)
        y = batch_norm(train, "bn2")(y)
        if self.use_1x1conv:  # reshape the shortcut: c channels, stride s
            x = nn.Conv(c, (1, 1), strides=s, name="conv3")(x)
        return nn.relu(y + x)


fig = plots.block_diagram(
    [
        ["3x3 conv, stride s", "batch norm", "ReLU", "3x3 conv", "batch norm"],
        ["1x1 conv, stride s\n(use_1x1conv=True),\nor x as it is"],
    ],
    "residual block: g(x) on the left, the shortcut on the right",
    output="add: g(x) + x, then ReLU",
)

# %% [markdown]
# The package's `jaxnotes.models.Residual` names its layers the same way (`conv1`, `bn1`,
# `conv2`, `bn2`, `conv3`), so the page's block runs on the package's variables. Both kinds of
# block must agree with it, in training (output and updated batch-norm averages) and in
# inference: one that keeps 16 channels at 8x8, and one that goes to 32 channels at 4x4 through
# the 1x1 shortcut.

# %%
x = jax.random.normal(jax.random.key(0), (4, 8, 8, 16))
for kwargs, out_shape in [
    ({}, (4, 8, 8, 16)),
    ({"use_1x1conv": True, "strides": 2}, (4, 4, 4, 32)),
]:
    channels = out_shape[-1]
    page, zoo = Residual(channels, **kwargs), models.Residual(channels, **kwargs)
    variables = zoo.init(jax.random.key(1), x)
    for train in (True, False):
        ours, ours_state = page.apply(variables, x, train=train, mutable=["batch_stats"])
        theirs, theirs_state = zoo.apply(variables, x, train=train, mutable=["batch_stats"])
        assert ours.shape == out_shape and np.allclose(ours, theirs, atol=1e-5)
        assert jax.tree.all(jax.tree.map(np.allclose, ours_state, theirs_state))
    print(f"Residual({channels}, {kwargs}): {x.shape} -> {ours.shape}, same as the package's")

# %% [markdown]
# Without the 1x1 convolution the shortcut adds the input as it is, so the block cannot change
# the shape; the package's block says so instead of failing somewhere inside:

# %%
try:
    models.Residual(32).init(jax.random.key(1), x)
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# Parameters (`jaxnotes.shapes.summarize`, at ResNet-18's second stage, 24x24 maps with 64
# channels): each 3x3 convolution has $9 c_i c_o + c_o$, each batch norm $2c$, and the 1x1
# shortcut $c_i c_o + c_o$.

# %%
block_64 = shapes.summarize(models.Residual(64), (1, 24, 24, 64), train=False)
block_128 = shapes.summarize(
    models.Residual(128, use_1x1conv=True, strides=2), (1, 24, 24, 64), train=False
)
print(block_128)
assert block_64.total_params == 2 * shapes.conv_params(64, 64, 3) + 2 * 2 * 64
assert block_128.total_params == (
    shapes.conv_params(64, 128, 3) + shapes.conv_params(128, 128, 3)
    + 2 * 2 * 128 + shapes.conv_params(64, 128, 1)
)  # fmt: skip
print(f"Residual(64): {block_64.total_params:,} parameters; ", end="")
print(f"Residual(128, 1x1, stride 2): {block_128.total_params:,}")

# %% [markdown]
# ## ResNet-18, stage by stage
#
# At the book's 96x96x1 input. The first stage is GoogLeNet's: a 7x7 convolution with stride 2
# and a 3x3 max pool with stride 2 (96 to 24), with batch norm. Then four stages of two
# residual blocks each, with 64, 128, 256 and 512 channels; each stage after the first starts
# with a block that halves the size through the 1x1 shortcut. Global average pooling and one
# dense layer end it. 18 layers: the first convolution, 16 in the blocks, the dense layer (the
# 1x1 shortcuts are not counted). Below, each block's layers are summed into one row.

# %%
resnet_summary = shapes.summarize(models.get_model("resnet18"), (1, 96, 96, 1), train=False)
grouped = {}  # top-level layer -> (output shape, parameters, mult-adds)
for row in resnet_summary.rows:
    top, _, layer = row.path.partition("/")
    shape, params, macs = grouped.get(top, (row.output_shape, 0, 0))
    if layer == "bn2":  # a block's output has the shape of its second batch norm's
        shape = row.output_shape
    grouped[top] = (shape, params + row.params, macs + row.macs)
print(f"{'layer':16} {'output shape':18} {'params':>11} {'mult-adds':>13}")
for top, (shape, params, macs) in grouped.items():
    print(f"{top:16} {str(shape):18} {params:>11,} {macs:>13,}")
print(f"{'total':16} {str(resnet_summary.output_shape):18} {resnet_summary.total_params:>11,}")
block_shapes = [shape for top, (shape, _, _) in grouped.items() if top.startswith("Residual")]
assert [s[1:] for s in block_shapes[1::2]] == [
    (24, 24, 64),
    (12, 12, 128),
    (6, 6, 256),
    (3, 3, 512),
]
assert resnet_summary.total_params == 11_178_378

# %% [markdown]
# ## Degradation: a deep plain network against the same depth with shortcuts
#
# Two networks of the same 21 convolutions (8 channels each, on the 8x8 digits themselves) and
# the same batch norms, trained with the same settings: a first convolution, then ten blocks,
# global average pooling and a dense layer. In one the blocks are the residual blocks above;
# in the other, `PlainBlock`, the same block with the shortcut removed. Same parameters, same
# cost; the only difference is the `+ x`.


# %%
class PlainBlock(nn.Module):
    """The residual block without its shortcut: conv, BN, ReLU, conv, BN, ReLU."""

    num_channels: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = self.num_channels
        y = nn.relu(batch_norm(train, "bn1")(nn.Conv(c, (3, 3), padding=1, name="conv1")(x)))
        y = batch_norm(train, "bn2")(nn.Conv(c, (3, 3), padding=1, name="conv2")(y))
        return nn.relu(y)  # the residual block returns nn.relu(y + x)


class DeepNet(nn.Module):
    """A conv, `blocks` blocks of two convs (residual or plain), average pool, dense."""

    blocks: int = 10
    channels: int = 8
    residual: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(self.channels, (3, 3), padding=1)(x))
        block = Residual if self.residual else PlainBlock
        for _ in range(self.blocks):
            x = block(self.channels)(x, train)
        x = x.mean(axis=(1, 2))  # global average pooling
        return nn.Dense(10)(x)


plain, residual = DeepNet(residual=False), DeepNet(residual=True)
sizes = [shapes.summarize(net, (1, 8, 8, 1)).total_params for net in (plain, residual)]
convs = sum(r.kind == "Conv" for r in shapes.summarize(plain, (1, 8, 8, 1)).rows)
assert sizes[0] == sizes[1] and convs == 21
print(f"both: {convs} convolutions, {sizes[0]:,} parameters")

# %% [markdown]
# Both trained by the engine (`fit(config, model=...)`) with SGD at 0.1, batch 32, on 640
# training images for 6 epochs (the book size: all of Fashion-MNIST at 28x28, 5 epochs, batch
# 128).

# %%
train = data.load(nbk.dataset_name(), "train")
test = nbk.subset(data.load(nbk.dataset_name(), "test"), 256)
epochs, batch_size = (6, 32) if SIZE == "small" else (5, 128)
train = nbk.subset(train, 640) if SIZE == "small" else train
depth_runs = {}
for label, net in [("plain, 21 convs", plain), ("residual, 21 convs", residual)]:
    config = TrainConfig(
        model=label, dataset=nbk.dataset_name(), epochs=epochs, batch_size=batch_size,
        learning_rate=0.1, progress=False,
    )  # fmt: skip
    depth_runs[label] = fit(config, model=net, train_data=train, test_data=test, log=lambda _: None)
    s = depth_runs[label].summary
    print(f"{label:19} train loss {s['train_loss']:.3f}, train acc {s['train_acc']:.3f}")
fig = plots.run_comparison(
    {label: run.history for label, run in depth_runs.items()},
    keys=("train_loss", "train_acc"),
    title="same depth, same layers: with and without the shortcut",
)

# %% [markdown]
# The plain network fits its **training** data worse: this is not over-fitting (that would be
# a low training loss and a poor test score) but layers that are hard to optimise as a stack.
# The residual network starts where a shallow network would (every block near the identity)
# and its gradients reach the first layers through the shortcuts.
#
# ## Training ResNet-18
#
# `nbk.run_chapter_training("resnet18")` trains the package's ResNet-18 with the chapter's
# settings for the current size (`jaxnotes.training.fit`; batch norm's averages are trained as
# state, the optimizer never sees them): SGD with the book's rate 0.05, one line per epoch.

# %%
result, seconds = nbk.run_chapter_training("resnet18")
print(f"test accuracy {result.summary['test_acc']:.3f} after {len(result.history)} epochs")

# %% [markdown]
# ## Predictions on test images
#
# The trained ResNet-18 on 16 test images (batch norm in inference mode: the moving averages):
# the prediction, with the true class in brackets and in red where they differ.

# %%
fig, predictions, labels = nbk.show_predictions("resnet18", result)
print(f"{int((predictions == labels).sum())} of 16 correct")

# %% [markdown]
# ## Exercises
#
# Set `answer` in each exercise's cell; the check cell after it says whether it is right
# (without showing the answer).
#
# **1 (compute).** How many parameters does `Residual(256, use_1x1conv=True, strides=2)` have
# on an input with 128 channels? (Convolutions with biases; two per channel in each batch norm.)

# %%
answer = None  # a number

# %%
expected = shapes.summarize(
    models.Residual(256, use_1x1conv=True, strides=2), (1, 12, 12, 128), train=False
).total_params
hint = "three convs (3x3 128->256, 3x3 256->256, 1x1 128->256) and two batch norms"
nbk.check_answer(answer, expected, hint)

# %% [markdown]
# **2 (compute).** ResNet-18 on a 64x64 image: what height and width have the maps that leave
# the last stage (before global average pooling)? Answer as a pair `(height, width)`.

# %%
answer = None  # (height, width)

# %%
rows = shapes.summarize(models.get_model("resnet18"), (1, 64, 64, 1), train=False).rows
last = [row.output_shape for row in rows if row.path.endswith("/bn2")][-1]
hint = "the first stage divides by 4, each later stage by 2 (rounding up)"
nbk.check_answer(answer, tuple(last[1:3]), hint)

# %% [markdown]
# **3 (predict, then run).** Set the weights of a residual block's second batch norm to
# $\gamma = 0, \beta = 0$, so that $g(x) = 0$. On an input with no negative values, does the
# block then return its input unchanged? Answer `True` or `False`; the check sets those
# weights on a fresh block and compares its output with its input.

# %%
answer = None  # True or False

# %%
x_pos = jax.nn.relu(x)  # the input of the checks above, without its negative values
variables = models.Residual(16).init(jax.random.key(3), x_pos)
params = {**variables["params"], "bn2": jax.tree.map(jnp.zeros_like, variables["params"]["bn2"])}
out = Residual(16).apply({**variables, "params": params}, x_pos)
hint = "with g(x) = 0 the block returns ReLU(0 + x); what is ReLU of a non-negative number?"
nbk.check_answer(answer, bool(np.allclose(out, x_pos)), hint)

# %% [markdown]
# **4 (change).** Make both deep networks shallower: `DeepNet(blocks=2, ...)` (5 convolutions).
# Is the plain network's final training loss still more than 1.5 times the residual one's?
# Predict `True` or `False`; the check trains both (a few seconds) once `answer` is set.

# %%
answer = None  # True or False

# %%
ratio = None
if answer is not None:  # trains once you have predicted
    losses = []
    for is_residual in (False, True):
        config = TrainConfig(model="shallow", dataset=nbk.dataset_name(), epochs=epochs,
                             batch_size=batch_size, learning_rate=0.1, progress=False)  # fmt: skip
        net = DeepNet(blocks=2, residual=is_residual)
        run = fit(config, model=net, train_data=train, test_data=test, log=lambda _: None)
        losses.append(run.summary["train_loss"])
    print(f"final training losses: plain {losses[0]:.3f}, residual {losses[1]:.3f}")
    ratio = losses[0] > 1.5 * losses[1]
nbk.check_answer(answer, ratio, "compare the two losses just printed")

# %% [markdown]
# ## Checks
#
# The claims this page makes about its runs, checked on the numbers above (at the small size;
# at the book size they are printed, not asserted: the stored outputs do not show that size).

# %%
plain_run, residual_run = depth_runs["plain, 21 convs"], depth_runs["residual, 21 convs"]
gap = plain_run.summary["train_loss"] / residual_run.summary["train_loss"]
print(f"plain / residual final training loss: {gap:.1f}x")
correct = int((predictions == labels).sum())
if SIZE == "small":
    # Degradation: same depth and layers, the plain net fits its training data far worse.
    assert gap > 2.5, gap
    assert residual_run.summary["train_acc"] > plain_run.summary["train_acc"] + 0.25
    # ResNet-18 learns the digits in two short epochs (0.91-0.95 measured, seeds 0-2).
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.summary["test_acc"] > 0.8, result.summary
    assert correct >= 10, correct
print("the checks hold" if SIZE == "small" else "book size: the numbers above, not asserted")

# %%
# Results
trained_params = shapes.count_params(result.state.params)
print(nbk.results_line("ResNet-18", result, seconds, params=trained_params))
print(f"notebook time: {time.perf_counter() - START:.1f} s")
