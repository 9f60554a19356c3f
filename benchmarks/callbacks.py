"""What the engine's open policies cost on the default job (``python -m train``, LeNet on digits).

    python benchmarks/callbacks.py [--rounds 3] [--baseline REV]

Each round runs, in turn and from a cold process with an empty compilation cache of its own:

- ``baseline``: the runner at git revision REV (default a61920f, the engine before the shared
  lifecycle and the policies), from a temporary ``git worktree``;
- ``none``: this checkout, no policy on (the callback hooks are called with nothing to call);
- ``tensorboard``: this checkout with ``--tensorboard`` (event files every metrics pull and epoch,
  the hparams and the learning-curve figure at the end);
- ``early+best``: ``--validation-fraction 0.2 --early-stopping 100 --keep-best 1`` (a validation
  split scored each epoch instead of the test split, the best checkpoint kept).

It prints the medians (wall seconds from launch to exit, and the training throughput of the
steps, compilation excluded) and each one's ratio to the baseline. Goals: none <= 1.03x the
baseline's wall time, tensorboard <= 1.05x.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import median, run_process

ROOT = Path(__file__).resolve().parent.parent
RUNNER = [sys.executable, "-m", "train", "--no-progress"]
VARIANTS = {  # name -> extra flags (the baseline runs the plain command at REV)
    "baseline": [],
    "none": [],
    "tensorboard": ["--tensorboard"],
    "early+best": ["--validation-fraction", "0.2", "--early-stopping", "100", "--keep-best", "1"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default="a61920f")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(base), args.baseline],
                       cwd=ROOT, check=True)  # fmt: skip
        try:
            results = measure(args.rounds, base, Path(tmp))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT)
    report(results)
    return 0


def measure(rounds: int, base: Path, tmp: Path) -> dict[str, list[dict]]:
    """Every variant once per round, in turn (a noisy host slows all alike), each from a cold
    process with an empty compilation cache and a new workdir."""
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for r in range(rounds):
        for name, flags in VARIANTS.items():
            env = {**os.environ, "JAXNOTES_CACHE_DIR": str(tmp / f"cache-{name}-{r}")}
            cwd = ROOT
            if name == "baseline":  # the old checkout's train/ and jaxnotes/ come first
                env["PYTHONPATH"], cwd = str(base), base
            command = [*RUNNER, *flags, "--workdir", str(tmp / f"run-{name}-{r}")]
            wall, line = run_process(command, cwd, env)
            results[name].append({**line, "total": wall})
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]['total']:.1f} s"
                                              for n, v in results.items()), flush=True)  # fmt: skip
    return results


def report(runs: dict) -> None:
    base_wall = median(r["total"] for r in runs["baseline"])
    base_rate = median(r["examples_per_sec"] for r in runs["baseline"])
    print(f"{'':12} {'wall s':>8} {'x base':>7} {'examples/s':>11} {'x base':>7}")
    for name, rows in runs.items():
        wall = median(r["total"] for r in rows)
        rate = median(r["examples_per_sec"] for r in rows)
        print(f"{name:12} {wall:8.2f} {wall / base_wall:7.3f} {rate:11.0f} {rate / base_rate:7.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
