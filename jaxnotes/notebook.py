"""What the Colab notebooks (``colab/``) share: the size switch and each chapter's settings.

One environment variable, ``JAXNOTES_SIZE``, picks how big a notebook's experiments are:

- ``book`` (the default): the book's settings. Fashion-MNIST at the book's input sizes, epochs,
  batch sizes and learning rates (``jaxnotes.presets.BOOK``), on whatever accelerator JAX finds.
- ``small``: what CI runs on two CPU cores. The embedded ``digits`` data set (no download), the
  digits presets (``jaxnotes.presets.DIGITS``), cut to a few epochs or a few dozen steps.

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
from pathlib import Path
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


# Per model: every chapter's run rises well above chance on digits in under half a minute on
# 2 CPU cores (compilation included). The deep models train as the digits presets do (He init,
# Adam: without batch norm, d2l's Xavier + SGD leaves them at chance for epochs), on a subset
# where a whole epoch of digits is not needed. Measured test accuracy (2-core CPU):
# AlexNet 0.84, VGG-11-small 0.92, NiN 0.79, GoogLeNet 0.82-0.90, LeNet 0.97.
_ADAM_HE = {"optimizer": "adam", "learning_rate": 1e-3, "model_kwargs": {"weight_init": "he"}}
SMALL_RUNS: dict[str, SmallRun] = {
    "mlp": SmallRun(epochs=5),
    "lenet": SmallRun(epochs=8),
    "alexnet": SmallRun(epochs=3, train_examples=640, test_examples=256, overrides=_ADAM_HE),
    "vgg11_small": SmallRun(epochs=3, train_examples=640, test_examples=256, overrides=_ADAM_HE),
    "vgg11": SmallRun(epochs=1, train_examples=128, test_examples=128),
    "vgg16": SmallRun(epochs=1, train_examples=128, test_examples=128),
    # NiN's ReLU after its last 1x1 convolution (the class scores) can die early in training,
    # and whether it does was decided by the CPU's rounding: 6 epochs of Adam 5e-4 gave 0.79 on
    # an AMD host and 0.48 on an Intel Xeon, 0.11-0.70 over seeds 0-4. A warm-up (120 steps)
    # then a cosine decay lets every seed train: 0.67-0.99 over seeds 0-4 on the Xeon (mean
    # 0.83), about 35 s (measured with 22 other settings; see the closing note of that round).
    "nin": SmallRun(
        epochs=8,
        test_examples=256,
        overrides={**_ADAM_HE, "learning_rate": 5e-4, "warmup_steps": 120, "schedule": "cosine"},
    ),
    "googlenet": SmallRun(epochs=3, test_examples=256),
    # Chapters 11-13. lenet_bn: chapter 11 compares its LeNets, with and without batch norm,
    # over 6 epochs (Adam at a constant rate, set by the notebook; seeds 0-3: without batch norm
    # 0.85-0.89 at 0.003 and 0.10 at 0.03, with it 0.93-0.96 at 0.03). ResNet-18 and DenseNet
    # train as their presets do (SGD, 0.05 and 0.1, cosine), compile-bound (about 10 and 12 s of
    # a cold start on 2 cores): a few epochs of a subset. Measured test accuracy (2-core CPU,
    # seeds 0-2): ResNet-18 0.91-0.95 in 2 epochs, DenseNet 0.98-0.99 in 3 (0.85-0.91 in 2).
    "lenet_bn": SmallRun(epochs=6),
    "resnet18": SmallRun(epochs=2, train_examples=640, test_examples=256),
    "densenet": SmallRun(epochs=3, train_examples=640, test_examples=256),
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
    # From no decay, through the notes' 1e-4..1e-2, to a lambda so large it under-fits.
    "weight_decay": {
        "book": {"epochs": 100,
                 "lambdas": (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)},
        "small": {"epochs": 100,
                  "lambdas": (0.0, 1e-4, 1e-2, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)},
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

    Book: ``jaxnotes.presets.preset(model, "fashion_mnist")`` on Fashion-MNIST, the whole splits.
    Small: ``preset(model, "digits")`` on digits with ``SMALL_RUNS[model]`` applied. Keyword
    ``overrides`` (TrainConfig fields) are applied last, at both sizes.

    Returns:
      (config, (train_examples, test_examples)); None means the whole split.
    """
    from jaxnotes.presets import preset
    from jaxnotes.training import TrainConfig

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
    part = from_arrays(dataset.images[idx], dataset.labels[idx], dataset.num_classes, dataset.name)
    return dataclasses.replace(part, class_names=dataset.class_names)


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
    curves: str | None = None,
    model_object=None,
    **overrides: Any,
):
    """Train ``model`` as its chapter does at this size: ``(FitResult, seconds)``.

    ``seconds`` is the wall-clock time of ``fit`` (compilation included). Keyword ``overrides``
    are TrainConfig fields (e.g. ``epochs=3``). ``curves``: a title, to draw the learning
    curves live as the epochs finish (:class:`LiveCurves`). ``model_object``: a Flax module to
    train instead of the zoo's ``model`` (e.g. the one a notebook built on the page); the
    preset of ``model`` still gives the settings.
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
    on_epoch = LiveCurves(curves) if curves else None
    result = fit(
        config, workdir, model=model_object, train_data=train, test_data=test, log=log,
        on_epoch=on_epoch,
    )  # fmt: skip
    return result, time.perf_counter() - start


def show_predictions(model: str, result, n: int = 16, size: str | None = None):
    """The trained ``model`` of a :func:`run_chapter_training` ``result`` on the first ``n``
    test images of its run, drawn with their predictions (mistakes in red). The predictions
    are the run's own (``FitResult.predict``: its model, weights and preprocessing).

    Returns:
      (figure, predictions (n,), labels (n,)).
    """
    from jaxnotes import plots

    config, limits = chapter_config(model, size)
    _, test = load_chapter_data(config, limits)
    predictions = result.predict(test.images[:n]).argmax(-1)
    labels = test.labels[:n]
    figure = plots.labelled_images(test.images[:n], labels, test.class_names, predictions)
    return figure, predictions, labels


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


def network_rows(summary, labels: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """A ``shapes.summarize`` table as the boxes of ``plots.network_diagram``: one row per
    top-level layer or block (the rows of a block, ``Block_0/...``, are one), each
    (``labels[top]``, or the layer's kind, and its output shape "HxWxC")."""
    rows: dict[str, tuple[str, tuple]] = {}
    for row in summary.rows:
        top = row.path.split("/")[0]
        kind = rows[top][0] if top in rows else row.kind
        rows[top] = (kind, tuple(row.output_shape[1:]))
    labels = labels or {}
    return [
        (labels.get(top, kind), "x".join(map(str, shape))) for top, (kind, shape) in rows.items()
    ]


# --- the first cell: where and how big --------------------------------------------------------

# Training images per second on a 2-core CPU at the book's input size (BENCHMARKS.md, "models":
# jitted value_and_grad, fp32), to say how long the book size would take on a CPU runtime. The
# batch-norm nets are estimates: BENCHMARKS.md's 32x32 train steps scaled by the pixels of 96x96
# (resnet18, densenet), and LeNet's rate halved (lenet_bn).
CPU_IMAGES_PER_SEC = {
    "mlp": 12_336, "lenet": 12_787, "alexnet": 26.8, "vgg11_small": 31.9, "vgg11": 2.6,
    "vgg16": 1.3, "nin": 30.2, "googlenet": 55.3, "lenet_bn": 6_400, "resnet18": 42.0,
    "densenet": 71.0,
}  # fmt: skip
FASHION_MNIST_TRAIN = 60_000
# The book size runs on a CPU when all of a chapter's runs take less than this (LeNet, the MLP).
CPU_BOOK_LIMIT_S = 300.0


def book_seconds_on_cpu(models: tuple[str, ...]) -> float:
    """Seconds the book's runs of ``models`` take on a 2-core CPU (their presets' epochs); a
    model named twice is trained twice."""
    from jaxnotes.presets import preset

    seconds = 0.0
    for model in models:
        epochs = preset(model, "fashion_mnist", edition())["epochs"]
        seconds += epochs * FASHION_MNIST_TRAIN / CPU_IMAGES_PER_SEC[model]
    return seconds


def duration(seconds: float) -> str:
    """ "about 40 s", "about 12 min", "about 3.4 h": how long, in the unit a reader expects."""
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:,.1f} h"


