"""Helpers for tests that start real processes and send them real signals."""

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def checkpoints_at_least(directory: Path, count: int) -> Callable[[], bool]:
    """A ``ready`` condition: ``directory`` holds at least ``count`` complete checkpoints."""
    return lambda: sum(p.name.isdigit() for p in directory.glob("*")) >= count


def signal_when(
    command: list[str],
    ready: Path | Callable[[], bool],
    sig: int = signal.SIGKILL,
    timeout: float = 300,
    **popen,
) -> subprocess.Popen:
    """Start ``command``, wait until the path ``ready`` exists (or ``ready()`` is true), send
    ``sig``; return the process.

    Fails if the process ends first or ``ready`` does not happen within ``timeout`` seconds.
    """
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    process = subprocess.Popen(command, **popen)
    deadline = time.time() + timeout
    is_ready = ready if callable(ready) else ready.exists
    while not is_ready():
        assert process.poll() is None, "the run ended before it could be signalled"
        assert time.time() < deadline, f"{ready} did not appear within {timeout} s"
        time.sleep(0.01)
    process.send_signal(sig)
    return process
