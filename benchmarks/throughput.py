"""Training throughput of jaxnotes against PyTorch and a plain Flax step, in one run on one device.

    python benchmarks/throughput.py [--models lenet,googlenet] [--batch 128] [--steps N]
        [--warmup N] [--repeats N] [--precision {bf16,fp32,both}] [--epoch-examples N]
        [--epoch-cap N] [--parts a,b,c,d,e] [--steps-per-dispatch K] [--per-example-variant]
        [--deadline T] [--defaults {auto,accelerator,cpu}] [--compile-cache DIR]
        [--json results.json]

For each model at its book input size (lenet 28, alexnet / vgg11_small / nin 224, googlenet /
resnet18 / densenet 96), 1 input channel and 10 classes (Fashion-MNIST), SGD with the book's
learning rate, batch 128:

(a) the jaxnotes train step exactly as the runner builds it (``training.build``: forward, loss,
    backward, update, on-device metrics and guard, in one jit with the state donated), fed a
    uint8 28x28 batch already on the device; the step's own preprocessing casts it and resizes it
    to the model's size. Compute only. In bf16 and in fp32.
(b) a jaxnotes end-to-end epoch: the runner's loop over ``data.train_batches`` of synthetic
    Fashion-MNIST-sized host arrays (uint8 28x28, ``--epoch-examples``, at most ``--epoch-cap``
    for the models above 28x28), ``prefetch_to_device``, the same compiled step, and a host pull
    of the metrics every ``log_every`` steps and at the end, as ``training.fit`` does. Reported
    with its ratio to (a) (the target is >= 0.90: the input pipeline must never be the limit).
(c) the same architecture in PyTorch (``torch_models.py``), eager float32, stepped the way the
    book's ``train_ch6`` steps it: zero_grad, forward, cross_entropy, backward, SGD step (without
    the book's per-step accuracy sync, which would only slow PyTorch down).
(d) (c) with ``torch.autocast(bfloat16)`` and channels_last, what a careful PyTorch user does.
(e) the plain Flax reference (``flax_reference.py``): bare linen modules and a bare jitted optax
    step, fed float images at the model's size; bf16 (the modules' ``dtype``) and fp32. For
    ResNet-18 and DenseNet the bare step threads ``batch_stats`` (``mutable``), from the same
    initial running statistics as ours.

(c), (d) and (e) get their input already at the model's size, so (a) does slightly more work
than they do (the resize); the comparison is conservative for jaxnotes. (a), (b) and (e) start
from the same initial parameters (the runner's ``create_train_state``, made once per model).
``--steps-per-dispatch K`` runs (a) and (b) as the runner's option of the same name does
(``lax.scan`` over K steps per call); ``--per-example-variant`` adds (a) with the dropout masks
drawn per batch instead of per example (``per_example_keys=False``), which prices the train
step's vmap (``jaxnotes.steps``), for the models whose step draws them per example (stateless,
with dropout: AlexNet, VGG, NiN).

Timing: the first call (compilation, cuDNN autotuning) and ``--warmup`` steps are excluded; then
``--repeats`` runs of ``--steps`` steps (default 30, LeNet 200: its steps are short), each
closed by ``block_until_ready`` (JAX) or ``torch.cuda.synchronize`` (PyTorch); the median run
gives images/s. FLOPs are analytic: ``jaxnotes.shapes.summarize(...).total_macs`` multiply-adds
per image (convs and dense layers) x 2 FLOPs per multiply-add x 3 for forward + backward (the
backward pass costs two forwards: input and weight gradients). Achieved TFLOP/s is that times
(a)'s images/s, compared with this device's bf16 matmul peak measured here (an 8192 x 8192 bf16
``jnp.dot`` on an accelerator).

The jaxnotes step must compile once: after its timed loops (and after (b), which reuses it)
``_cache_size()`` of the jitted step must be 1; the script exits with status 1 otherwise. A part
that fails (out of memory, a missing package) prints its error in its cell and the run goes on.
With ``--deadline`` (a ``time.time()`` value) a cell starts only if its estimate (the model's
earlier cells, else ``FIRST_CELL_GUESS_S``) ends before it; skipped cells are listed at the end,
and the JSON is rewritten after every cell. A run without (c) and (d) never imports torch, one
with only (c) and (d) can keep JAX on the CPU (``JAX_PLATFORMS=cpu --defaults accelerator``):
``benchmarks/gpu_check.py`` runs the two halves in separate processes.

On a CPU backend the defaults shrink to LeNet and few steps (the 224x224 models take minutes per
step there); ``benchmarks/gpu_check.sh`` runs the full settings on a GPU (with the other parts
of the GPU check).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # timing, torch_models, flax_reference
from timing import rate, time_steps  # noqa: E402

MODELS = ("lenet", "alexnet", "vgg11_small", "nin", "googlenet", "resnet18", "densenet")
LEARNING_RATE = {  # the book's (jaxnotes/presets.py CLASSIC); speed does not depend on it
    "lenet": 0.9,
    "alexnet": 0.01,
    "vgg11_small": 0.05,
    "nin": 0.1,
    "googlenet": 0.1,
    "resnet18": 0.05,
    "densenet": 0.1,
}
# Timed steps per repeat on an accelerator: a LeNet step takes well under a millisecond, so it
# needs more steps than the big models for the timer and dispatch jitter to vanish.
ACCELERATOR_STEPS = {"lenet": 200}
ACCELERATOR_DEFAULT_STEPS = 30
CPU_STEPS = 10
# With --deadline, a cell starts only if it is expected to end before it. Until a model's first
# JAX cell has run (then its own wall time is the estimate), these are the guesses, in seconds, of
# one cell on an accelerator: building, initialising, compiling (cuDNN autotuning included) and
# timing. PyTorch cells have no compilation; their first step picks cuDNN's algorithms.
FIRST_CELL_GUESS_S = {
    "lenet": 8,
    "alexnet": 20,
    "vgg11_small": 20,
    "nin": 20,
    "googlenet": 45,
    "resnet18": 40,
    "densenet": 45,
}
TORCH_CELL_GUESS_S = {"lenet": 5, "googlenet": 15, "resnet18": 12, "densenet": 15}
TORCH_CELL_DEFAULT_S = 10
PARTS = ("a", "b", "c", "d", "e")
SUMMARY_COLUMNS = (
    ("a-bf16", 10),
    ("a-fp32", 10),
    ("b", 10),
    ("b/a", 6),
    ("c", 9),
    ("d", 9),
    ("e-bf16", 10),
    ("e-fp32", 10),
    ("a/c", 6),
    ("a/d", 6),
    ("a/e", 6),
    ("TFLOP/s", 8),
    ("%peak", 6),
)


@dataclasses.dataclass
class Settings:
    models: tuple[str, ...]
    batch: int
    steps: int | None  # None: ACCELERATOR_STEPS / ACCELERATOR_DEFAULT_STEPS / CPU_STEPS
    warmup: int
    repeats: int
    precisions: tuple[str, ...]
    epoch_examples: int
    epoch_cap: int
    peak_size: int
    parts: tuple[str, ...]
    per_example_variant: bool
    steps_per_dispatch: int
    json_path: str | None
    accelerator: bool = False  # the defaults in use: an accelerator's or the CPU's
    e_precisions: tuple[str, ...] | None = None  # (e)'s precisions (None: ``precisions``)
    deadline: float | None = None  # time.time() by which every cell must have ended
    compile_cache: str | None = None  # JAX's persistent compilation cache directory

    def steps_for(self, name: str, accelerator: bool | None = None) -> int:
        if self.steps is not None:
            return self.steps
        if not (self.accelerator if accelerator is None else accelerator):
            return CPU_STEPS
        return ACCELERATOR_STEPS.get(name, ACCELERATOR_DEFAULT_STEPS)

    @property
    def primary(self) -> str:
        """The precision the ratios and FLOP/s use: bf16 when measured."""
        return "bf16" if "bf16" in self.precisions else "fp32"


def parse_args(argv: list[str] | None, accelerator: bool) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models",
        default=None,
        help=f"comma-separated, from {', '.join(MODELS)} (default: all on an accelerator, "
        "lenet on CPU)",
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"timed steps per repeat (default: {ACCELERATOR_DEFAULT_STEPS}, LeNet "
        f"{ACCELERATOR_STEPS['lenet']}; {CPU_STEPS} on CPU)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after compiling")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median counts")
    parser.add_argument("--precision", choices=("bf16", "fp32", "both"), default="both")
    parser.add_argument(
        "--e-precision",
        choices=("bf16", "fp32", "both"),
        default=None,
        help="the plain Flax step's precisions (default: --precision's)",
    )
    parser.add_argument(
        "--epoch-examples",
        type=int,
        default=None,
        help="examples in (b)'s synthetic 28x28 training set (default 60,000 as Fashion-MNIST; "
        "10,240 on CPU)",
    )
    parser.add_argument(
        "--epoch-cap",
        type=int,
        default=None,
        help="at most this many examples in (b) for models above 28x28 (default 12,800 on an "
        "accelerator, 1,024 on CPU)",
    )
    parser.add_argument(
        "--peak-size",
        type=int,
        default=None,
        help="side of the bf16 matmul measuring the peak (default 8192; 1024 on CPU; 0: not "
        "measured)",
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="which of a,b,c,d,e to run")
    parser.add_argument(
        "--per-example-variant",
        action="store_true",
        help="also time (a) with per_example_keys=False (the dropout masks drawn per batch, not "
        "per example), to price the per-example dropout vmap",
    )
    parser.add_argument(
        "--steps-per-dispatch",
        type=int,
        default=1,
        help="jaxnotes (a) and (b): scan this many train steps per jit call, as the runner's "
        "--steps-per-dispatch (default 1, its default)",
    )
    parser.add_argument("--json", dest="json_path", default=None, help="write results here")
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="a time.time() value: cells that would not end before it are skipped (and listed)",
    )
    parser.add_argument(
        "--defaults",
        choices=("auto", "accelerator", "cpu"),
        default="auto",
        help="whose default steps and sizes to use (auto: the JAX backend's); 'accelerator' "
        "lets a PyTorch-only run on a GPU keep JAX on the CPU",
    )
    parser.add_argument(
        "--compile-cache",
        default=None,
        help="JAX's persistent compilation cache directory (later runs load the same programs)",
    )
    args = parser.parse_args(argv)
    if args.defaults != "auto":
        accelerator = args.defaults == "accelerator"

    models = (
        tuple(args.models.split(",")) if args.models else (MODELS if accelerator else ("lenet",))
    )
    unknown = [m for m in models if m not in MODELS]
    parts = tuple(p for p in args.parts.split(",") if p)
    bad_parts = [p for p in parts if p not in PARTS]
    if unknown or bad_parts or min(args.batch, args.repeats, args.steps_per_dispatch) < 1:
        parser.error(
            f"unknown models {unknown} or parts {bad_parts}, or batch/repeats/steps per dispatch "
            f"< 1; models: {', '.join(MODELS)}; parts: {', '.join(PARTS)}"
        )
    precisions = ("bf16", "fp32") if args.precision == "both" else (args.precision,)
    return Settings(
        models=models,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup if args.warmup is not None else (5 if accelerator else 2),
        repeats=args.repeats,
        precisions=precisions,
        e_precisions=(
            precisions
            if args.e_precision is None
            else (("bf16", "fp32") if args.e_precision == "both" else (args.e_precision,))
        ),
        epoch_examples=args.epoch_examples or (60_000 if accelerator else 10_240),
        epoch_cap=args.epoch_cap or (12_800 if accelerator else 1_024),
        peak_size=args.peak_size if args.peak_size is not None else (8192 if accelerator else 1024),
        parts=parts,
        per_example_variant=args.per_example_variant,
        steps_per_dispatch=args.steps_per_dispatch,
        json_path=args.json_path,
        accelerator=accelerator,
        deadline=args.deadline,
        compile_cache=args.compile_cache,
    )


def matmul_peak_tflops(size: int, repeats: int = 3, iterations: int = 10) -> float:
    """This device's bf16 matmul rate: ``iterations`` (size x size) @ (size x size) per run."""
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (size, size), jnp.bfloat16)
    b = jax.random.normal(kb, (size, size), jnp.bfloat16)
    matmul = jax.jit(jnp.dot)
    box = {}

    def step():
        box["c"] = matmul(a, b)

    timing = time_steps(step, lambda: jax.block_until_ready(box), iterations, 1, repeats)
    return 2 * size**3 * iterations / timing["seconds"] / 1e12


