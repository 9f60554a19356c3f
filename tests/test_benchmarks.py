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
from torch_reference import reference

from jaxnotes.models import BOOK_INPUT_SIZE, get_model
from jaxnotes.shapes import count_params

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import flax_reference  # noqa: E402
import throughput  # noqa: E402

MODELS = throughput.MODELS


def _torch_models():
    # The live PyTorch twins (Python 3.11, where torch is a dev dependency); on 3.12 the
    # values come stored (torch_reference).
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
    reference_tree = _abstract_params(flax_reference.get_model(name), side)
    # The same tree (paths and shapes) is stronger than equal counts: layer by layer the same.
    assert jax.tree.structure(reference_tree) == jax.tree.structure(ours)
    shapes = lambda tree: jax.tree.map(lambda a: a.shape, tree)  # noqa: E731
    assert shapes(reference_tree) == shapes(ours)
    expected = count_params(ours)
    assert flax_reference.NAMES == MODELS
    assert count_params(reference_tree) == expected

    def torch_count(torch):
        torch_models = _torch_models()
        assert torch_models.NAMES == MODELS
        return np.array([torch_models.count_params(torch_models.get_model(name))], np.int64)

    assert int(reference(f"twin_params_{name}", torch_count)[0]) == expected


# GoogLeNet and NiN end in a global average pool, so their parameters do not depend on the input
# size: smaller inputs than the book's keep the CPU cost low and test the same layers. AlexNet and
# VGG's dense layers fix their input at the book's 224.
TWINS = [("lenet", 28), ("googlenet", 32), ("nin", 72), ("alexnet", 224), ("vgg11_small", 224)]


def _twin_inputs(name: str, side: int):
    model = get_model(name)
    params = _random_params(_abstract_params(model, side), seed=1)
    x = np.random.default_rng(2).uniform(size=(2, side, side, 1)).astype(np.float32)
    cotangent = np.random.default_rng(3).normal(size=(2, 10)).astype(np.float32)
    samples = np.random.default_rng(4).choice(x.size, 256, replace=False)
    return model, params, x, cotangent, samples


def _summary(logits, input_grad, kernel_grads, bias_grads, samples):
    """What is compared: the logits, 256 entries of the input gradient, and the squared norms
    of all kernel and all bias gradients (layout-free: PyTorch's OIHW is a permutation)."""
    return np.concatenate(
        [
            np.ravel(logits),
            np.ravel(input_grad)[samples],
            [sum(float(np.sum(np.square(g))) for g in kernel_grads)],
            [sum(float(np.sum(np.square(g))) for g in bias_grads)],
        ]
    ).astype(np.float32)


@pytest.mark.parametrize(("name", "side"), TWINS)
def test_same_function_and_gradient_with_the_same_weights_as_the_torch_twin(name, side):
    model, params, x, cotangent, samples = _twin_inputs(name, side)

    # Ours: the eval-mode forward and the gradient of <logits, cotangent> (inputs and weights).
    def objective(p, x):
        logits = model.apply({"params": p}, x, train=False)
        return jnp.sum(logits * cotangent), logits

    (_, logits), (param_grads, input_grad) = jax.jit(
        jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)
    )(params, x)
    flat = jax.tree_util.tree_leaves_with_path(param_grads)
    kernels = [g for path, g in flat if "kernel" in jax.tree_util.keystr(path)]
    biases = [g for path, g in flat if "bias" in jax.tree_util.keystr(path)]
    ours = _summary(logits, input_grad, kernels, biases, samples)
    assert np.asarray(logits).shape == (2, 10) and np.abs(logits).max() > 1e-3
    reference_logits = jax.jit(
        lambda p, x: flax_reference.get_model(name).apply({"params": p}, x, train=False)
    )(params, x)
    np.testing.assert_allclose(reference_logits, logits, atol=1e-4, rtol=1e-4)

    def torch_twin(torch):
        torch_models = _torch_models()
        net = torch_models.get_model(name).eval()
        torch_models.load_flax_params(net, model, params, (1, side, side, 1))
        image = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
        out = net(image)
        (out * torch.from_numpy(cotangent)).sum().backward()
        layers = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
        return _summary(
            out.detach().numpy(),
            image.grad.numpy().transpose(0, 2, 3, 1),
            [m.weight.grad.numpy() for m in layers],
            [m.bias.grad.numpy() for m in layers],
            samples,
        )

    theirs = reference(f"twin_{name}_{side}", torch_twin)
    scale = np.abs(theirs[:-2]).max()
    np.testing.assert_allclose(ours[:-2], theirs[:-2], atol=1e-4 * max(scale, 1.0), rtol=1e-3)
    np.testing.assert_allclose(ours[-2:], theirs[-2:], rtol=1e-3)  # the two gradient norms


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


@pytest.mark.slow
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
