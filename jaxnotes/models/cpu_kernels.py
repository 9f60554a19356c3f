"""XLA:CPU fast paths for the zoo's convolutions and pooling: the same functions, other formulas.

Why this module exists: on CPU, XLA lowers ``lax.conv_general_dilated`` to Eigen's spatial
convolution, which is pathological for the small-channel and small-map shapes of this book. On a
2-core AMD EPYC (jax 0.10.2), batch 256, LeNet's first conv (1 -> 6 channels, 5x5, 28x28) takes
~10 ms forward for 30M multiply-adds (~6 GFLOP/s, while a 1024^3 matmul runs at ~180 GFLOP/s),
its second conv's input gradient ~6 ms; GoogLeNet's 3x3 and 5x5 convs on the 2x2 and 4x4 maps of
a 32x32 input run 10-50x slower than the matmul they amount to; and the max-pool gradient
expands to an iota / variadic reduce-window / scatter chain. No XLA flag changes this (oneDNN,
XNNPACK / YNNPACK fusion types, fast math: all tried). What XLA:CPU does run well is matrix
products (YNNPACK / Eigen) and elementwise loop fusions, so every op here is written with those:

* **gemm** (blocked width-Toeplitz). The conv is ONE matrix product. A row of the left operand is
  (image, output row, block of ``bw`` output columns) and holds the (``span`` x kh x C) input
  patch that block reads (``span = (bw - 1) * stride + kw``); the right operand is the kernel laid
  out as a banded (Toeplitz) matrix of shape (span * kh * C, bw * O), so the product's rows are
  already NHWC output rows. ``bw = 1`` is classic im2col; a larger ``bw`` costs ``span / kw``
  times the multiply-adds (the band's zeros) but widens the product to ``bw * O`` columns, which
  pays when O is small (YNNPACK runs a 6-column product far below its peak). The forward is
  ``X @ T``, the kernel gradient is ``X^T @ G`` folded back to (kh, kw, C, O), the input gradient
  is ``G @ T^T`` overlap-added back onto the input. Patches are built with slices, reshapes and
  concatenates of a few operands (XLA:CPU's concatenate of many operands is slow).
* **shift** (forward of a 1-channel input): the sum of kh x kw shifted copies of the input, each
  times one kernel row; XLA fuses it (with the bias and activation after it) into one loop.
* **native**: ``lax.conv_general_dilated`` and its autodiff transposes, where they are fine.

:func:`plan` picks one per op (forward, input gradient, kernel gradient) from the shapes, at trace
time; :func:`conv_general_dilated` is a drop-in for ``lax.conv_general_dilated`` (``nn.Conv``'s
``conv_general_dilated`` field) that takes these paths on the CPU backend in float32 and calls
``lax.conv_general_dilated`` otherwise (GPUs and TPUs keep cuDNN / their own convolutions).
:func:`max_pool` does the same for max pooling (average pooling as a reshape and a mean was
tried too: no measurable change in LeNet's step, so flax's stays).

What it bought (2-core CPU, the whole jitted train step, fast paths on vs off, same process):
LeNet at batch 256 ~34 -> ~13 ms/step, GoogLeNet on 32x32 inputs at batch 32 ~180 -> ~68 ms/step
(``benchmarks/train_cpu.py`` prints both against PyTorch).

Every path computes the same function as the plain op up to float32 rounding (summation order);
``tests/test_fast_conv.py`` checks outputs and gradients against ``lax``/flax over many shapes.
Layouts: NHWC inputs, HWIO kernels, as ``nn.Conv``.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import custom_batching, lax

Pads = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))
Strides = tuple[int, int]

NHWC = ("NHWC", "HWIO", "NHWC")


_PORTABLE = threading.local()  # set while lowering for other platforms (jaxnotes.export)


def fast_path_enabled(*arrays: jax.Array) -> bool:
    """True where these kernels replace XLA's: the CPU backend, float32 operands, and not
    while a program is being lowered for other platforms too (:func:`portable`)."""
    if getattr(_PORTABLE, "on", False):
        return False
    return jax.default_backend() == "cpu" and all(a.dtype == jnp.float32 for a in arrays)


@contextlib.contextmanager
def portable() -> Iterator[None]:
    """Trace with XLA's own convolution and pooling (the same function): a program exported
    for GPU and TPU too must not carry the CPU-shaped forms."""
    before = getattr(_PORTABLE, "on", False)
    _PORTABLE.on = True
    try:
        yield
    finally:
        _PORTABLE.on = before


# ---- geometry ------------------------------------------------------------------------------------


def _out_size(n: int, k: int, s: int, pad: tuple[int, int]) -> int:
    return (n + pad[0] + pad[1] - k) // s + 1


def _pad(x: jax.Array, pads: Sequence[tuple[int, int]], value: float = 0.0) -> jax.Array:
    """Pad (or, for negative amounts, crop) height and width of an NHWC array."""
    config = [(0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0), (0, 0, 0)]
    return lax.pad(x, jnp.asarray(value, x.dtype), config)


def trim_padding_taps(
    h: int, w: int, kh: int, kw: int, strides: Strides, padding: Pads
) -> tuple[slice, slice, Pads]:
    """Kernel rows / columns that only ever meet padding, and the padding without them.

    On a map smaller than the kernel (GoogLeNet's 5x5 convs on a 2x2 map, its 3x3 convs on 1x1)
    some taps multiply zeros for every output; dropping them changes no output, and their kernel
    gradient is zero either way. Returns (rows, cols, padding) such that
    ``conv(x, kernel[rows, cols], padding)`` equals ``conv(x, kernel, original padding)``.
    """
    kept, new_pads = [], []
    for n, k, s, (lo, hi) in zip((h, w), (kh, kw), strides, padding, strict=True):
        out = _out_size(n, k, s, (lo, hi))
        live = [a for a in range(k) if any(0 <= i * s + a - lo < n for i in range(out))]
        first, last = (live[0], live[-1] + 1) if live else (0, k)
        kept.append(slice(first, last))
        new_pads.append((lo - first, hi - (k - last)))
    return kept[0], kept[1], (new_pads[0], new_pads[1])


class Geometry(NamedTuple):
    """Sizes of a gemm-formulated conv: output, blocks of ``bw`` columns, input extent read."""

    ho: int
    wo: int
    bw: int  # output columns per block
    blocks: int  # number of blocks (the last may run past wo: padded, then cropped)
    span: int  # input columns one block reads
    hneed: int  # input rows read (after padding)
    wneed: int  # input columns read (after padding)


def geometry(xshape, wshape, strides: Strides, padding: Pads, bw: int) -> Geometry:
    _, h, w, _ = xshape
    kh, kw = wshape[:2]
    sh, sw = strides
    ho, wo = _out_size(h, kh, sh, padding[0]), _out_size(w, kw, sw, padding[1])
    bw = max(1, min(bw, wo))
    blocks = -(-wo // bw)
    span = (bw - 1) * sw + kw
    return Geometry(ho, wo, bw, blocks, span, (ho - 1) * sh + kh, (blocks * bw - 1) * sw + kw)


def _padded_input(x: jax.Array, geo: Geometry, padding: Pads) -> jax.Array:
    """(N, H, W, C) -> (N, hneed, wneed, C): the padding, extended or cropped to what is read."""
    _, h, w, _ = x.shape
    (top, _), (left, _) = padding
    return _pad(x, ((top, geo.hneed - h - top), (left, geo.wneed - w - left)))


# ---- gemm: blocked width-Toeplitz ----------------------------------------------------------------


def _patch_rows(x: jax.Array, geo: Geometry, kh: int, sh: int, padding: Pads) -> jax.Array:
    """(N, H, W, C) -> (N, ho, wneed, kh, C): for each output row, the kh input rows it reads."""
    xp = _padded_input(x, geo, padding)
    return jnp.stack([xp[:, a : a + (geo.ho - 1) * sh + 1 : sh] for a in range(kh)], axis=3)


def _patch_blocks(rows: jax.Array, geo: Geometry, sw: int) -> jax.Array:
    """(N, ho, wneed, kh, C) -> (N * ho * blocks, span * kh * C): the gemm's left operand.

    Block t reads input columns [t * step, t * step + span) with ``step = bw * sw``. Cut the
    columns into tiles of width ``step`` (a reshape): block t is then tiles t, t + 1, ... up to
    ``span`` columns, i.e. a concatenate of ``ceil(span / step)`` shifted tile arrays. XLA:CPU
    runs that far faster than stacking ``blocks`` strided slices.
    """
    n, ho, wneed, kh, c = rows.shape
    step = geo.bw * sw
    if geo.blocks == 1:
        blocks = rows[:, :, None]
    else:
        pieces = -(-geo.span // step)
        tiles = _pad_axis(rows, 2, (geo.blocks + pieces - 1) * step - wneed)
        tiles = tiles.reshape(n, ho, geo.blocks + pieces - 1, step, kh, c)
        parts = [tiles[:, :, q : q + geo.blocks] for q in range(pieces)]
        parts[-1] = parts[-1][:, :, :, : geo.span - (pieces - 1) * step]
        blocks = parts[0] if pieces == 1 else jnp.concatenate(parts, axis=3)
    return blocks.reshape(n * ho * geo.blocks, geo.span * kh * c)


def _pad_axis(x: jax.Array, axis: int, after: int) -> jax.Array:
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (0, after, 0)
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def toeplitz_kernel(kernel: jax.Array, sw: int, geo: Geometry) -> jax.Array:
    """(kh, kw, C, O) -> (span * kh * C, bw * O): the banded right operand of the gemm.

    Column block j holds the kernel shifted down by j * sw input columns. Built from pads and a
    stack (an einsum with a 0/1 band matrix would be a product with a 1-wide contraction, which
    XLA:CPU runs slowly and follows with a transpose).
    """
    kh, kw, c, o = kernel.shape
    taps = jnp.transpose(kernel, (1, 0, 2, 3))  # (kw, kh, C, O): rows in (column, row, channel)
    shifted = [_pad_axis_at(taps, 0, j * sw, geo.span - kw - j * sw, 0) for j in range(geo.bw)]
    banded = shifted[0][..., None, :] if geo.bw == 1 else jnp.stack(shifted, axis=3)
    return banded.reshape(geo.span * kh * c, geo.bw * o)


def _fold_toeplitz(banded: jax.Array, kshape, sw: int, geo: Geometry) -> jax.Array:
    """The transpose of :func:`toeplitz_kernel`: (span * kh * C, bw * O) -> (kh, kw, C, O)."""
    kh, kw, c, o = kshape
    banded = banded.reshape(geo.span, kh, c, geo.bw, o)
    taps = sum(banded[j * sw : j * sw + kw, :, :, j] for j in range(geo.bw))
    return jnp.transpose(taps, (1, 0, 2, 3))


def _output_rows(g: jax.Array, geo: Geometry) -> jax.Array:
    """(N, ho, wo, O) -> (N * ho * blocks, bw * O): a free reshape unless wo needs padding."""
    n, ho, wo, o = g.shape
    g = _pad_axis(g, 2, geo.blocks * geo.bw - wo)
    return g.reshape(n * ho * geo.blocks, geo.bw * o)


def gemm_patches(x, kshape, strides: Strides, padding: Pads, bw: int) -> jax.Array:
    """The gemm's left operand for input ``x``: (N * ho * blocks, span * kh * C)."""
    geo = geometry(x.shape, kshape, strides, padding, bw)
    return _patch_blocks(_patch_rows(x, geo, kshape[0], strides[0], padding), geo, strides[1])


def gemm_forward(x, kernel, strides: Strides, padding: Pads, bw: int, patches=None) -> jax.Array:
    """conv(x, kernel) as one product: (N, H, W, C), (kh, kw, C, O) -> (N, ho, wo, O)."""
    o = kernel.shape[3]
    geo = geometry(x.shape, kernel.shape, strides, padding, bw)
    if patches is None:
        patches = gemm_patches(x, kernel.shape, strides, padding, bw)
    y = patches @ toeplitz_kernel(kernel, strides[1], geo)
    return y.reshape(x.shape[0], geo.ho, geo.blocks * geo.bw, o)[:, :, : geo.wo]


def gemm_kernel_grad(
    x, g, kshape, strides: Strides, padding: Pads, bw: int, patches=None
) -> jax.Array:
    """d conv / d kernel: (N, H, W, C), cotangent (N, ho, wo, O) -> (kh, kw, C, O)."""
    geo = geometry(x.shape, kshape, strides, padding, bw)
    if patches is None:
        patches = gemm_patches(x, kshape, strides, padding, bw)
    # (G^T X)^T rather than X^T G: YNNPACK takes the long contraction better this way round.
    banded = (_output_rows(g, geo).T @ patches).T
    return _fold_toeplitz(banded, kshape, strides[1], geo)


def gemm_input_grad(g, kernel, xshape, strides: Strides, padding: Pads, bw: int) -> jax.Array:
    """d conv / d x: cotangent (N, ho, wo, O), kernel -> (N, H, W, C).

    ``G @ T^T`` gives, per block, the gradient of the patch it read; adding the patches back
    where they were read (along width, then height) is the transpose of :func:`_patch_blocks`
    and :func:`_patch_rows`.
    """
    n, h, w, c = xshape
    kh, _, _, _ = kernel.shape
    sh, sw = strides
    geo = geometry(xshape, kernel.shape, strides, padding, bw)
    patches = _output_rows(g, geo) @ toeplitz_kernel(kernel, sw, geo).T
    patches = patches.reshape(n, geo.ho, geo.blocks, geo.span, kh, c)
    rows = _add_blocks(patches, geo, sw)  # (N, ho, wneed, kh, C)
    # Output row i read input rows i * sh + a: add each tap row back where it was read.
    full = sum(
        _pad_axis_at(rows[:, :, :, a], 1, a, geo.hneed - a - (geo.ho - 1) * sh - 1, sh - 1)
        for a in range(kh)
    )
    (top, _), (left, _) = padding
    return _pad(full, ((-top, h + top - geo.hneed), (-left, w + left - geo.wneed)))


def _add_blocks(patches: jax.Array, geo: Geometry, sw: int) -> jax.Array:
    """(N, ho, blocks, span, kh, C) -> (N, ho, wneed, kh, C): the transpose of _patch_blocks.

    Piece q of every block (its columns [q * step, (q + 1) * step)) lands on tile t + q: each
    piece set is a reshape shifted by q tiles, and the pieces add up.
    """
    n, ho, blocks, span, kh, c = patches.shape
    step = geo.bw * sw
    if blocks == 1:
        return patches[:, :, 0]
    pieces = -(-span // step)
    width = (blocks + pieces - 1) * step
    total = 0
    for q in range(pieces):
        piece = patches[:, :, :, q * step : (q + 1) * step]
        piece = _pad_axis(piece, 3, step - piece.shape[3]).reshape(n, ho, blocks * step, kh, c)
        total = total + _pad_axis_at(piece, 2, q * step, width - (blocks + q) * step, 0)
    return total[:, :, : geo.wneed]


def _pad_axis_at(x: jax.Array, axis: int, lo: int, hi: int, interior: int) -> jax.Array:
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (lo, hi, interior)
    return lax.pad(x, jnp.zeros((), x.dtype), config)


# ---- shift: 1-channel forward --------------------------------------------------------------------


def shift_forward(x, kernel, strides: Strides, padding: Pads) -> jax.Array:
    """conv of a 1-channel input: (N, H, W, 1), (kh, kw, 1, O) -> (N, ho, wo, O).

    sum over taps (a, b) of ``x_padded[:, a + i * sh, b + j * sw] * kernel[a, b, 0, :]``: one
    elementwise loop that XLA fuses with what follows (bias, activation).
    """
    kh, kw, _, _ = kernel.shape
    sh, sw = strides
    geo = geometry(x.shape, kernel.shape, strides, padding, bw=1)
    xp = _padded_input(x, geo, padding)
    y = None
    for a in range(kh):
        for b in range(kw):
            tap = xp[:, a : a + (geo.ho - 1) * sh + 1 : sh, b : b + (geo.wo - 1) * sw + 1 : sw]
            term = tap * kernel[a, b, 0]
            y = term if y is None else y + term
    return y


# ---- native --------------------------------------------------------------------------------------


def native_forward(x, kernel, strides: Strides, padding: Pads) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC)


def native_input_grad(g, kernel, xshape, strides: Strides, padding: Pads) -> jax.Array:
    x = jnp.zeros(xshape, g.dtype)
    return jax.vjp(lambda x_: native_forward(x_, kernel, strides, padding), x)[1](g)[0]


def native_kernel_grad(x, g, kshape, strides: Strides, padding: Pads) -> jax.Array:
    kernel = jnp.zeros(kshape, g.dtype)
    return jax.vjp(lambda k_: native_forward(x, k_, strides, padding), kernel)[1](g)[0]


# ---- the plan ------------------------------------------------------------------------------------


class Plan(NamedTuple):
    """How to compute one conv: "native", "shift" (forward only) or "gemm" with a block width."""

    forward: str
    input_grad: str
    kernel_grad: str
    bw: int = 1  # output columns per gemm block for the forward and the kernel gradient
    input_grad_bw: int = 1  # the same for the input gradient


# Columns of the forward / kernel-gradient product (bw * O) and contraction depth of the
# input-gradient product (bw * O) below which YNNPACK's matmul kernels run poorly.
MIN_FORWARD_COLUMNS = 32
MIN_INPUT_GRAD_DEPTH = 64


def block_width(wo: int, out_channels: int, minimum: int) -> int:
    """The smallest divisor bw of wo with bw * out_channels >= minimum (or wo)."""
    for bw in range(1, wo + 1):
        if wo % bw == 0 and bw * out_channels >= minimum:
            return bw
    return wo


def plan(xshape, kshape, strides: Strides, padding: Pads) -> Plan:
    """Pick the formulation of each op from the shapes (rules measured on a 2-core CPU).

    * 1x1 kernels: matrix products (im2col of a 1x1 kernel is the input itself);
    * 1 input channel, few outputs (LeNet's first conv): shift forward, gemm gradients;
    * a kernel larger than the map (GoogLeNet's 3x3 / 5x5 convs at 2x2 and 4x4): Eigen's
      convolution there is 10-50x slower than the product, while its kernel gradient is fine;
    * few channels (c_in * c_out <= 256, LeNet's second conv): gemm throughout;
    * a strided conv down to a map of at most 2x2 (ResNet-18's stride-2 3x3 convs at a 32x32
      input, 4x4 -> 2x2): XLA's input gradient, a dilated conv, is 5-15x slower than the
      product there (128 -> 256 channels, batch 32: 39 ms vs 4 ms), its forward and kernel
      gradient are fine: gemm input gradient only;
    * everything else (e.g. GoogLeNet's 3x3 convs on 8x8 maps): native.

    The block width trades the Toeplitz operand's wasted multiply-adds (``span / kw`` of them)
    for a wider product: the smallest width that makes the product wide enough.
    """
    _, h, w, c = xshape
    kh, kw, _, o = kshape
    ho, wo = _out_size(h, kh, strides[0], padding[0]), _out_size(w, kw, strides[1], padding[1])
    bw = block_width(wo, o, MIN_FORWARD_COLUMNS)
    dx_bw = block_width(wo, o, MIN_INPUT_GRAD_DEPTH)
    if kh == kw == 1:
        return Plan("gemm", "gemm", "gemm", bw=1, input_grad_bw=1)
    if c == 1 and o <= 16:
        return Plan("shift", "gemm", "gemm", bw=bw, input_grad_bw=dx_bw)
    if kh > h or kw > w:
        return Plan("gemm", "gemm", "native", bw=bw, input_grad_bw=dx_bw)
    if c * o <= 256:
        return Plan("gemm", "gemm", "gemm", bw=bw, input_grad_bw=dx_bw)
    if strides != (1, 1) and max(ho, wo) <= 2:
        return Plan("native", "gemm", "native", bw=bw, input_grad_bw=dx_bw)
    return Plan("native", "native", "native")


# ---- the differentiable op -----------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x: jax.Array, kernel: jax.Array, strides: Strides, padding: Pads, how: Plan):
    """NHWC conv (no dilation, one group) computed as ``how`` says; differentiable in x, kernel.

    Once: the backward is not itself differentiable (its kernel gradient carries a custom vmap
    rule), so second derivatives need the plain path (``fast_path_enabled`` false).
    """
    if how.forward == "shift":
        return shift_forward(x, kernel, strides, padding)
    if how.forward == "gemm":
        return gemm_forward(x, kernel, strides, padding, how.bw)
    return native_forward(x, kernel, strides, padding)


def _conv2d_fwd(x, kernel, strides, padding, how):
    if how.forward == "gemm" and how.kernel_grad == "gemm":
        # The forward's patch matrix is the kernel gradient's too: keep it instead of rebuilding.
        patches = gemm_patches(x, kernel.shape, strides, padding, how.bw)
        y = gemm_forward(x, kernel, strides, padding, how.bw, patches)
        return y, (x, kernel, patches)
    return conv2d(x, kernel, strides, padding, how), (x, kernel, None)


def _conv2d_bwd(strides, padding, how, residuals, g):
    x, kernel, patches = residuals
    if how.input_grad == "gemm":
        dx = gemm_input_grad(g, kernel, x.shape, strides, padding, how.input_grad_bw)
    else:
        dx = native_input_grad(g, kernel, x.shape, strides, padding)
    saved = () if patches is None else (patches,)
    dk = _summed_kernel_grad(strides, padding, how)(x, g, kernel, *saved)
    return dx, dk


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


@functools.cache
def _summed_kernel_grad(strides: Strides, padding: Pads, how: Plan):
    """The kernel gradient ``(x, g, kernel[, patches]) -> dk``, with a vmap rule.

    ``jaxnotes.training`` vmaps a model over single examples (per-example dropout keys), and JAX
    batches a custom_vjp's backward by vmapping it, then summing the kernel's per-example
    cotangents: one small product per example (or, for a native kernel gradient, a grouped
    convolution), which made AlexNet's step 1.5x slower than no fast path at all. The rule folds
    the examples into the batch and returns the already-summed gradient as unmapped, which is
    what JAX would have summed to. A mapped kernel (an ensemble of parameters) gets one
    gradient per member, computed by JAX's default batching.
    """

    def compute(x, g, kernel, *patches):
        if how.kernel_grad == "gemm":
            return gemm_kernel_grad(x, g, kernel.shape, strides, padding, how.bw, *patches)
        return native_kernel_grad(x, g, kernel.shape, strides, padding)

    @custom_batching.custom_vmap
    def kernel_grad(x, g, kernel, *patches):
        return compute(x, g, kernel, *patches)

    @kernel_grad.def_vmap
    def _sum_over_examples(axis_size, in_batched, x, g, kernel, *patches):
        x_mapped, g_mapped, kernel_mapped, *patches_mapped = in_batched
        if x_mapped and g_mapped and not kernel_mapped and all(patches_mapped):
            x, g, *patches = (a.reshape(-1, *a.shape[2:]) for a in (x, g, *patches))
            return compute(x, g, kernel, *patches), False
        in_axes = [0 if mapped else None for mapped in in_batched]
        return jax.vmap(compute, in_axes=in_axes)(x, g, kernel, *patches), True

    return kernel_grad


def fast_conv(x: jax.Array, kernel: jax.Array, strides: Strides, padding: Pads) -> jax.Array:
    """The planned conv of NHWC ``x`` with HWIO ``kernel``, taps that see only padding dropped."""
    _, h, w, _ = x.shape
    kh, kw = kernel.shape[:2]
    rows, cols, padding = trim_padding_taps(h, w, kh, kw, strides, padding)
    kernel = kernel[rows, cols]
    how = plan(x.shape, kernel.shape, strides, padding)
    if how == Plan("native", "native", "native"):
        return native_forward(x, kernel, strides, padding)  # JAX's own autodiff and batching
    return conv2d(x, kernel, strides, padding, how)


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return tuple(dimension_numbers) == NHWC


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """``lax.conv_general_dilated`` with the CPU fast paths (a drop-in for ``nn.Conv``).

    Takes :func:`fast_conv` for 2-D NHWC/HWIO float32 convs with explicit padding, no dilation and
    one group on the CPU backend; anything else goes to ``lax.conv_general_dilated`` unchanged.
    """
    supported = (
        fast_path_enabled(lhs, rhs)
        and lhs.ndim == 4
        and _is_nhwc(dimension_numbers)
        and not isinstance(padding, str)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and batch_group_count == 1
        and precision is None
        and preferred_element_type is None
    )
    if not supported:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return fast_conv(lhs, rhs, tuple(int(s) for s in window_strides), pads)


# ---- pooling -------------------------------------------------------------------------------------


def _windows(xp: jax.Array, window, strides, out):
    for a in range(window[0]):
        for b in range(window[1]):
            rows = slice(a, a + (out[0] - 1) * strides[0] + 1, strides[0])
            cols = slice(b, b + (out[1] - 1) * strides[1] + 1, strides[1])
            yield a, b, xp[:, rows, cols]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: Strides, strides: Strides, padding: Pads) -> jax.Array:
    """``flax.linen.max_pool`` (padding with -inf) as a max over window-shifted slices.

    (N, H, W, C) -> (N, ho, wo, C). Its gradient goes, as XLA's select-and-scatter sends it, to
    the first maximum of each window in row-major window order (ties are common after a ReLU).
    """
    sizes = zip(x.shape[1:3], window, strides, padding, strict=True)
    out = [_out_size(n, k, s, p) for n, k, s, p in sizes]
    xp = _pad(x, padding, -jnp.inf)
    y = None
    for _, _, tap in _windows(xp, window, strides, out):
        y = tap if y is None else jnp.maximum(y, tap)
    return y


