# %% [markdown]
# # 13. DenseNet: dense blocks
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/13_densenet.ipynb)
#
# A residual block **adds** its input to its output, $f(x) = x + g(x)$. DenseNet
# **concatenates** them on the channel axis instead, $[x, g(x)]$, and does it again and again
# inside a **dense block**: each convolution block sees every map produced before it in the
# block, and adds its own $k$ channels, the *growth rate*. A dense block of $n$ convolution
# blocks on $c$ channels thus gives
#
# $$c + n \cdot k \ \text{channels}.$$
#
# To keep that growth in check, a **transition block** between two dense blocks halves the
# channels (a 1x1 convolution) and the height and width (a 2x2 average pool with stride 2).
#
# We write both blocks on the page and check them against `jaxnotes.models.DenseBlock` and
# `transition_block`, follow the channel count through the whole DenseNet, compare its size with
# ResNet-18's, and train it.
#
# **Size.** The outputs stored in this notebook are the small size, run on a CPU: scikit-learn's
# 8x8 `digits`, 640 of them scaled up to 32x32 (DenseNet's smallest input is 29x29), 3 epochs.
# The book size (`SIZE = "book"` in the first cell, on a GPU) trains on Fashion-MNIST at the
# book's 96x96 for 10 epochs (learning rate 0.1, batch 256); its numbers are not the ones stored
# here.

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
from matplotlib.patches import Patch

from jaxnotes import models, plots, shapes

# %% [markdown]
# ## The dense block on the page
#
# A convolution block in DenseNet is batch norm, ReLU, then a 3x3 convolution with padding 1
# (the order of the later ResNet versions: "pre-activation"), giving `num_channels` maps of the
# same height and width. The dense block runs `num_convs` of them, each on the concatenation of
# everything so far.


# %%
def batch_norm(train):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class DenseBlock(nn.Module):
    """(N, H, W, C) -> (N, H, W, C + num_convs * num_channels)."""

    num_convs: int
    num_channels: int  # the growth rate: channels each convolution block adds

    @nn.compact
    def __call__(self, x, train: bool = False):
        for _ in range(self.num_convs):
            y = nn.relu(batch_norm(train)(x))  # a convolution block: BN, ReLU, conv
            y = nn.Conv(self.num_channels, (3, 3), padding=1)(y)
            x = jnp.concatenate([x, y], axis=-1)  # the input, and the new channels after it
        return x


fig = plots.block_diagram(
    [
        ["x as it is\n(c channels)"],
        ["batch norm", "ReLU", "3x3 conv, pad 1\n(k channels)"],
    ],
    "one step of a dense block (repeated num_convs times)",
    output="concatenate on channels: c + k",
)

# %% [markdown]
# The book's example: two convolution blocks with growth rate 10 on a 3-channel input give
# $3 + 2 \cdot 10 = 23$ channels. The package's block names its layers the same way
# (`BatchNorm_0`, `Conv_0`, ...), so the page's block runs on the package's variables and must
# agree with it, in training (output and batch-norm averages) and in inference.

# %%
x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
page, zoo = DenseBlock(2, 10), models.DenseBlock(2, 10)
variables = zoo.init(jax.random.key(1), x)
for train in (True, False):
    ours, ours_state = page.apply(variables, x, train=train, mutable=["batch_stats"])
    theirs, theirs_state = zoo.apply(variables, x, train=train, mutable=["batch_stats"])
    assert np.allclose(ours, theirs, atol=1e-5)
    assert jax.tree.all(jax.tree.map(np.allclose, ours_state, theirs_state))
assert ours.shape == (4, 8, 8, 3 + 2 * 10)
print(f"DenseBlock(2, 10): {x.shape} -> {ours.shape}, the same as the package's")
print(shapes.summarize(zoo, (1, 8, 8, 3)))

# %% [markdown]
# In the table each batch norm's output shows the channels its convolution block reads: 3,
# then 3 + 10 = 13. Each convolution writes only 10 channels; the block's output is everything
# concatenated, 23.
#
# ## The transition block
#
# Batch norm, ReLU, a 1x1 convolution to `num_channels` and a 2x2 average pool with stride 2:
# on the 23-channel 8x8 maps above, `transition_block(10)` gives 10 channels at 4x4.


