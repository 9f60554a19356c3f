"""The runner's command line: flags -> TrainConfig -> ``training.fit`` (or a population) -> one
JSON line. Installed as ``jaxnotes-train``; also ``python -m jaxnotes`` and, in a checkout,
``python -m train`` (same flags, exit codes and JSON line)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from jaxnotes import presets

MODELS = ("mlp", "lenet", "alexnet", "vgg11", "vgg11_small", "vgg16", "nin", "googlenet",
          "lenet_bn", "resnet18", "densenet")  # fmt: skip


class UsageError(Exception):
    """A bad flag or combination: reported as one line, exit code 2."""


PROG = ["python -m train"]  # how the runner was started: its messages name it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG[0], description="Train a CNN of the book with its settings."
    )
    parser.add_argument("--model", default="lenet", help=f"one of {', '.join(MODELS)}")
    parser.add_argument(
        "--dataset", default="digits", help="digits (offline), fashion_mnist, mnist or idx:DIR"
    )
    parser.add_argument(
        "--edition",
        choices=("classic", "d2l1"),
        default="classic",
        help="the book's settings: classic (the PyTorch 0.17 edition, the notes') or d2l1 (the "
        "current d2l.ai edition); for fashion_mnist / mnist / idx: data",
    )
    _training_flags(parser)
    _device_flags(parser)
    _run_flags(parser)
    _population_flags(parser)
    _policy_flags(parser)
    return parser.parse_args(argv)


POLICY_FLAGS = {  # flag -> (TrainConfig field, type, default, help)
    "--validation-fraction": ("validation_fraction", float, 0.0, "score each epoch on a "
                              "stratified part of the training split (the test split at the end)"),
    "--warmup-steps": ("warmup_steps", int, 0, "linear learning-rate warm-up over N updates"),
    "--clip-norm": ("clip_norm", float, 0.0, "clip the gradients' global norm (0: off)"),
    "--accumulate": ("accumulate", int, 1, "average N batches' gradients per update"),
    "--ema-decay": ("ema_decay", float, 0.0, "evaluate with a moving average of the weights"),
    "--early-stopping": ("early_stopping", int, 0, "stop after N epochs without improvement"),
    "--monitor": ("monitor", str, None, "what early stopping and --keep-best watch (default "
                  "val_loss, or test_loss without validation)"),
    "--mode": ("mode", str, None, "min or max (default: from the monitor's name)"),
    "--min-delta": ("min_delta", float, 0.0, "the least change that counts as improving"),
    "--keep-best": ("keep_best", int, 0, "also keep the N best checkpoints by --monitor"),
}  # fmt: skip


def _policy_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("policies (README: Beyond the defaults)")
    for flag, (_, kind, default, text) in POLICY_FLAGS.items():
        group.add_argument(flag, type=kind, default=default, help=text)
    group.add_argument("--test-every-epoch", action="store_true",
                       help="with validation, also score the test split every epoch")  # fmt: skip
    group.add_argument("--tensorboard", action="store_true",
                       help="event files in WORKDIR/tensorboard (tensorboardX)")  # fmt: skip
    group.add_argument(
        "--export", metavar="PATH", help="after training (or with --resume, of a finished run) "
        "write its inference as jax.export StableHLO for cpu, cuda and tpu",
    )  # fmt: skip


def _training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--optimizer", choices=("sgd", "momentum", "adam"))
    parser.add_argument("--momentum", type=float)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        help="learning rate: constant, or cosine decay to 0 over the run (default: the preset's)",
    )
    parser.add_argument("--dropout", type=float, help="dropout rate of the model's dropout layers")
    parser.add_argument(
        "--aux-logits",
        action=argparse.BooleanOptionalAction,
        help="GoogLeNet's auxiliary heads (default: the preset's; on for digits)",
    )
    parser.add_argument(
        "--weight-init",
        choices=("xavier", "he"),
        help="kernel initialiser: xavier (d2l's) or he (default: the preset's)",
    )
    parser.add_argument("--resize", type=int, help="image side the model sees (on the device)")
    parser.add_argument(
        "--normalization", default="scale", choices=("scale", "standardize", "imagenet")
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="fp16 trains with dynamic loss scaling (a T4's fast path; it has no bf16 units)",
    )


def _device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=1, help="data-parallel devices (global)")
    parser.add_argument(
        "--parallel",
        default="sharded",
        choices=("sharded", "pmap"),
        help="with --devices > 1: one jit over a device mesh (default) or jax.pmap",
    )
    parser.add_argument(
        "--steps-per-dispatch",
        type=int,
        default=1,
        help="run this many steps per jit call (lax.scan; one device only)",
    )
    parser.add_argument("--coordinator", help="multi-host: HOST:PORT of process 0")
    parser.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    parser.add_argument("--process-id", type=int, help="multi-host: this process's index")
    parser.add_argument(
        "--coordinator-timeout",
        type=int,
        default=180,
        help="multi-host: seconds to wait for all processes to join (default 180)",
    )


def _run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", help="default: runs/MODEL-DATASET/TIMESTAMP")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --workdir (its files go when this run first writes)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50, help="steps between metric pulls")
    parser.add_argument("--checkpoint-every", type=int, default=1, help="epochs (0: never)")
    parser.add_argument("--checkpoint-every-steps", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _population_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--k-fold", type=int, metavar="K", help="K-fold cross-validation on the training split"
    )
    parser.add_argument("--search", type=int, metavar="N", help="random search of N trials")
    parser.add_argument(
        "--search-space",
        help="e.g. lr=1e-3:1,wd=1e-6:1e-2:log,dropout=0:0.8,momentum=0.9,width=32|64 "
        "(default lr=1e-3:1,wd=1e-6:1e-1)",
    )
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not use JAX's persistent compilation cache ($JAXNOTES_CACHE_DIR or "
        "~/.cache/jaxnotes/xla; JAXNOTES_COMPILE_CACHE=0 does the same)",
    )


def build_config(args: argparse.Namespace):
    """Flags over the preset for (model, dataset); raises UsageError for impossible values."""
    from jaxnotes.training import TrainConfig

    if args.model not in MODELS:
        raise UsageError(f"unknown model {args.model!r}; expected one of {', '.join(MODELS)}")
    _check_dataset_name(args.dataset)
    settings = presets.preset(args.model, args.dataset, args.edition)
    overrides = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "optimizer": args.optimizer,
        "momentum": args.momentum,
        "resize": args.resize,
        "schedule": args.schedule,
    }
    settings.update({k: v for k, v in overrides.items() if v is not None})
    model_kwargs = _model_kwargs(args, settings.pop("model_kwargs", {}))
    config = TrainConfig(
        model=args.model,
        dataset=args.dataset,
        weight_decay=args.weight_decay,
        model_kwargs=model_kwargs,
        normalization=args.normalization,
        precision=args.precision,
        seed=args.seed,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        checkpoint_every_steps=args.checkpoint_every_steps,
        progress=not args.no_progress,
        devices=args.devices,
        parallel=args.parallel,
        steps_per_dispatch=args.steps_per_dispatch,
        test_every_epoch=args.test_every_epoch,
        tensorboard=args.tensorboard,
        **{field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, *_) in
           POLICY_FLAGS.items()},
        **settings,
    )  # fmt: skip
    try:
        config.validate()
    except ValueError as error:
        raise UsageError(_as_flag(str(error))) from None
    return config


def _model_kwargs(args: argparse.Namespace, model_kwargs: dict) -> dict:
    """The preset's model fields with --aux-logits, --weight-init and --dropout over them."""
    from jaxnotes.config import value_error
    from jaxnotes.models import MODELS as ZOO

    if args.aux_logits is not None:
        if args.model != "googlenet":
            raise UsageError("--aux-logits applies to googlenet only")
        model_kwargs["aux_logits"] = args.aux_logits
    if args.weight_init is not None:
        model_kwargs["weight_init"] = args.weight_init
    if args.dropout is not None:
        # GoogLeNet's only dropout layers are in its auxiliary heads.
        field = "aux_dropout" if args.model == "googlenet" else "dropout"
        factory = ZOO[args.model]
        fields = getattr(getattr(factory, "func", factory), "__dataclass_fields__", {})
        if field not in fields or (field == "aux_dropout" and not model_kwargs.get("aux_logits")):
            raise UsageError(f"--dropout: {args.model} has no dropout layer in the book")
        message = value_error("dropout", args.dropout)
        if message:
            raise UsageError("--" + message)
        model_kwargs[field] = args.dropout
    return model_kwargs


