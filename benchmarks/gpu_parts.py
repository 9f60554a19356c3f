"""Parts 2-5 of ``benchmarks/gpu_check.sh``, each run in a process of its own by ``gpu_check.py``.

    python benchmarks/gpu_parts.py {population,book,precision,export} --json PATH
        [--deadline T] [--tiny] [--models a,b] [--compile-cache DIR] [--fixtures DIR]

population  LeNet at batch 128 for P = 1, 8, 64 members (``population.fit_population`` on
            synthetic Fashion-MNIST-shaped data): examples/s summed over the members,
            compilation excluded (the population summary's ``examples_per_sec``), and the
            ratio to P = 1; then, with a minute to spare for the later parts, P = 64 in chunks
            of 4 members (lax.map), the library's choice on CPU (``population.CHUNK``; an
            accelerator takes every member in one vmap).
book        The book's settings (``presets.CLASSIC``: batch size and input size) on synthetic
            data of the book's shapes (28x28x1 uint8, resized on the device): the runner's
            compiled step through the engine's own epoch loop (``runs.train_epoch``) for a fixed
            number of steps, fp32 (the book's) then bf16; projected time for an epoch of 60,000
            examples and for 10 epochs (training steps only: no evaluation; compilation apart).
precision   fp16 with dynamic loss scaling against bf16 and fp32 (``TrainConfig.precision``):
            a short ``training.fit`` on digits per precision (LeNet: the digits preset;
            GoogLeNet: its digits preset for 3 epochs): images/s, test accuracy, skipped steps.
export      ``jaxnotes.export.load_exported`` of the LeNet export made on a CPU
            (``make_export_fixture.py``) on this backend: its probabilities against the CPU's
            (max abs difference, PASS under 1e-4).

Every cell checks ``--deadline`` (a ``time.time()`` value) before it starts and is skipped, and
listed, if its estimate does not fit; the JSON is rewritten after every cell. A cell that fails
records its error and the part goes on. ``--tiny`` shrinks everything for a CPU dry run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # throughput, timing

from throughput import Budget  # noqa: E402

PARTS = ("population", "book", "precision", "export")
EXPORT_TOLERANCE = 1e-4


class Part:
    """One part's cells: budget checks, error capture, the JSON rewritten after each cell."""

    def __init__(self, name: str, json_path: str | None, deadline: float | None, tiny: bool):
        self.name, self.json_path, self.tiny = name, json_path, tiny
        self.budget = Budget(deadline)
        self.record: dict[str, Any] = {"part": name, "tiny": tiny, "cells": {}, "skipped": []}
        self.walls: dict[str, list[float]] = {}  # group -> wall seconds of its cells so far

    def log(self, line: str) -> None:
        print(line, flush=True)

    def estimate(self, group: str, guess: float, growth: float = 1.0) -> float:
        """A cell's expected seconds: ``growth`` x the slowest earlier cell of its group, else
        the ``guess`` (0 in a tiny run: on a CPU nothing is skipped)."""
        walls = self.walls.get(group)
        if walls:
            return growth * max(walls)
        return 0.0 if self.tiny else guess

    def cell(
        self,
        label: str,
        fn: Callable[[], dict],
        group: str,
        guess: float,
        growth: float = 1.0,
        margin: float = 0.0,
    ):
        """Run ``fn`` unless its estimate (+ ``margin``, seconds left for the parts after this
        one: an extra cell must not crowd them out) does not fit in the time left."""
        estimate = self.estimate(group, guess, growth) + (0.0 if self.tiny else margin)
        if not self.budget.fits(estimate):
            left = max(self.budget.left(), 0)
            reason = f"time budget: ~{estimate:.0f} s needed, {left:.0f} s left"
            self.record["cells"][label] = {"skipped": reason}
            self.record["skipped"].append(f"{label}: {reason}")
            self.log(f"  {label:<28} SKIPPED ({reason})")
            self.write()
            return None
        started = time.perf_counter()
        try:
            out = fn()
        except Exception as error:  # one failed cell must not end the part
            text = str(error).strip()
            message = f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"
            out = {"error": message}
            self.log(f"  {label:<28} FAILED {message}")
            traceback.print_exc(limit=4, file=sys.stdout)
        out["wall_s"] = time.perf_counter() - started
        self.walls.setdefault(group, []).append(out["wall_s"])
        self.record["cells"][label] = out
        self.write()
        return out

    def write(self) -> None:
        if self.json_path:
            Path(self.json_path).write_text(json.dumps(self.record, indent=1, default=str))


