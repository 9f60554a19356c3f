"""What the Colab notebooks (``colab/``) share: the size switch and each chapter's settings.

One environment variable, ``JAXNOTES_SIZE``, picks how big a notebook's experiments are:

- ``book`` (the default): the book's settings. Fashion-MNIST at the book's input sizes, epochs,
  batch sizes and learning rates (``train.presets.BOOK``), on whatever accelerator JAX finds.
- ``small``: what CI runs on two CPU cores. The embedded ``digits`` data set (no download), the
  digits presets (``train.presets.DIGITS``), cut to a few epochs or a few dozen steps.

Both sizes go through the same code: :func:`chapter_config` builds a
:class:`jaxnotes.training.TrainConfig` from the presets and the size's overrides, and
:func:`run_chapter_training` hands it to :func:`jaxnotes.training.fit`. On Colab, set the size
before running the notebook's cells::

    import os
    os.environ["JAXNOTES_SIZE"] = "small"
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jaxnotes import compile_cache

# The notebooks reuse compiled programs across kernel restarts and chapters (see compile_cache).
compile_cache.enable()

ENV_VAR = "JAXNOTES_SIZE"
SIZES = ("book", "small")
DEFAULT_SIZE = "book"

# The data set each size trains on.
DATASETS = {"book": "fashion_mnist", "small": "digits"}


@dataclasses.dataclass(frozen=True)
class SmallRun:
    """How the small size shrinks one model's digits preset.

    epochs: replaces the preset's epochs (None keeps them).
    train_examples, test_examples: train and evaluate on a fixed random subset of that many
      examples (None: the whole split). Deep models on a CPU are compile-bound at this size, so a
      few steps already exercise everything the book-size run does.
    overrides: any other TrainConfig field (batch_size, resize, ...).
    """

    epochs: int | None = None
    train_examples: int | None = None
    test_examples: int | None = None
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# Per model. LeNet trains to a real accuracy in seconds; the others are smoke runs (chance-level
# accuracy after so few steps) that still compile and run the whole training path.
SMALL_RUNS: dict[str, SmallRun] = {
    "mlp": SmallRun(epochs=5),
    "lenet": SmallRun(epochs=8),
    "alexnet": SmallRun(epochs=1, train_examples=128, test_examples=128),
    "vgg11_small": SmallRun(epochs=2, train_examples=256, test_examples=256),
    "vgg11": SmallRun(epochs=1, train_examples=128, test_examples=128),
    "vgg16": SmallRun(epochs=1, train_examples=128, test_examples=128),
    "nin": SmallRun(epochs=2, train_examples=256, test_examples=256),
    "googlenet": SmallRun(epochs=1, train_examples=128, test_examples=128),
}

# Settings of the chapters whose experiments are not a model-zoo training run (chapters 1-3),
# per size. They are jitted programs over the small data sets of jaxnotes.selection and
# jaxnotes.regularization, so the book size is the book's (and the notes': "try 100 random
# settings"); the small size cuts the epochs and trials, which compile once regardless.
CHAPTER_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "model_selection": {
        "book": {"k": 5, "cv_epochs": 20, "search_trials": 100, "search_epochs": 20,
                 "search_widths": (32, 64, 128)},
        "small": {"k": 5, "cv_epochs": 5, "search_trials": 8, "search_epochs": 5,
                  "search_widths": (64,)},
    },
    "weight_decay": {
        "book": {"epochs": 100, "lambdas": (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 3.0, 10.0)},
        "small": {"epochs": 100, "lambdas": (0.0, 1e-3, 1e-1, 1.0, 3.0)},
    },
    "dropout": {
        "book": {"demo_epochs": 100},
        "small": {"demo_epochs": 100},
    },
}  # fmt: skip


def edition() -> str:
    """The book edition whose settings the book size uses: ``$JAXNOTES_EDITION``, "classic"
    (the PyTorch 0.17 edition the notes follow) by default, or "d2l1" (the current d2l.ai)."""
    value = os.environ.get("JAXNOTES_EDITION", "").strip().lower() or "classic"
    if value not in ("classic", "d2l1"):
        raise ValueError(f"JAXNOTES_EDITION={value!r}; valid editions: classic, d2l1")
    return value


def size() -> str:
    """The current size, from ``$JAXNOTES_SIZE`` ("book" when unset or empty).

    Read at every call, so setting ``os.environ`` in a notebook takes effect for the next cell.
    """
    value = os.environ.get(ENV_VAR, "").strip().lower() or DEFAULT_SIZE
    if value not in SIZES:
        raise ValueError(f"{ENV_VAR}={value!r} is not a size; valid sizes: {', '.join(SIZES)}")
    return value


def _resolve(value: str | None) -> str:
    if value is None:
        return size()
    if value not in SIZES:
        raise ValueError(f"unknown size {value!r}; valid sizes: {', '.join(SIZES)}")
    return value


def is_small(size: str | None = None) -> bool:
    return _resolve(size) == "small"


def dataset_name(size: str | None = None) -> str:
    """The data set the chapter trainings use at this size."""
    return DATASETS[_resolve(size)]


def settings(chapter: str, size: str | None = None) -> dict[str, Any]:
    """A copy of ``CHAPTER_SETTINGS[chapter]`` for the size (chapters 1-3)."""
    if chapter not in CHAPTER_SETTINGS:
        raise ValueError(f"unknown chapter {chapter!r}; known: {', '.join(CHAPTER_SETTINGS)}")
    return dict(CHAPTER_SETTINGS[chapter][_resolve(size)])


def describe(size: str | None = None) -> str:
    """One line saying which size runs and how to switch, for the top of every notebook."""
    if _resolve(size) == "book":
        return (
            f"{ENV_VAR}=book: the book's settings (Fashion-MNIST, the book's input sizes and "
            f"epochs). For a quick run on digits: os.environ[{ENV_VAR!r}] = 'small'."
        )
    return (
        f"{ENV_VAR}=small: CI's size (digits, a few steps). "
        f"For the book's settings: os.environ[{ENV_VAR!r}] = 'book'."
    )


def chapter_config(model: str, size: str | None = None, **overrides: Any):
    """The TrainConfig of ``model``'s chapter run at this size, and the (train, test) subset sizes.

    Book: ``train.presets.preset(model, "fashion_mnist")`` on Fashion-MNIST, the whole splits.
    Small: ``preset(model, "digits")`` on digits with ``SMALL_RUNS[model]`` applied. Keyword
    ``overrides`` (TrainConfig fields) are applied last, at both sizes.

    Returns:
      (config, (train_examples, test_examples)); None means the whole split.
    """
    from jaxnotes.training import TrainConfig
    from train.presets import preset

    current = _resolve(size)
    dataset = dataset_name(current)
    fields = preset(model, dataset, edition())
    limits: tuple[int | None, int | None] = (None, None)
    if current == "small":
        run = SMALL_RUNS.get(model, SmallRun())
        if run.epochs is not None:
            fields["epochs"] = run.epochs
        fields.update(run.overrides)
        limits = (run.train_examples, run.test_examples)
    fields.update(overrides)
    fields.setdefault("progress", current == "book")
    return TrainConfig(model=model, dataset=dataset, **fields), limits


def subset(dataset, n: int | None, seed: int = 0):
    """A fixed random subset of ``n`` examples (in their original order); the whole set if None."""
    from jaxnotes.data import from_arrays

    if n is None or n >= len(dataset):
        return dataset
    if n < 1:
        raise ValueError(f"subset size must be >= 1, got {n}")
    idx = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:n])
    return from_arrays(dataset.images[idx], dataset.labels[idx], dataset.num_classes, dataset.name)


def load_chapter_data(config, limits: tuple[int | None, int | None]):
    """(train, test) Datasets for a config from :func:`chapter_config`, subset as it says."""
    from jaxnotes import data as jdata

    train = subset(jdata.load(config.dataset, "train"), limits[0], seed=config.seed)
    test = subset(jdata.load(config.dataset, "test"), limits[1], seed=config.seed + 1)
    return train, test


def run_chapter_training(
    model: str,
    size: str | None = None,
    *,
    log: Callable[[str], None] = print,
    workdir: str | os.PathLike | None = None,
    **overrides: Any,
):
    """Train ``model`` as its chapter does at this size: ``(FitResult, seconds)``.

    ``seconds`` is the wall-clock time of ``fit`` (compilation included). Keyword ``overrides``
    are TrainConfig fields (e.g. ``epochs=3``).
    """
    from jaxnotes.training import fit

    config, limits = chapter_config(model, size, **overrides)
    train, test = load_chapter_data(config, limits)
    log(
        f"training {config.model} on {config.dataset} ({len(train):,} train / {len(test):,} test "
        f"examples, {config.epochs} epoch(s), batch {config.batch_size}, lr "
        f"{config.learning_rate:g}, {config.optimizer}, input {config.resize or 'as is'})"
    )
    start = time.perf_counter()
    result = fit(config, workdir, train_data=train, test_data=test, log=log)
    return result, time.perf_counter() - start


def results_line(label: str, result, seconds: float, params: int | None = None) -> str:
    """The measured results of a chapter run, one line, for a notebook's last cell."""
    s = result.summary
    parts = [
        f"{label}: test acc {s['test_acc']:.4f}",
        f"test loss {s['test_loss']:.4f}",
        f"train acc {s['train_acc']:.4f}",
        f"train loss {s['train_loss']:.4f}",
    ]
    if params is not None:
        parts.append(f"{params:,} parameters")
    parts.append(f"{s['epochs']} epoch(s), {s['steps']} steps in {seconds:.1f} s")
    if s.get("examples_per_sec"):
        parts.append(f"{s['examples_per_sec']:,.0f} train examples/s")
    return ", ".join(parts)
