# %% [setup]
# @title Set-up: size, install, device { display-mode: "form" }
SIZE = "book"  # @param ["book", "small"]
INSIST = False  # @param {type:"boolean"}
# "book": the book's data and settings, on this runtime's GPU/TPU (on a CPU runtime the notebook
# says how long that would take and runs "small" unless INSIST). "small": digits, in minutes.
import importlib.metadata
import os
import subprocess
import sys
import time

START = time.perf_counter()
REPO = "https://github.com/jaxnotes/jaxnotes"  # the one place that names the repository
VERSION = "0.0.0"  # this notebook's release (filled in when it is built)
MODELS = ()  # what this chapter trains at the book size (filled in too)
if "google.colab" in sys.modules:
    import jax  # Colab's own jax/jaxlib: pinned below so pip never replaces them

    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("jax", "jaxlib")]
    package = f"jaxnotes @ git+{REPO}@v{VERSION}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package, *pins], check=True)
    print("devices after the install:", jax.devices())

import jax
import matplotlib

from jaxnotes import notebook as nbk

matplotlib.rcParams["figure.dpi"] = 72  # modest PNGs in the stored notebook
SIZE = nbk.start(os.environ.get("JAXNOTES_SIZE") or SIZE, insist=INSIST, models=MODELS)
