# %% [setup]
# @title Set-up: size, install, device { display-mode: "form" }
SIZE = "book"  # @param ["book", "small"]
INSIST = False  # @param {type:"boolean"}
# "book": the book's data and settings, on this runtime's GPU/TPU (on a CPU runtime the notebook
# runs them when they take a few minutes, else says how long and runs "small" unless INSIST).
# "small": digits, in a minute or two.
import glob
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import time

START = time.perf_counter()
PACKAGE, VERSION = "jaxnotes", "0.0.0"  # this notebook's release (filled in when it is built)
REPO = "https://github.com/OWNER/NAME"  # its repository (filled in too)
MODELS = ()  # what this chapter trains at the book size (filled in too)
UPLOADS = "/content"  # where Colab's Files panel puts an uploaded file


def skip_later_cells(shell, why):
    """Every later cell prints one line instead of running (the set-up cell may run again)."""

    def skip(lines):
        if any("@title Set-up" in line for line in lines):
            return lines
        return [f"print({why!r})\n"]

    skip.jaxnotes = True
    shell.input_transformers_post.append(skip)


def install_jaxnotes():
    """pip install the first of: $JAXNOTES_PACKAGE, PyPI, the release tag, main, an uploaded
    wheel; Colab's own jax and jaxlib stay pinned. Returns what was tried, or None."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("jax", "jaxlib")]
    wheels = sorted(glob.glob(f"{UPLOADS}/{PACKAGE}-*.whl"), key=os.path.getmtime)
    specs = [
        os.environ.get("JAXNOTES_PACKAGE"), f"{PACKAGE}=={VERSION}",
        f"{PACKAGE} @ git+{REPO}@v{VERSION}", f"{PACKAGE} @ git+{REPO}@main", *wheels[-1:],
    ]  # fmt: skip
    for spec in filter(None, specs):
        command = [sys.executable, "-m", "pip", "install", "-q", spec, *pins]
        if subprocess.run(command, capture_output=True, text=True).returncode == 0:
            print(f"installed {spec}")
            importlib.invalidate_caches()
            return None
    uploaded = f"{UPLOADS}/{PACKAGE}-*.whl" + ("" if wheels else " (none uploaded)")
    return ", ".join([*filter(None, specs[:4]), uploaded])


from IPython import get_ipython

SHELL = get_ipython()
if SHELL is not None:  # run again after a failed install: let the cells run again
    kept = [t for t in SHELL.input_transformers_post if not hasattr(t, "jaxnotes")]
    SHELL.input_transformers_post[:] = kept
READY = importlib.util.find_spec(PACKAGE) is not None
if not READY:
    on_colab = "google.colab" in sys.modules
    tried = install_jaxnotes() if on_colab else f"nothing (not on Colab: {sys.executable})"
    READY = tried is None
if not READY:
    print(
        f"{PACKAGE} {VERSION} could not be installed, so this notebook stops here: the cells "
        f"below print one line instead of running.\nTried: {tried}.\nTo go on, either upload "
        f"{PACKAGE}-{VERSION}-py3-none-any.whl from {REPO}/releases (Files panel, on the left) "
        "and run this cell again, or, in a new cell above, point JAXNOTES_PACKAGE at a pip spec "
        f'(os.environ["JAXNOTES_PACKAGE"] = "{PACKAGE}==<version>", a git URL or a path) and '
        "run it, then this cell."
    )
    if SHELL is not None:
        skip_later_cells(SHELL, f"(not run: {PACKAGE} is not installed; see the set-up cell)")
else:
    import matplotlib.pyplot as plt

    from jaxnotes import notebook as nbk

    # Figures a class can read: 100 dpi, text of 10 pt and more.
    plt.rcParams.update({"figure.dpi": 100, "font.size": 10, "legend.fontsize": 10})
    SIZE = nbk.start(os.environ.get("JAXNOTES_SIZE") or SIZE, insist=INSIST, models=MODELS)