# %%
class TransitionBlock(nn.Module):
    """(N, H, W, C) -> (N, H // 2, W // 2, num_channels)."""

    num_channels: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(batch_norm(train)(x))
        x = nn.Conv(self.num_channels, (1, 1))(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


y = theirs  # the dense block's output, (4, 8, 8, 23)
page, zoo = TransitionBlock(10), models.transition_block(10)
variables = zoo.init(jax.random.key(2), y)
for train in (True, False):
    ours, _ = page.apply(variables, y, train=train, mutable=["batch_stats"])
    theirs, _ = zoo.apply(variables, y, train=train, mutable=["batch_stats"])
    assert np.allclose(ours, theirs, atol=1e-5) and ours.shape == (4, 4, 4, 10)
print(f"transition_block(10): {y.shape} -> {ours.shape}, the same as the package's")

# %% [markdown]
# ## The channel count through DenseNet
#
# The book's DenseNet: ResNet's first stage (a 7x7 convolution with 64 channels, stride 2, and a
# 3x3 max pool with stride 2), then four dense blocks of four convolution blocks with growth
# rate 32, a transition block halving the channels after each but the last; batch norm, ReLU,
# global average pooling and a dense layer end it. Every convolution block starts with a batch
# norm, and that batch norm's output in `jaxnotes.shapes.summarize` is what the block reads. The
# arithmetic predicts them: within a dense block $c, c + 32, c + 64, \dots$; after it
# $c + 4 \cdot 32$; after the transition half of that.

# %%
densenet_summary = shapes.summarize(models.get_model("densenet"), (1, 96, 96, 1), train=False)
seen = [  # (layer, channels it reads): every batch norm after the first stage's
    (row.path, row.output_shape[-1])
    for row in densenet_summary.rows
    if row.kind == "BatchNorm" and row.path != "BatchNorm_0"
]
predicted, c = [], 64  # the first stage leaves 64 channels
for block, num_convs in enumerate((4, 4, 4, 4)):
    predicted += [c + j * 32 for j in range(num_convs)]  # what each convolution block reads
    c = c + num_convs * 32  # the dense block's output
    predicted.append(c)  # read by the transition block (after the last block: the final BN)
    c = c // 2 if block < 3 else c
assert [channels for _, channels in seen] == predicted, seen
print("channels each layer reads:", predicted)

plt = plots.pyplot()
fig, ax = plt.subplots(figsize=(9, 3.4))
colors = {"DenseBlock": "#4292c6", "TransitionBlock": "#ef6548", "BatchNorm_1": "#969696"}
kinds = [path.split("_")[0] if "/" in path else path for path, _ in seen]
ax.bar(range(1, len(seen) + 1), predicted, color=[colors[k] for k in kinds])
legend = {
    "DenseBlock": "conv block in a dense block (adds 32)",
    "TransitionBlock": "transition block (halves)",
    "BatchNorm_1": "final batch norm",
}
ax.legend(handles=[Patch(color=colors[kind], label=text) for kind, text in legend.items()],
          loc="upper left", ncol=3)  # fmt: skip
ax.set_ylim(0, 310)  # room for the legend above the bars
ax.set_xticks(range(1, len(seen) + 1))
ax.set_xlabel("layer (in order, after the first stage)")
ax.set_ylabel("input channels")
ax.set_title("DenseNet (growth rate 32, blocks of 4): channels each layer reads")
ax.grid(True, axis="y", alpha=0.3)
fig.tight_layout()

# %% [markdown]
# ## Small and cheap: DenseNet against ResNet-18
#
# Each convolution in a dense block writes only 32 channels, and the transitions keep the
# inputs to at most 248, so DenseNet has far fewer parameters than ResNet-18, whose last stage
# alone has 512-channel 3x3 convolutions. Both at the book's 96x96x1 input, 10 classes
# (`shapes.summarize`, shapes only):

# %%
resnet_summary = shapes.summarize(models.get_model("resnet18"), (1, 96, 96, 1), train=False)
print(f"{'':10} {'parameters':>12} {'mult-adds per image':>20}")
for name, summary in [("DenseNet", densenet_summary), ("ResNet-18", resnet_summary)]:
    print(f"{name:10} {summary.total_params:>12,} {summary.total_macs:>20,}")
param_ratio = resnet_summary.total_params / densenet_summary.total_params
print(f"ResNet-18 has {param_ratio:.1f} times DenseNet's parameters")
assert densenet_summary.total_params == 758_226 and resnet_summary.total_params == 11_178_378

# %% [markdown]
# ## Training DenseNet
#
# `nbk.run_chapter_training("densenet")` trains the package's DenseNet with the chapter's
# settings for the current size (`jaxnotes.training.fit`), SGD with the book's rate 0.1, and
# prints one line per epoch.

# %%
result, seconds = nbk.run_chapter_training("densenet")
print(f"test accuracy {result.summary['test_acc']:.3f} after {len(result.history)} epochs")

# %% [markdown]
# ## Predictions on test images
#
# The trained DenseNet on 16 test images (batch norm in inference mode): the prediction, with
# the true class in brackets and in red where they differ.

# %%
fig, predictions, labels = nbk.show_predictions("densenet", result)
print(f"{int((predictions == labels).sum())} of 16 correct")

# %% [markdown]
# ## Exercises
#
# Set `answer` in each exercise's cell; the check cell after it says whether it is right
# (without showing the answer).
#
# **1 (compute).** How many channels leave `DenseBlock(3, 10)` on an input with 23 channels?

# %%
answer = None  # a number

# %%
out = shapes.summarize(models.DenseBlock(3, 10), (1, 8, 8, 23)).output_shape
nbk.check_answer(answer, out[-1], "the input's channels plus num_convs x the growth rate")

# %% [markdown]
# **2 (compute).** A DenseNet with the same first stage (64 channels) and growth rate 32, but
# dense blocks of **two** convolution blocks each (`num_convs=(2, 2, 2, 2)`): how many channels
# does its final batch norm read?

# %%
answer = None  # a number

# %%
short = models.get_model("densenet", num_convs=(2, 2, 2, 2))
rows = shapes.summarize(short, (1, 96, 96, 1), train=False).rows
final = [row.output_shape[-1] for row in rows if row.kind == "BatchNorm"][-1]
hint = "each dense block adds 2 x 32; each transition halves (rounding down)"
nbk.check_answer(answer, final, hint)

# %% [markdown]
# **3 (predict, then run).** Double the growth rate to 64 (`growth_rate=64`). Does the number of
# parameters more than double? Answer `True` or `False`; the check counts them.

# %%
answer = None  # True or False

# %%
wide = models.get_model("densenet", growth_rate=64)
wide_params = shapes.summarize(wide, (1, 96, 96, 1), train=False).total_params
hint = "a conv block's kernel is 3 x 3 x (channels in) x k: which of these grow with k?"
nbk.check_answer(answer, wide_params > 2 * densenet_summary.total_params, hint)

# %% [markdown]
# **4 (compute).** At the book's 96x96 input, what height and width do the maps have that
# DenseNet's last dense block works on? Answer as a pair `(height, width)`.

# %%
answer = None  # (height, width)

# %%
in_blocks = [row.output_shape for row in densenet_summary.rows if row.path.startswith("DenseB")]
hint = "the first stage divides by 4, each transition by 2"
nbk.check_answer(answer, tuple(in_blocks[-1][1:3]), hint)

# %% [markdown]
# ## Checks
#
# The claims this page makes about its run, checked on the numbers above (at the small size;
# at the book size they are printed, not asserted: the stored outputs do not show that size).

# %%
correct = int((predictions == labels).sum())
print(f"DenseNet test accuracy {result.summary['test_acc']:.3f}; {correct} of 16 shown correct")
assert param_ratio > 10  # shapes alone: the same at every size
if SIZE == "small":
    # DenseNet learns the digits in three short epochs (0.98 measured, seeds 0-2).
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.summary["test_acc"] > 0.9, result.summary
    assert correct >= 12, correct
print("the checks hold" if SIZE == "small" else "book size: the numbers above, not asserted")

# %%
# Results
trained_params = shapes.count_params(result.state.params)
print(nbk.results_line("DenseNet", result, seconds, params=trained_params))
print(f"notebook time: {time.perf_counter() - START:.1f} s")
