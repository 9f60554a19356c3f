"""What this release is called and where it lives: the one place that names them.

The set-up cell of every notebook installs ``PYPI_NAME==VERSION`` (or the tag ``vVERSION`` of
``REPOSITORY``), the Colab badges of the README and of the notebooks point into ``REPOSITORY``,
and the wheel's version (pyproject.toml reads ``VERSION`` from here) is the same number; the
notebook builder (``colab/build.py``) writes all of them from these three lines.
"""

PYPI_NAME = "jaxnotes"
VERSION = "0.1.0"
REPOSITORY = "https://github.com/jaxnotes/jaxnotes"
BRANCH = "main"  # what the Colab badges open


def colab_url(notebook: str) -> str:
    """The Colab address of ``colab/<notebook>.ipynb`` on ``BRANCH`` of ``REPOSITORY``."""
    path = REPOSITORY.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/{BRANCH}/colab/{notebook}.ipynb"


def colab_badge(notebook: str) -> str:
    """The "Open In Colab" badge (Markdown) of ``colab/<notebook>.ipynb``."""
    image = "https://colab.research.google.com/assets/colab-badge.svg"
    return f"[![Open In Colab]({image})]({colab_url(notebook)})"
