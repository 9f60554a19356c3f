"""jaxnotes: the classic CNN chapters of Dive into Deep Learning in JAX/Flax.

Submodules are imported on demand (``from jaxnotes import ops``); importing the package itself
pulls in nothing heavy. The version, the package's name and its repository are named once, in
``jaxnotes.release``.
"""

from jaxnotes.release import VERSION as __version__

__all__ = ["__version__"]
