"""Make the fixture of ``benchmarks/gpu_check.sh``'s export check (part 5), on a CPU.

    .venv/bin/python benchmarks/make_export_fixture.py [--out benchmarks/fixtures] [--epochs 2]

Trains a LeNet on digits (the runner's digits preset, ``--epochs`` epochs) with a workdir,
exports it with ``jaxnotes.export.export_run(workdir, OUT/lenet.export)`` and stores, in
``OUT/lenet_probabilities.npz``, the first 256 digits test images (``images``, as the data set
stores them: float32 8x8x1) and their class probabilities on this CPU from
``jaxnotes.runs.load_run(workdir).predict`` (``probabilities``), with the versions that made them.
The GPU check loads the export with ``jaxnotes.export.load_exported`` and compares its
probabilities on the same images with these (to 1e-4).

Also writes ``OUT/lenet_highest.export``: the same run exported under
``jax.default_matmul_precision("highest")``. On a GPU, float32 convolutions and matrix products
at the default precision may run in TF32 (10-bit mantissa), which alone can move probabilities
by more than 1e-4; the second export tells that apart from an export error.

Make it with the OLDEST JAX that will load it (here the 3.11 venv's jax 0.10): a serialized
export is readable by the same and later JAX versions (within jax.export's compatibility
window), not necessarily by earlier ones.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EXAMPLES = 256


def make(out: Path, epochs: int, seed: int = 0) -> dict:
    import jax

    from jaxnotes import data, export, presets, runs, training

    out.mkdir(parents=True, exist_ok=True)
    train, test = data.load("digits", "train"), data.load("digits", "test")
    config = training.TrainConfig(
        model="lenet",
        dataset="digits",
        **{**presets.preset("lenet", "digits"), "epochs": epochs},
        progress=False,
        seed=seed,
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "lenet-digits"
        result = training.fit(config, workdir, train_data=train, test_data=test, log=print)
        export.export_run(workdir, out / "lenet.export")
        with jax.default_matmul_precision("highest"):
            export.export_run(workdir, out / "lenet_highest.export")
        images = np.asarray(test.images[:EXAMPLES])
        probabilities = runs.load_run(workdir).predict(images)
    meta = {
        "jax": jax.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "epochs": epochs,
        "test_acc": result.summary.get("test_acc"),
    }
    np.savez_compressed(
        out / "lenet_probabilities.npz",
        images=images,
        probabilities=np.asarray(probabilities, np.float32),
        meta=np.array(json.dumps(meta)),
    )
    check = export.load_exported(out / "lenet.export")(images)
    meta["cpu_export_max_abs_diff"] = float(np.max(np.abs(np.asarray(check) - probabilities)))
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "fixtures")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    meta = make(args.out, args.epochs)
    for name in ("lenet.export", "lenet_highest.export", "lenet_probabilities.npz"):
        path = args.out / name
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
