"""PyTorch references that hold on every CI leg: computed live, and stored for where torch is not.

``reference(key, compute)`` returns what ``compute(torch)`` gives:

- on Python 3.11 (the dev extra pins torch 2.13.0, a CPU build), live, and torch must import:
  a missing torch fails the test instead of skipping it; the live value is also checked against
  the stored one, so a stale fixture fails too;
- on Python 3.12 (no torch wheel here), the value stored in ``fixtures/torch_references.npz``
  or in the file ``fixture=`` names: ``tests/test_modern_cnn.py`` keeps its references in
  ``fixtures/torch_references_modern.npz`` (rerunning the older tests here changes the last
  bits of their stored values, torch's float32 sums being ordered by the machine; apart, the
  new references were added without touching the first file).

Regenerate the fixtures (after changing a reference's inputs) with
``python tests/fixtures/make_torch_references.py [test files]``: it reruns the tests that call
``reference`` with ``JAXNOTES_WRITE_TORCH_REFERENCES=1``, which records every live value.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "fixtures" / "torch_references.npz"
MODERN_FIXTURE = FIXTURE.with_name("torch_references_modern.npz")
LIVE = sys.version_info < (3, 12) or bool(os.environ.get("JAXNOTES_LIVE_TORCH"))
WRITE = bool(os.environ.get("JAXNOTES_WRITE_TORCH_REFERENCES"))
_recorded: dict[Path, dict[str, np.ndarray]] = {}
_stored: dict[Path, dict[str, np.ndarray]] = {}


def stored(fixture: Path = FIXTURE) -> dict[str, np.ndarray]:
    if fixture not in _stored:
        _stored[fixture] = dict(np.load(fixture)) if fixture.exists() else {}
    return _stored[fixture]


def reference(key: str, compute: Callable, fixture: Path = FIXTURE) -> np.ndarray:
    """The PyTorch value ``compute(torch)`` (live on 3.11, stored on 3.12); floats as float32."""
    if not LIVE:
        assert key in stored(fixture), f"{key} is not in {fixture.name}: regenerate it (see above)"
        return stored(fixture)[key]
    import torch  # an ImportError here is the failure: 3.11 must have torch

    value = np.asarray(compute(torch))
    if np.issubdtype(value.dtype, np.floating):
        value = value.astype(np.float32)  # integers (parameter counts) stay exact
    if WRITE:
        if not _recorded:
            atexit.register(_write, torch.__version__)
        _recorded.setdefault(fixture, {})[key] = value
    elif key in stored(fixture):
        np.testing.assert_allclose(value, stored(fixture)[key], rtol=1e-5, atol=1e-6, err_msg=key)
    return value


def _write(version: str) -> None:
    for fixture, recorded in _recorded.items():
        merged = {**stored(fixture), **recorded, "_torch_version": np.array(version)}
        fixture.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(fixture, **merged)
        print(f"wrote {len(recorded)} references (torch {version}) to {fixture}", file=sys.stderr)