# --- (a) and (b): jaxnotes ----------------------------------------------------------------------


def runner_config(name: str, precision: str, batch: int, steps_per_dispatch: int = 1):
    """The runner's configuration of ``name`` at its book size (``resize``) and ``precision``."""
    from jaxnotes import training
    from jaxnotes.models import BOOK_INPUT_SIZE

    return training.TrainConfig(
        model=name,
        batch_size=batch,
        learning_rate=LEARNING_RATE[name],
        resize=BOOK_INPUT_SIZE[name],
        precision=precision,
        progress=False,
        steps_per_dispatch=steps_per_dispatch,
    )


def initial_state(name: str, batch: int, train_data):
    """The runner's initial TrainState for ``name``, as host arrays.

    Parameters and optimizer state are float32 in either precision, so every cell of a model
    starts from a copy of this one (and the plain Flax reference from its params: the same tree).
    One initialisation per model, not one per cell: compiling ``init`` (its random-number code)
    costs more than compiling a small model's train step.
    """
    import jax

    from jaxnotes import training

    config = runner_config(name, "fp32", batch)
    parts = training.build(config, train_data)
    state = training.create_train_state(parts.model, parts.tx, parts.input_shape, config.seed)
    return jax.device_get(state)


def jaxnotes_step(
    name: str, precision: str, settings: Settings, train_data, host_state, **step_kw
) -> dict:
    """The runner's compiled step (``training.build``), with a fresh copy of the initial state
    and metrics on the device. ``step_kw`` (e.g. ``per_example_keys=False``) makes a variant of
    the same step with ``make_train_step``."""
    from jaxnotes import training

    config = runner_config(name, precision, settings.batch, settings.steps_per_dispatch)
    parts = training.build(config, train_data)
    if step_kw:  # a variant of the same step (same model, optimizer, preprocessing)
        step = training.make_train_step(parts.model, parts.tx, parts.preprocess, **step_kw)
        parts.train_step = training.jit_train_step(step)
        if config.steps_per_dispatch > 1:
            parts.multi_step = training.jit_train_step(training.make_multi_step(step))
    placement = parts.placement
    box = {"state": placement.put(host_state), "metrics": placement.put(training.empty_metrics())}
    return {"built": parts, "config": config, "box": box}