def _as_flag(message: str) -> str:
    """A TrainConfig rule's message in the runner's terms: ``batch_size`` -> ``--batch-size``."""
    for field, flag in FIELD_FLAGS.items():
        if message.startswith(field + " "):
            return flag + message[len(field) :]
    return message


FIELD_FLAGS = {
    **{field: flag for flag, (field, *_) in POLICY_FLAGS.items()},
    "learning_rate": "--lr",
    "weight_decay": "--weight-decay",
    "seed": "--seed",
    "log_every": "--log-every",
    "checkpoint_every_steps": "--checkpoint-every-steps",
    "checkpoint_every": "--checkpoint-every",
    "steps_per_dispatch": "--steps-per-dispatch",
    "devices": "--devices",
    "momentum": "--momentum",
    "resize": "--resize",
}


def _check_launch_flags(args: argparse.Namespace) -> None:
    """Flags read before JAX starts: the multi-host ones."""
    if args.coordinator is not None:
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(
                f"--coordinator must be HOST:PORT with a port in 1..65535, got {args.coordinator!r}"
            )
    if args.coordinator_timeout < 1:
        raise UsageError(
            f"--coordinator-timeout must be >= 1 second, got {args.coordinator_timeout}"
        )


def _check_dataset_name(name: str) -> None:
    if name in ("digits", "fashion_mnist", "mnist") or name.startswith("synthetic"):
        return
    if name.startswith("idx:"):
        directory = Path(name[4:])
        if not directory.is_dir():
            raise UsageError(f"--dataset {name}: {directory} is not a directory")
        return
    raise UsageError(f"unknown dataset {name!r}; expected digits, fashion_mnist, mnist or idx:DIR")


