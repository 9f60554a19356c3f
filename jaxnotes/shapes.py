"""The chapters' shape and size formulas as code.

Output size of a convolution or pooling window (chapter 4, the notes' formula):

    out = floor((n - k + p_total + s) / s)

where ``p_total`` is the padding added on both sides together. An ``int`` padding is per side
(``p_total = 2 * padding``); a pair is ``(before, after)``. Padding ``k - 1`` in total keeps the
size at stride 1 (:func:`same_padding`).

Receptive field (chapter 8): walking from the top layer down, ``F(i) = (F(i+1) - 1) * stride + k``
with ``F(top) = 1``; three stacked 3x3 convolutions see 7x7.

Parameter counts (chapters 1, 5, 8): a dense layer has ``(n_in + 1) * n_out`` parameters, a
convolution ``kh * kw * c_in * c_out (+ c_out)``.

Every function raises ``ValueError`` with the formula and the numbers filled in when a combination
is impossible (a kernel larger than the padded input, stride < 1, negative padding, a non-integer).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Pair = tuple[int, int]
# Padding of one spatial dimension: per side (int) or (before, after).
Padding1D = int | Sequence[int]


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (an integral float is accepted), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def padding_pair(padding: Padding1D, name: str = "padding") -> Pair:
    """Padding of one dimension as ``(before, after)``: an int is per side, a pair is kept."""
    if isinstance(padding, Sequence) and not isinstance(padding, str):
        if len(padding) != 2:
            raise ValueError(
                f"{name} must be an int (per side) or a pair (before, after), got {padding!r}"
            )
        before, after = padding
        return check_int(f"{name} before", before, 0), check_int(f"{name} after", after, 0)
    per_side = check_int(name, padding, 0)
    return per_side, per_side


def conv_output_size(n: int, kernel_size: int, stride: int = 1, padding: Padding1D = 0) -> int:
    """Output length of a convolution along one dimension.

    ``floor((n - k + p_total + s) / s)``; ``padding`` is per side (int) or ``(before, after)``.

    >>> conv_output_size(8, 3, padding=1)
    8
    >>> conv_output_size(8, 3, stride=2, padding=1)
    4
    """
    return _window_output_size("conv_output_size", n, kernel_size, stride, padding)


def pool_output_size(
    n: int, pool_size: int, stride: int | None = None, padding: Padding1D = 0
) -> int:
    """Output length of a pooling window along one dimension; ``stride`` defaults to the window."""
    stride = pool_size if stride is None else stride
    return _window_output_size("pool_output_size", n, pool_size, stride, padding)


def _window_output_size(fn: str, n: int, k: int, s: int, padding: Padding1D) -> int:
    n = check_int(f"{fn}: input size n", n, 1)
    k = check_int(f"{fn}: kernel size k", k, 1)
    s = check_int(f"{fn}: stride s", s, 1)
    before, after = padding_pair(padding, f"{fn}: padding")
    p_total = before + after
    if n + p_total < k:
        raise ValueError(
            f"{fn}: kernel larger than the padded input: "
            f"floor((n - k + p_total + s) / s) = floor(({n} - {k} + {p_total} + {s}) / {s}) "
            f"needs n + p_total >= k, but {n} + {p_total} < {k}"
        )
    return (n - k + p_total + s) // s


def per_dim(value: Any, name: str) -> tuple[Any, Any]:
    """An int (or None) applies to both spatial dims; a pair gives one value per dim."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (height, width), got {value!r}")
        return value[0], value[1]
    return value, value


def padding_2d(padding: Any) -> tuple[Pair, Pair]:
    """2-D padding as ``((top, bottom), (left, right))``.

    Accepts an int (every side), ``(ph, pw)`` (per side along height and width, the book's
    ``padding=(2, 1)``) or ``((top, bottom), (left, right))``.
    """
    ph, pw = per_dim(padding, "padding")
    return padding_pair(ph, "padding (height)"), padding_pair(pw, "padding (width)")


def conv_output_shape(
    hw: Sequence[int], kernel_size: Any, stride: Any = 1, padding: Any = 0
) -> Pair:
    """Output ``(height, width)`` of a 2-D convolution; each argument is an int or a pair.

    ``padding`` follows :func:`padding_2d`.
    """
    (kh, kw), (sh, sw) = per_dim(kernel_size, "kernel_size"), per_dim(stride, "stride")
    pad_h, pad_w = padding_2d(padding)
    h, w = hw
    return conv_output_size(h, kh, sh, pad_h), conv_output_size(w, kw, sw, pad_w)


