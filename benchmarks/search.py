"""Random search: 100 trials trained together under vmap vs a Python loop over the same trials.

    python benchmarks/search.py [--trials 100] [--epochs 10] [--batch-size 32] [--widths 8,16,32]

Both sides run ``jaxnotes.selection.random_search`` with the same seed, so the same sampled
hyper-parameters, keys and batches. The loop is the fair baseline: every trial runs the same
jitted single-trial program (one whole training run, compiled once per width), not a re-jit per
trial. Times are best-of-``--repeats`` after a first (compiling) run, which is reported too.
The results must agree to a tolerance: vmapped matrix products sum in another order, and
training amplifies those last-bit differences a little.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np

from jaxnotes import data as jdata
from jaxnotes import selection

# Most trials agree to float precision; one whose trajectory a last-bit difference nudged may
# end a little apart (seen: 0.013 accuracy, 0.023 loss).
TOLERANCE = {"val_acc": 0.03, "val_loss": 0.05}


def timed(fn, repeats: int) -> tuple[float, float, list]:
    """(first-call seconds, best of ``repeats`` later calls, result)."""
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return first, best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--widths", default="8,16,32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    space = {
        "learning_rate": ("log", 1e-3, 0.1),
        "weight_decay": ("log", 1e-6, 1e-2),
        "dropout": ("uniform", 0.0, 0.5),
        "width": [int(w) for w in args.widths.split(",")],
    }
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, "
        f"jax {jax.__version__}, {jax.devices()[0].platform}"
    )
    print(
        f"search: {args.trials} trials, MLP 64 -> width in {space['width']} -> 10 on digits "
        f"(880 train / 377 val), {args.epochs} epochs, batch {args.batch_size}, dropout on"
    )

    def run(vectorize: bool):
        return lambda: selection.random_search(
            args.trials, space, args.seed, epochs=args.epochs, batch_size=args.batch_size,
            vectorize=vectorize,
        )  # fmt: skip

    # Warm-up outside the timings: scikit-learn's import and data load, JAX's first compilation.
    jdata.load("digits", "train")
    jax.block_until_ready(jax.jit(lambda k: jax.random.uniform(k, (8,)))(jax.random.key(0)))
    vec_first, vec_best, vec_rows = timed(run(True), args.repeats)
    loop_first, loop_best, loop_rows = timed(run(False), args.repeats)

    by_trial = {row["trial"]: row for row in loop_rows}
    worst = {
        name: max(abs(row[name] - by_trial[row["trial"]][name]) for row in vec_rows)
        for name in TOLERANCE
    }
    same_best = vec_rows[0]["trial"] == loop_rows[0]["trial"]
    exact = sum(
        abs(row["val_loss"] - by_trial[row["trial"]]["val_loss"]) < 1e-5 for row in vec_rows
    )
    print(
        f"agreement: {exact}/{len(vec_rows)} trials equal to 1e-5; max |diff| "
        + ", ".join(f"{name} {value:.3g}" for name, value in worst.items())
        + f"; same best trial: {same_best}"
    )
    for name, tol in TOLERANCE.items():
        assert worst[name] <= tol, f"vectorised and looped {name} differ by {worst[name]} > {tol}"
    assert exact >= 0.9 * len(vec_rows), f"only {exact} trials agree to 1e-5"

    print(f"{'':12}{'first run (compiles)':>22}{'best later run':>18}")
    print(f"{'vectorised':12}{vec_first:>21.2f}s{vec_best:>17.2f}s")
    print(f"{'loop':12}{loop_first:>21.2f}s{loop_best:>17.2f}s")
    print(f"{'speed-up':12}{loop_first / vec_first:>21.1f}x{loop_best / vec_best:>17.1f}x")
    best = vec_rows[0]
    print(
        "best setting: "
        + ", ".join(f"{k}={best[k]:.3g}" for k in ("learning_rate", "weight_decay", "dropout"))
        + f", width={best['width']}, val_acc={best['val_acc']:.3f}"
    )
    accs = np.array([row["val_acc"] for row in vec_rows])
    print(f"val_acc over trials: median {np.median(accs):.3f}, min {accs.min():.3f}")


if __name__ == "__main__":
    main()