def _max_pool_fwd(x, window, strides, padding):
    y = max_pool(x, window, strides, padding)
    return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, g):
    x, y = residuals
    _, h, w, _ = x.shape
    ho, wo = y.shape[1:3]
    hp, wp = h + sum(padding[0]), w + sum(padding[1])
    taps = list(_windows(_pad(x, padding, -jnp.inf), window, strides, (ho, wo)))
    # The index of each window's first maximum (argmax returns the first True). A reduction, so
    # XLA materialises it: an elementwise select chain would be fused into, and recomputed by,
    # each of the window taps below (k^2 times; measured 3-8x slower in the train step).
    first = jnp.argmax(jnp.stack([tap == y for _, _, tap in taps], axis=-1), axis=-1)
    # The same for g: when it arrives as an elementwise expression (DenseNet's stem output feeds
    # every batch norm of the first dense block, whose backward passes all add up here), XLA
    # fuses that expression into the taps below and computes it once per tap (9 times for a
    # 3x3 window): 11 of DenseNet's 74 ms step at 32x32, batch 32. A sum over a stacked zero is
    # the same array, but a reduction, so XLA computes it once (an optimization barrier would be
    # removed before fusion). Costs one extra pass over g: ~1 ms there, nothing measurable
    # elsewhere.
    g = jnp.stack([g, jnp.zeros_like(g)], axis=-1).sum(axis=-1)
    # Route g to that tap: one loop over dx reading (first, g) at the window offsets.
    zero = jnp.zeros((), g.dtype)
    dxp = 0
    for index, (a, b, _) in enumerate(taps):
        config = [
            (0, 0, 0),
            (a, hp - a - (ho - 1) * strides[0] - 1, strides[0] - 1),
            (b, wp - b - (wo - 1) * strides[1] - 1, strides[1] - 1),
            (0, 0, 0),
        ]
        dxp = dxp + lax.pad(jnp.where(first == index, g, zero), zero, config)
    (top, bottom), (left, right) = padding
    return (_pad(dxp, ((-top, -bottom), (-left, -right))),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