def resolve_workdir(args: argparse.Namespace):
    """The run's folder, checked but not created (``fit`` creates it after its own checks).

    Returns a Path, or a ``NewRun`` (a fresh ``runs/MODEL-DATASET/TIMESTAMP``, made with an
    exclusive mkdir so two runs started in the same second cannot share it).
    """
    import jax

    from jaxnotes import workdir as workdirs

    base = Path("runs") / f"{args.model}-{args.dataset.replace(':', '_').replace('/', '_')}"
    if jax.process_count() > 1 and not args.workdir:
        raise UsageError("with several processes, give every process the same --workdir")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues a run and --overwrite replaces it: choose one")
    if args.workdir:
        workdir = Path(args.workdir)
    elif args.resume:
        runs = sorted(p for p in base.glob("*") if workdirs.has_checkpoint(p))
        if not runs:
            raise UsageError(
                f"--resume: no earlier run with a checkpoint under {base}/ (give --workdir)"
            )
        workdir = runs[-1]
    else:
        workdirs.check_writable(base)
        return workdirs.NewRun(base, announce=_announce)
    if args.resume and not workdirs.has_checkpoint(workdir):
        raise UsageError(f"--resume: no checkpoint in {workdir / 'checkpoints'}")
    workdirs.check_reusable(workdir, resume=args.resume, overwrite=args.overwrite)
    workdirs.check_writable(workdir)
    _announce(workdir)
    return workdir


