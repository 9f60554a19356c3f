"""The one GPU check (``bash benchmarks/gpu_check.sh`` runs this): every part in priority order,
each in a process of its own, within one global time budget, and one summary at the end.

    python benchmarks/gpu_check.py [--out DIR] [--budget SECONDS] [--tiny] [--models a,b]

Parts, in priority order (the first two are part 1, split so that PyTorch never shares a
process, and its CUDA libraries, with JAX):

  1-jax    throughput.py --parts a,b,e: the jaxnotes step (a, bf16 and fp32), the jaxnotes epoch
           through the real input pipeline (b), the plain Flax step (e, bf16: the ratio a/e's);
           7 models, batch 128
  1-torch  throughput.py --parts c,d: PyTorch eager fp32 (c), bf16 autocast + channels_last (d)
  2        gpu_parts.py population: LeNet populations, P = 1, 8, 64
  3        gpu_parts.py book: the book's batch and input sizes, projected epoch and 10 epochs
  4        gpu_parts.py precision: fp16 (loss scaling) vs bf16 vs fp32, LeNet and GoogLeNet
  5        gpu_parts.py export: a CPU-made LeNet export loaded here, to 1e-4
  6        throughput.py --per-example-variant: per-example dropout keys vs one key per batch
  1-e-fp32 throughput.py --parts e --precision fp32: the plain Flax step in fp32, the one column
           of part 1 no ratio uses, last (7 more compilations; initial states from the cache)

Time: the budget (default 440 s) runs from this script's start. A part starts only if its
minimum fits in what is left; inside a part every cell checks the part's deadline before it
starts (and is listed as SKIPPED otherwise); a part still running at the end of the budget is
killed (its cells so far are kept: each part rewrites its JSON after every cell). Part 1's JAX
half stops starting cells ``--torch-reserve`` seconds early (and is killed at half that), so
that its PyTorch half runs too.
All processes share one fresh persistent compilation cache: parts 3 and 6 load the programs
part 1 compiled instead of compiling them again.

Output: everything printed goes to stdout (gpu_check.sh writes it to ``$OUT/gpu_check.log``);
``--out``/gpu_check.json holds every number (rewritten after every part). The exit status is 0
when every part that ran passed its checks (no recompilation, export within tolerance).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import throughput  # noqa: E402  (imports no JAX at module level)

TINY_MODELS = ("lenet", "resnet18")  # the CPU dry run's part 1 (a stateless and a BN model)
PER_EXAMPLE_MODELS = ("alexnet", "vgg11_small", "nin")  # the zoo's stateless models w/ dropout


@dataclasses.dataclass
class Part:
    key: str
    title: str
    argv: list[str]
    min_s: float  # not started with less time left than this
    reserve_s: float = 0.0  # the part's cells stop starting this long before the budget ends
    kill_reserve_s: float = 0.0  # and the part is killed this long before it ends
    env: dict = dataclasses.field(default_factory=dict)


def parts(args, tmp: Path, cache: Path) -> list[Part]:
    python = [args.python]
    tput = [*python, str(HERE / "throughput.py")]
    gparts = [*python, str(HERE / "gpu_parts.py")]
    common = ["--compile-cache", str(cache)]
    if args.tiny:
        models = args.models or ",".join(TINY_MODELS)
        sizes = ["--batch", "4", "--steps", "2", "--warmup", "1", "--repeats", "1"]
        sizes += ["--epoch-examples", "32", "--peak-size", "256"]
        defaults = ["--defaults", "cpu"]
    else:
        models = args.models or ",".join(throughput.MODELS)
        sizes, defaults = [], ["--defaults", "accelerator"]
    tiny = ["--tiny"] if args.tiny else []
    book_models = ["--models", models] if (args.models or args.tiny) else []
    precision_models = ["--models", "lenet"] if args.tiny else []
    per_example = [m for m in models.split(",") if m in PER_EXAMPLE_MODELS] or (
        ["alexnet"] if args.tiny else list(PER_EXAMPLE_MODELS)
    )
    return [
        Part(
            "1-jax",
            "1. throughput: jaxnotes step (a), jaxnotes epoch (b), plain Flax step (e)",
            [*tput, "--models", models, "--parts", "a,b,e", "--e-precision", "bf16"]
            + [*sizes, *defaults, *common],
            min_s=30,
            reserve_s=args.torch_reserve,
            kill_reserve_s=args.torch_reserve / 2,
        ),
        Part(
            "1-torch",
            "1. throughput: PyTorch eager fp32 (c), bf16 autocast + channels_last (d)",
            [*tput, "--models", models, "--parts", "c,d", *sizes, *defaults, "--peak-size", "0"],
            min_s=15,
            # JAX stays off the GPU in this process: only torch's CUDA libraries are loaded.
            env={"JAX_PLATFORMS": "cpu"},
        ),
        Part("2", "2. population throughput", [*gparts, "population", *tiny, *common], 20),
        Part("3", "3. the book's settings", [*gparts, "book", *book_models, *tiny, *common], 20),
        Part(
            "4",
            "4. fp16 vs bf16 vs fp32",
            [*gparts, "precision", *precision_models, *tiny, *common],
            20,
        ),
        Part(
            "5",
            "5. CPU-made export on this backend",
            [*gparts, "export", "--fixtures", args.fixtures, *tiny],
            8,
        ),
        Part(
            "6",
            "6. per-example dropout keys vs one key per batch",
            [*tput, "--models", ",".join(per_example), "--parts", "a", "--precision", "bf16"]
            + ["--per-example-variant", *sizes, *defaults, "--peak-size", "0", *common],
            20,
        ),
        Part(
            "1-e-fp32",
            "1. throughput: plain Flax step in fp32 (e-fp32)",
            [*tput, "--models", models, "--parts", "e", "--precision", "fp32", *sizes]
            + [*defaults, "--peak-size", "0", *common],
            15,
        ),
    ]


# --- running a part ------------------------------------------------------------------------------


def run_part(part: Part, json_path: Path, deadline: float, log) -> dict:
    """Run ``part`` with its output streamed to ours; killed at ``deadline``."""
    argv = [*part.argv, "--json", str(json_path), "--deadline", f"{deadline - part.reserve_s:.3f}"]
    deadline -= part.kill_reserve_s
    env = {**os.environ, **part.env, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    log(f"$ {' '.join(argv)}")
    started = time.perf_counter()
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group: killed whole at the deadline
    )

    def pump() -> None:
        for line in process.stdout:
            print(line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    status = "ok"
    try:
        process.wait(timeout=max(deadline - time.time(), 1.0))
    except subprocess.TimeoutExpired:
        status = "killed at the time budget"
        _kill(process)
    reader.join(timeout=5)
    wall = time.perf_counter() - started
    if status == "ok" and process.returncode != 0:
        status = f"exit status {process.returncode}"
    result = None
    if json_path.exists():
        try:
            result = json.loads(json_path.read_text())
        except ValueError as error:  # killed mid-write
            status += f" (its JSON is unreadable: {error})"
    failed = failed_cells(result or {})
    if failed:
        status += f"; {len(failed)} cell(s) failed"
    log(f"-- part {part.key}: {status} after {wall:.1f} s")
    return {
        "status": status,
        "wall_s": wall,
        "returncode": process.returncode,
        "failed_cells": failed,
        "result": result,
    }


def failed_cells(result: dict) -> list[str]:
    """Each failed cell of a part's JSON (throughput's or gpu_parts'), as "label: error"."""
    found = []
    for name, cells in (result.get("results") or {}).items():
        for label, value in cells.items():
            if isinstance(value, dict) and "error" in value:
                found.append(f"{name} {label}: {value['error']}")
    for label, value in (result.get("cells") or {}).items():
        if isinstance(value, dict) and "error" in value:
            found.append(f"{label}: {value['error']}")
    return found


