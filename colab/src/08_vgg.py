# %% [markdown]
# # 8. AlexNet and VGG: deeper networks from repeated blocks
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/08_vgg.ipynb)
#
# **AlexNet** is the bridge from LeNet: the same recipe (convolutions and pooling, then dense
# layers), but deeper and wider: five convolutions (the first 11x11 with stride 4), max
# pooling, ReLU instead of sigmoid, two dense layers of 4096 units with dropout, 224x224 inputs.
#
# **VGG** turned the recipe into a rule: build the network from one repeated **block**,
# `vgg_block(num_convs, channels)`: `num_convs` 3x3 convolutions with padding 1 (size kept),
# each followed by ReLU, then a 2x2 max pool with stride 2 (size halved). Five blocks take 224
# to 7; three dense layers follow. VGG-11 has 1, 1, 2, 2, 2 convolutions per block and 64, 128,
# 256, 512, 512 channels; the book trains it with every channel count divided by 4 (VGG-11/4,
# `jaxnotes.models.vgg11_small`).
#
# We write the block on the page and check it against `jaxnotes.models.vgg_block`, read both
# networks' shapes and parameters, see why 3x3 kernels, and train AlexNet and VGG-11/4.
#
# **Size.** The stored outputs are the small size, run on a CPU: 640 of the 8x8 `digits`
# training images scaled up (68x68 for AlexNet, 32x32 for VGG-11/4), 3 epochs each, from He
# initialisation with Adam (the book's SGD leaves these deep nets without batch norm at chance
# for epochs on so little data), in well under a minute; their accuracies are digits', not the
# book's. The book size trains both on Fashion-MNIST at 224x224 (60,000 images, 10 epochs,
# the book's SGD at 0.01 and 0.05): minutes on a GPU, about 11 hours on a CPU (the first cell
# then runs the small size unless INSIST).

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

# %% [markdown]
# ## AlexNet, layer by layer
#
# Shapes at the book's 224x224x1 input (Fashion-MNIST scaled up), from
# `jaxnotes.shapes.summarize` (shapes alone, no compute). The 11x11 convolution with stride 4
# shrinks 224 to 54 at once; three 3x3 max pools with stride 2 bring it to 5x5x256. Most of
# AlexNet's 47 million parameters sit in its dense layers, more than half in the first one
# alone, which sees the $5 \cdot 5 \cdot 256 = 6400$ features of the last pool:
# $(6400 + 1) \cdot 4096$ weights.

# %%
alexnet_summary = shapes.summarize(models.get_model("alexnet"), (1, 224, 224, 1), train=False)
print(alexnet_summary)
alexnet_dense = sum(r.params for r in alexnet_summary.rows if r.kind == "Dense")
alexnet_dense_share = alexnet_dense / alexnet_summary.total_params
first_dense = shapes.dense_params(5 * 5 * 256, 4096)
print(f"{alexnet_dense_share:.0%} of AlexNet's parameters are in its three dense layers,")
print(f"{first_dense / alexnet_summary.total_params:.0%} in the first one alone")
alexnet_labels = {
    "Conv_0": "conv 96@11x11, stride 4, ReLU", "MaxPool_0": "max pool 3x3, stride 2",
    "Conv_1": "conv 256@5x5, pad 2, ReLU", "MaxPool_1": "max pool 3x3, stride 2",
    "Conv_2": "conv 384@3x3, pad 1, ReLU", "Conv_3": "conv 384@3x3, pad 1, ReLU",
    "Conv_4": "conv 256@3x3, pad 1, ReLU", "MaxPool_2": "max pool 3x3, stride 2",
    "Dense_0": "flatten, dense 4096, ReLU", "Dropout_0": "dropout 0.5",
    "Dense_1": "dense 4096, ReLU", "Dropout_1": "dropout 0.5", "Dense_2": "dense 10 (logits)",
}  # fmt: skip
fig = plots.network_diagram(
    nbk.network_rows(alexnet_summary, alexnet_labels), "AlexNet", input_shape="224x224x1"
)

# %% [markdown]
# ## The VGG block on the page
#
# A block as the book writes it: `num_convs` times (3x3 convolution, padding 1, ReLU), then a
# 2x2 max pool with stride 2. In Flax, a small module (`@nn.compact` creates the layers where
# they are used):


# %%
class VGGBlock(nn.Module):
    num_convs: int
    channels: int

    @nn.compact
    def __call__(self, x):
        for _ in range(self.num_convs):
            x = nn.relu(nn.Conv(self.channels, (3, 3), padding=1)(x))
        return nn.max_pool(x, (2, 2), strides=(2, 2))


