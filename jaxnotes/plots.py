"""Matplotlib figures: learning curves like the book's, kernels and feature maps, search results.

Every figure is made for a class: its text is at least 10 pt (:func:`readable`), panels that are
compared share their y axis, input images are grey and signed maps use one zero-centred red/blue
scale. matplotlib is imported inside each function (with the file-only Agg backend when no
display is set), so importing jaxnotes never pulls it in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pyplot():
    """matplotlib.pyplot, with the Agg backend where there is no display (imported on demand)."""
    import matplotlib

    if not os.environ.get("DISPLAY") and "inline" not in matplotlib.get_backend().lower():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike | None):
    """Make ``fig`` readable (text >= 10 pt), then save it to ``path`` (its format from the
    suffix) whole or not at all."""
    readable(fig)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return fig


def close(fig) -> None:
    """Release a figure that was only saved (pyplot keeps every open figure alive)."""
    pyplot().close(fig)


def learning_curves(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike | None = None,
    title: str | None = None,
    keys: Sequence[str] = ("train_loss", "train_acc", "test_acc"),
):
    """The book's training plot: train loss, train acc and test acc against the epoch.

    ``history``: one mapping per epoch with "epoch" and the ``keys``. Saved to ``path`` if given;
    returns the figure.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    epochs = [h["epoch"] for h in history]
    for key, style in zip(keys, ("-", "m--", "g-.", "r:"), strict=False):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax.plot(epochs, values, style, label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def curves(
    series: Mapping[str, Sequence[float]],
    path: str | os.PathLike | None = None,
    xlabel: str = "epoch",
    ylabel: str = "loss",
    log_y: bool = False,
    title: str | None = None,
):
    """Several named curves on one axis (e.g. polynomial fits' train/test losses)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, values in series.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def images(
    arrays: Sequence[np.ndarray] | np.ndarray,
    titles: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    ncols: int = 8,
    cmap: str = "gray",
):
    """A grid of 2-D arrays (kernels, feature maps, pooling outputs), each with its own scale."""
    plt = pyplot()
    arrays = [np.asarray(a) for a in arrays]
    ncols = max(1, min(ncols, len(arrays)))
    nrows = -(-len(arrays) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.8 * ncols, 1.8 * nrows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < len(arrays):
            ax.imshow(arrays[index], cmap=cmap)
            if titles is not None:
                ax.set_title(titles[index], fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def scatter_scores(
    table: Sequence[Mapping[str, Any]],
    params: Sequence[str],
    score: str = "val_acc",
    path: str | os.PathLike | None = None,
    log_params: Sequence[str] = (),
):
    """Score against each hyper-parameter of a random search, one panel per parameter."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 2.8), squeeze=False)
    scores = [row[score] for row in table]
    for ax, name in zip(axes[0], params, strict=True):
        ax.scatter([row[name] for row in table], scores, s=12)
        ax.set_xlabel(name)
        if name in log_params:
            ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(score.replace("_", " "))
    fig.tight_layout()
    return _save(fig, path)


def loss_panels(
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike | None = None,
    xlabel: str = "epoch",
    ylabel: str = "loss",
    log_y: bool = False,
    sharey: bool = True,
):
    """One panel per entry of ``panels`` (its title), each with its named curves against the
    epoch (1, 2, ...): e.g. the polynomial fits' train / test losses side by side, on one y
    scale (``sharey``) so that the panels compare at a glance."""
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.0 * len(panels), 3.3), squeeze=False, sharey=sharey
    )
    for ax, (title, series) in zip(axes[0], panels.items(), strict=True):
        for name, values in series.items():
            ax.plot(np.arange(1, len(values) + 1), values, label=name)
        if log_y:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=10)
    axes[0][0].set_ylabel(ylabel)
    fig.tight_layout()
    return _save(fig, path)


