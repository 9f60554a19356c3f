"""benchmarks/throughput.py compares like with like: the PyTorch models (``torch_models``), the
plain Flax reference (``flax_reference``) and our model zoo are the same architectures (the
batch-norm ones with the same running statistics and the same bare step), the analytic FLOPs are
the layers' own, and the scripts run end to end (tiny settings, CPU, without grain and TFDS as on
the GPU machines), the GPU check's budget and summary included."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from torch_reference import MODERN_FIXTURE, reference

from jaxnotes.models import BOOK_INPUT_SIZE, get_model
from jaxnotes.shapes import count_params

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import flax_reference  # noqa: E402
import gpu_check  # noqa: E402
import throughput  # noqa: E402

MODELS = throughput.MODELS
STATEFUL = flax_reference.STATEFUL  # resnet18, densenet: batch norm, a batch_stats collection


def _torch_models():
    # The live PyTorch twins (Python 3.11, where torch is a dev dependency); on 3.12 the
    # values come stored (torch_reference).
    import torch_models

    return torch_models


def _abstract_variables(model, side: int):
    init = lambda x: model.init(jax.random.key(0), x, train=False)
    return jax.eval_shape(init, jax.ShapeDtypeStruct((1, side, side, 1), jnp.float32))


def _abstract_params(model, side: int):
    return _abstract_variables(model, side)["params"]


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
    ours_all = _abstract_variables(get_model(name), side)
    reference_all = _abstract_variables(flax_reference.get_model(name), side)
    # The same trees (paths and shapes) are stronger than equal counts: layer by layer the
    # same, for the parameters and for batch norm's running statistics.
    assert sorted(reference_all) == sorted(ours_all)
    assert ("batch_stats" in ours_all) == (name in STATEFUL)
    shapes = lambda tree: jax.tree.map(lambda a: a.shape, tree)  # noqa: E731
    for collection in ours_all:
        assert jax.tree.structure(reference_all[collection]) == jax.tree.structure(
            ours_all[collection]
        ), collection
        assert shapes(reference_all[collection]) == shapes(ours_all[collection]), collection
    ours, reference_tree = ours_all["params"], reference_all["params"]
    expected = count_params(ours)
    assert flax_reference.NAMES == MODELS
    assert count_params(reference_tree) == expected

    def torch_count(torch):
        torch_models = _torch_models()
        assert set(MODELS) <= set(torch_models.MODELS)
        return np.array([torch_models.count_params(torch_models.get_model(name))], np.int64)

    # The batch-norm twins' counts are stored with tests/test_modern_cnn.py's references.
    fixture = {"fixture": MODERN_FIXTURE} if name in STATEFUL else {}
    assert int(reference(f"twin_params_{name}", torch_count, **fixture)[0]) == expected


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


# The batch-norm models at small inputs (their parameters do not depend on the input size): the
# bare step of the plain Flax reference against our model's own forward pass and gradient.
BN_TWINS = [("resnet18", 32), ("densenet", 32)]


def _random_batch_stats(abstract, seed: int = 5):
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return jnp.asarray(rng.uniform(0.5, 1.5, size=leaf.shape), jnp.float32)
        return jnp.asarray(rng.normal(scale=0.1, size=leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "side"), BN_TWINS)
def test_batch_norm_reference_step_equals_our_model_step(name, side):
    model, bare = get_model(name), flax_reference.get_model(name)
    abstract = _abstract_variables(model, side)
    params = _random_params(abstract["params"], seed=1)
    stats = _random_batch_stats(abstract["batch_stats"])
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(4, side, side, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=(4,)).astype(np.int32)

    # Evaluation: the running statistics, the same logits.
    def evaluate(module):
        return jax.jit(lambda p, s: module.apply({"params": p, "batch_stats": s}, x, train=False))

    ours_eval = evaluate(model)(params, stats)
    assert np.abs(ours_eval).max() > 1e-3
    np.testing.assert_allclose(evaluate(bare)(params, stats), ours_eval, atol=1e-4, rtol=1e-4)

    # Training: our model's loss, gradient and updated statistics, by hand ...
    def loss(p):
        variables = {"params": p, "batch_stats": stats}
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce, updates["batch_stats"]

    (ours_loss, ours_stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    lr = 0.1
    expected = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    # ... against one step of the bare reference (SGD): batch_stats threaded through it.
    tx = optax.sgd(lr)
    step = flax_reference.make_train_step(bare, tx)
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731 -- the step donates its inputs
    new_params, new_stats, _, bare_loss = step(
        copy(params), copy(stats), tx.init(params), x, y, jax.random.key(0)
    )
    np.testing.assert_allclose(bare_loss, ours_loss, rtol=1e-4)
    assert jax.tree.structure(new_stats) == jax.tree.structure(stats)
    old, new = jax.tree.leaves(stats), jax.tree.leaves(new_stats)
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(new, old, strict=True)]
    assert min(moved) > 0  # every running average moved
    for got, want in zip(jax.tree.leaves(new_stats), jax.tree.leaves(ours_stats), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    for got, want in zip(jax.tree.leaves(new_params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def _conv_macs(side: int, kernel: int, c_in: int, c_out: int, stride: int = 1, pad: int = 0):
    out = (side + 2 * pad - kernel) // stride + 1
    return out, out * out * kernel * kernel * c_in * c_out


def _resnet18_macs(side: int) -> int:
    """d2l's ResNet-18, counted layer by layer from the book's architecture."""
    side, total = _conv_macs(side, 7, 1, 64, stride=2, pad=3)
    side = (side + 2 - 3) // 2 + 1  # max pool 3/2 p1
    c_in = 64
    for stage, channels in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            out, first = _conv_macs(side, 3, c_in, channels, stride, pad=1)
            total += first + _conv_macs(out, 3, channels, channels, pad=1)[1]
            if stride == 2:
                total += _conv_macs(side, 1, c_in, channels, stride)[1]  # the 1x1 shortcut
            side, c_in = out, channels
    return total + c_in * 10


def _densenet_macs(side: int) -> int:
    """d2l's DenseNet (growth 32, 4 dense blocks of 4), counted from the book's architecture."""
    side, total = _conv_macs(side, 7, 1, 64, stride=2, pad=3)
    side = (side + 2 - 3) // 2 + 1
    channels = 64
    for index in range(4):
        for _ in range(4):
            total += _conv_macs(side, 3, channels, 32, pad=1)[1]
            channels += 32
        if index < 3:
            total += _conv_macs(side, 1, channels, channels // 2)[1]
            channels //= 2
            side //= 2  # average pool 2/2
    return total + channels * 10


@pytest.mark.parametrize(
    ("name", "count"), [("resnet18", _resnet18_macs), ("densenet", _densenet_macs)]
)
def test_flops_per_image_of_the_batch_norm_models(name, count):
    macs = count(BOOK_INPUT_SIZE[name])
    assert macs == {"resnet18": 318_657_536, "densenet": 129_077_168}[name]  # at 96x96x1
    assert throughput.flops_per_image(name, BOOK_INPUT_SIZE[name]) == 6 * macs


def test_cells_skipped_by_the_time_budget_are_listed_and_left_out():
    results, lines = {}, []
    budget = throughput.Budget(deadline=__import__("time").time() + 5)
    ran = throughput.cell(
        results, "a-bf16", lambda: {"images_per_s": 1.0}, lines.append, budget, 60
    )
    assert not ran and "time budget" in results["a-bf16"]["skipped"] and "SKIPPED" in lines[0]
    assert throughput.cell(
        results, "a-fp32", lambda: {"images_per_s": 2.0}, lines.append, budget, 1
    )
    assert results["a-fp32"]["images_per_s"] == 2.0 and results["a-fp32"]["wall_s"] >= 0
    assert throughput.skipped_cells({"lenet": results}) == [
        f"lenet a-bf16: {results['a-bf16']['skipped']}"
    ]
    settings = throughput.parse_args(["--models", "lenet"], accelerator=False)
    (row,) = throughput.summary_rows({"lenet": results}, settings, None)
    assert row["a-bf16"] is None and row["a-fp32"] == 2.0  # a skipped cell shows as "-"


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


# --- the GPU check (benchmarks/gpu_check.py): budget, hard stop, summary --------------------------


def _fake_record(export_diff: float = 2e-5, compilations: int = 1) -> dict:
    """What gpu_check.py gathers from its parts, as they write it (numbers invented)."""
    a = {"images_per_s": 40_000.0, "compilations": compilations}
    jax_results = {
        "lenet": {
            "a-bf16": a,
            "a-fp32": {"images_per_s": 30_000.0, "compilations": 1},
            "b": {"images_per_s": 38_000.0, "compilations": 1, "compiled_in_epoch": 0},
            "e-bf16": {"images_per_s": 20_000.0, "compilations": 1},
            "flops_per_image": 2.5e6,
        }
    }
    late_results = {"lenet": {"e-fp32": {"skipped": "time budget: ~9 s needed, 3 s left"}}}
    torch_results = {"lenet": {"c": {"images_per_s": 10_000.0}, "d": {"error": "OOM"}}}
    ok = {"status": "ok", "wall_s": 1.0}
    return {
        "parts": {
            "1-jax": {**ok, "result": {"results": jax_results, "peak_tflops": 800.0}},
            "1-torch": {**ok, "result": {"results": torch_results}},
            "1-e-fp32": {**ok, "result": {"results": late_results}},
            "2": {
                **ok,
                "result": {
                    "cells": {
                        "P=1": {"examples_per_s": 100.0, "vs_P1": 1.0},
                        "P=64": {"examples_per_s": 3200.0, "vs_P1": 32.0},
                    },
                    "ratio_P64_over_P1": 32.0,
                    "skipped": ["P=64 chunks of 4: time budget"],
                },
            },
            "3": {
                **ok,
                "result": {
                    "cells": {
                        "lenet fp32": {
                            "precision": "fp32",
                            "batch": 256,
                            "size": 28,
                            "images_per_s": 60_000.0,
                            "epoch_s": 1.0,
                            "ten_epochs_s": 10.0,
                            "first_call_s": 2.0,
                            "compilations": 1,
                            "compiled_in_epoch": 0,
                        }
                    }
                },
            },  # fmt: skip
            "4": {
                **ok,
                "result": {
                    "cells": {
                        "lenet fp16": {
                            "images_per_s": 9000.0,
                            "test_acc": 0.97,
                            "skipped_steps": 3,
                            "steps": 936,
                            "epochs": 12,
                            "batch": 16,
                            "compilations": 1,
                        }
                    }
                },
            },  # fmt: skip
            "5": {
                **ok,
                "result": {
                    "cells": {
                        "lenet.export": {
                            "max_abs_diff": export_diff,
                            "tolerance": 1e-4,
                            "pass": export_diff <= 1e-4,
                        }
                    }
                },
            },
            "6": {
                **ok,
                "result": {
                    "results": {
                        "alexnet": {
                            "a-bf16": {"images_per_s": 8000.0, "compilations": 1},
                            "a-bf16-batchkeys": {"images_per_s": 10_000.0, "compilations": 1},
                        }
                    }
                },
            },
        },
        "skipped": [],
    }


def test_gpu_check_summary_merges_the_parts_and_says_pass_or_fail():
    record = _fake_record()
    merged = gpu_check.merged_throughput(record)
    assert merged["lenet"]["c"]["images_per_s"] == 10_000.0  # the PyTorch half joined in
    text = "\n".join(gpu_check.summary_lines(record))
    row = next(line for line in text.splitlines() if line.startswith("lenet "))
    assert "4.00x" in row  # a/c: 40,000 / 10,000
    assert "2.00x" in row  # a/e
    assert "no recompilation after the first step: PASS" in text
    assert "P=64 / P=1 (summed examples/s): 32.00x" in text
    assert "lenet.export" in text and "PASS" in text
    assert "per-example keys cost 20.0%" in text
    assert "lenet e-fp32: time budget" in text and "P=64 chunks of 4" in text  # the skipped
    assert gpu_check.passed(record)
    assert record["skipped"] == []  # the summary does not change the record's lists

    failing = _fake_record(export_diff=3e-3, compilations=2)
    text = "\n".join(gpu_check.summary_lines(failing))
    assert "no recompilation after the first step: FAIL" in text
    assert "lenet a-bf16 compiled 2 times" in text
    assert "max abs diff 3.000e-03 (tolerance 0.0001): FAIL" in text
    assert not gpu_check.passed(failing)


def test_gpu_check_kills_a_part_at_the_deadline(tmp_path):
    import time

    part = gpu_check.Part(
        "x", "a part that never ends", [sys.executable, "-c", "import time; time.sleep(60)"], 0
    )
    started = time.time()
    out = gpu_check.run_part(part, tmp_path / "x.json", started + 2, lambda line: None)
    assert out["status"] == "killed at the time budget"
    assert time.time() - started < 20


def test_gpu_check_skips_the_parts_that_do_not_fit(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent)}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--out", str(tmp_path), "--budget", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["parts"] == {} and len(record["skipped"]) == 8
    assert "SKIPPED (time budget):" in done.stdout and "part 1-jax" in done.stdout


def test_export_check_reports_a_missing_fixture(tmp_path):
    import gpu_parts

    out = tmp_path / "part5.json"
    status = gpu_parts.main(["export", "--fixtures", str(tmp_path), "--json", str(out), "--tiny"])
    record = json.loads(out.read_text())
    assert status == 1
    assert "make_export_fixture.py" in record["cells"]["lenet.export"]["error"]


@pytest.mark.slow
def test_export_fixture_loads_and_matches_on_this_backend(tmp_path):
    """make_export_fixture.py then part 5 of the GPU check, here on the CPU: PASS."""
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent)}
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, *map(str, args)], env=env, capture_output=True, text=True, timeout=600
    )
    made = run(BENCHMARKS / "make_export_fixture.py", "--out", tmp_path, "--epochs", "1")
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    stored = np.load(tmp_path / "lenet_probabilities.npz")
    assert stored["images"].shape == (256, 8, 8, 1) and stored["probabilities"].shape == (256, 10)
    checked = run(BENCHMARKS / "gpu_parts.py", "export", "--fixtures", tmp_path, "--json",
                  tmp_path / "part5.json")  # fmt: skip
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    cells = json.loads((tmp_path / "part5.json").read_text())["cells"]
    assert cells["lenet.export"]["pass"] and cells["lenet_highest.export"]["pass"]
    assert cells["lenet.export"]["max_abs_diff"] < 1e-6  # the same backend: to rounding
