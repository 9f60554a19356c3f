"""Random search of the chapter's MLP: one population of 100 trials vs a loop of 100 runs.

    python benchmarks/search.py [--trials 100] [--epochs 10] [--rounds 3] [--fit-trials 10]

Every figure is end to end from a cold process start (an empty persistent compilation cache),
compilation included, the median of ``--rounds`` processes per side:

* vectorised: ``selection.random_search("mlp", digits, space, 100)``: the 100 trials are the
  members of ONE population (one compiled program; the rates are traced values);
* loop: what a user of the engine would write, a Python loop calling it once per trial: a
  one-member population per trial (``population.fit_population``), so every trial runs the same
  program, compiled by the first and loaded from the compilation cache by the other 99;
* fit loop: ``training.fit`` per trial, the rates then constants of each trial's program (one
  compile each): ``--fit-trials`` trials timed, the figure for all trials extrapolated.

The chapter's MLP: digits' 64 pixels, one hidden layer of 64 with dropout, SGD with momentum
0.9, batch 64, 10 epochs, on 70% of digits' training split, scored on the other 30%. Space:
learning rate log-uniform in [1e-3, 1], weight decay log-uniform in [1e-6, 1e-2], dropout
uniform in [0, 0.5]. Each child reports where its time went: import (launch to first line of
work), compile (every XLA program), train (the rest). All sides must find the same best trial.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from timing import interleaved, median, since_launch

HERE = Path(__file__).parent
SPACE = {
    "learning_rate": ("log", 1e-3, 1.0),
    "weight_decay": ("log", 1e-6, 1e-2),
    "dropout": ("uniform", 0.0, 0.5),
}


def child(mode: str, trials: int, epochs: int) -> None:
    from jaxnotes import compile_cache, data, population, profiling, selection, training

    imported = since_launch()  # interpreter start and imports

    compile_cache.enable()
    train = data.load("digits", "train")
    config = training.TrainConfig(
        model="mlp", epochs=epochs, batch_size=64, momentum=0.9,
        model_kwargs={"hidden": (64,), "dropout": 0.0}, progress=False,
    )  # fmt: skip
    started = time.perf_counter()
    with profiling.CompileLog() as compiles:
        if mode == "vectorised":
            rows = selection.random_search("mlp", train, SPACE, trials, config=config)
            best = (rows[0]["trial"], rows[0]["val_acc"])
        else:
            best = _loop(mode, train, config, trials, population, selection, training)
    print(json.dumps({
        "import": imported, "compile": compiles.seconds, "programs": compiles.count,
        "work": time.perf_counter() - started, "best": best,
    }))  # fmt: skip


def _loop(mode, train, config, trials, population, selection, training):
    sample = selection.sample_space(SPACE, trials, seed=0)
    train_idx, val_idx = selection.jdata.holdout_split(len(train), 0.3, 0)
    scores = []
    for t in range(trials):
        rates = {name: float(values[t]) for name, values in sample.items()}
        if mode == "loop":
            member = population.Member(
                seed=0, train_indices=train_idx, eval_indices=val_idx, **rates
            )  # noqa: E501
            result = population.fit_population(
                config, [member], train_data=train, eval_data=train, log=lambda s: None
            )
            scores.append(result.rows[0]["val_acc"])
        else:
            dropout = rates.pop("dropout")
            trial = training.TrainConfig(
                **{
                    **_fields(config),
                    **rates,
                    "model_kwargs": {"hidden": (64,), "dropout": dropout},
                }
            )
            subset = lambda idx: selection.subset(train, idx)  # noqa: E731
            done = training.fit(
                trial, train_data=subset(train_idx), test_data=subset(val_idx), log=lambda s: None
            )  # noqa: E501
            scores.append(done.summary["test_acc"])
    best = int(max(range(trials), key=lambda t: (scores[t], -t)))
    return best, scores[best]


def _fields(config) -> dict:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fit-trials", type=int, default=10)
    parser.add_argument("--child", choices=("vectorised", "loop", "fit"))
    args = parser.parse_args()
    if args.child:
        child(args.child, args.trials if args.child != "fit" else args.fit_trials, args.epochs)
        return
    sides = {"vectorised": args.trials, "loop": args.trials, "fit": args.fit_trials}
    child_args = ["--trials", str(args.trials), "--fit-trials", str(args.fit_trials),
                  "--epochs", str(args.epochs)]  # fmt: skip
    commands = {
        name: [sys.executable, str(HERE / "search.py"), "--child", name, *child_args]
        for name in sides
    }
    results = interleaved(commands, args.rounds, HERE)
    print(f"\n{args.trials} trials, {args.epochs} epochs, median of {args.rounds} cold processes")
    print(
        f"{'':34}{'total s':>9}{'import':>9}{'compile':>9}{'train':>9}{'programs':>10}  best trial"
    )  # noqa: E501
    rows = {}
    for name, runs in results.items():
        row = {k: median(run[k] for run in runs) for k in ("total", "import", "compile", "work")}
        row["train"] = row["work"] - row["compile"]
        row["programs"] = median(run["programs"] for run in runs)
        scale = args.trials / sides[name]
        label = {"vectorised": "vectorised (one population)", "loop": "loop (engine per trial)",
                 "fit": f"fit loop ({sides[name]} trials, x{scale:g})"}[name]  # fmt: skip
        if scale != 1:
            row["total"] = row["import"] + scale * (row["total"] - row["import"])
        rows[name] = row
        cells = "".join(f"{row[k]:>9.2f}" for k in ("total", "import", "compile", "train"))
        print(f"{label:34}{cells}{row['programs']:>10.0f}  {runs[0]['best']}")
    ratio = {name: rows[name]["total"] / rows["vectorised"]["total"] for name in ("loop", "fit")}
    print(
        f"vectorised vs loop: {ratio['loop']:.1f}x; vs fit loop (extrapolated): {ratio['fit']:.1f}x"
    )


if __name__ == "__main__":
    main()
