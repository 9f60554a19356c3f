"""Matplotlib figures: learning curves like the book's, kernels and feature maps, search results.

matplotlib is imported inside each function (with the file-only Agg backend when no display is
set), so importing jaxnotes never pulls it in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    if not os.environ.get("DISPLAY") and "inline" not in matplotlib.get_backend().lower():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


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
    plt = _pyplot()
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
    plt = _pyplot()
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
    plt = _pyplot()
    arrays = [np.asarray(a) for a in arrays]
    ncols = max(1, min(ncols, len(arrays)))
    nrows = -(-len(arrays) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.6 * nrows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < len(arrays):
            ax.imshow(arrays[index], cmap=cmap)
            if titles is not None:
                ax.set_title(titles[index], fontsize=8)
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
    plt = _pyplot()
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
