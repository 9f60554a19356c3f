# %% [markdown]
# # 10. GoogLeNet: Inception blocks
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/10_googlenet.ipynb)
#
# Which kernel size is best, 1x1, 3x3 or 5x5? GoogLeNet's answer is all of them: an
# **Inception block** runs four paths side by side on the same input and concatenates their
# outputs on the channel axis:
#
# 1. a 1x1 convolution ($c_1$ channels);
# 2. a 1x1 convolution ($c_2[0]$) then a 3x3 convolution with padding 1 ($c_2[1]$);
# 3. a 1x1 convolution ($c_3[0]$) then a 5x5 convolution with padding 2 ($c_3[1]$);
# 4. a 3x3 max pool with stride 1 and padding 1, then a 1x1 convolution ($c_4$).
#
# ReLU follows every convolution. Every path keeps the height and width (stride 1, padding
# $(k-1)/2$), so the outputs can be concatenated: $c_1 + c_2[1] + c_3[1] + c_4$ channels. The
# 1x1 convolutions in front of the 3x3 and 5x5 ones cut their input channels, and so their cost.
# GoogLeNet stacks nine blocks in five stages and ends with global average pooling, as NiN does.
#
# We write the block on the page and check it against `jaxnotes.models.Inception`, read the
# network's stages, and train it.
#
# **Size.** The stored outputs are the small size, run on a CPU: scikit-learn's 8x8 `digits`
# scaled up to 32x32 (1,257 training images), 3 epochs from He initialisation with Adam and the
# paper's two auxiliary classifiers, in under a minute; the accuracy is digits', not the
# book's. The book size trains on Fashion-MNIST at 96x96 (60,000 images, 10 epochs, the book's
# SGD at 0.1): minutes on a GPU, about 3 hours on a CPU (the first cell then runs the small
# size unless INSIST). Read the warning in the training section before running it.

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
import matplotlib.pyplot as plt
import numpy as np

from jaxnotes import models, plots, shapes
from jaxnotes.models.googlenet import STAGES

# %% [markdown]
# ## The Inception block on the page
#
# The four paths as the book writes them, each convolution named after its path (`p2_2`: path
# 2, second layer), the same names as in the package's block.


# %%
class Inception(nn.Module):
    c1: int
    c2: tuple
    c3: tuple
    c4: int

    @nn.compact
    def __call__(self, x):
        p1 = nn.relu(nn.Conv(self.c1, (1, 1), name="p1_1")(x))
        p2 = nn.relu(nn.Conv(self.c2[0], (1, 1), name="p2_1")(x))
        p2 = nn.relu(nn.Conv(self.c2[1], (3, 3), padding=1, name="p2_2")(p2))
        p3 = nn.relu(nn.Conv(self.c3[0], (1, 1), name="p3_1")(x))
        p3 = nn.relu(nn.Conv(self.c3[1], (5, 5), padding=2, name="p3_2")(p3))
        p4 = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        p4 = nn.relu(nn.Conv(self.c4, (1, 1), name="p4_2")(p4))
        return jnp.concatenate([p1, p2, p3, p4], axis=-1)


fig = plots.block_diagram(
    [
        ["1x1 conv"],
        ["1x1 conv", "3x3 conv, pad 1"],
        ["1x1 conv", "5x5 conv, pad 2"],
        ["3x3 max pool, pad 1", "1x1 conv"],
    ],
    "Inception block",
    output="concatenate on channels",
)

# %% [markdown]
# Block 3a, `Inception(64, (96, 128), (16, 32), 32)`, takes 192 channels to
# 64 + 128 + 32 + 32 = 256. The page's block runs on the package's parameters and must give the
# same output (here on an 8x8x192 input):

# %%
x = jax.random.normal(jax.random.key(0), (2, 8, 8, 192))
page, zoo = Inception(64, (96, 128), (16, 32), 32), models.Inception(64, (96, 128), (16, 32), 32)
variables = zoo.init(jax.random.key(1), x)
assert np.allclose(page.apply(variables, x), zoo.apply(variables, x), atol=1e-5)
assert page.apply(variables, x).shape == (2, 8, 8, 256)

# %% [markdown]
# Layer by layer on the 28x28x192 map it gets in the paper (224x224 images), from
# `jaxnotes.shapes.summarize` (shapes alone, no compute):

# %%
block_summary = shapes.summarize(zoo, (1, 28, 28, 192))
print(block_summary)
assert block_summary.output_shape == (1, 28, 28, 256)

# %% [markdown]
# **Why the 1x1 in front.** A 3x3 convolution straight from 192 to 128 channels on a 28x28 map
# costs $28 \cdot 28 \cdot 9 \cdot 192 \cdot 128$ mult-adds; reducing to 96 channels first
# (the 1x1) and then convolving costs about half as much, and the 5x5 path, reduced to 16
# channels, saves far more.

