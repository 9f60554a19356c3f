"""Command line of the runner: flags -> TrainConfig -> jaxnotes.training.fit -> one JSON line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jaxnotes import presets

MODELS = ("mlp", "lenet", "alexnet", "vgg11", "vgg11_small", "vgg16", "nin", "googlenet",
          "lenet_bn", "resnet18", "densenet")  # fmt: skip


class UsageError(Exception):
    """A bad flag or combination: reported as one line, exit code 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train", description="Train a CNN of the book with its settings."
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
    return parser.parse_args(argv)


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
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))


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
    from jaxnotes.config import value_error
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
    model_kwargs = settings.pop("model_kwargs", {})
    if args.aux_logits is not None:
        if args.model != "googlenet":
            raise UsageError("--aux-logits applies to googlenet only")
        model_kwargs["aux_logits"] = args.aux_logits
    if args.weight_init is not None:
        model_kwargs["weight_init"] = args.weight_init
    if args.dropout is not None:
        # GoogLeNet's only dropout layers are in its auxiliary heads.
        if args.model == "lenet" or (
            args.model == "googlenet" and not model_kwargs.get("aux_logits", False)
        ):
            raise UsageError(f"--dropout: {args.model} has no dropout layer in the book")
        message = value_error("dropout", args.dropout)
        if message:
            raise UsageError("--" + message)
        model_kwargs["aux_dropout" if args.model == "googlenet" else "dropout"] = args.dropout
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
        **settings,
    )
    try:
        config.validate()
    except ValueError as error:
        raise UsageError(_as_flag(str(error))) from None
    return config


def _as_flag(message: str) -> str:
    """A TrainConfig rule's message in the runner's terms: ``batch_size`` -> ``--batch-size``."""
    for field, flag in FIELD_FLAGS.items():
        if message.startswith(field + " "):
            return flag + message[len(field) :]
    return message


FIELD_FLAGS = {
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
    print(f"python -m train: {'error: ' if code == 2 else ''}{message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _check_launch_flags(args)
        # Before anything touches the JAX backend.
        from jaxnotes.parallel import maybe_initialize_distributed

        maybe_initialize_distributed(
            args.coordinator, args.num_processes, args.process_id, timeout=args.coordinator_timeout
        )
    except (UsageError, ValueError) as error:
        return _fail(str(error), 2)
    from jaxnotes.workdir import WorkdirError

    population = args.k_fold is not None or args.search is not None or args.search_space
    try:
        config = build_config(args)
        if population:
            from train import populations

            populations.check(args)
        workdir = resolve_workdir(args)
    except (UsageError, WorkdirError, ValueError) as error:
        return _fail(str(error), 2)
    if not args.no_compile_cache:
        from jaxnotes import compile_cache

        compile_cache.enable()

    import jax

    from jaxnotes.checkpoints import CheckpointError
    from jaxnotes.data import DatasetUnavailableError
    from jaxnotes.training import TrainingDivergedError, TrainingInterrupted, fit

    try:
        if population:
            summary = populations.run(args, config, workdir)
            if jax.process_index() == 0:
                print(json.dumps(summary))
            return 0
        result = fit(config, workdir, resume=args.resume, overwrite=args.overwrite)
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
        DatasetUnavailableError,
        WorkdirError,
    ) as error:
        return _fail(str(error), 2)
    except (TrainingDivergedError, CheckpointError) as error:
        return _fail(str(error), 1)
    except TrainingInterrupted as error:
        return _fail(str(error), 128 + error.signum)
    if jax.process_index() == 0:
        print(json.dumps({**result.summary, "edition": _edition(args)}))
    return 0


def _edition(args) -> str | None:
    """The book edition whose settings ran (None on digits, which has its own presets)."""
    return None if args.dataset == "digits" else args.edition