def vgg_block(num_convs, channels):
    return VGGBlock(num_convs, channels)


fig = plots.block_diagram(
    [["3x3 conv, pad 1", "ReLU", "...", "2x2 max pool, stride 2"]], "VGG block", output="next block"
)

# %% [markdown]
# The package's `jaxnotes.models.vgg_block` is the same block; both name their convolutions
# `Conv_0`, `Conv_1`..., so the page's block runs on the package's parameters and must give the
# same output: here two convolutions to 16 channels on a 16x16x8 input, halved to 8x8.

# %%
x = jax.random.normal(jax.random.key(0), (2, 16, 16, 8))
page, zoo = vgg_block(2, 16), models.vgg_block(2, 16)
variables = zoo.init(jax.random.key(1), x)
assert np.allclose(page.apply(variables, x), zoo.apply(variables, x), atol=1e-5)
print(jax.tree.map(jnp.shape, variables["params"]), "->", page.apply(variables, x).shape)

# %% [markdown]
# ## VGG from blocks
#
# The whole network is a list of `(num_convs, channels)` pairs, one per block, then the same
# dense head as AlexNet (4096, 4096 with dropout, then the classes). Written with the page's
# block, it has the package's parameter tree, so it runs on the package's parameters of
# `jaxnotes.models.vgg11_small` and gives the same logits (at 32x32, the smallest input five
# halvings allow):


# %%
class VGG(nn.Module):
    arch: tuple
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train=False):
        for num_convs, channels in self.arch:
            x = vgg_block(num_convs, channels)(x)
        x = x.reshape(x.shape[0], -1)
        for _ in range(2):
            x = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(4096)(x)))
        return nn.Dense(self.num_classes)(x)


vgg11_arch = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
small_arch = tuple((n, c // 4) for n, c in vgg11_arch)
x = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
zoo_vgg = models.vgg11_small()
variables = zoo_vgg.init(jax.random.key(1), x)
assert np.allclose(VGG(small_arch).apply(variables, x), zoo_vgg.apply(variables, x), atol=1e-4)
assert small_arch == tuple(zoo_vgg.arch) and vgg11_arch == models.VGG11_ARCH

# %% [markdown]
# VGG-11/4 at 224x224x1: every block halves the size (224, 112, 56, 28, 14, 7), the channels
# grow 16, 32, 64, 128, 128.

# %%
vgg_summary = shapes.summarize(models.get_model("vgg11_small"), (1, 224, 224, 1), train=False)
print(vgg_summary)
sizes = [r.output_shape[1] for r in vgg_summary.rows if r.kind == "MaxPool"]
assert sizes == [112, 56, 28, 14, 7], sizes
vgg_labels = {
    f"VGGBlock_{i}": f"vgg_block({n}, {c}): {n} x conv 3x3, max pool"
    for i, (n, c) in enumerate(small_arch)
}
vgg_labels.update(
    {"Dense_0": "flatten, dense 4096, ReLU", "Dropout_0": "dropout 0.5",
     "Dense_1": "dense 4096, ReLU", "Dropout_1": "dropout 0.5", "Dense_2": "dense 10 (logits)"}
)  # fmt: skip
fig = plots.network_diagram(
    nbk.network_rows(vgg_summary, vgg_labels), "VGG-11/4 (VGG-11, channels / 4)",
    input_shape="224x224x1",
)  # fmt: skip

# %% [markdown]
# ## Why 3x3: receptive fields and parameters
#
# A unit's **receptive field** (the input pixels it depends on) grows layer by layer as
# $F(i) = (F(i+1) - 1)\, s_i + k_i$, walking from the top ($F = 1$) down. Three stacked 3x3
# convolutions see 7x7, like one 7x7 convolution, with $3 \cdot 9 c^2 = 27 c^2$ instead of
# $49 c^2$ weights (for $c$ channels in and out) and three non-linearities instead of one.

# %%
assert shapes.receptive_field([(3, 1)] * 3) == shapes.receptive_field([(7, 1)]) == 7
assert shapes.receptive_field([(3, 1)] * 2) == shapes.receptive_field([(5, 1)]) == 5
c = 256
three_3x3 = 3 * shapes.conv_params(c, c, 3, bias=False)
one_7x7 = shapes.conv_params(c, c, 7, bias=False)
assert three_3x3 / one_7x7 == 27 / 49
print(f"{c} channels: three 3x3 convs {three_3x3:,} weights, one 7x7 conv {one_7x7:,}")
for depth in (1, 2, 3):
    field = shapes.receptive_field([(3, 1)] * depth)
    print(f"{depth} stacked 3x3 convolution(s) see {field}x{field}")

summaries = {
    "AlexNet": alexnet_summary,
    "VGG-11/4": vgg_summary,
    "VGG-11": shapes.summarize(models.get_model("vgg11"), (1, 224, 224, 1), train=False),
    "VGG-16 (ImageNet)": shapes.summarize(
        models.get_model("vgg16", num_classes=1000), (1, 224, 224, 3), train=False
    ),
}
assert summaries["VGG-16 (ImageNet)"].total_params == 138_357_544  # the paper's count
for name, summary in summaries.items():
    dense = sum(r.params for r in summary.rows if r.kind == "Dense")
    print(
        f"{name:18} {summary.total_params:>12,} parameters "
        f"({dense / summary.total_params:.0%} in dense layers), "
        f"{summary.total_macs / 1e9:6.2f} G mult-adds per image"
    )
fields = {
    "VGG-11": models.stage_receptive_fields(models.VGG11_ARCH),
    "VGG-16": models.stage_receptive_fields(models.VGG16_ARCH),
}
assert fields["VGG-11"][-1][1] == 150 and fields["VGG-16"][-1][1] == 212

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 2.8))
for name, per_block in fields.items():
    ax1.plot(range(1, 6), [pool for _, pool in per_block], "o-", label=name)