# %%
macs = {r.path: r.macs for r in block_summary.rows}
direct_3x3 = 28 * 28 * 9 * 192 * 128
direct_5x5 = 28 * 28 * 25 * 192 * 32
reduced_3x3, reduced_5x5 = macs["p2_1"] + macs["p2_2"], macs["p3_1"] + macs["p3_2"]
print(f"3x3 path: {reduced_3x3:,} mult-adds with the 1x1 in front, {direct_3x3:,} without")
print(f"5x5 path: {reduced_5x5:,} mult-adds with the 1x1 in front, {direct_5x5:,} without")

# %% [markdown]
# The nine blocks' output channels per path (the bar's height is the block's output): the 3x3
# path gets the most channels in every block (in 5b as many as the 1x1 path).

# %%
blocks = [(name, channels) for stage in STAGES for name, channels in stage]
widths = np.array([[c1, c2[1], c3[1], c4] for _, (c1, c2, c3, c4) in blocks])
assert all(row[1] == row.max() for row in widths)
fig, ax = plt.subplots(figsize=(7, 3.4))
bottom = np.zeros(len(blocks))
for j, path in enumerate(["1x1", "1x1 -> 3x3", "1x1 -> 5x5", "pool -> 1x1"]):
    ax.bar([name for name, _ in blocks], widths[:, j], bottom=bottom, label=path)
    bottom += widths[:, j]
ax.set_xlabel("Inception block")
ax.set_ylabel("output channels")
ax.set_title("output channels per path")
ax.legend(fontsize=10)
fig.tight_layout()

# %% [markdown]
# ## The whole network, stage by stage
#
# At the book's 96x96x1 input. The full table has one row per layer (over 70); below, the
# layers of each Inception block are summed into one row. Stage b1 (a 7x7 convolution with
# stride 2, a 3x3 max pool with stride 2) takes 96 to 24; b2 (1x1 and 3x3 convolutions), b3 and
# b4 each end with a 3x3 max pool with stride 2, to 12, 6 and 3; b5's two blocks leave
# 3x3x1024, which global average pooling and one dense layer classify.

# %%
googlenet_summary = shapes.summarize(models.get_model("googlenet"), (1, 96, 96, 1), train=False)
ENDS = ("p1_1", "p2_2", "p3_2", "p4_2")  # each path's last layer: the block concatenates them
grouped = {}  # top-level layer -> (kind, output shape, parameters, mult-adds)
for row in googlenet_summary.rows:
    top, _, layer = row.path.partition("/")
    if not layer:
        grouped[top] = (row.kind, row.output_shape, row.params, row.macs)
        continue
    n, h, w, _ = row.output_shape  # a layer inside an Inception block
    kind, (n, h, w, c), params, macs = grouped.get(top, ("Inception", (n, h, w, 0), 0, 0))
    c += row.output_shape[3] if layer in ENDS else 0
    grouped[top] = (kind, (n, h, w, c), params + row.params, macs + row.macs)
print(f"{'layer':16} {'kind':14} {'output shape':17} {'params':>10} {'mult-adds':>12}")
for top, (kind, shape, params, macs) in grouped.items():
    print(f"{top:16} {kind:14} {str(shape):17} {params:>10,} {macs:>12,}")
total = googlenet_summary.total_params
print(f"{'total':31} {str(googlenet_summary.output_shape):17} {total:>10,}")
assert sum(p for _, _, p, _ in grouped.values()) == total
pooled = [shape[1] for kind, shape, _, _ in grouped.values() if kind == "MaxPool"]
assert pooled == [24, 12, 6, 3] and grouped["inception_5b"][1] == (1, 3, 3, 1024), pooled

aux = models.get_model("googlenet", aux_logits=True)
aux_params = shapes.summarize(aux, (1, 96, 96, 1), train=False).total_params
print(f"with the paper's two auxiliary classifiers (after 4a and 4d): {aux_params:,} parameters")

# The whole network, one box per stage (b1-b5) and the classifier.
ends = {"MaxPool_0": "b1: conv 64@7x7 stride 2; max pool 3x3 stride 2",
        "MaxPool_1": "b2: conv 64@1x1; conv 192@3x3; max pool",
        "MaxPool_2": "b3: Inception 3a, 3b; max pool 3x3 stride 2",
        "MaxPool_3": "b4: Inception 4a-4e (aux. heads on 4a, 4d); max pool",
        "GlobalAvgPool_0": "b5: Inception 5a, 5b; global average pool",
        "Dense_0": "dense 10 (logits)"}  # fmt: skip
stage_rows = [(label, "x".join(map(str, grouped[top][1][1:]))) for top, label in ends.items()]
fig = plots.network_diagram(stage_rows, "GoogLeNet, stage by stage", input_shape="96x96x1")

