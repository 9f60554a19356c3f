"""The CI entry points: what .ci/run and the Makefile promise."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("ci, code", [("true", 2), ("", 0)])
def test_a_missing_python_312_fails_the_compat_leg_only_under_ci(ci, code):
    done = subprocess.run(
        ["make", "-s", "test-compat", "COMPAT_PYTHON=", f"CI={ci}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == code, done.stdout + done.stderr
    assert ("this leg must run" if ci else "skipped") in done.stdout


def test_ci_runs_as_ci_and_prints_the_slowest_tests():
    script = (ROOT / ".ci" / "run").read_text()
    assert 'export CI="${CI:-true}"' in script
    assert "--durations=15" in (ROOT / "Makefile").read_text()
