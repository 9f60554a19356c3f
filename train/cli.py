"""Command line of the runner: flags -> TrainConfig -> jaxnotes.training.fit -> one JSON line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from train import presets

MODELS = ("mlp", "lenet", "alexnet", "vgg11", "vgg11_small", "vgg16", "nin", "googlenet")


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
    parser.add_argument("--workdir", help="default: runs/MODEL-DATASET/TIMESTAMP")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument(
        "--overwrite", action="store_true", help="discard checkpoints already in --workdir"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50, help="steps between metric pulls")
    parser.add_argument("--checkpoint-every", type=int, default=1, help="epochs (0: never)")
    parser.add_argument("--checkpoint-every-steps", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace):
    """Flags over the preset for (model, dataset); raises UsageError for impossible values."""
    from jaxnotes.training import TrainConfig

    if args.model not in MODELS:
        raise UsageError(f"unknown model {args.model!r}; expected one of {', '.join(MODELS)}")
    _check_dataset_name(args.dataset)
    settings = presets.preset(args.model, args.dataset)
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
        if not 0.0 <= args.dropout < 1.0:
            raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
        model_kwargs["aux_dropout" if args.model == "googlenet" else "dropout"] = args.dropout
    if args.devices < 1:
        raise UsageError(f"--devices must be >= 1, got {args.devices}")
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
        raise UsageError(str(error)) from None
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    return config


def _check_dataset_name(name: str) -> None:
    if name in ("digits", "fashion_mnist", "mnist") or name.startswith("synthetic"):
        return
    if name.startswith("idx:"):
        directory = Path(name[4:])
        if not directory.is_dir():
            raise UsageError(f"--dataset {name}: {directory} is not a directory")
        return
    raise UsageError(f"unknown dataset {name!r}; expected digits, fashion_mnist, mnist or idx:DIR")


def resolve_workdir(args: argparse.Namespace) -> Path:
    """The run's folder; checks it is writable and that nothing in it would be lost."""
    base = Path("runs") / f"{args.model}-{args.dataset.replace(':', '_').replace('/', '_')}"
    import jax

    if jax.process_count() > 1 and not args.workdir:
        raise UsageError("with several processes, give every process the same --workdir")
    if args.workdir:
        workdir = Path(args.workdir)
    elif args.resume:
        runs = sorted(p for p in base.glob("*") if (p / "checkpoints").is_dir())
        if not runs:
            raise UsageError(f"--resume: no earlier run under {base}/ (give --workdir)")
        workdir = runs[-1]
    else:
        workdir = base / time.strftime("%Y%m%d-%H%M%S")
    checkpoints = workdir / "checkpoints"
    has_checkpoints = checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    if args.resume and not has_checkpoints:
        raise UsageError(f"--resume: no checkpoint in {checkpoints}")
    if has_checkpoints and not args.resume:
        if not args.overwrite:
            raise UsageError(
                f"{workdir} already holds checkpoints; pass --resume to continue that run, "
                "--overwrite to discard them, or choose another --workdir"
            )
        import shutil

        shutil.rmtree(checkpoints)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{jax.process_index()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"--workdir {workdir} is not writable: {error.strerror}") from None
    return workdir


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # Before anything touches the JAX backend.
        from jaxnotes.parallel import maybe_initialize_distributed

        maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    except ValueError as error:
        print(f"python -m train: error: {error}", file=sys.stderr)
        return 2
    try:
        config = build_config(args)
        workdir = resolve_workdir(args)
    except UsageError as error:
        print(f"python -m train: error: {error}", file=sys.stderr)
        return 2

    import jax

    from jaxnotes.data import DatasetUnavailableError
    from jaxnotes.training import TrainingDivergedError, fit

    if jax.process_index() == 0:
        print(f"workdir {workdir}", file=sys.stderr)
    try:
        result = fit(config, workdir, resume=args.resume)
    except (ValueError, FileNotFoundError, DatasetUnavailableError) as error:
        print(f"python -m train: error: {error}", file=sys.stderr)
        return 2
    except TrainingDivergedError as error:
        print(f"python -m train: {error}", file=sys.stderr)
        return 1
    summary = {**result.summary, "workdir": str(workdir)}
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary))
    return 0
