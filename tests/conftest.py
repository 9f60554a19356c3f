"""Shared pytest set-up.

tests/multidevice/ needs JAX to start with several (fake CPU) devices, which must be set before
JAX initialises: tests/test_parallel.py runs it in a subprocess with JAX_NUM_CPU_DEVICES=4 and
JAXNOTES_MULTIDEVICE=1; the main run does not collect it.
"""

import os
import sys
from pathlib import Path

import pytest

# tests/user_models.py (the user-written modules) is importable from every test folder.
sys.path.insert(0, str(Path(__file__).parent))
# `python -m train` is the checkout's entry point (the wheel has only jaxnotes): the runner
# subprocesses the tests start in temporary folders find it through PYTHONPATH.
_ROOT = str(Path(__file__).parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)

collect_ignore = [] if os.environ.get("JAXNOTES_MULTIDEVICE") else ["multidevice"]

# The persistent compilation cache, shared by this process and every subprocess the tests start
# (the runner, notebooks, fake-device suites), so the same step is compiled once per CI run.
# JAXNOTES_COMPILE_CACHE=0 turns it off (to measure what it saves).
os.environ.setdefault(
    "JAXNOTES_CACHE_DIR", str(Path(__file__).parent.parent / ".pytest_cache" / "jaxnotes-xla")
)
from jaxnotes import compile_cache  # noqa: E402

compile_cache.enable()

# Nothing in the suite reaches the internet: the book's data sets are never downloaded unless a
# test serves them itself (tests/test_download.py, a server on 127.0.0.1).
os.environ["JAXNOTES_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path, monkeypatch):
    """Each test keeps downloaded and decoded data sets to itself (never ~/.cache/jaxnotes)."""
    monkeypatch.setenv("JAXNOTES_DATA_DIR", str(tmp_path / "jaxnotes-data"))


@pytest.fixture(scope="session")
def digits():
    """The embedded digits data set: (train, test)."""
    from jaxnotes import data

    return data.load("digits", "train"), data.load("digits", "test")
