"""jaxnotes: the classic CNN chapters of Dive into Deep Learning in JAX/Flax.

Submodules are imported on demand (``from jaxnotes import ops``); importing the package itself
pulls in nothing heavy.
"""

__version__ = "0.1.0"
