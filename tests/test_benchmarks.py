"""benchmarks/throughput.py compares like with like: the PyTorch models (``torch_models``), the
plain Flax reference (``flax_reference``) and our model zoo are the same architectures, and the
script runs end to end (tiny settings, CPU, without grain and TFDS as on the GPU machines)."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnotes.models import BOOK_INPUT_SIZE, get_model
from jaxnotes.shapes import count_params

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import flax_reference  # noqa: E402
import throughput  # noqa: E402

MODELS = throughput.MODELS


def _torch_models():
    # torch (CPU) is in the dev extra on Python 3.11; the 3.12 compat venv runs without it.
    pytest.importorskip("torch")
    import torch_models

    return torch_models


def _abstract_params(model, side: int):
    init = lambda x: model.init(jax.random.key(0), x, train=False)["params"]
    return jax.eval_shape(init, jax.ShapeDtypeStruct((1, side, side, 1), jnp.float32))


def _random_params(abstract, seed: int = 0):
    """Values for a parameter tree, kernels scaled by fan-in so activations stay O(1) (cheaper
    on CPU than compiling a big model's ``init``)."""
    rng = np.random.default_rng(seed)

    def fill(leaf):
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 100
        return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), jnp.float32)

    return jax.tree.map(fill, abstract)


@pytest.mark.parametrize("name", MODELS)
def test_same_parameters_in_all_three_implementations(name):
    side = BOOK_INPUT_SIZE[name]
    ours = _abstract_params(get_model(name), side)
    reference = _abstract_params(flax_reference.get_model(name), side)
    # The same tree (paths and shapes) is stronger than equal counts: layer by layer the same.
    assert jax.tree.structure(reference) == jax.tree.structure(ours)
    assert jax.tree.map(lambda a: a.shape, reference) == jax.tree.map(lambda a: a.shape, ours)
    torch_models = _torch_models()
    expected = count_params(ours)
    assert flax_reference.NAMES == torch_models.NAMES == MODELS
    assert count_params(reference) == expected
    assert torch_models.count_params(torch_models.get_model(name)) == expected


# GoogLeNet and NiN end in a global average pool, so their parameters do not depend on the input
# size: smaller inputs than the book's keep the CPU cost low and test the same layers.
@pytest.mark.parametrize(("name", "side"), [("lenet", 28), ("googlenet", 32), ("nin", 72)])
def test_same_function_with_the_same_weights(name, side):
    torch_models = _torch_models()
    import torch

    model = get_model(name)
    params = _random_params(_abstract_params(model, side), seed=1)
    x = np.random.default_rng(2).uniform(size=(2, side, side, 1)).astype(np.float32)
    # Jitted: one compilation costs less on CPU than GoogLeNet's op-by-op first run.
    forward = lambda m, p, x: jax.jit(lambda p, x: m.apply({"params": p}, x, train=False))(p, x)
    ours = np.asarray(forward(model, params, x))
    got_reference = np.asarray(forward(flax_reference.get_model(name), params, x))

    net = torch_models.get_model(name).eval()
    torch_models.load_flax_params(net, model, params, (1, side, side, 1))
    with torch.no_grad():
        got_torch = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()

    assert ours.shape == (2, 10)
    assert np.abs(ours).max() > 1e-3  # a non-trivial output (random weights, not all zero)
    np.testing.assert_allclose(got_reference, ours, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got_torch, ours, atol=1e-4, rtol=1e-4)


def test_summary_table_and_recompilation_check():
    settings = throughput.parse_args(["--models", "lenet"], accelerator=False)
    results = {
        "lenet": {
            "a-bf16": {"images_per_s": 2000.0, "compilations": 1},
            "a-fp32": {"images_per_s": 1000.0, "compilations": 2},
            "b": {"images_per_s": 1900.0, "compilations": 1, "compiled_in_epoch": 0},
            "c": {"images_per_s": 500.0},
            "d": {"error": "OutOfMemoryError: ..."},
            "e-bf16": {"images_per_s": 1600.0, "compilations": 1},
            "flops_per_image": 6e6,
        }
    }
    (row,) = throughput.summary_rows(results, settings, peak_tflops=1.0)
    assert row["b/a"] == pytest.approx(0.95)
    assert row["a/c"] == pytest.approx(4.0)
    assert row["a/d"] is None  # the failed cell shows as "-"
    assert row["a/e"] == pytest.approx(1.25)
    assert row["TFLOP/s"] == pytest.approx(0.012)
    table = throughput.format_table([row])
    assert "4.00x" in table and "1.25x" in table
    assert throughput.recompilations(results) == ["lenet a-fp32 compiled 2 times"]
    results["lenet"]["b"]["compiled_in_epoch"] = 1  # e.g. a step first compiled mid-epoch
    assert throughput.recompilations(results)[1] == "lenet b compiled 1 step(s) mid-epoch"


# The GPU machines have neither grain nor TFDS: run the script with both made unimportable.
SMOKE = textwrap.dedent(
    """
    import runpy, sys
    for name in ("grain", "tensorflow_datasets", "tensorflow"):
        sys.modules[name] = None  # `import name` now raises ImportError
    sys.argv = ["throughput.py", *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


def test_throughput_smoke_run_without_grain_and_tfds(tmp_path):
    args = ["--models", "lenet", "--steps", "2", "--batch", "8", "--epoch-examples", "64"]
    args += ["--warmup", "1", "--repeats", "1", "--peak-size", "128"]
    args += ["--json", str(tmp_path / "results.json")]
    # Without torch (the 3.12 compat venv) the PyTorch columns c and d are left out, not failed.
    has_torch = importlib.util.find_spec("torch") is not None
    parts = ("a", "b", "c", "d", "e") if has_torch else ("a", "b", "e")
    args += ["--parts", ",".join(parts)]
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent)}
    done = subprocess.run(
        [sys.executable, "-c", SMOKE, *args],
        cwd=BENCHMARKS,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "FAILED" not in out, out
    assert "no recompilation: every jaxnotes step compiled once" in out
    header = next(line for line in out.splitlines() if line.startswith("model "))
    for column in ("a-bf16", "a-fp32", "b", "c", "d", "e-bf16", "e-fp32", "a/c", "a/e", "%peak"):
        assert column in header.split()
    row = next(line for line in out.splitlines() if line.startswith("lenet "))
    cells = dict(zip(header.split(), row.split(), strict=True))
    measured = ["a-bf16", "a-fp32", "b", "b/a", "e-bf16", "e-fp32", "a/e", "TFLOP/s", "%peak"]
    measured += ["c", "d", "a/c", "a/d"] if has_torch else []
    assert all(cells[column] != "-" for column in measured), row  # every cell run was measured
    for label in ("a-bf16", "a-fp32", "b"):
        assert any(
            line.strip().startswith(label) and "compilations 1" in line for line in out.splitlines()
        ), label
    assert (tmp_path / "results.json").exists()