def _announce(workdir: Path) -> None:
    import jax

    if jax.process_index() == 0:
        print(f"workdir {workdir}", file=sys.stderr)


def _fail(message: str, code: int) -> int:
    print(f"{PROG[0]}: {'error: ' if code == 2 else ''}{message}", file=sys.stderr)
    return code


def console_main() -> int:
    """The ``jaxnotes-train`` command."""
    return main(prog="jaxnotes-train")


def main(argv: list[str] | None = None, prog: str = "python -m train") -> int:
    PROG[0] = prog
    args = parse_args(argv)
    try:
        config, workdir = _prepare(args)
    except (UsageError, ValueError) as error:
        return _fail(str(error), 2)
    if not args.no_compile_cache:
        from jaxnotes import compile_cache

        compile_cache.enable()
    return _train(args, config, workdir)


def _prepare(args: argparse.Namespace):
    """Every flag checked, distributed JAX started, the workdir resolved: (config, workdir)."""
    _check_launch_flags(args)
    # Before anything touches the JAX backend.
    from jaxnotes.parallel import maybe_initialize_distributed
    from jaxnotes.workdir import WorkdirError

    maybe_initialize_distributed(
        args.coordinator, args.num_processes, args.process_id, timeout=args.coordinator_timeout
    )
    try:
        config = build_config(args)
        if _is_population(args):
            from jaxnotes import cli_populations as populations

            populations.check(args, config)
        return config, resolve_workdir(args)
    except WorkdirError as error:
        raise UsageError(str(error)) from None


def _is_population(args: argparse.Namespace) -> bool:
    return args.k_fold is not None or args.search is not None or bool(args.search_space)


def _train(args: argparse.Namespace, config, workdir) -> int:
    """Train (one run or a population); the exit code (see train/__main__.py)."""
    import jax

    from jaxnotes.checkpoints import CheckpointError
    from jaxnotes.data import DatasetUnavailableError
    from jaxnotes.guard import PopulationDivergedError
    from jaxnotes.training import TrainingDivergedError, TrainingInterrupted, fit
    from jaxnotes.workdir import WorkdirError

    exported = None
    try:
        if _is_population(args):
            from jaxnotes import cli_populations as populations

            line = populations.run(args, config, workdir, log=say)
        else:
            result = fit(config, workdir, resume=args.resume, overwrite=args.overwrite, log=say)
            exported = _export(args, config, result)
            line = {**result.summary, "edition": _edition(args)}
    except (ValueError, TypeError, FileNotFoundError, DatasetUnavailableError,
            WorkdirError) as error:  # fmt: skip
        return _fail(str(error), 2)
    except (TrainingDivergedError, PopulationDivergedError, CheckpointError) as error:
        return _fail(str(error), 1)
    except TrainingInterrupted as error:
        return _fail(str(error), 128 + error.signum)
    if jax.process_index() == 0:
        if exported is not None:
            line["export"] = str(exported)
        from jaxnotes.runs import json_safe

        say(json.dumps(json_safe(line), allow_nan=False))  # strict JSON: NaN becomes null
    return 0


def say(line: str) -> None:
    """Print a line of the run's report. When stdout is closed (``python -m train | head -1``)
    the run goes on and its report goes nowhere: the files and the exit code still tell."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _export(args, config, result):
    """With --export PATH: the run's inference, at its best checkpoint when it kept one."""
    if not args.export:
        return None
    import jax

    from jaxnotes import export

    which = "best" if config.keep_best else "latest"
    if jax.process_index() != 0:
        return None
    path = export.export_run(result.workdir, args.export, which)
    print(f"exported the {which} checkpoint's inference to {path}", file=sys.stderr)
    return path


def _edition(args) -> str | None:
    """The book edition whose settings ran (None on digits, which has its own presets)."""
    return None if args.dataset == "digits" else args.edition