def pool_output_shape(
    hw: Sequence[int], pool_size: Any, stride: Any = None, padding: Any = 0
) -> Pair:
    """Output ``(height, width)`` of a 2-D pooling window; ``stride`` defaults to the window."""
    (kh, kw) = per_dim(pool_size, "pool_size")
    sh, sw = per_dim(stride, "stride")
    pad_h, pad_w = padding_2d(padding)
    h, w = hw
    return pool_output_size(h, kh, sh, pad_h), pool_output_size(w, kw, sw, pad_w)


def same_padding(kernel_size: int) -> Pair:
    """``(before, after)`` padding, ``k - 1`` in total, that keeps the size at stride 1.

    An odd kernel pads evenly; an even kernel puts the extra row after, as XLA's "SAME" does.
    """
    k = check_int("same_padding: kernel size", kernel_size, 1)
    before = (k - 1) // 2
    return before, k - 1 - before


def receptive_field(layers: Iterable[Sequence[int]]) -> int:
    """Receptive field of one output unit of a stack of ``(kernel, stride)`` layers.

    ``F(i) = (F(i+1) - 1) * stride_i + kernel_i`` from the top (``F = 1``) down to the input.

    >>> receptive_field([(3, 1)] * 3)
    7
    """
    field = 1
    for index, layer in reversed(list(enumerate(layers))):
        if len(layer) != 2:
            raise ValueError(
                f"receptive_field: layer {index} must be (kernel, stride), got {layer!r}"
            )
        kernel = check_int(f"receptive_field: layer {index} kernel", layer[0], 1)
        stride = check_int(f"receptive_field: layer {index} stride", layer[1], 1)
        field = (field - 1) * stride + kernel
    return field


def dense_params(n_in: int, n_out: int, bias: bool = True) -> int:
    """Parameters of a dense layer: ``(n_in + 1) * n_out`` with bias, ``n_in * n_out`` without."""
    n_in = check_int("dense_params: n_in", n_in, 1)
    n_out = check_int("dense_params: n_out", n_out, 1)
    return (n_in + int(bias)) * n_out


def conv_params(c_in: int, c_out: int, kernel_size: Any, bias: bool = True) -> int:
    """Parameters of a 2-D convolution: ``kh * kw * c_in * c_out (+ c_out)``."""
    c_in = check_int("conv_params: c_in", c_in, 1)
    c_out = check_int("conv_params: c_out", c_out, 1)
    kh, kw = (check_int("conv_params: kernel", k, 1) for k in per_dim(kernel_size, "kernel_size"))
    return kh * kw * c_in * c_out + (c_out if bias else 0)


def count_params(params: Any) -> int:
    """Total number of scalars in a pytree of arrays (or of ``ShapeDtypeStruct``)."""
    return sum(int(math.prod(np.shape(leaf))) for leaf in jax.tree.leaves(params))


