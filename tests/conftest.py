"""Shared pytest set-up.

tests/multidevice/ needs JAX to start with several (fake CPU) devices, which must be set before
JAX initialises: tests/test_parallel.py runs it in a subprocess with JAX_NUM_CPU_DEVICES=4 and
JAXNOTES_MULTIDEVICE=1; the main run does not collect it.
"""

import os

collect_ignore = [] if os.environ.get("JAXNOTES_MULTIDEVICE") else ["multidevice"]