def sweep_panels(
    x: Sequence[float],
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    xlabel: str,
    path: str | os.PathLike | None = None,
    symlog_x: bool = False,
    log_y: bool = False,
):
    """Quantities against a swept parameter, one panel per entry of ``panels`` (its y label).

    ``symlog_x`` gives a log axis that still shows x = 0 (e.g. weight decay lambda = 0).
    """
    plt = pyplot()
    x = np.asarray(x, np.float64)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.3), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels.items(), strict=True):
        for name, values in series.items():
            ax.plot(x, values, "o-", label=name)
        if symlog_x:
            positive = x[x > 0]
            ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def signed_maps(
    arrays: Sequence[Any],
    titles: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    ncols: int = 8,
    title: str | None = None,
    column_ticks: bool = False,
    grey: Sequence[int] = (),
):
    """Kernels or feature maps on ONE zero-centred diverging scale with a colour bar.

    Red is positive, blue negative, white zero, the same for every panel (so their magnitudes
    compare): what a learned edge kernel or a feature map's sign means is visible at a glance.
    ``column_ticks``: number the columns (0, 1, ...) under each panel, for a text that cites them.
    ``grey``: the indices of panels that are input images, drawn in grey on their own scale
    (black 0 or less, white the maximum) and left out of the signed scale.
    """
    plt = pyplot()
    arrays = [np.asarray(a, np.float64) for a in arrays]
    signed = [a for i, a in enumerate(arrays) if i not in grey] or arrays
    limit = max(float(np.abs(a).max()) for a in signed) or 1.0
    ncols = max(1, min(ncols, len(arrays)))
    nrows = -(-len(arrays) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(1.8 * ncols + 0.9, 1.8 * nrows + 0.6), squeeze=False,
        layout="constrained",  # room for the title above the panels' titles, and the bar
    )  # fmt: skip
    image = None
    for index, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= len(arrays):
            ax.axis("off")
            continue
        if index in grey:
            top = float(arrays[index].max()) or 1.0
            ax.imshow(
                arrays[index], cmap="gray", vmin=min(0.0, float(arrays[index].min())), vmax=top
            )
        else:
            image = ax.imshow(arrays[index], cmap="RdBu_r", vmin=-limit, vmax=limit)
        if column_ticks:
            ax.set_xticks(range(arrays[index].shape[1]))
            ax.tick_params(axis="x", labelsize=10, length=2, pad=1)
        if titles is not None:
            ax.set_title(titles[index], fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def labelled_images(
    images: np.ndarray,
    labels: Sequence[int],
    class_names: Sequence[str] | None = None,
    predictions: Sequence[int] | None = None,
    path: str | os.PathLike | None = None,
    ncols: int = 8,
):
    """A grid of images titled with their class names; with ``predictions``, "predicted
    (true)" and the mistakes in red."""
    plt = pyplot()
    images = np.asarray(images)
    names = list(class_names) if class_names is not None else [str(i) for i in range(10**3)]
    ncols = max(1, min(ncols, len(images)))
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.5 * ncols, 2.0 * nrows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= len(images):
            continue
        ax.imshow(np.squeeze(images[index]), cmap="gray_r")
        truth = names[int(labels[index])]
        if predictions is None:
            ax.set_title(truth, fontsize=10)
            continue
        guess = names[int(predictions[index])]
        wrong = int(predictions[index]) != int(labels[index])
        ax.set_title(f"{guess}\n({truth})" if wrong else guess, fontsize=10,
                     color="crimson" if wrong else "black")  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)