def compilations(step: Callable) -> int | None:
    size = getattr(step, "_cache_size", None)
    return size() if size is not None else None


def _stack(batches: list[dict]) -> dict:
    import numpy as np

    return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


def run_compute_only(built: dict, train_data, settings: Settings, steps: int) -> dict:
    """(a): the step on one batch that stays on the device.

    With ``steps_per_dispatch`` k > 1 it is the runner's ``multi_step`` on k stacked batches
    (``lax.scan`` over k steps per call) and ``steps`` counts train steps, not calls.
    """
    import jax

    from jaxnotes import data

    placement, box = built["built"].placement, built["box"]
    k = built["config"].steps_per_dispatch
    host_batch = next(data.train_batches(train_data, settings.batch, seed=0, epoch=0))
    if k > 1:
        step, host_batch = built["built"].multi_step, _stack([host_batch] * k)
    else:
        step = built["built"].train_step
    batch = next(iter(placement.batches([host_batch])))
    calls = max(1, steps // k)

    def one():
        box["state"], box["metrics"] = step(box["state"], batch, box["metrics"])

    timing = time_steps(
        one, lambda: jax.block_until_ready(box), calls, settings.warmup, settings.repeats
    )
    return {
        "images_per_s": rate(timing, k * settings.batch),
        "step_ms": 1e3 * timing["seconds"] / (calls * k),
        "first_call_s": timing["first_call_s"],
        "compilations": compilations(step),
    }


def run_epoch(built: dict, train_data, settings: Settings) -> dict:
    """(b): one epoch of the engine's own loop (``runs.train_epoch`` driving the ``FitJob``
    ``training.fit`` builds), with the step already compiled by (a): ``data.train_batches`` (a
    new permutation, one NumPy gather per batch) -> groups of ``steps_per_dispatch`` -> prefetch
    to the device -> the step, and the host pulls of the metrics (every ``log_every`` steps and
    at the epoch's end, with the guard's check).
    """
    import jax

    from jaxnotes import data, guard, runs, training

    parts, box, config = built["built"], built["box"], built["config"]
    single, multi = parts.train_step, parts.multi_step
    k = config.steps_per_dispatch
    if k > 1 and (len(train_data) // settings.batch) % k:
        # The epoch's last steps_per_epoch % k batches run the single step: compile it now, so
        # the epoch measures the steady state (fit compiles it mid-way through its first epoch).
        host_batch = next(data.train_batches(train_data, settings.batch, seed=0, epoch=0))
        batch = next(iter(parts.placement.batches([host_batch])))
        box["state"], box["metrics"] = single(box["state"], batch, box["metrics"])
    jax.block_until_ready(box)
    job = training.FitJob(config, train_data, None, parts, log=lambda line: None)
    session = runs.Session(state=box["state"], metrics=box["metrics"])
    session.position = job.steps_per_epoch  # epoch 1 from its start
    session.warm = {"train_step", "multi_step"}  # compiled by (a): none of it is timed apart
    compiled_before = _total_compilations(single, multi)
    start = time.perf_counter()
    runs.train_epoch(job, session, 1, guard.InterruptFlag())
    seconds = time.perf_counter() - start
    box["state"], box["metrics"] = session.state, session.metrics
    steps = session.position - job.steps_per_epoch
    counts = [compilations(f) for f in (single, multi) if f is not None and compilations(f)]
    return {
        "images_per_s": steps * settings.batch / seconds,
        "examples": len(train_data),
        "steps": steps,
        "seconds": seconds,
        "compilations": max(counts) if counts else None,
        # Anything compiled inside the timed epoch is a recompilation after the first step.
        "compiled_in_epoch": _total_compilations(single, multi) - compiled_before,
    }


def _total_compilations(*steps) -> int:
    return sum(compilations(f) or 0 for f in steps if f is not None)


# --- (c) and (d): PyTorch -----------------------------------------------------------------------


def run_torch(name: str, mode: str, settings: Settings, steps: int, size: int) -> dict:
    """(c) mode "fp32": eager float32 NCHW; (d) mode "bf16_cl": autocast bf16 + channels_last."""
    import torch
    import torch_models
    from torch.nn import functional as F

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True  # both (c) and (d) get cuDNN's fastest algorithms
    torch.manual_seed(0)
    net = torch_models.get_model(name).to(device)
    net.train()
    x = torch.rand(settings.batch, 1, size, size, device=device)
    y = torch.randint(0, 10, (settings.batch,), device=device)
    autocast = mode == "bf16_cl"
    if autocast:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    # Held in a dict that is emptied afterwards, so the memory goes back before the next part.
    run = {
        "net": net,
        "x": x,
        "y": y,
        "opt": torch.optim.SGD(net.parameters(), LEARNING_RATE[name]),
    }
    del net, x, y

    def one():
        net, opt = run["net"], run["opt"]
        opt.zero_grad()
        if autocast:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(net(run["x"]), run["y"])
        else:
            loss = F.cross_entropy(net(run["x"]), run["y"])
        loss.backward()
        opt.step()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    try:
        timing = time_steps(one, sync, steps, settings.warmup, settings.repeats)
    finally:
        run.clear()
        if cuda:
            torch.cuda.empty_cache()
    return {
        "images_per_s": rate(timing, settings.batch),
        "step_ms": 1e3 * timing["seconds"] / steps,
        "first_call_s": timing["first_call_s"],
    }


# --- (e): plain Flax ----------------------------------------------------------------------------


def run_reference(
    name: str,
    precision: str,
    settings: Settings,
    steps: int,
    size: int,
    host_params,
    host_batch_stats=None,
) -> dict:
    """(e): the plain Flax step, from ``host_params`` (the same tree as our model's) and, for
    the batch-norm models, ``host_batch_stats`` (the same tree as our ``batch_stats``)."""
    import flax_reference
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    dtype = {"bf16": jnp.bfloat16, "fp32": jnp.float32}[precision]
    model = flax_reference.get_model(name, dtype=dtype)
    tx = optax.sgd(LEARNING_RATE[name])
    params = jax.device_put(host_params)
    box = {
        "params": params,
        "batch_stats": jax.device_put(host_batch_stats or {}),
        "opt_state": tx.init(params),
    }
    step = flax_reference.make_train_step(model, tx)
    rng = np.random.default_rng(1)
    x = jax.device_put(rng.uniform(size=(settings.batch, size, size, 1)).astype(np.float32))
    y = jax.device_put(rng.integers(0, 10, size=(settings.batch,), dtype=np.int32))
    # Dropout keys made before timing: a plain loop would split a key per step, one more dispatch
    # per step that would only slow the reference down.
    keys = [jax.random.key(i) for i in range(16)]
    counter = iter(range(1 << 62))

    def one():
        key = keys[next(counter) % len(keys)]
        box["params"], box["batch_stats"], box["opt_state"], box["loss"] = step(
            box["params"], box["batch_stats"], box["opt_state"], x, y, key
        )

    timing = time_steps(
        one, lambda: jax.block_until_ready(box), steps, settings.warmup, settings.repeats
    )
    return {
        "images_per_s": rate(timing, settings.batch),
        "step_ms": 1e3 * timing["seconds"] / steps,
        "first_call_s": timing["first_call_s"],
        "compilations": compilations(step),
    }


# --- the run ------------------------------------------------------------------------------------


def environment(with_torch: bool = True) -> dict:
    """Versions, device and flags; ``with_torch=False`` reads torch's version without importing
    it (a JAX-only run keeps PyTorch's CUDA libraries out of its process)."""
    import flax
    import jax
    import optax

    device = jax.devices()[0]
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"{device.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s))",
        "jax": jax.__version__,
        "jaxlib": _jaxlib_version(),
        "flax": flax.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "XLA_PYTHON_CLIENT_MEM_FRACTION": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", ""),
    }
    if not with_torch:
        try:
            from importlib import metadata

            info["torch"] = f"{metadata.version('torch')} (not imported in this run)"
        except Exception:
            info["torch"] = "not installed"
        return info
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["torch_device"] = torch.cuda.get_device_name(0)
            info["torch_cuda"] = torch.version.cuda
            info["torch_cudnn"] = torch.backends.cudnn.version()
            # TF32 decides what "float32" means on Ampere and later: print what (c) runs with.
            info["torch_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
            info["torch_tf32_cudnn"] = torch.backends.cudnn.allow_tf32
        else:
            info["torch_device"] = f"cpu ({torch.get_num_threads()} threads)"
    except Exception as error:  # the JAX parts still run without torch
        info["torch"] = f"unavailable: {error}"
    return info


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:
        return None


def flops_per_image(name: str, size: int) -> float:
    """2 FLOPs per multiply-add x 3 (forward + backward), from the analytic forward MACs."""
    from jaxnotes import shapes
    from jaxnotes.models import get_model

    macs = shapes.summarize(get_model(name), (1, size, size, 1), train=False).total_macs
    return 6.0 * macs


class Budget:
    """``--deadline``: a cell starts only if its estimate fits in the time left."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.time()

    def fits(self, estimate: float) -> bool:
        return self.left() >= estimate


def cell(
    results: dict,
    label: str,
    fn: Callable[[], dict],
    log: Callable[[str], None],
    budget: Budget | None = None,
    estimate: float = 0.0,
) -> bool:
    """Run one measurement; on failure record and print the error and carry on.

    With a ``budget`` the cell is skipped (recorded as ``{"skipped": ...}``) when its
    ``estimate`` (seconds) does not fit in the time left. Returns whether the cell ran.
    """
    if budget is not None and not budget.fits(estimate):
        reason = f"time budget: ~{estimate:.0f} s needed, {max(budget.left(), 0):.0f} s left"
        results[label] = {"skipped": reason}
        log(f"    {label:<16} SKIPPED ({reason})")
        return False
    started = time.perf_counter()
    try:
        results[label] = fn()
    except Exception as error:  # one failed cell (e.g. OOM) must not end the run
        text = str(error).strip()
        message = f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"
        results[label] = {"error": message, "wall_s": time.perf_counter() - started}
        log(f"    {label}: FAILED {message}")
        traceback.print_exc(limit=3, file=sys.stdout)
        return True
    out = results[label]
    out["wall_s"] = time.perf_counter() - started
    detail = [f"{out['images_per_s']:>12,.0f} images/s"]
    if "step_ms" in out:
        detail.append(f"step {out['step_ms']:.3f} ms")
    if "first_call_s" in out:
        detail.append(f"first call {out['first_call_s']:.1f} s")
    if "examples" in out:
        detail.append(f"{out['examples']} examples, {out['steps']} steps in {out['seconds']:.2f} s")
    if out.get("compilations") is not None:
        detail.append(f"compilations {out['compilations']}")
    if out.get("compiled_in_epoch"):
        detail.append(f"COMPILED {out['compiled_in_epoch']} MID-EPOCH")
    log(f"    {label:<16} " + ", ".join(detail))
    return True


def uses_per_example_keys(name: str, size: int) -> bool:
    """Whether the engine's step draws dropout keys per example for this zoo model (stateless
    with dropout: the train step in ``jaxnotes.steps`` vmaps the forward over the examples)."""
    import jax
    import jax.numpy as jnp

    from jaxnotes import modules
    from jaxnotes.models import get_model

    fns = modules.as_model(get_model(name))
    return bool(fns.keys_per_example(jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)))


def benchmark_model(
    name: str,
    settings: Settings,
    host_data,
    accelerator: bool,
    log,
    on_cell: Callable[[dict], None] = lambda results: None,
) -> dict:
    """Every selected part for one model; returns {cell label: result or {"error": ...} or
    {"skipped": ...}}. ``on_cell(results)`` runs after each cell (the JSON is rewritten)."""
    import jax

    from jaxnotes import data
    from jaxnotes.models import BOOK_INPUT_SIZE

    size = BOOK_INPUT_SIZE[name]
    steps = settings.steps_for(name, accelerator)
    examples = (
        settings.epoch_examples if size <= 28 else min(settings.epoch_examples, settings.epoch_cap)
    )
    examples = max(examples, settings.batch)
    epoch_data = data.from_arrays(
        host_data.images[:examples], host_data.labels[:examples], 10, name="synthetic"
    )
    results: dict[str, Any] = {"size": size, "steps": steps}
    host_state: list = []  # the initial TrainState, made by the first cell that needs it
    budget = Budget(settings.deadline)
    jax_walls: list[float] = []  # wall seconds of this model's JAX cells so far
    torch_walls: list[float] = []

    def initial():
        if not host_state:
            host_state.append(initial_state(name, settings.batch, epoch_data))
        return host_state[0]

    def run_cell(label: str, fn: Callable[[], dict], kind: str = "jax") -> bool:
        walls = jax_walls if kind == "jax" else torch_walls
        if walls:
            estimate = max(walls)
        elif kind == "jax":
            estimate = FIRST_CELL_GUESS_S.get(name, 30) if accelerator else 0.0
        else:
            estimate = TORCH_CELL_GUESS_S.get(name, TORCH_CELL_DEFAULT_S) if accelerator else 0.0
        ran = cell(results, label, fn, log, budget, estimate)
        if ran and "wall_s" in results[label]:
            walls.append(results[label]["wall_s"])
        on_cell(results)
        return ran

    log(
        f"\n== {name} ({size}x{size}x1, batch {settings.batch}, {steps} timed steps x "
        f"{settings.repeats}, warm-up {settings.warmup})"
    )

    for precision in settings.precisions:
        label = f"a-{precision}"
        built: dict = {}

        def compute(precision=precision, built=built):
            built.update(jaxnotes_step(name, precision, settings, epoch_data, initial()))
            return run_compute_only(built, epoch_data, settings, steps)

        if "a" in settings.parts:
            run_cell(label, compute)
        if precision == settings.primary and "b" in settings.parts:

            def epoch(built=built, precision=precision, label=label):
                if "images_per_s" not in results.get(label, {}):
                    # (a) not run or failed: build the step afresh and compile it outside the epoch
                    built.clear()
                    built.update(jaxnotes_step(name, precision, settings, epoch_data, initial()))
                    run_compute_only(built, epoch_data, dataclasses.replace(settings, repeats=1), 1)
                return run_epoch(built, epoch_data, settings)

            run_cell("b", epoch)
        built.clear()  # frees the state before the next part allocates its own

    if settings.per_example_variant and "a" in settings.parts:
        label = f"a-{settings.primary}-batchkeys"
        try:
            per_example = uses_per_example_keys(name, size)
        except Exception as error:  # the variant is then run and labelled as such
            log(f"    per-example check failed: {type(error).__name__}: {error}")
            per_example = True
        results["per_example_keys"] = per_example
        if per_example:

            def variant():
                built = jaxnotes_step(
                    name,
                    settings.primary,
                    settings,
                    epoch_data,
                    initial(),
                    per_example_keys=False,
                )
                return run_compute_only(built, epoch_data, settings, steps)

            run_cell(label, variant)
        else:
            log(f"    {label:<16} not run: {name}'s step draws one dropout key per batch already")

    if "e" in settings.parts:
        for precision in settings.e_precisions or settings.precisions:

            def reference(precision=precision):
                state = initial()
                stats = dict(state.model_state).get("batch_stats")
                return run_reference(name, precision, settings, steps, size, state.params, stats)

            run_cell(f"e-{precision}", reference)
    host_state.clear()
    jax.clear_caches()  # the compiled steps of this model are not needed again

    if "c" in settings.parts:
        run_cell("c", lambda: run_torch(name, "fp32", settings, steps, size), "torch")
    if "d" in settings.parts:
        run_cell("d", lambda: run_torch(name, "bf16_cl", settings, steps, size), "torch")
    measured = [v for v in results.values() if isinstance(v, dict) and "images_per_s" in v]
    if measured and any(part in settings.parts for part in ("a", "b", "e")):
        try:
            results["flops_per_image"] = flops_per_image(name, size)
        except Exception as error:
            results["flops_per_image"] = None
            log(f"    FLOPs: FAILED {error}")
    return results


def _ips(results: dict, label: str) -> float | None:
    value = results.get(label)
    return value.get("images_per_s") if isinstance(value, dict) else None


def summary_rows(all_results: dict, settings: Settings, peak_tflops: float | None) -> list[dict]:
    """One row per model: images/s per cell, the ratios, TFLOP/s and % of peak (None: missing)."""
    rows = []
    primary = f"a-{settings.primary}"
    for name, results in all_results.items():
        a = _ips(results, primary)
        row = {"model": name}
        for column, _ in SUMMARY_COLUMNS:
            if column in ("a-bf16", "a-fp32", "b", "c", "d", "e-bf16", "e-fp32"):
                row[column] = _ips(results, column)
        e = _ips(results, f"e-{settings.primary}")
        for column, other in (("b/a", "b"), ("a/c", "c"), ("a/d", "d"), ("a/e", None)):
            if column == "b/a":
                ratio = row["b"] / a if a and row["b"] else None
            else:
                denominator = e if other is None else row[other]
                ratio = a / denominator if a and denominator else None
            row[column] = ratio
        flops = results.get("flops_per_image")
        tflops = a * flops / 1e12 if a and flops else None
        row["TFLOP/s"] = tflops
        row["%peak"] = 100 * tflops / peak_tflops if tflops and peak_tflops else None
        rows.append(row)
    return rows


def recompilations(all_results: dict) -> list[str]:
    """The jaxnotes cells whose step compiled more than once (the benchmark's assertion)."""
    found = []
    for name, results in all_results.items():
        for label, value in results.items():
            if not (label.startswith(("a-", "b")) and isinstance(value, dict)):
                continue
            if value.get("compilations") not in (None, 1):
                found.append(f"{name} {label} compiled {value['compilations']} times")
            if value.get("compiled_in_epoch"):
                found.append(
                    f"{name} {label} compiled {value['compiled_in_epoch']} step(s) mid-epoch"
                )
    return found


def format_table(rows: list[dict]) -> str:
    def fmt(column: str, value: Any, width: int) -> str:
        if value is None:
            return f"{'-':>{width}}"
        if column in ("b/a", "a/c", "a/d", "a/e"):
            return f"{value:>{width - 1}.2f}x"
        if column == "TFLOP/s":
            return f"{value:>{width}.2f}"
        if column == "%peak":
            return f"{value:>{width}.1f}"
        return f"{value:>{width},.0f}"

    header = f"{'model':<12}" + "".join(f" {c:>{w}}" for c, w in SUMMARY_COLUMNS)
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['model']:<12}" + "".join(f" {fmt(c, row[c], w)}" for c, w in SUMMARY_COLUMNS)
        )
    return "\n".join(lines)