# ---------------------------------------------------------------------------------------------
# summarize: a per-layer table from shapes alone (jax.eval_shape + flax method interception).


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One module call: where it sits, what it returned, what it owns and costs per example."""

    path: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclasses.dataclass(frozen=True)
class Summary:
    """What :func:`summarize` found; ``str(summary)`` is the printable table."""

    input_shape: tuple[int, ...]
    output_shape: Any
    rows: tuple[LayerRow, ...]
    total_params: int
    total_macs: int

    def __str__(self) -> str:
        header = ("layer", "kind", "output shape", "params", "mult-adds")
        body = [
            (r.path, r.kind, str(r.output_shape), f"{r.params:,}", f"{r.macs:,}") for r in self.rows
        ]
        footer = (
            "total",
            "",
            str(self.output_shape),
            f"{self.total_params:,}",
            f"{self.total_macs:,}",
        )
        table = [header, *body, footer]
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]

        def fmt(line: Sequence[str]) -> str:
            left = [line[i].ljust(widths[i]) for i in range(3)]
            right = [line[i].rjust(widths[i]) for i in range(3, 5)]
            return "  ".join(left + right).rstrip()

        rule = "-" * len(fmt(header))
        lines = [f"input {self.input_shape} (mult-adds per example)", fmt(header), rule]
        lines += [fmt(line) for line in body] + [rule, fmt(footer)]
        return "\n".join(lines)


def _macs_per_call(module: Any, args: tuple, output: Any) -> int:
    """Multiply-adds of one call of a conv or dense layer for the whole batch; 0 for other kinds."""
    import flax.linen as nn

    if not hasattr(output, "shape") or not args or not hasattr(args[0], "shape"):
        return 0
    out_elements = int(math.prod(output.shape))
    if isinstance(module, nn.Conv):
        kernel = module.kernel_size
        kernel = (kernel,) if isinstance(kernel, int) else tuple(kernel)
        c_in = args[0].shape[-1]
        return out_elements * int(math.prod(kernel)) * c_in // (module.feature_group_count or 1)
    if isinstance(module, nn.Dense):
        return out_elements * args[0].shape[-1]
    return 0


def _subtree(tree: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        if not isinstance(tree, dict) or name not in tree:
            return {}
        tree = tree[name]
    return tree


def summarize(
    model: Any,
    input_shape: Sequence[int],
    dtype: Any = jnp.float32,
    **call_kwargs: Any,
) -> Summary:
    """Per-layer table of a Flax linen module without running real compute.

    Args:
      model: any ``flax.linen.Module``.
      input_shape: the whole input shape including the batch, e.g. ``(1, 28, 28, 1)`` (NHWC).
      dtype: input dtype.
      **call_kwargs: passed to ``model.init`` (e.g. ``train=False``).

    Returns:
      A :class:`Summary`: one row per module that owns parameters or is a leaf (its path, kind,
      output shape, own parameters, multiply-adds per example), and totals. The parameter total
      equals ``count_params`` of the initialised variables.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or input_shape[0] < 1:
        raise ValueError(
            f"summarize: input_shape must start with a batch size >= 1, got {input_shape}"
        )
    calls, variables = _traced_calls(model, input_shape, dtype, call_kwargs)
    params = variables.get("params", {})
    rows = _rows(calls, params, batch=input_shape[0])
    # The outermost call finishes last.
    output_shape = calls[-1]["output_shape"] if calls else None
    return Summary(
        input_shape=input_shape,
        output_shape=output_shape,
        rows=tuple(rows),
        total_params=count_params(params),
        total_macs=sum(r.macs for r in rows),
    )


def _traced_calls(model, input_shape, dtype, call_kwargs) -> tuple[list[dict], Any]:
    """Every ``__call__`` of every submodule during an abstract init: (records, variables)."""
    import flax.linen as nn

    calls: list[dict[str, Any]] = []
    counter = itertools.count()
    stack: list[dict[str, Any]] = []

    def interceptor(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        record = {"module": context.module, "path": tuple(context.module.path), "children": 0}
        record["order"] = next(counter)
        if stack:
            stack[-1]["children"] += 1
        stack.append(record)
        try:
            output = next_fun(*args, **kwargs)
        finally:
            stack.pop()
        record["output_shape"] = jax.tree.map(lambda a: tuple(a.shape), output)
        record["macs"] = _macs_per_call(context.module, args, output)
        calls.append(record)
        return output

    def init(x: jax.Array) -> Any:
        rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
        with nn.intercept_methods(interceptor):
            return model.init(rngs, x, **call_kwargs)

    variables = jax.eval_shape(init, jax.ShapeDtypeStruct(input_shape, dtype))
    return calls, variables


def _rows(calls: list[dict], params: Any, batch: int) -> list[LayerRow]:
    """One row per module owning parameters or a leaf, in the order the model enters them."""
    subtree_params = {c["path"]: count_params(_subtree(params, c["path"])) for c in calls}
    rows, seen = [], set()
    for call in sorted(calls, key=lambda c: c["order"]):
        path = call["path"]
        if not path:  # the model itself: its totals are the footer
            continue
        # Own parameters: the module's subtree minus its direct child modules' subtrees.
        children = {p for p in subtree_params if len(p) == len(path) + 1 and p[: len(path)] == path}
        own = subtree_params[path] - sum(subtree_params[p] for p in children)
        if call["children"] and own == 0:
            continue  # a container: its children have their own rows
        first_call = path not in seen
        seen.add(path)
        rows.append(
            LayerRow(
                path="/".join(path),
                kind=type(call["module"]).__name__,
                output_shape=call["output_shape"],
                params=own if first_call else 0,
                macs=call["macs"] // batch,
            )
        )
    return rows