def _versions() -> dict:
    import flax
    import jax

    device = jax.devices()[0]
    return {
        "device": f"{device.device_kind} ({jax.default_backend()})",
        "jax": jax.__version__,
        "flax": flax.__version__,
        "python": platform.python_version(),
    }


# --- 2. population throughput ---------------------------------------------------------------


def population_part(part: Part, args) -> None:
    import jax

    from jaxnotes import data, population, training

    tiny = part.tiny
    sizes = (1, 2, 4) if tiny else (1, 8, 64)
    batch = 8 if tiny else 128
    steps_per_epoch = 4 if tiny else 200
    epochs = 1 if tiny else 2
    train = data.synthetic(steps_per_epoch * batch, (28, 28, 1), 10, seed=0)
    test = data.synthetic(2 * batch, (28, 28, 1), 10, seed=1)
    config = training.TrainConfig(
        model="lenet",
        dataset="synthetic",
        epochs=epochs,
        batch_size=batch,
        learning_rate=0.9,  # the book's LeNet rate; speed does not depend on it
        resize=28,
        progress=False,
    )
    at_once = population.members_at_once(sizes[-1], 1)
    part.record["settings"] = {
        "model": "lenet",
        "batch": batch,
        "steps_per_epoch": steps_per_epoch,
        "epochs": epochs,
        "data": "synthetic 28x28x1 uint8 (host arrays, the population's own input pipeline)",
        "chunk": at_once,
    }
    part.log(
        f"2. population throughput: LeNet, batch {batch}, {steps_per_epoch} steps x {epochs} "
        f"epochs per member, P = {', '.join(map(str, sizes))} ({at_once} of {sizes[-1]} members "
        f"vmapped at once: population.members_at_once)"
    )
    base: list[float] = []

    def run(size: int, chunk: int | None = None) -> Callable[[], dict]:
        def measure() -> dict:
            saved = dict(population.CHUNK)
            if chunk is not None:
                population.CHUNK[jax.default_backend()] = chunk
            try:
                result = population.fit_population(
                    config,
                    [population.Member(seed=s) for s in range(size)],
                    train_data=train,
                    eval_data=test,
                    log=lambda line: None,
                )
            finally:
                population.CHUNK.clear()
                population.CHUNK.update(saved)
            summary = result.summary
            rate = summary["examples_per_sec"]
            compiles = summary["profile"]["compiles"]
            out = {
                "members": size,
                "chunk": chunk or population.members_at_once(size, 1),
                "examples_per_s": rate,
                "per_member_examples_per_s": rate / size if rate else None,
                "wall_s_fit": summary["wall_s"],
                "compile_s": compiles["seconds"],
                "compiled_programs": summary["compiled_programs"],
            }
            if rate and chunk is None and size == sizes[0]:
                base.append(rate)
            out["vs_P1"] = rate / base[0] if rate and base else None
            part.log(
                f"  P = {size:3}{f' (CHUNK {chunk})' if chunk else '':12} "
                f"{(rate or 0):>12,.0f} examples/s (summed), {out['vs_P1'] or 0:.2f}x P = "
                f"{sizes[0]}; compile {compiles['seconds']:.1f} s, fit {summary['wall_s']:.1f} s"
            )
            return out

        return measure

    for size in sizes:
        part.cell(f"P={size}", run(size), "population", guess=20, growth=1.5)
    largest = sizes[-1]
    # An extra beyond the brief (the CPU's chunks of 4, for comparison): only with a minute to
    # spare for the parts after this one.
    extra = run(largest, chunk=4)
    part.cell(f"P={largest} chunks of 4", extra, "population", 20, 1.5, margin=60)
    cells = part.record["cells"]
    first, last = cells.get(f"P={sizes[0]}", {}), cells.get(f"P={largest}", {})
    if first.get("examples_per_s") and last.get("examples_per_s"):
        part.record[f"ratio_P{largest}_over_P{sizes[0]}"] = (
            last["examples_per_s"] / first["examples_per_s"]
        )


# --- 3. the book's settings --------------------------------------------------------------------


BOOK_STEPS = {"lenet": 200}  # timed steps per model on an accelerator (LeNet's are short)
BOOK_DEFAULT_STEPS = 50
BOOK_GUESS_S = {  # first cell of a model (compile, or load from part 1's compilation cache)
    "lenet": 10,
    "alexnet": 15,
    "vgg11_small": 15,
    "nin": 15,
    "googlenet": 30,
    "resnet18": 40,
    "densenet": 45,
}
EPOCH_EXAMPLES = 60_000  # Fashion-MNIST's training split
BOOK_EPOCHS = 10