def _kill(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


# --- the summary ---------------------------------------------------------------------------------


def _results(record: dict, key: str) -> dict:
    entry = record["parts"].get(key) or {}
    return (entry.get("result") or {}).get("results") or {}


def _cells(record: dict, key: str) -> dict:
    entry = record["parts"].get(key) or {}
    return (entry.get("result") or {}).get("cells") or {}


def merged_throughput(record: dict) -> dict:
    """Part 1's results per model: the JAX half's cells and the PyTorch half's."""
    merged: dict[str, dict] = {}
    for key in ("1-jax", "1-torch", "1-e-fp32"):
        for name, results in _results(record, key).items():
            target = merged.setdefault(name, {})
            for label, value in results.items():
                if label == "flops_per_image" and value is None and "flops_per_image" in target:
                    continue
                target.setdefault(label, value)
    return merged


def recompilation_check(record: dict) -> tuple[str, list[str]]:
    """PASS / FAIL / NOT RUN of "every jaxnotes step compiled once", with what failed."""
    found, checked = [], 0
    for key in ("1-jax", "6"):
        results = _results(record, key)
        found += [f"part {key}: {line}" for line in throughput.recompilations(results)]
        checked += sum(
            1
            for cells in results.values()
            for label, value in cells.items()
            if label.startswith(("a-", "b")) and isinstance(value, dict) and "images_per_s" in value
        )
    for label, value in _cells(record, "3").items():
        if "images_per_s" in value:
            checked += 1
            if value.get("compilations") not in (None, 1) or value.get("compiled_in_epoch"):
                found.append(
                    f"part 3: {label} compiled {value.get('compilations')} times "
                    f"({value.get('compiled_in_epoch')} in the timed epoch)"
                )
    for label, value in _cells(record, "4").items():
        if value.get("compilations") is not None:
            checked += 1
            if value["compilations"] != 1:
                found.append(f"part 4: {label}'s train step compiled {value['compilations']} times")
    if found:
        return "FAIL", found
    return ("PASS" if checked else "NOT RUN"), [f"{checked} jaxnotes steps checked"]


def _fmt(value: Any, spec: str = ",.0f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def summary_lines(record: dict) -> list[str]:
    lines = ["", "=" * 100, "GPU CHECK SUMMARY", "=" * 100]
    env = record.get("environment") or {}
    if env:
        lines.append(
            f"device {env.get('device')}; jax {env.get('jax')} (jaxlib {env.get('jaxlib')}), "
            f"flax {env.get('flax')}, torch {record.get('torch', {}).get('torch', '-')}; "
            f"{env.get('date')}"
        )
    for key, entry in record["parts"].items():
        lines.append(f"part {key:<8} {entry.get('wall_s', 0):7.1f} s  {entry['status']}")
        lines += [f"     FAILED {line}" for line in entry.get("failed_cells", [])[:10]]

    # 1. throughput table
    merged = merged_throughput(record)
    if merged:
        jax_part = (record["parts"].get("1-jax") or {}).get("result") or {}
        settings = throughput.parse_args([], accelerator=True)
        peak = jax_part.get("peak_tflops")
        rows = throughput.summary_rows(merged, settings, peak)
        batch = (jax_part.get("settings") or {}).get("batch", settings.batch)
        lines += [
            "",
            f"1. images/s, batch {batch}; ratios and TFLOP/s use a-bf16 (and e-bf16); bf16 matmul "
            f"peak {_fmt(peak, '.1f')} TFLOP/s",
            "   a: jaxnotes step (device data), b: jaxnotes epoch (real input pipeline), "
            "c: PyTorch fp32 eager, d: PyTorch bf16 autocast + channels_last, e: plain Flax step",
            throughput.format_table(rows),
        ]
    status, details = recompilation_check(record)
    lines.append(f"   no recompilation after the first step: {status} ({'; '.join(details)})")

    # 2. populations
    pop = (record["parts"].get("2") or {}).get("result") or {}
    if pop.get("cells"):
        batch = (pop.get("settings") or {}).get("batch", "?")
        lines += ["", f"2. LeNet populations, batch {batch}: examples/s summed over the members"]
        for label, value in pop["cells"].items():
            if "examples_per_s" in value:
                lines.append(
                    f"   {label:<16} {_fmt(value['examples_per_s']):>12} examples/s  "
                    f"({_fmt(value.get('vs_P1'), '.2f')}x P=1; per member "
                    f"{_fmt(value.get('per_member_examples_per_s'))})"
                )
            else:
                lines.append(f"   {label:<16} {value.get('error') or value.get('skipped')}")
        for key, ratio in pop.items():
            if key.startswith("ratio_P"):  # ratio_P64_over_P1
                largest, smallest = key[len("ratio_P") :].split("_over_P")
                lines.append(
                    f"   P={largest} / P={smallest} (summed examples/s): {_fmt(ratio, '.2f')}x"
                )

    # 3. the book's settings
    book = _cells(record, "3")
    if book:
        lines += [
            "",
            "3. the book's settings (synthetic 28x28 data, training steps only): projected "
            "epoch of 60,000 and 10 epochs",
            f"   {'model':<12} {'prec':<5} {'batch':>5} {'size':>5} {'images/s':>10} "
            f"{'epoch s':>8} {'10 ep s':>8} {'1st call s':>10}",
        ]
        for label, value in book.items():
            if "images_per_s" in value:
                lines.append(
                    f"   {label.split()[0]:<12} {value['precision']:<5} {value['batch']:>5} "
                    f"{value['size']:>5} {_fmt(value['images_per_s']):>10} "
                    f"{_fmt(value['epoch_s'], '.1f'):>8} {_fmt(value['ten_epochs_s'], '.1f'):>8} "
                    f"{_fmt(value['first_call_s'], '.1f'):>10}"
                )
            else:
                lines.append(f"   {label:<18} {value.get('error') or value.get('skipped')}")

    # 4. precisions
    prec = _cells(record, "4")
    if prec:
        lines += ["", "4. fp16 (dynamic loss scaling) vs bf16 vs fp32 on digits (training.fit)"]
        for label, value in prec.items():
            if "test_acc" in value:
                lines.append(
                    f"   {label:<16} {_fmt(value['images_per_s']):>10} images/s  test acc "
                    f"{_fmt(value['test_acc'], '.4f')}  skipped steps {value['skipped_steps']}/"
                    f"{value['steps']}  ({value['epochs']} epochs, batch {value['batch']})"
                )
            else:
                lines.append(f"   {label:<16} {value.get('error') or value.get('skipped')}")

    # 5. export
    exp = _cells(record, "5")
    if exp:
        lines += ["", "5. LeNet exported on a CPU, loaded with load_exported here"]
        for label, value in exp.items():
            if "max_abs_diff" in value:
                lines.append(
                    f"   {label:<22} max abs diff {value['max_abs_diff']:.3e} (tolerance "
                    f"{value['tolerance']:g}): {'PASS' if value['pass'] else 'FAIL'}"
                )
            else:
                lines.append(f"   {label:<22} FAIL: {value.get('error') or value.get('skipped')}")

    # 6. per-example dropout keys
    per = _results(record, "6")
    if per:
        lines += ["", "6. per-example dropout keys (the engine's default) vs one key per batch"]
        for name, results in per.items():
            default = (results.get("a-bf16") or {}).get("images_per_s")
            batch = (results.get("a-bf16-batchkeys") or {}).get("images_per_s")
            cost = 100 * (1 - default / batch) if default and batch else None
            lines.append(
                f"   {name:<12} per-example {_fmt(default):>10} images/s, batch keys "
                f"{_fmt(batch):>10} images/s: per-example keys cost {_fmt(cost, '.1f')}%"
            )

    skipped = list(record.get("skipped", []))
    for entry in record["parts"].values():
        result = entry.get("result") or {}
        skipped += [f"{line}" for line in result.get("skipped", [])]
        if "results" in result:
            skipped += throughput.skipped_cells(result["results"])
    if skipped:
        lines += ["", "SKIPPED (time budget):"] + [f"   {line}" for line in skipped]
    return lines


def passed(record: dict) -> bool:
    status, _ = recompilation_check(record)
    exports = [v for v in _cells(record, "5").values() if "pass" in v]
    return status != "FAIL" and all(v["pass"] for v in exports)


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu-out"))
    parser.add_argument(
        "--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET", 440))
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        default=os.environ.get("GPU_CHECK_TINY", "") not in ("", "0"),
        help="CPU dry run: tiny sizes and steps (also GPU_CHECK_TINY=1)",
    )
    parser.add_argument("--models", default=os.environ.get("GPU_CHECK_MODELS") or None)
    parser.add_argument("--parts", default=os.environ.get("GPU_CHECK_PARTS") or None)
    parser.add_argument("--torch-reserve", type=float, default=None)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument(
        "--fixtures", default=os.environ.get("GPU_CHECK_FIXTURES") or str(HERE / "fixtures")
    )
    args = parser.parse_args(argv)
    if args.torch_reserve is None:
        args.torch_reserve = 0.0 if args.tiny else 80.0
    deadline = started + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_out = out / "gpu_check.json"
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    cache = tmp / "xla-cache"

    def log(line: str) -> None:
        print(line, flush=True)

    record: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "budget_s": args.budget,
        "tiny": args.tiny,
        "parts": {},
        "skipped": [],
    }
    wanted = set(args.parts.split(",")) if args.parts else None
    log(
        f"gpu_check: budget {args.budget:.0f} s (until "
        f"{datetime.datetime.fromtimestamp(deadline).strftime('%H:%M:%S')}), out {out}"
        f"{', TINY (CPU dry run)' if args.tiny else ''}"
    )
    try:
        for part in parts(args, tmp, cache):
            if wanted is not None and part.key not in wanted and part.key[0] not in wanted:
                continue
            left = deadline - time.time()
            if left < part.min_s:
                line = (
                    f"part {part.key} ({part.title}): needs {part.min_s:.0f} s, {left:.0f} s left"
                )
                record["skipped"].append(line)
                log(f"\n== SKIPPED {line}")
                continue
            log(f"\n== part {part.key}: {part.title} ({left:.0f} s of the budget left)")
            record["parts"][part.key] = run_part(part, tmp / f"part-{part.key}.json", deadline, log)
            result = record["parts"][part.key]["result"] or {}
            if part.key == "1-jax" and "environment" in result:
                record["environment"] = result["environment"]
            if part.key == "1-torch" and "environment" in result:
                env = result["environment"]
                record["torch"] = {k: v for k, v in env.items() if k.startswith("torch")}
            json_out.write_text(json.dumps(record, indent=1, default=str))
    finally:
        record["wall_s"] = time.time() - started
        lines = summary_lines(record)
        record["summary"] = lines
        record["passed"] = passed(record)
        json_out.write_text(json.dumps(record, indent=1, default=str))
        for line in lines:
            log(line)
        log(
            f"\ngpu_check: {'PASS' if record['passed'] else 'FAIL'}; {record['wall_s']:.0f} s "
            f"of {args.budget:.0f} s; JSON {json_out}"
        )
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