def _on_colab() -> bool:
    import sys

    return "google.colab" in sys.modules


def _book_on_cpu(models: tuple[str, ...], insist: bool) -> str:
    """The size a CPU runtime runs when the book size is asked for, with one line saying why."""
    seconds = book_seconds_on_cpu(models)
    what = f"The book size trains {', '.join(models)} at the book's input sizes and epochs"
    if seconds <= CPU_BOOK_LIMIT_S or insist:
        print(f"{what}: {duration(seconds)} on this CPU runtime; running it.")
        return "book"
    hint = " or pick a GPU runtime: Runtime > Change runtime type" if _on_colab() else ""
    print(
        f"{what}: {duration(seconds)} on this CPU runtime. Running the small size instead "
        f"(set INSIST = True to run the book size anyway{hint})."
    )
    return "small"


def start(
    requested: str | None = "small", *, insist: bool = False, models: tuple[str, ...] = ()
) -> str | None:
    """The notebook's first cell: pick the size, say what runs where; returns the size.

    "book" on a CPU runtime runs when the book's runs of ``models`` take under
    ``CPU_BOOK_LIMIT_S`` (LeNet, the MLP), else falls back to "small" (saying how long the book
    size would take) unless ``insist``. ``requested`` None: a chapter without sizes (nothing
    it runs depends on one). Prints one line: size, device, versions and date, the first
    output of every notebook.
    """
    import datetime
    import importlib.metadata

    import jax

    backend = jax.default_backend()
    size = None if requested is None else _resolve(requested)
    if size == "book" and backend == "cpu" and models:
        size = _book_on_cpu(models, insist)
    if size is not None:
        os.environ[ENV_VAR] = size
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("jaxnotes", "jax", "flax", "optax")
    )
    device = jax.devices()[0]
    today = datetime.date.today().isoformat()
    where = "no sizes (the same at every size)" if size is None else f"size {size}"
    print(f"{where} | {device.device_kind} ({backend}) | {versions} | {today}")
    return size