def block_diagram(
    paths: Sequence[Sequence[str]],
    title: str,
    output: str = "concatenate on channels",
    path: str | os.PathLike | None = None,
):
    """A block as boxes and arrows: each of ``paths`` is a column of layers from the input
    down; several paths meet in ``output`` (Inception), one path runs straight (VGG, NiN)."""
    plt = pyplot()
    depth = max(len(p) for p in paths)
    fig, ax = plt.subplots(figsize=(2.6 * len(paths) + 0.6, 0.8 * (depth + 2) + 0.4))
    ax.set_xlim(-0.5, len(paths) - 0.5)
    ax.set_ylim(-1.5, depth + 0.8)
    ax.axis("off")
    box = dict(boxstyle="round,pad=0.3", fc="#eef3fb", ec="#3465a4")
    centre = (len(paths) - 1) / 2
    ax.text(centre, depth + 0.4, "input", ha="center", va="center", bbox=dict(box, fc="white"))
    for column, layers in enumerate(paths):
        ax.annotate("", (column, depth - 0.3), (centre, depth + 0.15),
                    arrowprops=dict(arrowstyle="->", color="gray"))  # fmt: skip
        for row, layer in enumerate(layers):
            y = depth - 0.6 - row
            ax.text(column, y, layer, ha="center", va="center", fontsize=10, bbox=box)
            if row:
                ax.annotate("", (column, y + 0.3), (column, y + 0.7),
                            arrowprops=dict(arrowstyle="->", color="gray"))  # fmt: skip
        ax.annotate("", (centre, -0.85), (column, depth - 0.9 - (len(layers) - 1)),
                    arrowprops=dict(arrowstyle="->", color="gray"))  # fmt: skip
    ax.text(centre, -1.1, output, ha="center", va="center", bbox=dict(box, fc="white"))
    ax.set_title(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


# The colours of a network diagram's boxes, by the first word of a layer that matches.
LAYER_COLOURS = {
    "inception": "#e9e0f5", "conv": "#dbe8f7", "block": "#dbe8f7", "vgg_block": "#dbe8f7",
    "pool": "#dff2df", "global": "#dff2df", "dense": "#fde7cf", "dropout": "#f2f2f2",
    "flatten": "#f2f2f2",
}  # fmt: skip


def network_diagram(
    layers: Sequence[tuple[str, str]],
    title: str,
    path: str | os.PathLike | None = None,
    input_shape: str | None = None,
):
    """A whole network as a column of boxes from the input (top) to the logits (bottom): each
    of ``layers`` is (what the layer is, its output shape), the shape written to its right.
    Boxes are coloured by kind (convolution blue, pooling green, dense orange)."""
    plt = pyplot()
    rows = ([("input", input_shape)] if input_shape else []) + [tuple(x) for x in layers]
    fig, ax = plt.subplots(figsize=(6.4, 0.55 * len(rows) + 0.9))
    ax.set_xlim(0, 1)
    ax.set_ylim(len(rows) - 0.4, -0.8)
    ax.axis("off")
    for i, (layer, shape) in enumerate(rows):
        words = layer.lower().replace(",", " ").split()
        colour = next((c for k, c in LAYER_COLOURS.items() for w in words if w.startswith(k)),
                      "white")  # fmt: skip
        box = dict(boxstyle="round,pad=0.3", fc=colour, ec="#3465a4")
        ax.text(0.38, i, layer, ha="center", va="center", fontsize=10, bbox=box)
        if shape:
            ax.text(0.80, i, shape, ha="left", va="center", fontsize=10, color="#444444")
        if i:
            ax.annotate("", (0.38, i - 0.3), (0.38, i - 0.7),
                        arrowprops=dict(arrowstyle="->", color="gray"))  # fmt: skip
    ax.text(0.80, -0.6, "output shape", ha="left", va="center", fontsize=10, style="italic")
    ax.set_title(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


# --- chapters 11-13: readable comparisons -------------------------------------------------------


def readable(fig, size: float = 10.0):
    """Raise every text of ``fig`` (titles, labels, ticks, legends, boxes) to at least ``size``
    points, then lay it out again: a figure a class reads from the back of the room."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        if text.get_fontsize() < size:
            text.set_fontsize(size)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    return fig


def run_comparison(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    keys: Sequence[str] = ("train_loss", "test_acc"),
    path: str | os.PathLike | None = None,
    title: str | None = None,
):
    """Several runs' histories (``fit``'s records, one per epoch) side by side: one panel per
    key in ``keys``, one curve per run (its label), against the epoch."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    styles = ("o-", "s--", "^-.", "d:")
    for ax, key in zip(axes[0], keys, strict=True):
        for (label, history), style in zip(runs.items(), styles * len(runs), strict=False):
            ax.plot([h["epoch"] for h in history], [h[key] for h in history], style, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(True, alpha=0.3)
    axes[0][0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def percentile_bands(
    panels: Mapping[str, np.ndarray],
    path: str | os.PathLike | None = None,
    xlabel: str = "training step",
    ylabel: str = "value",
    title: str | None = None,
    lines: Sequence[float] = (),
):
    """How a distribution moves during training, one panel per entry of ``panels`` (its title),
    all on one y scale: each entry is (steps, 5), the 5th, 25th, 50th, 75th and 95th percentiles
    per step; drawn as the median with a dark 25-75 band and a light 5-95 band. ``lines``:
    horizontal reference lines (e.g. where a sigmoid saturates)."""
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False, sharey=True
    )
    for ax, (name, q) in zip(axes[0], panels.items(), strict=True):
        q = np.asarray(q, np.float64)
        steps = np.arange(1, len(q) + 1)
        ax.fill_between(steps, q[:, 0], q[:, 4], color="#9ecae1", label="5th-95th percentile")
        ax.fill_between(steps, q[:, 1], q[:, 3], color="#4292c6", label="25th-75th")
        ax.plot(steps, q[:, 2], color="#08306b", label="median")
        for y in lines:
            ax.axhline(y, color="crimson", linestyle=":", linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