def skipped_cells(all_results: dict) -> list[str]:
    """Each cell the time budget left out, as "model label: reason"."""
    return [
        f"{name} {label}: {value['skipped']}"
        for name, results in all_results.items()
        for label, value in results.items()
        if isinstance(value, dict) and "skipped" in value
    ]


def main(argv: list[str] | None = None) -> int:
    # Keep JAX's preallocated pool below the whole card so PyTorch, in the same process, has room
    # (read when the GPU client starts, i.e. at the first JAX call below).
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # torch_models, flax_reference
    import jax

    from jaxnotes import data

    settings = parse_args(argv, jax.default_backend() != "cpu")
    accelerator = settings.accelerator
    if settings.compile_cache:
        from jaxnotes import compile_cache

        compile_cache.enable(settings.compile_cache)

    def log(line: str) -> None:
        print(line, flush=True)

    uses_jax = any(part in settings.parts for part in ("a", "b", "e"))
    uses_torch = any(part in settings.parts for part in ("c", "d"))
    # JAX's backend starts before torch is imported: torch then reuses the CUDA libraries JAX
    # loaded (JAX checks their versions; torch's loader does not). A run without (c) and (d)
    # does not import torch at all.
    info = environment(with_torch=uses_torch)
    log(
        "jaxnotes training throughput: (a) jaxnotes step, (b) jaxnotes epoch, (c) PyTorch eager "
        "fp32, (d) PyTorch bf16 autocast + channels_last, (e) plain Flax step"
    )
    for key, value in info.items():
        log(f"  {key}: {value}")
    log(f"  settings: {dataclasses.asdict(settings)}")
    log("  FLOPs convention: 6 x forward multiply-adds per image (2 per MAC, x3 forward+backward)")

    peak = None
    if uses_jax and settings.peak_size > 0:
        try:
            peak = matmul_peak_tflops(settings.peak_size)
            log(f"  measured bf16 matmul peak ({settings.peak_size}^2): {peak:.1f} TFLOP/s")
        except Exception as error:
            log(f"  bf16 matmul peak: FAILED {type(error).__name__}: {error}")

    host_data = data.synthetic(max(settings.epoch_examples, settings.batch), (28, 28, 1), 10, 0)
    all_results: dict[str, dict] = {}

    def write_json() -> None:
        # Rewritten after every cell: a run cut off mid-way keeps everything it measured.
        if not settings.json_path:
            return
        record = {
            "environment": info,
            "peak_tflops": peak,
            "settings": dataclasses.asdict(settings),
            "results": all_results,
        }
        Path(settings.json_path).write_text(json.dumps(record, indent=1, default=str))

    for name in settings.models:

        def on_cell(results: dict, name: str = name) -> None:
            all_results[name] = results  # the model's cells so far
            write_json()

        all_results[name] = benchmark_model(name, settings, host_data, accelerator, log, on_cell)
        write_json()

    rows = summary_rows(all_results, settings, peak)
    recompiled = recompilations(all_results)
    log("")
    log(
        f"Summary: images/s on {info['device']}, batch {settings.batch}, {info['date']}; "
        f"ratios and TFLOP/s use a-{settings.primary} (and e-{settings.primary}); peak "
        f"{'-' if peak is None else f'{peak:.1f}'} TFLOP/s bf16"
    )
    log(
        "a: jaxnotes step (device data), b: jaxnotes epoch (host pipeline), c: PyTorch fp32 eager, "
        "d: PyTorch bf16 channels_last, e: plain Flax step"
    )
    log(format_table(rows))
    for line in skipped_cells(all_results):
        log(f"SKIPPED {line}")
    if recompiled:
        log("RECOMPILATION: " + "; ".join(recompiled))
        return 1
    if uses_jax:
        log("no recompilation: every jaxnotes step compiled once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
