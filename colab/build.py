"""Build the chapter notebooks from their sources: ``colab/src/NN_name.py`` -> ``NN_name.ipynb``.

    python colab/build.py              # rebuild every notebook and execute it (stored outputs)
    python colab/build.py 07_lenet     # just these
    python colab/build.py --check      # exit 1 if a notebook does not match its source
    python colab/build.py --size book  # the stored outputs at the book size (a GPU machine)
    python colab/build.py --badges     # rewrite the Colab badges from jaxnotes.release

A source is a jupytext "percent" script, a plain Python file people can run, edit and lint.
Its cell tagged ``setup`` is replaced by the shared set-up cell (``src/_setup.py``, with this
release's name, version and repository from ``jaxnotes.release`` and the notebook's models
filled in; without the size form in a chapter that has no sizes). The Colab badges of the
sources and of README.md are written from ``jaxnotes.release`` too (``--badges``), and
``--check`` fails while one differs. The notebook is then executed at the
small size on this machine, or with ``--size book`` on a GPU machine (the stored outputs a
reader sees on GitHub and on Colab before running anything), and its metadata records a hash
of its code cells, so ``--check`` (run by the tests) knows whether the stored outputs belong to
the current source.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
README = HERE.parent / "README.md"
# The models each chapter trains at the book size, once per run (the set-up cell's CPU estimate).
MODELS = {
    "03_dropout": ("mlp", "mlp"),
    "07_lenet": ("lenet",),
    "08_vgg": ("alexnet", "vgg11_small"),
    "09_nin": ("nin",),
    "10_googlenet": ("googlenet",),
    "11_batch_norm": ("lenet", "lenet", "lenet_bn"),
    "12_resnet": ("resnet18",),
    "13_densenet": ("densenet",),
}
# Colab opens these on a GPU runtime.
GPU = ("07_lenet", "08_vgg", "09_nin", "10_googlenet", "11_batch_norm", "12_resnet", "13_densenet")
# Chapters whose cells run the same at every size: their set-up cell has no size form.
SIZELESS = ("00_jax_primer", "04_convolution", "05_channels", "06_pooling")
# What a chapter without sizes changes in the set-up cell: no size form (the lines from SIZE's
# to the first import), a title without "size", and a start without one.
SIZE_FORM = re.compile(r'^SIZE = "book".*?\n(?=import )', re.S | re.M)
SIZELESS_LINES = {
    "# @title Set-up: size, install, device": "# @title Set-up: install, device",
    'SIZE = nbk.start(os.environ.get("JAXNOTES_SIZE") or SIZE, insist=INSIST, models=MODELS)': (
        "nbk.start(None)  # nothing here depends on a size"
    ),
}


def names() -> list[str]:
    return sorted(p.stem for p in SOURCES.glob("[0-9][0-9]_*.py"))


def _tuple(names: tuple[str, ...]) -> str:
    """A tuple of strings as ruff formats it (double quotes)."""
    if not names:
        return "()"
    quoted = [f'"{name}"' for name in names]
    return f"({quoted[0]},)" if len(quoted) == 1 else f"({', '.join(quoted)})"


def setup_cell(name: str) -> str:
    """The shared set-up cell (``src/_setup.py``) as notebook ``name`` runs it: this release's
    package, version and repository (``jaxnotes.release``) and the chapter's models filled in;
    without the size form in a chapter that has no sizes."""
    from jaxnotes import release

    text = (SOURCES / "_setup.py").read_text().split("\n", 1)[1]  # without its "# %%" line
    filled = {
        'PACKAGE, VERSION = "jaxnotes", "0.0.0"': (
            f'PACKAGE, VERSION = "{release.PYPI_NAME}", "{release.VERSION}"'
        ),
        'REPO = "https://github.com/OWNER/NAME"': f'REPO = "{release.REPOSITORY}"',
        "MODELS = ()": f"MODELS = {_tuple(MODELS.get(name, ()))}",
        **(SIZELESS_LINES if name in SIZELESS else {}),
    }
    for placeholder, value in filled.items():
        assert placeholder in text, f"_setup.py lost its line {placeholder!r}"
        text = text.replace(placeholder, value)
    if name in SIZELESS:
        text, count = SIZE_FORM.subn("", text)
        assert count == 1, "_setup.py lost its size form"
    return text.strip()


# --- Colab badges: written from jaxnotes.release into the sources and README.md ------------------

BADGE = re.compile(
    r"\[!\[Open In Colab\]\([^)]*\)\]\(https://colab\.research\.google\.com/github/"
    r"[^)]*?/colab/(?P<name>\d\d_\w+)\.ipynb\)"
)


def badge(name: str) -> str:
    from jaxnotes import release

    return release.colab_badge(name)


def with_badges(text: str) -> str:
    """``text`` with every Colab badge of a notebook rewritten from ``jaxnotes.release``."""
    return BADGE.sub(lambda m: badge(m["name"]), text)


def badge_problems() -> list[str]:
    """Sources whose first cell lacks their badge, README.md rows that lack one or differ."""
    problems = []
    for name in names():
        intro = (SOURCES / f"{name}.py").read_text().split("\n# %%", 1)[0]
        if badge(name) not in intro:
            problems.append(f"colab/src/{name}.py: its first cell lacks {badge(name)}")
    readme = README.read_text()
    problems += [f"README.md: no badge for {name}" for name in names() if badge(name) not in readme]
    if with_badges(readme) != readme:
        problems.append("README.md: a badge differs from jaxnotes.release")
    return problems


def write_badges() -> list[Path]:
    """Rewrite the badges of the sources and README.md from ``jaxnotes.release``."""
    changed = []
    for path in [*(SOURCES / f"{name}.py" for name in names()), README]:
        text = path.read_text()
        if with_badges(text) != text:
            path.write_text(with_badges(text))
            changed.append(path)
    return changed


def code_hash(notebook) -> str:
    """The code cells' sources: what the stored outputs were computed from."""
    digest = hashlib.sha256()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode() + b"\0")
    return digest.hexdigest()[:16]