# --- run as a script: figures to files --------------------------------------------------------


def as_script() -> None:
    """A notebook's source run as a script (``python colab/src/07_lenet.py``): at exit, every
    open figure is saved next to where it runs (``07_lenet-1.png``, ...) and its path printed,
    or, when there is a display, shown. Does nothing in a notebook (figures show inline)."""
    import atexit
    import sys

    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = lambda: None  # noqa: E731
    if get_ipython() is not None:
        return
    from jaxnotes import plots

    plots.pyplot()  # pyplot's own exit handler (closing every figure) must run after ours
    stem = Path(sys.argv[0]).stem or "figure"
    atexit.register(_save_open_figures, stem, Path.cwd())


def _save_open_figures(stem: str, folder: Path) -> list[Path]:
    from jaxnotes import plots

    plt = plots.pyplot()
    if os.environ.get("DISPLAY") and plt.get_fignums():
        plt.show()
        return []
    saved = []
    for number, index in enumerate(plt.get_fignums(), start=1):
        path = folder / f"{stem}-{number}.png"
        plt.figure(index).savefig(path, dpi=100, bbox_inches="tight")
        saved.append(path)
        print(f"figure {number}: {path}")
    return saved


# --- learning curves that grow as the epochs come -----------------------------------------------


class LiveCurves:
    """d2l's ProgressBoard for ``fit``: ``fit(config, ..., on_epoch=LiveCurves("LeNet"))``.

    Each epoch's point appears as it finishes: in a live notebook the figure is redrawn in
    place (one display, updated); executed headless (CI) the stored notebook keeps only the
    final figure, never a trail of partial ones. Markers on every point, so a short run's
    curve of two epochs is still visible.
    """

    KEYS = ("train_loss", "train_acc", "test_acc")

    def __init__(self, title: str, keys: tuple[str, ...] = KEYS):
        self.title, self.keys, self.history = title, keys, []
        self.handle = None

    def __call__(self, row: dict) -> None:
        from jaxnotes import plots

        self.history.append(row)
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            get_ipython = lambda: None  # noqa: E731
        if get_ipython() is None:  # a script: keep the latest figure open (as_script saves it)
            if self.handle is not None:
                plots.close(self.handle)
            self.handle = self.figure()
            return
        figure = self.figure()
        if self.handle is None:
            self.handle = display(figure, display_id=True)
        else:
            self.handle.update(figure)
        plots.close(figure)

    def figure(self):
        from jaxnotes import plots

        plt = plots.pyplot()
        fig, ax = plt.subplots(figsize=(5.0, 3.4))
        epochs = [row["epoch"] for row in self.history]
        for key, style in zip(self.keys, ("o-", "s--", "^-."), strict=False):
            ax.plot(epochs, [row[key] for row in self.history], style, label=key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, max(epochs[-1], 2) + 0.5)
        ax.set_xticks(range(1, max(epochs[-1], 2) + 1, max(1, epochs[-1] // 10)))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=10)
        ax.set_title(self.title)
        return plots.readable(fig)


# --- exercises --------------------------------------------------------------------------------


def check_answer(answer: Any, expected: Any, hint: str, *, rel: float = 1e-3) -> bool | None:
    """An exercise's self-check: says whether ``answer`` is right, never what ``expected`` is.

    ``answer`` None (not tried yet): a prompt. Numbers match within ``rel`` (relative), strings
    and booleans ignoring case and spaces ("True", "yes" and True are the same), tuples and
    lists element by element. Prints one line and returns True, False or None; never raises,
    so a wrong answer does not stop the notebook.
    """
    if answer is None:
        print("not tried yet: set `answer` in the cell above, run it, then run this cell")
        return None
    ok = _same(answer, expected, rel)
    print("correct" if ok else f"not yet: {hint}")
    return ok


_WORDS = {"true": True, "yes": True, "y": True, "false": False, "no": False, "n": False}


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, str):
        return _WORDS.get(value.strip().lower())
    return bool(value) if isinstance(value, bool | int | np.bool_) else None


def _same(answer: Any, expected: Any, rel: float) -> bool:
    if isinstance(expected, bool) or isinstance(answer, bool):
        return _as_bool(answer) is not None and _as_bool(answer) == _as_bool(expected)
    if isinstance(expected, str):
        return "".join(str(answer).lower().split()) == "".join(expected.lower().split())
    if isinstance(expected, tuple | list):
        if not isinstance(answer, tuple | list) or len(answer) != len(expected):
            return False
        return all(_same(a, e, rel) for a, e in zip(answer, expected, strict=True))
    try:
        a, e = float(answer), float(expected)
    except (TypeError, ValueError):
        return False
    return bool(np.isclose(a, e, rtol=rel, atol=0.0 if e else 1e-12))
