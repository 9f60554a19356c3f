"""What many tests share: a quick config, a quiet fit, the runner in a subprocess, a subset.

(The digits fixture lives in conftest.py.) Every helper here only shortens a call; none holds
an expected value, so tests still state their own truths.
"""

import subprocess
import sys

from jaxnotes import data, training


def quick_config(**overrides) -> training.TrainConfig:
    """The chapter MLP on digits for a few seconds: 2 epochs, batch 64, SGD 0.1, no progress."""
    base = dict(model="mlp", epochs=2, batch_size=64, learning_rate=0.1, progress=False)
    return training.TrainConfig(**{**base, **overrides})


def fit_quietly(config, digits, workdir=None, **kwargs) -> training.FitResult:
    """``training.fit`` on the (train, test) pair ``digits``, logging nothing."""
    kwargs.setdefault("log", lambda line: None)
    return training.fit(config, workdir, train_data=digits[0], test_data=digits[1], **kwargs)


def run_runner(args, cwd, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """``python -m train ARGS`` in ``cwd``, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "train", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, **kwargs,
    )  # fmt: skip


def subset(dataset, idx):
    """The examples ``idx`` of ``dataset`` as a data set of their own."""
    return data.from_arrays(dataset.images[idx], dataset.labels[idx], dataset.num_classes)