ax1.set_xlabel("after block")
ax1.set_ylabel("receptive field (pixels)")
ax1.legend()
ax1.grid(True, alpha=0.3)
names = list(summaries)
ax2.barh(names, [summaries[n].total_params / 1e6 for n in names])
ax2.set_xlabel("parameters (millions)")
ax2.invert_yaxis()
ax2.grid(True, axis="x", alpha=0.3)
fig.tight_layout()

# %% [markdown]
# > **Compared with your notes.** The notes: "通过堆叠三个3*3卷积核来代替5*5卷积核需要的参数"
# > (stacking three 3x3 kernels replaces the parameters a 5x5 kernel needs), and the same in
# > their GoogLeNet chapter. Three stacked 3x3 convolutions see **7x7**, as the formula and the
# > lines just printed show; it is **two** that see 5x5, with $2 \cdot 9 c^2 = 18 c^2$ weights
# > instead of $25 c^2$. Either way the point holds: the same field for fewer weights and more
# > non-linearities.

# %% [markdown]
# After its fifth block a VGG-11 unit sees 150x150 input pixels, a VGG-16 unit 212x212: most of
# a 224x224 image. The price is compute: VGG-11's convolutions run on large maps with many
# channels, so it needs several times AlexNet's mult-adds per image. A convolution's cost grows
# with $c_i c_o$, so dividing every channel count by 4 divides it by about 16, which is why the
# book trains VGG-11/4.


# %%
def conv_macs(summary):
    return sum(r.macs for r in summary.rows if r.kind == "Conv")


quarter = conv_macs(summaries["VGG-11"]) / conv_macs(summaries["VGG-11/4"])
print(f"VGG-11 / VGG-11/4 convolution mult-adds: {quarter:.1f}x")

# %% [markdown]
# ## Training AlexNet and VGG-11/4
#
# `nbk.run_chapter_training(name, curves=...)` trains the package's model with the chapter's
# settings for the current size (`jaxnotes.training.fit`: forward, loss, backward and update in
# one jitted step) and draws the learning curves as the epochs finish. Without batch
# normalisation, networks this deep start slowly from small initial weights; at the small size
# they train from He initialisation with Adam, at the book size with the book's SGD.
#
# **Test above train?** The curves often show a test accuracy above the training accuracy.
# That is not a mistake: the training accuracy is the mean over the epoch's batches, measured
# while the weights were still improving and with **dropout on** (each batch sees a thinned
# network, half the dense units zeroed), while the test accuracy is measured after the epoch
# with every unit on.

# %%
alexnet_result, alexnet_seconds = nbk.run_chapter_training("alexnet", curves="AlexNet")
alexnet_acc = alexnet_result.summary["test_acc"]

# %%
vgg_result, vgg_seconds = nbk.run_chapter_training("vgg11_small", curves="VGG-11/4")
vgg_acc = vgg_result.summary["test_acc"]
print(f"test accuracy: AlexNet {alexnet_acc:.3f}, VGG-11/4 {vgg_acc:.3f} (chance 0.1)")

