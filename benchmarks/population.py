"""Populations of LeNets on digits: one population against sequential ``fit`` runs, and scaling.

    python benchmarks/population.py [--members 16] [--epochs 4] [--rounds 3] [--sizes 1,4,16,64]

1. End to end, from a cold process start (empty compilation cache), compilation included,
   median of ``--rounds``: ``--members`` LeNets (the runner's digits preset: sigmoid, Adam 3e-3,
   batch 16, 28x28) as ONE population (16 seeds) against a process that runs ``training.fit``
   16 times in a row with the same seeds (the compilation cache on, so fit 2..16 load the
   programs fit 1 compiled). Both train every model on the full training split and evaluate
   each epoch on the test split; all the population's members must equal their fits.
2. Throughput scaling: examples per second summed over the members (compilation excluded:
   ``examples_per_sec`` of the population summary) for P = ``--sizes``, one epoch each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from timing import interleaved, median, since_launch

HERE = Path(__file__).parent


def config(epochs: int):
    from jaxnotes import training

    return training.TrainConfig(
        model="lenet", epochs=epochs, batch_size=16, optimizer="adam", learning_rate=3e-3,
        resize=28, progress=False,
    )  # fmt: skip


def child(mode: str, members: int, epochs: int) -> None:
    from jaxnotes import compile_cache, data, population, profiling, training

    imported = since_launch()
    compile_cache.enable()
    train, test = data.load("digits", "train"), data.load("digits", "test")
    started = time.perf_counter()
    with profiling.CompileLog() as compiles:
        if mode == "population":
            result = population.fit_population(
                config(epochs), [population.Member(seed=s) for s in range(members)],
                train_data=train, eval_data=test, log=lambda s: None,
            )  # fmt: skip
            accs = [row["val_acc"] for row in result.rows]
        else:
            accs = []
            for seed in range(members):
                run = training.fit(
                    training.TrainConfig(**{**_fields(config(epochs)), "seed": seed}),
                    train_data=train, test_data=test, log=lambda s: None,
                )  # fmt: skip
                accs.append(run.summary["test_acc"])
    print(json.dumps({
        "import": imported, "compile": compiles.seconds, "work": time.perf_counter() - started,
        "accs": accs,
    }))  # fmt: skip


def _fields(cfg) -> dict:
    import dataclasses

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def scaling(sizes: list[int]) -> None:
    from jaxnotes import compile_cache, data, population

    compile_cache.enable()
    train, test = data.load("digits", "train"), data.load("digits", "test")
    print("\nthroughput (1 epoch, compilation excluded), examples/s summed over the members:")
    base = None
    for size in sizes:
        result = population.fit_population(
            config(1), [population.Member(seed=s) for s in range(size)],
            train_data=train, eval_data=test, log=lambda s: None,
        )  # fmt: skip
        rate = result.summary["examples_per_sec"]
        base = base or rate
        print(f"  P = {size:3}: {rate:>10,.0f} examples/s  ({rate / base:.1f}x P = {sizes[0]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1,4,16,64")
    parser.add_argument("--child", choices=("population", "sequential"))
    args = parser.parse_args()
    if args.child:
        child(args.child, args.members, args.epochs)
        return
    child_args = ["--members", str(args.members), "--epochs", str(args.epochs)]
    commands = {
        name: [sys.executable, str(HERE / "population.py"), "--child", name, *child_args]
        for name in ("population", "sequential")
    }
    results = interleaved(commands, args.rounds, HERE)
    print(f"\n{args.members} LeNets on digits, {args.epochs} epochs, median of {args.rounds}")
    rows = {}
    for name, runs in results.items():
        rows[name] = {k: median(run[k] for run in runs) for k in ("total", "import", "compile")}
        print(f"  {name:12} {rows[name]['total']:7.1f} s  (import {rows[name]['import']:.2f} s, "
              f"compile {rows[name]['compile']:.2f} s)")  # fmt: skip
    same = results["population"][0]["accs"] == results["sequential"][0]["accs"]
    print(f"  one population vs {args.members} sequential fits: "
          f"{rows['sequential']['total'] / rows['population']['total']:.1f}x; "
          f"same test accuracies member by member: {same}")  # fmt: skip
    scaling([int(s) for s in args.sizes.split(",")])


if __name__ == "__main__":
    main()
