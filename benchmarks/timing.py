"""Helpers the benchmarks share: a fresh process timed from launch to exit, and timed steps."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path


def run_process(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, dict]:
    """Run ``command`` (it prints one JSON object last) -> (wall seconds, that object).

    ``JAXNOTES_LAUNCHED`` tells the child when it was started, so it can report its import time.
    """
    env = {**(env if env is not None else os.environ), "JAXNOTES_LAUNCHED": repr(time.time())}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=7200)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def since_launch() -> float:
    """Seconds since the parent launched this process (``run_process``), 0 if unknown."""
    launched = os.environ.get("JAXNOTES_LAUNCHED")
    return time.time() - float(launched) if launched else 0.0


def interleaved(commands: dict[str, list[str]], rounds: int, cwd: Path) -> dict[str, list[dict]]:
    """Run every command once per round, in turn (a noisy host slows all of them alike), each
    with an empty compilation cache of its own; -> name -> [the child's JSON + "total"]."""
    import tempfile

    results: dict[str, list[dict]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, command in commands.items():
                env = {**os.environ, "JAXNOTES_CACHE_DIR": str(Path(tmp) / f"{name}-{r}")}
                wall, out = run_process(command, cwd, env)
                results[name].append({**out, "total": wall})
            totals = ", ".join(f"{n} {v[-1]['total']:.1f} s" for n, v in results.items())
            print(f"round {r + 1}: {totals}", flush=True)
    return results


def median(values) -> float:
    return statistics.median(values)


def time_steps(step, sync, steps: int, warmup: int, repeats: int) -> dict:
    """Compile (first call), warm up, then the median of ``repeats`` timed runs of ``steps``.

    ``step()`` dispatches one step, ``sync()`` waits for the device.
    """
    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    for _ in range(warmup):
        step()
    sync()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        runs.append(time.perf_counter() - start)
    return {"seconds": statistics.median(runs), "runs": runs, "first_call_s": first, "steps": steps}


def rate(timing: dict, batch: int) -> float:
    """Examples per second of a ``time_steps`` result at ``batch`` examples per step."""
    return timing["steps"] * batch / timing["seconds"]
