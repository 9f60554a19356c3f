"""Checkpoints of a run: orbax saves of the state pytree plus JSON metadata, checked on restore.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a crash
mid-write never leaves a half-written checkpoint that ``latest_step`` would pick up. The metadata
holds the run's configuration, its history and the *tree signature* of the state (every
parameter's and state variable's path, shape and dtype): a resume reads the metadata first and
stops with a message naming the first differing path or setting, before orbax touches the arrays.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np


def tree_signature(tree: Any) -> list[list]:
    """``[[path, shape, dtype], ...]`` of a pytree's leaves, in flattening order (JSON-able)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [
        [jax.tree_util.keystr(path).lstrip("."), list(np.shape(leaf)), str(np.dtype(_dtype(leaf)))]
        for path, leaf in leaves
    ]


def _dtype(leaf: Any) -> Any:
    return getattr(leaf, "dtype", np.asarray(leaf).dtype)


def first_difference(saved: list[list], current: list[list]) -> str | None:
    """A sentence naming the first path where two tree signatures differ (None: they agree)."""
    saved_by_path = {path: (shape, dtype) for path, shape, dtype in saved}
    current_by_path = {path: (shape, dtype) for path, shape, dtype in current}
    for path, shape, dtype in current:
        if path not in saved_by_path:
            return f"the model has {path} {tuple(shape)}, the checkpoint does not"
        old_shape, old_dtype = saved_by_path[path]
        if (old_shape, old_dtype) != (shape, dtype):
            return (
                f"{path} is {tuple(old_shape)} {old_dtype} in the checkpoint but "
                f"{tuple(shape)} {dtype} in the model"
            )
    for path, shape, _ in saved:
        if path not in current_by_path:
            return f"the checkpoint has {path} {tuple(shape)}, the model does not"
    return None


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions); the earlier ones are intact."""


def _os_reason(error: BaseException) -> str:
    """The OS-level reason inside an exception chain (e.g. "No space left on device")."""
    seen = error
    while seen is not None:
        # TensorStore reports the errno inside its message: [os_error_code='28']
        code = re.search(r"os_error_code='(\d+)'", str(seen))
        if code:
            return os.strerror(int(code.group(1)))
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:100]}" if text else type(error).__name__


@contextlib.contextmanager
def _stderr_held():
    """Hold what is written to file descriptor 2 (orbax's threads, TensorStore's C++ code).

    A failed asynchronous write prints hundreds of lines of tracebacks from several threads
    before the error reaches us; we report it in one line instead. Yields a list that gets the
    held text; the caller replays it when nothing failed (warnings are not lost).
    """
    held: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield held
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            held.append(sink.read().decode(errors="replace"))


class _OrbaxLogs:
    """Orbax logs a failed read or write at length (absl) before raising it; we report it once.

    Nested: quiet while any save is in flight or a risky read runs, as before otherwise.
    """

    def __init__(self):
        self.depth, self.level = 0, None

    def quiet(self) -> None:
        logger = logging.getLogger("absl")
        if self.depth == 0:
            self.level = logger.level
            logger.setLevel(logging.CRITICAL)
        self.depth += 1

    def restore(self) -> None:
        self.depth = max(self.depth - 1, 0)
        if self.depth == 0 and self.level is not None:
            logging.getLogger("absl").setLevel(self.level)


_ORBAX_LOGS = _OrbaxLogs()


def _drop_closed_loop_noise() -> None:
    """Silence one known orbax/TensorStore artefact: after a write fails in the background,
    its threads' callbacks hit the already closed asyncio loop and each prints an "Event loop
    is closed" traceback through ``sys.unraisablehook``. Everything else reaches the previous
    hook unchanged."""
    previous = sys.unraisablehook
    if getattr(previous, "_jaxnotes", False):
        return

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        previous(unraisable)

    hook._jaxnotes = True
    sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_orbax():
    _ORBAX_LOGS.quiet()
    try:
        yield
    finally:
        _ORBAX_LOGS.restore()


class Checkpoints:
    """Orbax checkpoints of a state pytree, each with JSON metadata, in ``directory``.

    ``restore`` verifies what it reads: a damaged newest checkpoint (truncated arrays, an empty
    step folder, corrupt metadata) is moved aside to ``DIR/../damaged-checkpoints/STEP`` with a
    one-line note, and the newest intact one is used. ``save`` reports a failed write (disk
    full) as one :class:`CheckpointError` naming the folder and the last intact checkpoint.
    """

    def __init__(
        self, directory: Path, keep: int, note=print, best: tuple[str, int] | None = None,
        read_only: bool = False,
    ):  # fmt: skip
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self.keep = keep
        self.best = best  # (mode "min"/"max", how many) of the checkpoints saved with a metric
        self.read_only = read_only  # for loading a finished run: nothing written or deleted
        self.note = note
        self.last_saved: int | None = None
        self._pending: tuple[int, int | None] | None = None  # (step, intact before it)
        _drop_closed_loop_noise()
        self._open()

    def _open(self) -> None:
        ocp = self._ocp
        with _quiet_orbax():  # read-only options log a warning on creation
            if self.read_only:
                options = ocp.CheckpointManagerOptions(read_only=True, create=False)
            else:
                policy = self._policy()
                options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True)
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    def _policy(self):
        """The newest ``keep`` checkpoints (resume takes the newest), and with ``best`` the
        best n of those saved with a metric, whatever their age."""
        policies = self._ocp.checkpoint_managers
        keep = [policies.LatestN(n=self.keep)]
        if self.best is not None:
            mode, n = self.best
            keep.append(
                policies.BestN(
                    get_metric_fn=lambda metrics: metrics["monitor"], reverse=mode == "min",
                    n=n, keep_checkpoints_without_metrics=False,
                )
            )  # fmt: skip
        return policies.AnyPreservationPolicy(keep)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def path(self, step: int) -> str:
        return str(self.directory / str(step))

    def save(
        self, state: Any, meta: dict, *, step: int | None = None, wait: bool = False,
        metric: float | None = None,
    ) -> str:  # fmt: skip
        """Start writing checkpoint ``step`` (default ``state.step``); returns its folder.

        ``metric``: the monitored value of this checkpoint (kept among the best by it).

        Orbax writes in the background while training goes on; the previous save is completed
        (and its errors raised) first, and :meth:`wait` completes this one: call it before
        reporting the checkpoint as intact. Pass host arrays (``jax.device_get``) when the
        device buffers will be donated while the write is in flight. ``wait=True`` blocks.
        """
        self.wait()
        ocp = self._ocp
        step = int(state.step) if step is None else int(step)
        meta = {**meta, "tree": tree_signature(state)}
        intact = self.latest_step()
        failure = None
        with _stderr_held() as held, _quiet_orbax():
            try:
                self.manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                    ),
                    metrics=None if metric is None else {"monitor": float(metric)},
                    force=True,
                )
                # The background write reports through our wait(), in one line. Quiet from
                # here, before the save's own quiet ends: a write failing in that gap logged
                # orbax's traceback (seen once in CI on a full disk).
                _ORBAX_LOGS.quiet()
            except Exception as error:  # noqa: BLE001 -- one line instead of orbax's traces
                failure = error
                self._discard_partial(step)  # still held: closing flushes the threads' traces
        if failure is not None:
            raise self._failed(step, intact, failure)
        sys.stderr.write("".join(held))
        self._pending = (step, intact)
        if wait:
            self.wait()
        return self.path(step)

    def wait(self) -> None:
        """Complete the save in flight; CheckpointError (one line) if it could not be written."""
        if self._pending is None:
            return
        step, intact = self._pending
        self._pending = None
        failure = None
        with _stderr_held() as held:
            try:
                self.manager.wait_until_finished()
            except Exception as error:  # noqa: BLE001 -- one line instead of orbax's traces
                failure = error
                self._discard_partial(step)
        _ORBAX_LOGS.restore()
        if failure is not None:
            raise self._failed(step, intact, failure)
        sys.stderr.write("".join(held))
        self.last_saved = step

    def _failed(self, step: int, intact: int | None, failure: BaseException) -> CheckpointError:
        # The failed write's orphaned futures would each log "exception was never retrieved"
        # when collected at exit; the one-line error already says what happened.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        kept = self.path(intact) if intact is not None else "none was written yet"
        return CheckpointError(
            f"could not write checkpoint {self.path(step)} ({_os_reason(failure)}); the last "
            f"intact checkpoint is {kept}"
        )

    def _discard_partial(self, step: int) -> None:
        # Orbax writes into STEP.orbax-checkpoint-tmp-*; a failed write leaves that behind.
        for leftover in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            self.manager.close()
        except Exception:  # noqa: BLE001 -- the manager may be broken by the failed write
            pass
        self._open()

    def read_meta(self, step: int | None = None) -> dict:
        """The metadata of checkpoint ``step`` (default: the latest), without reading arrays."""
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = restored["meta"]
        if not isinstance(meta, dict) or "config" not in meta:
            raise ValueError(f"checkpoint {self.path(step)}: its metadata has no configuration")
        return meta

    def latest_intact_meta(self) -> tuple[int, dict] | None:
        """(step, metadata) of the newest checkpoint whose metadata reads; damaged ones moved."""
        while (step := self.latest_step()) is not None:
            try:
                with _quiet_orbax():
                    return step, self.read_meta(step)
            except Exception as error:  # noqa: BLE001 -- any damage: set it aside, try older
                self._set_aside(step, error)
        return None

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """The state of the newest intact checkpoint (or of ``step``) shaped like the argument.

        Raises ValueError naming the first differing path when the saved tree is not the one
        ``abstract_state`` has (another model, input size or optimizer), FileNotFoundError when
        no intact checkpoint is left.
        """
        while True:
            found = (step, self.read_meta(step)) if step is not None else self.latest_intact_meta()
            if found is None:
                raise FileNotFoundError(f"no intact checkpoint left in {self.directory}")
            at, meta = found
            self._check_tree(at, meta, abstract_state)
            failure = None
            with _stderr_held() as held, _quiet_orbax():
                try:
                    state = self._restore_arrays(at, abstract_state)
                except Exception as error:  # noqa: BLE001 -- truncated or unreadable arrays
                    failure = error
                    # The failed read's other coroutines report "Exception ignored in ..." when
                    # collected: collect them while stderr is held, and drop what they print.
                    gc.collect()
            if failure is None:
                sys.stderr.write("".join(held))
                return state, meta
            if step is not None:
                raise failure
            self._set_aside(at, failure)

    def restore_saved(self, step: int) -> dict:
        """Checkpoint ``step``'s state as it was saved (nested dicts of arrays, no template):
        for loading a finished run without rebuilding its optimizer."""
        ocp = self._ocp
        with _quiet_orbax():
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
            )
        return restored["state"]

    def _check_tree(self, step: int, meta: dict, abstract_state: Any) -> None:
        if "tree" not in meta:
            return
        difference = first_difference(meta["tree"], tree_signature(abstract_state))
        if difference:
            raise ValueError(
                f"checkpoint {self.path(step)} holds another model or optimizer: {difference}; "
                "resume with the same model or start a new --workdir"
            )

    def _restore_arrays(self, step: int, abstract_state: Any) -> Any:
        ocp = self._ocp
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        state = restored["state"]
        leaves = jax.tree.leaves(state)
        if len(leaves) != len(jax.tree.leaves(abstract_state)):
            raise ValueError("the restored tree has missing leaves")
        return state

    def set_aside_from(self, first_bad: int) -> str | None:
        """Move every checkpoint from step ``first_bad`` on to ``DIR/../diverged-checkpoints``
        (they hold weights the guard found bad); returns the newest one left (None: none)."""
        moved = [s for s in self.all_steps() if s >= first_bad]
        for step in moved:
            target = self.directory.parent / "diverged-checkpoints" / str(step)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(self.path(step), target)
        if moved:
            self.note(
                f"moved checkpoint(s) {', '.join(map(str, moved))} (weights from step "
                f"{first_bad} on, which the guard found bad) to "
                f"{self.directory.parent / 'diverged-checkpoints'}"
            )
            self.manager.close()
            self._open()
        latest = self.latest_step()
        return None if latest is None else self.path(latest)

    def _set_aside(self, step: int, error: BaseException) -> None:
        damaged = self.directory.parent / "damaged-checkpoints" / str(step)
        damaged.parent.mkdir(parents=True, exist_ok=True)
        if damaged.exists():
            shutil.rmtree(damaged)
        shutil.move(self.path(step), damaged)
        text = str(error).strip()
        reason = (
            f"{type(error).__name__}: {text.splitlines()[0][:100]}"
            if text
            else type(error).__name__
        )
        self.note(f"checkpoint {self.path(step)} is damaged ({reason}); moved to {damaged}")
        self.manager.close()
        self._open()

    def close(self) -> None:
        """Complete the save in flight (CheckpointError if it failed), then release orbax."""
        try:
            self.wait()
        finally:
            self.manager.close()
