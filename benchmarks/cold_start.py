"""Seconds to the first result: the default job against the PyTorch way, cold and warm.

    python benchmarks/cold_start.py [--rounds 3] [--googlenet-rounds 1] [--source DIR]

Every run is a fresh process, timed from launch to exit (what a user waits for):

* jaxnotes cold: ``python -m train`` (LeNet on digits, the README's first command) with an empty
  persistent compilation cache (a new ``$JAXNOTES_CACHE_DIR``), so every program compiles;
* jaxnotes warm: the same command again with that cache filled (a second run);
* PyTorch: ``benchmarks/torch_default_job.py``, the same job the book's way (eager, no cache to
  fill, so cold = warm; Python's own bytecode cache is warm in both).

The runner's summary splits its wall time (``profile``): "import" (start-up, imports and exit:
the process's wall time minus ``fit``'s; for PyTorch minus its data, train and evaluate),
data, build (model checks, steps), init, compile (every XLA program, with counts), train,
evaluate, checkpoint and plot, each phase without the compiles inside it.
Median of ``--rounds``, the rounds interleaved so a noisy host slows all of them alike. Then
``python -m train --model googlenet`` cold and warm (``--googlenet-rounds``, 0 to skip).
``--source DIR`` runs the jaxnotes side from another checkout (PYTHONPATH), for before/after.
The OS file cache is not dropped (that needs root): "cold" is JAX's cache, not the disk's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from timing import run_process

HERE = Path(__file__).parent
COLUMNS = ("import", "data", "build", "init", "compile", "train", "evaluate", "save/plot")


def jaxnotes_split(wall: float, summary: dict) -> dict:
    """The runner's wall time by phase, each phase net of the compiles that happened inside it.

    A runner from before the profile existed (``--source`` of an older checkout) gives the
    total and the start-up only."""
    if "profile" not in summary:
        return {"total": wall, "import": wall - summary["wall_s"], "test_acc": summary["test_acc"]}
    phases = summary["profile"]["phases"]
    compiles = summary["profile"]["compiles"]["by_function"]

    def compiled(*names: str) -> float:
        return sum(compiles.get(f"jit({name})", {}).get("seconds", 0.0) for name in names)

    return {
        "total": wall,
        "import": wall - summary["wall_s"],
        "data": phases.get("data", 0.0),
        "build": phases.get("build", 0.0),
        "init": phases.get("init", 0.0) - compiled("init", "initial_state"),
        "compile": summary["profile"]["compiles"]["seconds"],
        "train": phases.get("train", 0.0) - compiled("train_step", "multi_step"),
        "evaluate": phases.get("evaluate", 0.0) - compiled("eval_step"),
        "save/plot": phases.get("checkpoint", 0.0) + phases.get("plot", 0.0),
        "programs": summary["compiled_programs"],
        "cache_hits": summary["profile"]["compiles"]["cache_hits"],
        "test_acc": summary["test_acc"],
    }


def torch_split(wall: float, result: dict) -> dict:
    phases = result["phases"]
    accounted = phases["data"] + phases["train"] + phases["evaluate"]
    return {
        "total": wall,
        "import": wall - accounted,
        "data": phases["data"],
        "train": phases["train"],
        "evaluate": phases["evaluate"],
        "test_acc": result["test_acc"],
    }


def median_row(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], int | float)]
    return {k: statistics.median(r[k] for r in rows) for k in keys}


def print_table(title: str, rows: dict[str, dict], reference: str) -> None:
    print(f"\n{title}")
    header = f"{'':16}{'total s':>9}{'vs torch':>9}" + "".join(f"{c:>10}" for c in COLUMNS)
    print(header + f"{'programs':>10}{'hits':>6}{'test acc':>10}")
    base = rows[reference]["total"]
    for name, row in rows.items():
        cells = "".join(f"{row[c]:>10.2f}" if c in row else f"{'-':>10}" for c in COLUMNS)
        extra = "".join(
            f"{row[c]:>{w}.0f}" if c in row else f"{'-':>{w}}"
            for c, w in (("programs", 10), ("cache_hits", 6))
        )
        print(
            f"{name:16}{row['total']:>9.2f}{row['total'] / base:>8.2f}x{cells}{extra}"
            f"{row['test_acc']:>10.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--googlenet-rounds", type=int, default=1)
    parser.add_argument("--source", type=Path, help="run jaxnotes from this checkout")
    args = parser.parse_args()
    # PyTorch with its own defaults: on this idle host OMP_WAIT_POLICY=PASSIVE (train_cpu.py's
    # setting for a shared host) made its training 3x slower (3.6 s instead of 1.2 s).
    env = dict(os.environ)
    if args.source is not None:
        env["PYTHONPATH"] = str(args.source.absolute())
    runner = [sys.executable, "-m", "train", "--no-progress"]
    torch_job = [sys.executable, str(HERE / "torch_default_job.py")]
    results: dict[str, list] = {"jaxnotes cold": [], "jaxnotes warm": [], "PyTorch": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(args.rounds):
            cache = {**env, "JAXNOTES_CACHE_DIR": str(tmp / f"xla-{r}")}
            for label in ("jaxnotes cold", "jaxnotes warm"):
                wall, summary = run_process(
                    [*runner, "--workdir", f"run-{r}-{label[-4:]}"], tmp, cache
                )
                results[label].append(jaxnotes_split(wall, summary))
            wall, result = run_process(torch_job, HERE, env)
            results["PyTorch"].append(torch_split(wall, result))
            print(
                f"round {r + 1}: "
                + ", ".join(f"{k} {v[-1]['total']:.2f} s" for k, v in results.items())
            )
        rows = {name: median_row(values) for name, values in results.items()}
        accuracies = {r["test_acc"] for r in results["jaxnotes cold"] + results["jaxnotes warm"]}
        print_table(f"default job (LeNet on digits), median of {args.rounds}", rows, "PyTorch")
        print(
            f"jaxnotes test accuracies over all runs: {sorted(accuracies)} (same seed: one value)"
        )
        for r in range(args.googlenet_rounds):
            cache = {**env, "JAXNOTES_CACHE_DIR": str(tmp / f"xla-googlenet-{r}")}
            line = []
            for label in ("cold", "warm"):
                command = [*runner, "--model", "googlenet", "--workdir", f"g-{r}-{label}"]
                wall, summary = run_process(command, tmp, cache)
                line.append(f"{label} {wall:.1f} s (test acc {summary['test_acc']:.4f})")
            print(f"googlenet on digits, round {r + 1}: " + ", ".join(line))


if __name__ == "__main__":
    main()
