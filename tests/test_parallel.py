"""Data parallelism: the 4-device suite runs in a subprocess (JAX fixes its devices at start)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxnotes import parallel


@pytest.mark.slow
def test_multidevice_suite_on_four_fake_cpu_devices():
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "4", "JAXNOTES_MULTIDEVICE": "1"}
    suite = Path(__file__).parent / "multidevice"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


def test_distributed_flags_must_come_together():
    with pytest.raises(ValueError, match="all three"):
        parallel.maybe_initialize_distributed("localhost:1234", None, 0)
    with pytest.raises(ValueError, match="process-id must be in"):
        parallel.maybe_initialize_distributed("localhost:1234", 2, 2)


def test_no_cluster_no_distributed(monkeypatch):
    for name in parallel.CLUSTER_ENV:
        monkeypatch.delenv(name, raising=False)
    assert parallel.maybe_initialize_distributed() is False


def test_placement_choice():
    assert isinstance(parallel.make_placement(1), parallel.SingleDevice)
    with pytest.raises(ValueError, match="sharded' or 'pmap"):
        parallel.make_placement(2, "ddp")
    with pytest.raises(ValueError, match="only 1 exist"):
        parallel.check_devices(2, 32)
