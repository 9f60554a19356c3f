"""The Colab notebooks (colab/*.ipynb) and their helper module, jaxnotes/notebook.py.

Every notebook is executed top to bottom with nbclient at ``JAXNOTES_SIZE=small`` (digits, a
few steps) and fails the run on any error. The committed files must be exactly what
``colab/make_notebooks.py`` generates, with no outputs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from jaxnotes import notebook as nbk

ROOT = Path(__file__).resolve().parent.parent
COLAB = ROOT / "colab"
NAMES = [
    "01_model_selection",
    "02_weight_decay",
    "03_dropout",
    "04_convolution",
    "05_channels",
    "06_pooling",
    "07_lenet",
    "08_vgg",
    "09_nin",
    "10_googlenet",
]
INSTALL_URL = "git+https://github.com/jaxnotes/jaxnotes"


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", COLAB / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(name: str) -> dict:
    return json.loads((COLAB / f"{name}.ipynb").read_text())


def _code_cells(notebook: dict) -> list[str]:
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


# --- the committed files -----------------------------------------------------------------------


def test_every_chapter_has_a_notebook():
    assert sorted(p.stem for p in COLAB.glob("*.ipynb")) == NAMES
    assert list(_generator().NOTEBOOKS) == NAMES


def test_committed_notebooks_are_what_the_generator_writes():
    generator = _generator()
    stale = [n for n in NAMES if (COLAB / f"{n}.ipynb").read_text() != generator.build(n)]
    assert not stale, f"regenerate with `python colab/make_notebooks.py`: {stale}"


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    notebook = _load(name)
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{name}: a code cell carries outputs"
            assert cell["execution_count"] is None, f"{name}: a code cell has an execution count"
    assert (COLAB / f"{name}.ipynb").stat().st_size < 64_000


@pytest.mark.parametrize("name", NAMES)
def test_notebook_structure(name):
    notebook = _load(name)
    cells = notebook["cells"]
    assert cells[0]["cell_type"] == "markdown"
    intro = "".join(cells[0]["source"])
    badge = (
        f"https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/{name}.ipynb"
    )
    assert badge in intro and "jaxnotes." in intro  # the Colab link and the module it explains
    code = _code_cells(notebook)
    first, last = code[0], code[-1]
    # Installs only on Colab, from the repository named in the README, then shows the devices.
    assert f'"{INSTALL_URL}"' in first and '"google.colab" in sys.modules' in first
    assert first.index("google.colab") < first.index("import jax") < first.index("jax.devices()")
    assert last.startswith("# Results") and "time" in last
    assert any("plots." in c or "plt." in c or "plot_" in c for c in code), "no figure"


# --- jaxnotes.notebook ---------------------------------------------------------------------------


def test_size_switch(monkeypatch):
    monkeypatch.delenv(nbk.ENV_VAR, raising=False)
    assert nbk.size() == "book" and not nbk.is_small()
    assert nbk.dataset_name() == "fashion_mnist"
    monkeypatch.setenv(nbk.ENV_VAR, " Small ")
    assert nbk.size() == "small" and nbk.is_small()
    assert nbk.dataset_name() == "digits"
    assert "small" in nbk.describe() and "'book'" in nbk.describe()
    monkeypatch.setenv(nbk.ENV_VAR, "")
    assert nbk.size() == "book"
    monkeypatch.setenv(nbk.ENV_VAR, "huge")
    with pytest.raises(ValueError, match="JAXNOTES_SIZE"):
        nbk.size()
    with pytest.raises(ValueError, match="unknown size"):
        nbk.dataset_name("medium")


def test_chapter_config_follows_the_presets():
    from train.presets import BOOK, DIGITS

    for model in ("lenet", "vgg11_small", "nin", "googlenet", "mlp", "alexnet"):
        config, limits = nbk.chapter_config(model, "book")
        assert (config.model, config.dataset, limits) == (model, "fashion_mnist", (None, None))
        for field, value in BOOK[model].items():
            assert getattr(config, field) == value, (model, field)

        config, limits = nbk.chapter_config(model, "small")
        run = nbk.SMALL_RUNS[model]
        assert config.dataset == "digits"
        assert config.epochs == (run.epochs or DIGITS[model]["epochs"])
        assert config.resize == DIGITS[model]["resize"]
        assert config.learning_rate == DIGITS[model]["learning_rate"]
        assert limits == (run.train_examples, run.test_examples)
        assert not config.progress

    config, _ = nbk.chapter_config("lenet", "small", epochs=3, model_kwargs={"activation": "relu"})
    assert config.epochs == 3 and config.model_kwargs == {"activation": "relu"}
    with pytest.raises(ValueError, match="unknown model"):
        nbk.chapter_config("resnet", "small")


def test_small_runs_stay_small():
    for model in nbk.SMALL_RUNS:
        config, (n_train, _) = nbk.chapter_config(model, "small")
        steps = (n_train or 1257) // config.batch_size * config.epochs
        limit = 700 if model in ("lenet", "mlp") else 32
        assert steps <= limit, (model, steps)


def test_subset_is_fixed_and_ordered():
    from jaxnotes import data

    digits = data.load("digits", "test")
    a, b = nbk.subset(digits, 100, seed=3), nbk.subset(digits, 100, seed=3)
    assert len(a) == 100 and (a.labels == b.labels).all() and (a.images == b.images).all()
    assert nbk.subset(digits, None) is digits and nbk.subset(digits, 10_000) is digits
    with pytest.raises(ValueError, match="subset size must be >= 1, got 0"):
        nbk.subset(digits, 0)


def test_settings_are_copies_for_each_size():
    for chapter in nbk.CHAPTER_SETTINGS:
        book, small = nbk.settings(chapter, "book"), nbk.settings(chapter, "small")
        assert set(book) == set(small)
        book.clear()
        assert nbk.settings(chapter, "book")
    assert nbk.settings("model_selection", "book")["search_trials"] == 100
    with pytest.raises(ValueError, match="unknown chapter"):
        nbk.settings("resnet")


def test_results_line():
    summary = {
        "test_acc": 0.9, "test_loss": 0.3, "train_acc": 0.95, "train_loss": 0.2,
        "epochs": 2, "steps": 10, "examples_per_sec": 1234.5,
    }  # fmt: skip
    line = nbk.results_line("LeNet", SimpleNamespace(summary=summary), 3.21, params=61_706)
    assert line.startswith("LeNet: test acc 0.9000")
    assert "61,706 parameters" in line and "10 steps in 3.2 s" in line and "1,234" in line


def test_run_chapter_training_small(monkeypatch):
    monkeypatch.setenv(nbk.ENV_VAR, "small")
    lines = []
    result, seconds = nbk.run_chapter_training("lenet", epochs=1, log=lines.append)
    assert result.summary["dataset"] == "digits" and result.summary["epochs"] == 1
    assert seconds > 0 and lines[0].startswith("training lenet on digits (1,257 train")
    assert len(result.history) == 1


# --- executing the notebooks ---------------------------------------------------------------------


def _execute(notebook, cwd: Path):
    from nbclient import NotebookClient

    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return notebook


def _stream(notebook) -> str:
    return "".join(
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "stream"
    )


def test_kernel_runs_this_python(tmp_path):
    """nbclient's "python3" kernel must be this interpreter (this venv's jax, jaxnotes)."""
    import nbformat

    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import sys\nprint(sys.executable)")]
    )
    out = _stream(_execute(notebook, tmp_path)).strip()
    assert os.path.realpath(out) == os.path.realpath(sys.executable)


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_at_small_size(name, tmp_path, monkeypatch):
    monkeypatch.setenv(nbk.ENV_VAR, "small")
    start = time.perf_counter()
    import nbformat

    executed = _execute(nbformat.read(COLAB / f"{name}.ipynb", as_version=4), tmp_path)
    seconds = time.perf_counter() - start
    text = _stream(executed)
    assert "JAXNOTES_SIZE=small" in text
    assert "notebook time:" in text.splitlines()[-1]
    images = sum(
        "image/png" in out.get("data", {})
        for cell in executed.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )
    assert images >= 1, f"{name} drew no figure"
    print(f"{name}: {seconds:.1f} s")
