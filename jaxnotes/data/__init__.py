"""Data: sources as host arrays, grain batches, on-device preprocessing, splits.

``load(name, split)`` gives a ``Dataset`` (NHWC images, int32 labels); ``train_batches`` and
``eval_batches`` turn it into batches; ``make_preprocess`` runs inside the jitted step.
Importing this package needs only NumPy and JAX: TFDS, grain and scikit-learn are imported by the
functions that use them.
"""

from jaxnotes.data.idx import read_idx, write_idx
from jaxnotes.data.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    channel_stats,
    epoch_permutation,
    eval_batches,
    make_preprocess,
    prefetch_to_device,
    steps_per_epoch,
    train_batches,
)
from jaxnotes.data.sources import (
    CLASS_NAMES,
    SPLITS,
    VALID_NAMES,
    Dataset,
    DatasetUnavailableError,
    data_dir_default,
    digits,
    from_arrays,
    load,
    load_book,
    load_idx_dir,
    load_tfds,
    synthetic,
)
from jaxnotes.data.splits import (
    Standardizer,
    holdout_split,
    k_fold_indices,
    oversample_indices,
    standardization_leak_demo,
    time_series_split,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "VALID_NAMES",
    "Dataset",
    "Preprocessing",
    "CLASS_NAMES",
    "DatasetUnavailableError",
    "data_dir_default",
    "load_book",
    "Standardizer",
    "channel_stats",
    "digits",
    "epoch_permutation",
    "eval_batches",
    "from_arrays",
    "holdout_split",
    "k_fold_indices",
    "load",
    "load_idx_dir",
    "load_tfds",
    "make_preprocess",
    "oversample_indices",
    "prefetch_to_device",
    "read_idx",
    "standardization_leak_demo",
    "steps_per_epoch",
    "synthetic",
    "time_series_split",
    "train_batches",
    "write_idx",
]