# %% [markdown]
# **Why 21.6 million parameters, not 47?** The trained AlexNet's parameter count (the results
# at the end) is not the 47 million of the table above: the small size feeds it 68x68 images,
# not 224x224. Its first dense layer sees the flattened last pooling map, $5 \times 5 \times
# 256 = 6400$ features at 224x224 but $1 \times 1 \times 256 = 256$ at 68x68, so it has
# $(256 + 1) \cdot 4096$ weights instead of $(6400 + 1) \cdot 4096$: 25 million fewer. The
# convolutions' parameters do not depend on the input size; a dense layer's do (chapter 4).

# %%
trained = shapes.count_params(alexnet_result.state.params)
side = nbk.chapter_config("alexnet")[0].resize  # the input size it trained at
at_trained = shapes.summarize(models.get_model("alexnet"), (1, side, side, 1), train=False)
last_pool = [r.output_shape[1:] for r in at_trained.rows if r.kind == "MaxPool"][-1]
dense_at_side = shapes.dense_params(int(np.prod(last_pool)), 4096)
print(f"trained AlexNet: {trained:,} parameters; its last pool is {last_pool} at {side}x{side}")
print(f"at 224x224: {alexnet_summary.total_params:,}; the first dense layer's difference: "
      f"{first_dense - dense_at_side:,}")  # fmt: skip
assert trained == at_trained.total_params

# %% [markdown]
# ## VGG-11/4's predictions on test images
#
# The trained network on 16 test images (shown at their own resolution; the network sees them
# scaled up): the prediction, with the true class in brackets and in red where they differ.

# %%
fig, predictions, labels = nbk.show_predictions("vgg11_small", vgg_result)
print(f"{int((predictions == labels).sum())} of 16 correct")

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell where you set `answer`, and a check cell after it that tells you
# whether your answer is right (without telling you the answer).
#
# **1 (compute).** How many parameters has `vgg_block(2, 128)` on an input with 64 channels
# (two 3x3 convolutions with biases)?

# %%
answer = None  # a number

# %%
block_params = shapes.summarize(vgg_block(2, 128), (1, 16, 16, 64)).total_params
nbk.check_answer(
    answer, block_params, "the first conv maps 64 -> 128 channels, the second 128 -> 128"
)

# %% [markdown]
# **2 (compute).** The receptive field of five stacked 3x3 convolutions (stride 1)?

# %%
answer = None  # a number

# %%
nbk.check_answer(answer, shapes.receptive_field([(3, 1)] * 5), "each 3x3 adds 2")

# %% [markdown]
# **3 (compute).** AlexNet on 96x96 images: how many parameters has its first dense layer?

# %%
answer = None  # a number

# %%
at_96 = shapes.summarize(models.get_model("alexnet"), (1, 96, 96, 1), train=False)
dense_96 = next(r.params for r in at_96.rows if r.path == "Dense_0")
nbk.check_answer(answer, dense_96, "follow 96 through the convolutions and pools to the last pool")

# %% [markdown]
# **4 (predict, then run).** In the AlexNet trained here (68x68 inputs), which layer holds the
# most parameters? Answer with its name in the layer table, e.g. `"Conv_0"`.

# %%
answer = None  # a layer's name

# %%
largest = max(at_trained.rows, key=lambda r: r.params).path
nbk.check_answer(answer, largest, "at 68x68 the first dense layer is small; what comes next?")

# %% [markdown]
# ## Checks
#
# The claims this page makes about its runs, checked on the numbers above (the trainings at
# the small size; at the book size they are printed, not asserted).

# %%
assert alexnet_dense_share > 0.9 and first_dense > alexnet_summary.total_params / 2
assert summaries["VGG-11"].total_macs > 5 * summaries["AlexNet"].total_macs
assert 14 < quarter <= 16, quarter  # channels / 4: about 16x fewer mult-adds
print(f"test accuracy: AlexNet {alexnet_acc:.3f}, VGG-11/4 {vgg_acc:.3f}")
if SIZE == "small":
    for result in (alexnet_result, vgg_result):
        assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert alexnet_acc > 0.6 and vgg_acc > 0.6, (alexnet_acc, vgg_acc)  # chance is 0.1
print("the checks hold" if SIZE == "small" else "book size: the numbers above, not asserted")

# %%
# Results
for label, result, seconds in (
    ("AlexNet", alexnet_result, alexnet_seconds),
    ("VGG-11/4", vgg_result, vgg_seconds),
):
    params = shapes.count_params(result.state.params)
    print(nbk.results_line(label, result, seconds, params=params))
print(f"notebook time: {time.perf_counter() - START:.1f} s")