def book_part(part: Part, args) -> None:
    import throughput

    from jaxnotes import data, presets

    models = tuple(args.models.split(",")) if args.models else throughput.MODELS
    precisions = ("fp32", "bf16")
    part.log(
        "3. the book's settings (presets.CLASSIC batch and input size, synthetic 28x28x1 uint8 "
        "resized on the device): the runner's step through runs.train_epoch for a fixed number "
        f"of steps; projected epoch of {EPOCH_EXAMPLES:,} examples and {BOOK_EPOCHS} epochs "
        "(training steps only)"
    )
    states: dict[str, Any] = {}  # model -> its initial TrainState (host), for both precisions
    host = data.synthetic(1, (28, 28, 1), 10, seed=0)  # replaced per model below
    for precision in precisions:
        for name in models:
            book = presets.CLASSIC[name]
            batch = 4 if part.tiny else book["batch_size"]
            steps = 2 if part.tiny else BOOK_STEPS.get(name, BOOK_DEFAULT_STEPS)
            if len(host) < steps * batch:
                host = data.synthetic(steps * batch, (28, 28, 1), 10, seed=0)
            epoch_data = data.from_arrays(
                host.images[: steps * batch], host.labels[: steps * batch], 10, name="synthetic"
            )

            def measure(name=name, precision=precision, batch=batch, steps=steps, data=epoch_data):
                return _book_cell(name, precision, batch, steps, data, states, part)

            guess = BOOK_GUESS_S.get(name, 30)
            part.cell(f"{name} {precision}", measure, f"book {name}", guess)
        if precision == precisions[0]:
            part.log("")
    states.clear()


def _book_cell(name, precision, batch, steps, epoch_data, states, part) -> dict:
    import throughput

    from jaxnotes.models import BOOK_INPUT_SIZE

    settings = throughput.parse_args(
        ["--models", name, "--batch", str(batch), "--steps", str(steps), "--warmup", "0"],
        accelerator=not part.tiny,
    )
    settings = dataclasses.replace(settings, repeats=1)
    if (name, batch) not in states:
        states[(name, batch)] = throughput.initial_state(name, batch, epoch_data)
    built = throughput.jaxnotes_step(name, precision, settings, epoch_data, states[(name, batch)])
    first = throughput.run_compute_only(built, epoch_data, settings, 1)  # compile + 1 step
    epoch = throughput.run_epoch(built, epoch_data, settings)
    rate = epoch["images_per_s"]
    steps_per_epoch = EPOCH_EXAMPLES // batch  # the remainder is dropped, as the runner does
    epoch_s = steps_per_epoch * batch / rate
    out = {
        "batch": batch,
        "size": BOOK_INPUT_SIZE[name],
        "precision": precision,
        "steps_timed": epoch["steps"],
        "images_per_s": rate,
        "first_call_s": first["first_call_s"],
        "epoch_s": epoch_s,
        "ten_epochs_s": BOOK_EPOCHS * epoch_s,
        "ten_epochs_with_first_call_s": BOOK_EPOCHS * epoch_s + first["first_call_s"],
        "compilations": epoch["compilations"],
        "compiled_in_epoch": epoch["compiled_in_epoch"],
    }
    part.log(
        f"  {name:<12} {precision}  batch {batch:3}  {BOOK_INPUT_SIZE[name]:3}x"
        f"{BOOK_INPUT_SIZE[name]:<3} {rate:>10,.0f} images/s  epoch {epoch_s:7.1f} s  "
        f"{BOOK_EPOCHS} epochs {BOOK_EPOCHS * epoch_s:7.1f} s (+ first call "
        f"{first['first_call_s']:.1f} s)  compilations {epoch['compilations']}"
    )
    built.clear()
    return out


# --- 4. fp16 with loss scaling against bf16 and fp32 -----------------------------------------


PRECISION_GUESS_S = {"lenet": 20, "googlenet": 70}