# %% [markdown]
# ## Training
#
# `nbk.run_chapter_training("googlenet", curves=...)` trains the package's GoogLeNet with the
# chapter's settings for the current size (`jaxnotes.training.fit`: forward, loss, backward and
# update in one jitted step) and draws the learning curves as the epochs finish. Without batch
# normalisation a 22-layer ReLU network's signal fades from block to block with small initial
# weights; at the small size it trains from He initialisation with Adam, and with the paper's
# two auxiliary classifiers (their losses weighted 0.3, training only), and ends well above
# chance (0.1).
#
# **The book size: a warning.** It runs the book's settings, d2l's Xavier initialisation and
# SGD at 0.1, and this network has no batch normalisation: measured on digits, that
# combination sits at chance (test accuracy 0.1) for epochs, the signal fading ~400x from block
# 3a to 5b. If its curves stay flat at 0.1, set `BOOK_OVERRIDES` below to the initialisation
# that trains (He, and the auxiliary classifiers), or see chapter 11's batch normalisation.
#
# **Test above train?** The training accuracy in the curves is the mean over the epoch's
# batches, measured while the weights were still improving (and, with the auxiliary
# classifiers, under a loss that also trains them); the test accuracy is measured after the
# epoch. Early on, the first is often below the second.

# %%
BOOK_OVERRIDES = {}  # e.g. {"model_kwargs": {"weight_init": "he", "aux_logits": True}}
if SIZE == "book" and not BOOK_OVERRIDES:
    print("warning: Xavier init + SGD without batch norm may stay at chance; see the text above")
overrides = BOOK_OVERRIDES if SIZE == "book" else {}
result, seconds = nbk.run_chapter_training("googlenet", curves="GoogLeNet", **overrides)
test_acc = result.summary["test_acc"]
print(f"test accuracy {test_acc:.3f} after {len(result.history)} epochs ({seconds:.1f} s)")

# %% [markdown]
# ## Predictions on test images
#
# The trained network on 16 test images (at inference the auxiliary classifiers are not
# used): the prediction, with the true class in brackets and in red where they differ.

# %%
fig, predictions, labels = nbk.show_predictions("googlenet", result)
print(f"{int((predictions == labels).sum())} of 16 correct")

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell where you set `answer`, and a check cell after it that tells you
# whether your answer is right (without telling you the answer).
#
# **1 (compute).** Block 3b is `Inception(128, (128, 192), (32, 96), 64)`. How many channels
# does it output?

# %%
answer = None  # a number

# %%
names_3 = [name for name, _ in blocks]
nbk.check_answer(answer, int(widths[names_3.index("3b")].sum()), "the paths are concatenated")

# %% [markdown]
# **2 (compute).** In block 3a (192 channels in), how many parameters has path 1, the 1x1
# convolution to 64 channels (with biases)?

# %%
answer = None  # a number

# %%
nbk.check_answer(answer, next(r.params for r in block_summary.rows if r.path == "p1_1"),
                 "a 1x1 convolution: c_o * c_i + c_o")  # fmt: skip

# %% [markdown]
# **3 (compute).** At the book's 96x96 input, what height and width leave stage b1? Answer as a
# pair.

# %%
answer = None  # (height, width)

# %%
nbk.check_answer(
    answer, tuple(grouped["MaxPool_0"][1][1:3]), "a stride-2 conv, then a stride-2 pool"
)

# %% [markdown]
# **4 (predict, then run).** Without its 1x1 reduction, path 3 of block 3a would be one 5x5
# convolution from 192 to 32 channels. Would it have more than 5 times the parameters of the
# reduced path (1x1 to 16, then 5x5 to 32)? Answer `True` or `False`.

# %%
answer = None  # True or False

# %%
direct = shapes.conv_params(192, 32, 5)
reduced = shapes.conv_params(192, 16, 1) + shapes.conv_params(16, 32, 5)
nbk.check_answer(answer, direct > 5 * reduced, "count both: c_o * c_i * k * k + c_o each")

# %% [markdown]
# ## Checks
#
# The claims this page makes about its run, checked on the numbers above (the training at the
# small size; at the book size it is printed, not asserted).

# %%
# The 1x1 in front halves the 3x3 path's cost and cuts the 5x5 path's by more than 6x.
assert 0.4 < reduced_3x3 / direct_3x3 < 0.6 and reduced_5x5 / direct_5x5 < 0.15
print(f"test accuracy {test_acc:.3f}")
if SIZE == "small":
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert test_acc > 0.5, test_acc  # chance is 0.1
print("the checks hold" if SIZE == "small" else "book size: the numbers above, not asserted")

# %%
# Results
trained_params = shapes.count_params(result.state.params)
print(nbk.results_line("GoogLeNet", result, seconds, params=trained_params))
print(f"notebook time: {time.perf_counter() - START:.1f} s")
