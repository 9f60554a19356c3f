"""Helpers for tests that start real processes and send them real signals."""

import signal
import subprocess
import time
from pathlib import Path


def signal_when(
    command: list[str], ready: Path, sig: int = signal.SIGKILL, timeout: float = 300, **popen
) -> subprocess.Popen:
    """Start ``command``, wait until the path ``ready`` exists, send ``sig``; return the process.

    Fails if the process ends first or ``ready`` does not appear within ``timeout`` seconds.
    """
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    process = subprocess.Popen(command, **popen)
    deadline = time.time() + timeout
    while not ready.exists():
        assert process.poll() is None, "the run ended before it could be signalled"
        assert time.time() < deadline, f"{ready} did not appear within {timeout} s"
        time.sleep(0.01)
    process.send_signal(sig)
    return process
