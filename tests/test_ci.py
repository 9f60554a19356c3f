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


def test_the_wheel_holds_jaxnotes_only_with_its_data_and_command(tmp_path):
    import sys
    import zipfile

    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0 and "No module named build" in done.stderr:
        pytest.skip("the build package is not installed (dev extra)")
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("jaxnotes-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"jaxnotes", wheel.name.split("-py3")[0] + ".dist-info"}, tops  # no `train`
    assert "jaxnotes/data/digits_test_indices.npy" in names and "jaxnotes/cli.py" in names
    scripts = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt")))
    assert b"jaxnotes-train = jaxnotes.cli:console_main" in scripts