def precision_part(part: Part, args) -> None:
    from jaxnotes import data, presets, training

    models = tuple(args.models.split(",")) if args.models else ("lenet", "googlenet")
    train, test = data.load("digits", "train"), data.load("digits", "test")
    if part.tiny:
        train = data.from_arrays(train.images[:64], train.labels[:64], 10, name="digits")
        test = data.from_arrays(test.images[:64], test.labels[:64], 10, name="digits")
    part.log(
        "4. fp16 (dynamic loss scaling) vs bf16 vs fp32: training.fit on digits "
        f"({len(train)} train / {len(test)} test images) per precision"
    )
    for name in models:
        preset = presets.preset(name, "digits")
        if part.tiny:
            preset["epochs"] = 1
        elif name == "googlenet":
            preset["epochs"] = 3
        for precision in ("fp16", "bf16", "fp32"):
            config = training.TrainConfig(
                model=name, dataset="digits", precision=precision, progress=False, **preset
            )

            def measure(config=config, name=name, precision=precision) -> dict:
                result = training.fit(
                    config,
                    train_data=train,
                    test_data=test,
                    log=lambda line: print(f"      {line}", flush=True),
                )
                summary = result.summary
                scale = result.state.extras.get("loss_scale")
                out = {
                    "model": name,
                    "precision": precision,
                    "epochs": config.epochs,
                    "batch": config.batch_size,
                    "resize": config.resize,
                    "images_per_s": summary["examples_per_sec"],
                    "test_acc": summary.get("test_acc"),
                    "train_loss": summary.get("train_loss"),
                    "steps": summary["steps"],
                    "skipped_steps": summary["skipped_steps"],
                    "final_loss_scale": None if scale is None else float(scale.scale),
                    "compilations": summary["compilations"],
                    "wall_s_fit": summary["wall_s"],
                }
                part.log(
                    f"  {name:<10} {precision}  {(out['images_per_s'] or 0):>10,.0f} images/s  "
                    f"test acc {out['test_acc']:.4f}  skipped steps {out['skipped_steps']}/"
                    f"{out['steps']}  loss scale {out['final_loss_scale']}  fit "
                    f"{out['wall_s_fit']:.1f} s"
                )
                return out

            part.cell(f"{name} {precision}", measure, name, PRECISION_GUESS_S.get(name, 60))


# --- 5. a CPU-made export on this backend ------------------------------------------------------


def export_part(part: Part, args) -> None:
    import jax
    import numpy as np

    from jaxnotes import export

    fixtures = Path(args.fixtures)
    npz = fixtures / "lenet_probabilities.npz"
    part.log(f"5. export: load_exported of a CPU-made LeNet export on {jax.default_backend()}")
    if not npz.exists():
        message = f"{npz} is missing: make it with benchmarks/make_export_fixture.py"
        part.record["cells"]["lenet.export"] = {"error": message}
        part.log(f"  FAILED {message}")
        part.write()
        return
    stored = np.load(npz)
    images, expected = stored["images"], stored["probabilities"]
    part.record["fixture"] = json.loads(str(stored["meta"])) if "meta" in stored else {}
    for name in ("lenet.export", "lenet_highest.export"):
        path = fixtures / name
        if not path.exists():
            part.log(f"  {name}: not in {fixtures} (skipped)")
            continue

        def check(path=path, name=name) -> dict:
            predict = export.load_exported(path)
            got = np.asarray(jax.block_until_ready(predict(images)))
            diff = float(np.max(np.abs(got - expected)))
            same_class = float(np.mean(np.argmax(got, -1) == np.argmax(expected, -1)))
            out = {
                "platforms": list(predict.exported.platforms),
                "backend": jax.default_backend(),
                "examples": int(len(images)),
                "max_abs_diff": diff,
                "same_argmax": same_class,
                "tolerance": EXPORT_TOLERANCE,
                "pass": bool(diff <= EXPORT_TOLERANCE),
            }
            part.log(
                f"  {name:<22} max |p - p_cpu| = {diff:.3e} over {len(images)} images "
                f"(same class {same_class:.4f}): {'PASS' if out['pass'] else 'FAIL'} "
                f"(tolerance {EXPORT_TOLERANCE:g})"
            )
            return out

        part.cell(name, check, "export", guess=10)


PART_FUNCTIONS = {
    "population": population_part,
    "book": book_part,
    "precision": precision_part,
    "export": export_part,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=PARTS)
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--deadline", type=float, default=None)
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: tiny sizes and steps")
    parser.add_argument("--models", default=None, help="book/precision: comma-separated models")
    parser.add_argument("--compile-cache", default=None)
    parser.add_argument("--fixtures", default=str(HERE / "fixtures"))
    args = parser.parse_args(argv)
    if args.compile_cache:
        from jaxnotes import compile_cache

        compile_cache.enable(args.compile_cache)
    part = Part(args.part, args.json_path, args.deadline, args.tiny)
    part.record["environment"] = _versions()
    part.write()
    PART_FUNCTIONS[args.part](part, args)
    part.write()
    failed = [k for k, v in part.record["cells"].items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
