"""A run's folder: what counts as holding a run, one run at a time, names that cannot collide.

Rules (nothing of an earlier run is ever lost by accident):

- A folder *holds a run* when it has a checkpoint (``checkpoints/N``), any of the files a run
  writes (``RUN_FILES``), or a sub-folder that holds a run (a width search's ``width-W``). A new
  run there needs ``resume`` (continue it) or ``overwrite`` (replace it); the old files then go
  only when the new run first writes, after every check has passed, so a run that fails early
  leaves them intact.
- A folder in use is *locked*: ``.lock`` holds the PID of the run using it under an exclusive
  ``flock``, which the kernel releases when that process ends, even by SIGKILL, so a crashed run
  never leaves a stale lock.
- A new default folder (:class:`NewRun`) is created with an exclusive ``mkdir``: two runs that
  start in the same second get ``TIMESTAMP`` and ``TIMESTAMP-2``.
- Nothing is created before the run's checks pass (the engine opens the folder after set-up).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

# What a run (a fit, a population, K-fold or a search) writes into its folder.
RUN_FILES = (
    "summary.json", "metrics.jsonl", "learning_curves.png", "members.jsonl", "folds.jsonl",
    "folds.png", "trials.jsonl", "search.png",
)  # fmt: skip
SUB_RUNS = "width-*"  # a search over widths: one population per width, in sub-folders
LOCK_NAME = ".lock"


class WorkdirError(RuntimeError):
    """A workdir cannot be used as asked (in use, holds a run, not writable)."""


def has_checkpoint(workdir: str | os.PathLike) -> bool:
    """Whether ``workdir/checkpoints`` (or a sub-run's) holds at least one step folder."""
    checkpoints = Path(workdir) / "checkpoints"
    if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
        return True
    return any(has_checkpoint(sub) for sub in sub_runs(workdir))


def sub_runs(workdir: str | os.PathLike) -> list[Path]:
    """The sub-folders of ``workdir`` that are runs of their own (a width search's)."""
    workdir = Path(workdir)
    return sorted(p for p in workdir.glob(SUB_RUNS) if p.is_dir()) if workdir.is_dir() else []


def holds_run(workdir: str | os.PathLike) -> bool:
    """Whether ``workdir`` holds (part of) an earlier run: a checkpoint or a run's output file."""
    workdir = Path(workdir)
    if has_checkpoint(workdir) or any((workdir / name).exists() for name in RUN_FILES):
        return True
    return any(holds_run(sub) for sub in sub_runs(workdir))


def check_reusable(workdir: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Raise WorkdirError if starting a run in ``workdir`` would lose or mix up an earlier one."""
    workdir = Path(workdir)
    if resume or not workdir.exists() or not holds_run(workdir):
        return
    if not overwrite:
        raise WorkdirError(
            f"{workdir} already holds a run (checkpoints, summary.json or other results); pass "
            "--resume to continue it, --overwrite to replace it, or choose another --workdir"
        )


def check_writable(workdir: str | os.PathLike) -> None:
    """Raise WorkdirError unless ``workdir`` exists writable or could be created (nothing made)."""
    path = Path(workdir).absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise WorkdirError(f"--workdir {workdir} is not writable: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir {workdir} is not writable: no write permission on {probe}")


def open_folder(workdir: str | os.PathLike | NewRun, *, resume: bool) -> Path:
    """The run's folder, made if needed: a ``NewRun`` gets a fresh one; resuming needs a
    checkpoint there (FileNotFoundError otherwise)."""
    if isinstance(workdir, NewRun):
        return workdir.create()
    path = Path(workdir)
    if resume and not has_checkpoint(path):
        raise FileNotFoundError(f"--resume: no checkpoint found in {path / 'checkpoints'}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def clear_run(workdir: Path) -> None:
    """Delete an earlier run's checkpoints and output files in ``workdir`` (for overwrite)."""
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    for name in RUN_FILES:
        (workdir / name).unlink(missing_ok=True)
    for sub in sub_runs(workdir):
        shutil.rmtree(sub, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class NewRun:
    """A fresh folder ``base/TIMESTAMP`` to be created when the run opens it (never reused).

    ``announce`` is called with the folder once it exists (the runner prints it).
    """

    base: Path
    announce: Callable[[Path], None] | None = None
    made: list = dataclasses.field(default_factory=list, compare=False)  # the folder, once made

    @property
    def path(self) -> Path | None:
        """The folder :meth:`create` made (None before)."""
        return self.made[0] if self.made else None

    def create(self) -> Path:
        if self.made:  # one run, one folder: a second call returns the same one
            return self.made[0]
        self.base.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for attempt in range(1, 1000):
            path = self.base / (stamp if attempt == 1 else f"{stamp}-{attempt}")
            try:
                path.mkdir()  # exclusive: exactly one run gets each name
            except FileExistsError:
                continue
            if self.announce is not None:
                self.announce(path)
            self.made.append(path)
            return path
        raise WorkdirError(f"could not create a new run folder under {self.base}")


class Lock:
    """An exclusive lock on a workdir for the life of a run (see the module docstring)."""

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> Lock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise WorkdirError(
                    f"{self.path.parent} is in use by another run (PID {holder}); wait for it "
                    "to finish, or choose another --workdir"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
