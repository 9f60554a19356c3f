"""Data sources: every data set becomes a ``Dataset`` of NumPy arrays held in host memory.

Names ``load`` understands:

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images shipped inside scikit-learn), a
  fixed stratified 70/30 split; the offline default.
- ``fashion_mnist``, ``mnist``: read through ``tfds.data_source`` (array_record files, no TensorFlow
  at run time) and decoded once into arrays.
- ``idx:<dir>``: the four raw IDX files (gzipped or not) downloaded by hand.
- ``synthetic[:HxWxC[:N]]``: seeded random uint8 images, for benchmarks.

The data sets the book uses are small enough (Fashion-MNIST: 47 MB as uint8) that holding them as
arrays is the fastest input pipeline there is: batches are one NumPy gather (see ``pipeline``).
TensorFlow Datasets, scikit-learn and the like are imported inside the functions that need them, so
``import jaxnotes.data`` works on a machine that has none of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
from pathlib import Path

import numpy as np

from jaxnotes.data.idx import read_idx

SPLITS = ("train", "test")
TFDS_NAMES = ("fashion_mnist", "mnist")
VALID_NAMES = ("digits", *TFDS_NAMES, "idx:<dir>", "synthetic[:HxWxC[:N]]")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a data set, in host memory.

    images: (n, H, W, C), uint8 in [0, 255] (TFDS, IDX, synthetic) or float32 in [0, 1] (digits).
    labels: (n,) int32 in [0, num_classes).
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    class_names: tuple[str, ...] | None = None  # label i is class_names[i] (plots, notebooks)

    def __post_init__(self):
        if self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be NHWC, got shape {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"{self.name}: {self.images.shape[0]} images but labels of shape "
                f"{self.labels.shape}"
            )
        check_labels(self.labels, self.num_classes, self.name)
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.images.shape[1:])


class DatasetUnavailableError(RuntimeError):
    """A data set is not here and could not be fetched (offline, blocked, or a bad file)."""


CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),  # fmt: skip
    "mnist": tuple(str(d) for d in range(10)),
    "digits": tuple(str(d) for d in range(10)),
}


def data_dir_default() -> Path:
    """Where downloaded and decoded data sets are kept: ``$JAXNOTES_DATA_DIR`` or
    ``~/.cache/jaxnotes`` (``$XDG_CACHE_HOME`` respected)."""
    if os.environ.get("JAXNOTES_DATA_DIR"):
        return Path(os.environ["JAXNOTES_DATA_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxnotes"


def check_labels(labels: np.ndarray, num_classes: int, name: str) -> None:
    """Raise ValueError naming the first label that is not an integer in [0, num_classes)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(f"{name}: num_classes must be an integer, got {num_classes!r}")
    if len(labels) and num_classes < 1:
        raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integers, got dtype {labels.dtype}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(
            f"{name}: label {int(labels[index])} at index {index} is outside [0, {num_classes}); "
            f"labels must be class indices 0..{num_classes - 1}"
        )


