"""What stops a run early: a non-finite or exploding loss (the guard), and Ctrl-C / SIGTERM.

The guard's memory (the first loss, the first bad step) lives in the device metrics of
``jaxnotes.training``; this module turns what it recorded into an error that names the step and
the likely causes, checking the cheap facts first (the batch's inputs and labels, the weight
decay) before blaming the learning rate, as chapter 3's numerics notes do.

Signals: :func:`catch_interrupts` replaces the SIGINT/SIGTERM handlers while a run trains, so the
loop stops between two steps (the state is then whole), saves a checkpoint if the last one is
older than the epoch's start, and raises :class:`TrainingInterrupted` with one line that says how
to continue. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

import numpy as np


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/inf or exploded; raised with the step and the likely causes."""

    def __init__(
        self,
        step: int,
        kind: str,
        loss: float,
        detail: str,
        checkpoint: str | None,
        causes: list[str] | None = None,
    ):
        """``step``: the first step whose loss was bad, i.e. computed from the weights after
        ``step`` updates: a checkpoint of those weights or later ones is not good."""
        self.step, self.kind, self.loss, self.checkpoint = step, kind, loss, checkpoint
        self.detail, self.causes = detail, list(causes or [])
        kept = (
            f"The last good checkpoint is intact: {checkpoint}"
            if checkpoint
            else "No checkpoint of good weights had been written"
        )
        found = "".join(f"{cause}; " for cause in self.causes)
        lead = "Found: " + found + "otherwise, likely" if found else "Likely"
        super().__init__(
            f"Training stopped at step {step}: {detail}. {lead} causes (the notes): a learning "
            "rate too large (try 10x smaller), weights initialised too large, or a division by "
            f"zero (0/0 gives NaN; x/0 gives inf). {kept}."
        )


def check_guard(
    host_metrics: dict,
    checkpoint: str | None,
    divergence_factor: float,
    diagnose: Callable[[int], list[str]] | None = None,
) -> None:
    """Raise :class:`TrainingDivergedError` if the accumulator recorded a bad step.

    ``diagnose(step)`` lists causes found in the run itself (e.g. in the bad step's batch).
    """
    step = int(host_metrics["bad_step"])
    if step < 0:
        return
    loss = float(host_metrics["bad_loss"])
    if int(host_metrics["bad_kind"]) == 1:
        kind, detail = "non-finite", f"the loss became {loss} (not finite)"
    else:
        kind = "diverged"
        detail = (
            f"the loss diverged to {loss:.4g}, over {divergence_factor:g} x the first loss "
            f"({float(host_metrics['first_loss']):.4g})"
        )
    causes = diagnose(step) if diagnose is not None else []
    raise TrainingDivergedError(step, kind, loss, detail, checkpoint, causes)


def batch_causes(batch: dict, num_logits: int) -> list[str]:
    """What in one host batch can make a loss non-finite: bad inputs, labels out of range."""
    causes = []
    images = np.asarray(batch["image"])
    if np.issubdtype(images.dtype, np.floating):
        bad = ~np.isfinite(images)
        if bad.any():
            first = np.argwhere(bad)[0]
            causes.append(
                f"the batch holds {int(bad.sum())} non-finite input value(s) (first at example "
                f"{int(first[0])} of the batch: {images[tuple(first)]}); clean the data"
            )
        elif images.size and np.max(np.abs(images)) > 8:
            causes.append(
                f"the inputs reach {np.max(np.abs(images)):g}: float images are taken to be in "
                "[0, 1] (pixels 0-255 as floats are not scaled); divide by 255, or pass uint8"
            )
    labels = np.asarray(batch["label"])
    out = (labels < 0) | (labels >= num_logits)
    if out.any():
        index = int(np.argmax(out))
        causes.append(
            f"label {int(labels[index])} at example {index} of the batch is outside "
            f"[0, {num_logits}) (the model has {num_logits} outputs)"
        )
    return causes


def optimizer_causes(learning_rate: float, weight_decay: float, decoupled: bool) -> list[str]:
    """Weight decay large enough to blow up SGD: lr x wd >= 1 flips the weights' sign each step."""
    if weight_decay > 0 and learning_rate * weight_decay >= 1:
        return [
            f"weight decay {weight_decay:g} with learning rate {learning_rate:g} (lr x wd = "
            f"{learning_rate * weight_decay:g} >= 1 overshoots zero every step; "
            f"{'decoupled' if decoupled else 'coupled'} decay)"
        ]
    return []


class PopulationDivergedError(RuntimeError):
    """Every member of a population diverged: nothing was learned (the runner exits 1)."""


def with_checkpoint(error: TrainingDivergedError, checkpoint: str | None) -> TrainingDivergedError:
    """The same error naming another last good checkpoint."""
    return TrainingDivergedError(
        error.step, error.kind, error.loss, error.detail, checkpoint, error.causes
    )


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run between two steps; says how to continue."""

    def __init__(self, step: int, checkpoint: str | None, signum: int):
        self.step, self.checkpoint, self.signum = step, checkpoint, signum
        if checkpoint is not None:
            tail = f"--resume continues from checkpoint {checkpoint}"
        else:
            tail = "no checkpoint to continue from (no workdir)"
        super().__init__(f"interrupted at step {step}; {tail}")

    def __str__(self) -> str:
        return self.args[0]


class InterruptFlag:
    """Set by the signal handler; the training loop looks at it between steps."""

    def __init__(self):
        self.signum: int | None = None


@contextlib.contextmanager
def catch_interrupts() -> Iterator[InterruptFlag]:
    """SIGINT/SIGTERM set a flag instead of raising mid-step (main thread only; else a no-op)."""
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.signum is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        flag.signum = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
