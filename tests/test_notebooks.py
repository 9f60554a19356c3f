"""The chapter notebooks (colab/*.ipynb), their sources (colab/src/*.py) and jaxnotes.notebook.

On both legs: every notebook is its source, built (same cells, the shared set-up cell, a hash of
the code its stored outputs came from), carries the outputs of a real run without errors, shows
the figures a learner expects (counted and named below) and cites nothing a reader cannot see.
On the Python 3.12 leg (marker ``notebooks``, Colab's Python): every notebook is executed at the
small size; the key numbers are asserted by the notebooks' own cells.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
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
# The figures each notebook shows at the small size, in order (each counted once: a figure
# displayed twice, or a live curve that left a trail of partial plots, fails the count).
FIGURES: dict[str, list[str]] = {
    "01_model_selection": [
        "polynomial fits: under-, well- and over-fitted", "K-fold assignment of the examples",
        "K-fold scores per fold", "random search: validation accuracy per setting",
        "a drifting series and the means each standardization sees", "class imbalance: recalls",
    ],
    "02_weight_decay": ["||w|| and losses over lambda", "train/validation loss per epoch"],
    "03_dropout": [
        "dropout demo curves", "digits with their class names", "live curves: MLP",
        "live curves: MLP with dropout", "predictions vs truth, mistakes in red",
    ],
    "04_convolution": [
        "edge detection (signed scale)", "loss while learning the kernel",
        "the kernel as it is learned", "edge kernels at stride 1 and 2",
    ],
    "05_channels": ["four kernels on a digit and their maps", "a 1x1 mix of the maps"],
    "06_pooling": ["digits and their max/average pools", "pooling tolerates a 1-pixel shift"],
    "07_lenet": [
        "live curves: LeNet", "first-layer kernels (signed scale)",
        "their feature maps on a test image (signed scale)", "predictions vs truth",
    ],
    "08_vgg": [
        "VGG block diagram", "receptive field per block and parameters per model",
        "live curves: AlexNet", "live curves: VGG-11/4", "VGG predictions vs truth",
    ],
    "09_nin": ["NiN block diagram", "live curves: NiN", "NiN predictions vs truth"],
    "10_googlenet": [
        "Inception block diagram (four paths)", "output channels per path per block",
        "live curves: GoogLeNet", "GoogLeNet predictions vs truth",
    ],
}  # fmt: skip


def _build():
    spec = importlib.util.spec_from_file_location("colab_build", COLAB / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _build()


def _read(name: str):
    import nbformat

    return nbformat.read(COLAB / f"{name}.ipynb", as_version=4)


def _images(notebook) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


def _text(outputs) -> str:
    parts = []
    for out in outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif "text/plain" in out.get("data", {}):
            parts.append(out.data["text/plain"] + "\n")
    return "".join(parts)


# --- the committed files ------------------------------------------------------------------------


def test_every_chapter_has_a_source_and_a_notebook():
    assert build.names() == NAMES
    assert sorted(p.stem for p in COLAB.glob("*.ipynb")) == NAMES
    assert set(FIGURES) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_its_source_built_and_run(name):
    why = build.mismatch(name)
    assert why is None, f"{name}.ipynb: {why}; rebuild with `make notebooks`"


def test_check_catches_a_stale_notebook(tmp_path, monkeypatch):
    """The sync check fails for each way a notebook can drift from its source."""
    import nbformat

    (tmp_path / "src").mkdir()
    for name in ("_setup", "07_lenet"):
        (tmp_path / "src" / f"{name}.py").write_text((COLAB / "src" / f"{name}.py").read_text())
    monkeypatch.setattr(build, "HERE", tmp_path)
    monkeypatch.setattr(build, "SOURCES", tmp_path / "src")
    stored = _read("07_lenet")

    def check(notebook) -> str | None:
        nbformat.write(notebook, tmp_path / "07_lenet.ipynb")
        return build.mismatch("07_lenet")

    assert check(stored) is None
    source = tmp_path / "src" / "07_lenet.py"
    source.write_text(source.read_text().replace("# %%\n", "# %%\nx = 1\n", 1))
    assert "cells differ" in check(stored)
    source.write_text((COLAB / "src" / "07_lenet.py").read_text())
    stale = nbformat.from_dict(stored)
    stale.metadata["jaxnotes"]["code_hash"] = "0" * 16
    assert "another source" in check(stale)
    unrun = nbformat.from_dict(stored)
    unrun.cells[-1].execution_count, unrun.cells[-1].outputs = None, []
    assert "carry no outputs" in check(unrun)
    failed = nbformat.from_dict(stored)
    failed.cells[-1].outputs = [nbformat.v4.new_output("error", ename="E", evalue="", traceback=[])]
    assert "stored an error" in check(failed)
    assert build.main(["--check", "07_lenet"]) == 1


@pytest.mark.parametrize("name", NAMES)
def test_notebook_structure(name):
    notebook = _read(name)
    intro = notebook.cells[0]
    assert intro.cell_type == "markdown" and build.COLAB_URL.format(name) in intro.source
    setup = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert setup.source == build.setup_cell(name)
    # The first output states size, device, versions and date.
    first = _text(setup.outputs).splitlines()[-1]
    assert re.fullmatch(
        r"size (small|book) \| .+ \((cpu|gpu|tpu)\) \| "
        r"jaxnotes [\d.]+, jax [\d.]+, flax [\d.]+, optax [\d.]+ \| \d{4}-\d\d-\d\d",
        first,
    ), first
    last = [cell for cell in notebook.cells if cell.cell_type == "code"][-1]
    assert "notebook time:" in _text(last.outputs)
    assert notebook.metadata["jaxnotes"]["source"] == f"colab/src/{name}.py"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_shows_its_figures(name):
    assert _images(_read(name)) == len(FIGURES[name]), FIGURES[name]


# Things a reader of the notebook cannot open: repository files, the test suite, CI.
INTERNAL = re.compile(
    r"\b(?:jaxnotes|train|colab|tests|benchmarks)/\S*|\w+\.md\b|\bCI\b|\bpytest\b|\btest_\w+"
)


@pytest.mark.parametrize("name", NAMES)
def test_text_cites_nothing_a_reader_cannot_see(name):
    notebook = _read(name)
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            found = INTERNAL.findall(re.sub(r"https?://\S+", "", cell.source))
            assert not found, f"{name}: the text cites {found}"
        else:
            assert not re.search(r"^\s*(from|import) train\b", cell.source, re.M), name


def test_repository_growth_is_modest():
    sizes = {name: (COLAB / f"{name}.ipynb").stat().st_size for name in NAMES}
    assert max(sizes.values()) < 500_000, sizes
    assert sum(sizes.values()) < 3_000_000, sizes


def test_setup_cell_on_colab_keeps_its_jax(monkeypatch, capsys):
    """On Colab the cell installs this release from the repository with jax and jaxlib pinned to
    the versions already there (pip can then never replace them), then prints the devices."""
    import importlib.metadata
    import subprocess

    import jaxnotes

    commands = []
    monkeypatch.setitem(sys.modules, "google.colab", SimpleNamespace())
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: commands.append(cmd))
    monkeypatch.setenv(nbk.ENV_VAR, "small")
    exec(build.setup_cell("10_googlenet"), {})
    (command,) = commands
    assert command[:4] == [sys.executable, "-m", "pip", "install"]
    assert "-U" not in command and "--upgrade" not in command
    repo = "https://github.com/jaxnotes/jaxnotes"
    assert f"jaxnotes @ git+{repo}@v{jaxnotes.__version__}" in command
    for name in ("jax", "jaxlib"):
        assert f"{name}=={importlib.metadata.version(name)}" in command
    out = capsys.readouterr().out
    assert out.index("devices after the install: [CpuDevice") < out.index("size small |")
    # One place names the repository.
    assert build.setup_cell("10_googlenet").count("github.com") == 1


# --- jaxnotes.notebook ---------------------------------------------------------------------------


def test_start_on_a_cpu_falls_back_from_the_book_size(monkeypatch, capsys):
    from jaxnotes.presets import BOOK

    monkeypatch.delenv(nbk.ENV_VAR, raising=False)
    assert nbk.start("book", models=("lenet", "googlenet")) == "small"
    # The estimate: the book's epochs of 60,000 images at the CPU's measured images/s.
    hours = (BOOK["lenet"]["epochs"] / 12_787 + BOOK["googlenet"]["epochs"] / 55.3) * 60_000 / 3600
    lines = capsys.readouterr().out.splitlines()
    assert f"about {hours:,.1f} h on this CPU runtime" in lines[0] and "INSIST" in lines[0]
    assert lines[1].startswith("size small | ") and nbk.size() == "small"
    assert nbk.start("book", insist=True, models=("googlenet",)) == "book"
    assert nbk.size() == "book" and capsys.readouterr().out.startswith("size book | ")
    assert nbk.start("book") == "book"  # nothing heavy to train: no fallback


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
    from jaxnotes.presets import BOOK, DIGITS

    for model in ("lenet", "vgg11_small", "nin", "googlenet", "mlp", "alexnet"):
        config, limits = nbk.chapter_config(model, "book")
        assert (config.model, config.dataset, limits) == (model, "fashion_mnist", (None, None))
        for field, value in BOOK[model].items():
            assert getattr(config, field) == value, (model, field)

        config, limits = nbk.chapter_config(model, "small")
        run = nbk.SMALL_RUNS[model]
        expected = {**DIGITS[model], "epochs": run.epochs or DIGITS[model]["epochs"]}
        expected.update(run.overrides)
        for field, value in expected.items():
            assert getattr(config, field) == value, (model, field)
        assert config.dataset == "digits" and not config.progress
        assert limits == (run.train_examples, run.test_examples)

    config, _ = nbk.chapter_config("lenet", "small", epochs=3, model_kwargs={"activation": "relu"})
    assert config.epochs == 3 and config.model_kwargs == {"activation": "relu"}
    with pytest.raises(ValueError, match="unknown model"):
        nbk.chapter_config("resnet", "small")


def test_small_runs_stay_small():
    for model in nbk.SMALL_RUNS:
        config, (n_train, _) = nbk.chapter_config(model, "small")
        steps = (n_train or 1257) // config.batch_size * config.epochs
        limit = 700 if model in ("lenet", "mlp") else 250
        assert steps <= limit, (model, steps)


def test_subset_is_fixed_and_ordered():
    from jaxnotes import data

    digits = data.load("digits", "test")
    a, b = nbk.subset(digits, 100, seed=3), nbk.subset(digits, 100, seed=3)
    assert len(a) == 100 and (a.labels == b.labels).all() and (a.images == b.images).all()
    assert a.class_names == digits.class_names == tuple(str(i) for i in range(10))
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


# --- figures --------------------------------------------------------------------------------------


def test_signed_maps_share_one_zero_centred_scale():
    from jaxnotes import plots

    a, b = np.array([[0.5, -2.0], [1.0, 0.0]]), np.array([[3.0, 0.1], [-0.2, 0.0]])
    fig = plots.signed_maps([a, b], ["a", "b"])
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 and len(fig.axes) == 3  # two maps and one colour bar
    for ax in panels:
        image = ax.images[0]
        assert image.get_cmap().name == "RdBu_r" and image.get_clim() == (-3.0, 3.0)
    plots.close(fig)


def test_labelled_images_mark_the_mistakes():
    from jaxnotes import plots

    images = np.zeros((3, 4, 4, 1))
    fig = plots.labelled_images(images, [0, 1, 2], ["cat", "dog", "cow"], predictions=[0, 2, 2])
    titles = [(ax.get_title(), ax.title.get_color()) for ax in fig.axes[:3]]
    assert titles == [("cat", "black"), ("cow\n(dog)", "crimson"), ("cow", "black")]
    plots.close(fig)


def test_block_diagram_draws_every_layer():
    from jaxnotes import plots

    paths = [["1x1 conv"], ["1x1 conv", "3x3 conv"], ["3x3 max pool", "1x1 conv"]]
    fig = plots.block_diagram(paths, "Inception")
    texts = [t.get_text() for t in fig.axes[0].texts if t.get_text()]  # arrows have none
    assert sorted(texts) == sorted(["input", "concatenate on channels", *sum(paths, [])])
    plots.close(fig)


# --- executing ------------------------------------------------------------------------------------


def _execute(notebook, cwd: Path, timeout: int = 600):
    from nbclient import NotebookClient

    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return notebook


def test_kernel_runs_this_python(tmp_path):
    """nbclient's "python3" kernel must be this interpreter (this venv's jax, jaxnotes)."""
    import os

    import nbformat

    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import sys\nprint(sys.executable)")]
    )
    out = _text(_execute(notebook, tmp_path).cells[0].outputs).strip()
    assert os.path.realpath(out) == os.path.realpath(sys.executable)


def test_live_curves_grow_in_one_figure(tmp_path):
    """In a kernel each epoch redraws ONE displayed figure (no trail of partial plots), and the
    curves hold exactly what fit reported."""
    import nbformat

    code = (
        "import os\nos.environ['JAXNOTES_SIZE'] = 'small'\n"
        "from jaxnotes import notebook as nbk\n"
        "result, _ = nbk.run_chapter_training('lenet', epochs=3, curves='LeNet', log=print)\n"
        "print([round(row['test_acc'], 6) for row in result.history])"
    )
    notebook = _execute(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)]), tmp_path)
    outputs = notebook.cells[0].outputs
    shown = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(shown) == 1 and shown[0].output_type == "display_data"
    lines = _text(outputs).splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 3, lines
    assert lines[-1].startswith("[") and len(eval(lines[-1])) == 3


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_at_small_size(name, tmp_path, monkeypatch):
    """Executed from its source; its own cells assert the numbers its text states."""
    monkeypatch.setenv(nbk.ENV_VAR, "small")
    executed = _execute(build.from_source(name), tmp_path)
    assert _images(executed) == len(FIGURES[name]), FIGURES[name]
    setup = next(cell for cell in executed.cells if cell.cell_type == "code")
    assert "size small |" in _text(setup.outputs)