def _integer_labels(labels, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == np.bool_ or not (
        np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
    ):
        raise ValueError(f"{name}: labels must be integers, got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating):
        fractional = ~np.isfinite(labels) | (labels != np.round(labels))
        if fractional.any():
            index = int(np.argmax(fractional))
            raise ValueError(
                f"{name}: labels must be integers; label {labels[index]} at index {index} is not"
            )
    return labels.astype(np.int64).astype(np.int32)


def from_arrays(images, labels, num_classes: int | None = None, name: str = "arrays") -> Dataset:
    """Wrap arrays as a ``Dataset``: images (n, H, W) or (n, H, W, C), labels (n,) integers.

    ``num_classes`` defaults to the largest label + 1. Raises ValueError naming the first label
    that is not a whole number in [0, num_classes), and for images that are not numbers.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype == np.bool_ or not np.issubdtype(images.dtype, np.number):
        raise ValueError(f"{name}: images must be numbers, got dtype {images.dtype}")
    labels = _integer_labels(labels, name)
    if len(labels) and labels.min() < 0:
        index = int(np.argmin(labels))
        raise ValueError(f"{name}: label {int(labels[index])} at index {index} is negative")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    return Dataset(images=images, labels=labels, num_classes=num_classes, name=name)


def load(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Load one split ("train" or "test") of a named data set as host arrays.

    data_dir: where TFDS looks for prepared data sets (default: $TFDS_DATA_DIR, then TFDS's own).
    cache_dir: for fashion_mnist and mnist, where the downloaded files and the decoded arrays
      are kept (default: ``data_dir_default()``, i.e. $JAXNOTES_DATA_DIR or ~/.cache/jaxnotes).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if name == "digits":
        return digits(split)
    if name in TFDS_NAMES:
        return load_book(name, split, data_dir=data_dir, cache_dir=cache_dir)
    if name.startswith("idx:") and len(name) > 4:
        return load_idx_dir(name[4:], split)
    if name == "synthetic" or name.startswith("synthetic:"):
        return _synthetic_from_name(name, split)
    raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(VALID_NAMES)}")


# --- digits -------------------------------------------------------------------------------------


def digits(split: str) -> Dataset:
    """scikit-learn's digits: images (n, 8, 8, 1) float32 in [0, 1], 1,257 train / 540 test.

    The table is read straight from the file scikit-learn ships (``digits.csv.gz``, 5 ms)
    without importing scikit-learn (about 1 s, every run); the split is the stratified 70/30
    ``train_test_split(..., stratify=labels, random_state=0)`` made once and kept in
    ``digits_test_indices.npy`` (tests/test_data_sources.py checks both against scikit-learn).
    """
    table = _digits_table()
    images = (table[:, :-1].reshape(-1, 8, 8, 1) / 16.0).astype(np.float32)  # pixels 0..16
    labels = table[:, -1].astype(np.int32)
    test = np.zeros(len(labels), bool)
    test[np.load(Path(__file__).with_name("digits_test_indices.npy"))] = True
    idx = np.flatnonzero(test if split == "test" else ~test)
    return Dataset(images[idx], labels[idx], 10, "digits", CLASS_NAMES["digits"])


def _digits_table() -> np.ndarray:
    """scikit-learn's digits.csv.gz as a (1797, 65) array: 64 pixels and the label per row."""
    import gzip

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailableError(
            "the digits data set ships with scikit-learn: pip install scikit-learn"
        )
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():  # a future layout: let scikit-learn find its own file
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return np.column_stack([bunch.data, bunch.target]).astype(np.float64)
    with gzip.open(path) as handle:
        return np.loadtxt(handle, delimiter=",")


# --- Fashion-MNIST and MNIST: decoded cache, TFDS's prepared copy, or the downloaded IDX files ---


def load_book(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """One split of fashion_mnist or mnist, from the first of these that has it:

    1. the decoded arrays kept from an earlier load (``CACHE/NAME/SPLIT.npz``);
    2. a TFDS-prepared copy (``tfds.data_source``, no TensorFlow at run time);
    3. the data set's four original IDX files, downloaded once into ``CACHE/NAME/`` and verified
       against TFDS's checksum registry (``jaxnotes.data.download``), then decoded.

    Raises DatasetUnavailableError listing the manual ways when all three fail.

    A decoded cache that cannot be read (truncated, not a zip, keys missing) is rebuilt from
    2. or 3. (one note line); one that cannot be written (a read-only folder) is skipped: the
    arrays are decoded in memory (one note line), so a read-only folder holding the verified
    files works.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else data_dir_default()
    folder = cache / name
    stored = folder / f"{split}.npz"
    if stored.exists():
        try:
            return _read_npz(stored, name)
        except Exception as error:  # BadZipFile, EOFError, KeyError, ValueError, OSError, ...
            _note(f"cannot read the decoded cache {stored} ({_first(error)}); rebuilding it")
    try:
        dataset = load_tfds(name, split, data_dir=data_dir)
    except DatasetUnavailableError as tfds_error:
        splits = _from_idx_download(name, folder, tfds_error)
        _keep(folder, splits)
        return splits[split]
    _keep(folder, {split: dataset})
    return dataset


def _from_idx_download(name: str, folder: Path, tfds_error: Exception) -> dict[str, Dataset]:
    from jaxnotes.data import download

    try:
        download.fetch(download.registry(name), folder / "idx")
    except download.DownloadLockTimeout as error:  # not a missing data set: say just that
        raise DatasetUnavailableError(str(error)) from None
    except download.DownloadError as error:
        raise DatasetUnavailableError(
            _unavailable_message(name, folder, error, tfds_error)
        ) from None
    splits = {}
    for split in SPLITS:
        raw = load_idx_dir(folder / "idx", split)
        splits[split] = Dataset(raw.images, raw.labels, 10, name, CLASS_NAMES[name])
    return splits


def _unavailable_message(name: str, folder: Path, error: Exception, tfds_error: Exception) -> str:
    from jaxnotes.data import download

    try:
        files = ", ".join(e.filename for e in download.registry(name))
    except download.DownloadError:
        files = "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-..."
    return "\n".join(
        [
            f"The data set {name!r} is not here and could not be downloaded: {error}",
            f"(no TFDS-prepared copy either: {str(tfds_error).splitlines()[0]})",
            "Ways to get it:",
            f"  1. with network access, run again: the four files ({files}) are downloaded "
            f"once into {folder / 'idx'} and verified (unset JAXNOTES_OFFLINE if it is set);",
            "  2. set JAXNOTES_DATA_MIRROR to a server or folder URL that holds the same files;",
            "  3. put the four IDX files (.gz or not) in a folder yourself and use the data set "
            "name 'idx:<dir>' (python -m train --dataset idx:DIR);",
            "  4. set TFDS_DATA_DIR to a directory holding a TFDS-prepared copy "
            f"({name}/<version>/).",
        ]
    )


def _read_npz(path: Path, name: str) -> Dataset:
    with np.load(path) as f:
        return Dataset(f["images"], f["labels"], int(f["num_classes"]), name, CLASS_NAMES.get(name))


def _write_npz(path: Path, dataset: Dataset) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # written then renamed: atomic
    try:
        np.savez(tmp, images=dataset.images, labels=dataset.labels, num_classes=dataset.num_classes)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_file():
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


def _keep(folder: Path, splits: dict[str, Dataset]) -> None:
    """Write each split's decoded cache; where that fails (a read-only folder, a full disk),
    say so once and go on with the arrays in memory."""
    for split, dataset in splits.items():
        try:
            _write_npz(folder / f"{split}.npz", dataset)
        except OSError as error:
            _note(
                f"cannot keep the decoded arrays in {folder} ({_first(error)}); "
                "decoded in memory this time"
            )
            return


def _note(message: str) -> None:
    import sys

    print(f"note: {message}", file=sys.stderr, flush=True)


def load_tfds(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    chunk_size: int = 1024,
) -> Dataset:
    """Read a TFDS-prepared image-classification split through ``tfds.data_source``.

    Only reads what is prepared (preparing needs TensorFlow; ``load_book`` downloads instead).
    Raises DatasetUnavailableError saying why when TFDS is missing, the split is not prepared,
    or its records cannot be decoded here.
    """
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
    where = f" in {data_dir}" if data_dir else ""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DatasetUnavailableError("tensorflow_datasets is not installed") from None
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as err:  # TFDS fails in many ways (NotImplementedError, ImportError, I/O)
        raise DatasetUnavailableError(
            f"TFDS has no prepared {name!r}{where} ({_first(err)})"
        ) from None
    try:
        num_classes = int(source.dataset_info.features["label"].num_classes)
        images, labels = _materialise(source, chunk_size)
    except Exception as err:  # e.g. a decoder that needs TensorFlow, or a damaged file
        raise DatasetUnavailableError(
            f"TFDS's {name!r}{where} is prepared but could not be decoded here ({_first(err)})"
        ) from None
    return Dataset(images, labels, num_classes, name, CLASS_NAMES.get(name))


def _first(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else type(error).__name__


def _materialise(source, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode every record of a data source into (n, H, W, C) uint8 and (n,) int32 arrays."""
    n = len(source)
    images: np.ndarray | None = None
    labels = np.empty((n,), np.int32)
    for start in range(0, n, chunk_size):
        keys = list(range(start, min(start + chunk_size, n)))
        try:
            records = source.__getitems__(keys)  # one batched read of the array_record file
        except TypeError:
            # tfds.testing.mock_data (TFDS 4.9) installs an unbound __getitems__ that raises
            # TypeError; reading record by record gives the same data.
            records = [source[k] for k in keys]
        chunk = np.stack([np.asarray(r["image"]) for r in records])
        if images is None:
            images = np.empty((n, *chunk.shape[1:]), chunk.dtype)
        images[start : start + len(keys)] = chunk
        labels[start : start + len(keys)] = [int(r["label"]) for r in records]
    if images is None:
        raise ValueError("the data source is empty")
    return images, labels


# --- IDX directories ----------------------------------------------------------------------------

_IDX_PREFIX = {"train": "train", "test": "t10k"}


def _find_idx_file(directory: Path, split: str, kind: str, ndim: int) -> Path:
    # The official names use a dash; some mirrors (e.g. Kaggle) use a dot before "idx".
    stems = [
        f"{_IDX_PREFIX[split]}-{kind}-idx{ndim}-ubyte",
        f"{_IDX_PREFIX[split]}-{kind}.idx{ndim}-ubyte",
    ]
    for stem in stems:
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"{directory}: no {split} {kind} file; expected {stems[0]} or {stems[0]}.gz"
    )


def load_idx_dir(directory: str | os.PathLike, split: str) -> Dataset:
    """Load a split from the four MNIST-style IDX files in ``directory`` (uint8 images, labels)."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"idx data directory {directory} does not exist")
    image_file = _find_idx_file(directory, split, "images", 3)
    label_file = _find_idx_file(directory, split, "labels", 1)
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{image_file}: expected uint8 images of shape (n, H, W), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{label_file}: expected uint8 labels of shape (n,), got {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(
            f"{image_file} holds {len(images)} images but {label_file} holds {len(labels)} labels"
        )
    # Class count from both splits' labels, so train and test agree even if a split lacks a class.
    all_labels = [labels]
    other = "test" if split == "train" else "train"
    try:
        all_labels.append(read_idx(_find_idx_file(directory, other, "labels", 1)))
    except FileNotFoundError:
        pass
    num_classes = max(int(x.max()) + 1 for x in all_labels if x.size) if labels.size else 0
    if num_classes != 10:
        import sys

        print(
            f"note: idx:{directory} has labels 0..{num_classes - 1} ({num_classes} classes; "
            "MNIST and Fashion-MNIST have 10)",
            file=sys.stderr,
        )
    return Dataset(
        images=images[..., None],
        labels=labels.astype(np.int32),
        num_classes=num_classes,
        name=f"idx:{directory}",
    )


# --- synthetic ----------------------------------------------------------------------------------


def synthetic(
    n: int,
    image_shape: tuple[int, int, int] = (28, 28, 1),
    num_classes: int = 10,
    seed: int = 0,
) -> Dataset:
    """n random uint8 images of ``image_shape`` (H, W, C) with random labels; a function of seed."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *image_shape), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=(n,), dtype=np.int32)
    return Dataset(images=images, labels=labels, num_classes=num_classes, name="synthetic")


def _synthetic_from_name(name: str, split: str) -> Dataset:
    """``synthetic[:HxWxC[:N]]``; N defaults to Fashion-MNIST's 60,000 train / 10,000 test."""
    parts = name.split(":")
    try:
        shape = tuple(int(d) for d in parts[1].split("x")) if len(parts) > 1 else (28, 28, 1)
        n = int(parts[2]) if len(parts) > 2 else (60_000 if split == "train" else 10_000)
        if len(parts) > 3 or len(shape) != 3 or min(shape) < 1 or n < 1:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"bad synthetic data set name {name!r}; expected synthetic[:HxWxC[:N]], "
            "e.g. synthetic:28x28x1:60000"
        ) from None
    return synthetic(n, shape, seed=SPLITS.index(split))