def from_source(name: str):
    """The notebook ``name`` built from its source, not executed."""
    import jupytext
    import nbformat

    notebook = jupytext.read(SOURCES / f"{name}.py", fmt="py:percent")
    for index, cell in enumerate(notebook.cells):
        if "setup" in cell.metadata.get("tags", []):
            notebook.cells[index] = nbformat.v4.new_code_cell(setup_cell(name))
        notebook.cells[index].id = f"cell-{index:02d}"
        notebook.cells[index].metadata.pop("lines_to_next_cell", None)
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": [], "toc_visible": True},
        "jaxnotes": {"source": f"colab/src/{name}.py", "code_hash": code_hash(notebook)},
    }
    if name in GPU:
        notebook.metadata["accelerator"] = "GPU"
    return notebook


def execute(notebook, size: str = "small", timeout: int = 1800):
    """Run every cell at ``size`` in a fresh kernel (this interpreter's environment)."""
    from nbclient import NotebookClient

    os.environ["JAXNOTES_SIZE"] = size
    NotebookClient(notebook, timeout=timeout, kernel_name="python3").execute()
    return notebook


def _cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


def _outputs(notebook, kind: str) -> list[int]:
    """Indices of the code cells with an output of type ``kind`` ("error", ...)."""
    return [
        index
        for index, cell in enumerate(notebook.cells)
        if any(out.get("output_type") == kind for out in cell.get("outputs", []))
    ]


def mismatch(name: str) -> str | None:
    """Why ``colab/name.ipynb`` does not belong to its source (None: it does)."""
    import nbformat

    path = HERE / f"{name}.ipynb"
    if not path.exists():
        return "the notebook is missing"
    stored = nbformat.read(path, as_version=4)
    fresh = from_source(name)
    if _cells(stored) != _cells(fresh):
        return "its cells differ from the source"
    if stored.metadata.get("jaxnotes", {}).get("code_hash") != code_hash(fresh):
        return "its stored outputs were computed from another source"
    code = [i for i, cell in enumerate(stored.cells) if cell.cell_type == "code"]
    unrun = [i for i in code if not stored.cells[i].get("execution_count")]
    if unrun:
        return f"code cells {unrun} carry no outputs (not executed)"
    if errors := _outputs(stored, "error"):
        return f"code cells {errors} stored an error"
    return None


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to build (default: all)")
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    parser.add_argument(
        "--badges", action="store_true",
        help="rewrite the Colab badges of the sources and README.md from jaxnotes.release",
    )  # fmt: skip
    parser.add_argument(
        "--size", choices=("small", "book"), default="small",
        help="the size the stored outputs run at (book: on a GPU machine)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    chosen = args.names or names()
    if args.badges:
        for path in write_badges():
            print(f"badges rewritten: {path}")
        return 0
    if args.check:
        problems = {name: mismatch(name) for name in chosen}
        problems = {name: why for name, why in problems.items() if why}
        for name, why in problems.items():
            print(f"{name}.ipynb: {why}; run: python colab/build.py {name}", file=sys.stderr)
        badges = badge_problems()
        for why in badges:
            print(f"{why}; run: python colab/build.py --badges", file=sys.stderr)
        return 1 if problems or badges else 0
    for name in chosen:
        notebook = execute(from_source(name), args.size)
        nbformat.write(notebook, HERE / f"{name}.ipynb")
        print(f"built {name}.ipynb", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
