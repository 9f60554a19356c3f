"""Claims the docs make that had no test: each one checked against the thing it claims.

summary.json, checkpoint retention, standardization statistics, the cosine schedule's values,
state donation, how often metrics reach the host, the GPU side of the CPU fast-path switch.
"""

import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from helpers import fit_quietly, quick_config

from jaxnotes import cli, data, optim, parallel, plots, training
from jaxnotes.models import cpu_kernels, get_model

STEPS = 1257 // 64


_config, _fit = quick_config, fit_quietly


def test_summary_json_is_the_printed_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--model", "mlp", "--epochs", "1", "--batch-size", "64", "--no-progress"]
    assert cli.main([*args, "--workdir", "w"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stored = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert {k: v for k, v in printed.items() if k != "edition"} == stored
    history = [
        json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()
    ]  # noqa: E501
    assert stored["test_acc"] == history[-1]["test_acc"] and stored["steps"] == STEPS


def test_only_the_newest_checkpoints_are_kept(digits, tmp_path):
    _fit(_config(epochs=4, keep_checkpoints=2), digits, tmp_path)
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [3 * STEPS, 4 * STEPS]
    _fit(_config(epochs=3, keep_checkpoints=5), digits, tmp_path / "five")
    kept = sorted(int(p.name) for p in (tmp_path / "five" / "checkpoints").iterdir())
    assert kept == [STEPS, 2 * STEPS, 3 * STEPS]


def test_standardize_uses_the_training_split_statistics_only(digits):
    train, test = digits
    shifted = data.from_arrays(test.images * 0.5 + 0.3, test.labels, 10)  # other statistics
    parts = training.build(_config(normalization="standardize"), train, test_data=shifted)
    flat = np.asarray(train.images, np.float64).reshape(-1, 1)
    mean, std = flat.mean(0), flat.std(0)
    got = np.asarray(parts.preprocess(jnp.asarray(shifted.images[:16])))
    np.testing.assert_allclose(got, (shifted.images[:16] - mean) / std, rtol=1e-4, atol=1e-5)


def _applied_rates(config, digits, steps: int) -> np.ndarray:
    """The learning rate the optimizer ``fit`` builds applies at each of ``steps`` updates:
    plain SGD moves a weight by exactly lr * gradient, so a gradient of 1 reads it off."""
    tx = training.build(config, digits[0]).tx
    params = {"w": jnp.zeros((2, 2))}
    state, rates = tx.init(params), []
    for _ in range(steps):
        updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
        rates.append(-float(updates["w"][0, 0]))
    return np.array(rates)


def test_fits_cosine_schedule_is_the_closed_form_over_the_whole_run(digits):
    # 1,257 digits at batch 64: 19 steps per epoch, 3 epochs: the decay reaches 0 at update 57.
    config = _config(schedule="cosine", learning_rate=0.3, epochs=3)
    total = 3 * (len(digits[0]) // 64)
    rates = _applied_rates(config, digits, total + 3)
    expected = [
        0.3 * 0.5 * (1 + math.cos(math.pi * min(t, total) / total)) for t in range(total + 3)
    ]
    np.testing.assert_allclose(rates, expected, rtol=1e-6, atol=1e-7)  # float32


def test_warmup_rises_linearly_then_the_schedule_follows(digits):
    config = _config(schedule="cosine", learning_rate=0.3, epochs=3, warmup_steps=10)
    total = 3 * (len(digits[0]) // 64)
    rates = _applied_rates(config, digits, total)
    warm = [0.3 * t / 10 for t in range(10)]
    decay = [
        0.3 * 0.5 * (1 + math.cos(math.pi * (t - 10) / (total - 10))) for t in range(10, total)
    ]
    np.testing.assert_allclose(rates, warm + decay, rtol=1e-6, atol=1e-7)


def test_the_train_step_donates_the_state_and_metrics():
    model = get_model("mlp")
    tx = optim.make_optimizer("sgd", 0.1)
    state = training.create_train_state(model, tx, (8, 8, 1), seed=0)
    metrics = training.empty_metrics()
    batch = {"image": jnp.ones((4, 8, 8, 1)), "label": jnp.arange(4, dtype=jnp.int32)}
    step = training.jit_train_step(training.make_train_step(model, tx))
    new_state, new_metrics = step(state, batch, metrics)
    for leaf in jax.tree.leaves(state) + jax.tree.leaves(metrics):
        assert leaf.is_deleted()  # its buffer now holds the new state
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new_state))


def test_metrics_reach_the_host_once_per_log_interval(digits, monkeypatch):
    pulls = []
    original = parallel.SingleDevice.host

    def counting(self, tree):
        if isinstance(tree, dict) and "bad_step" in tree:  # the training accumulator
            pulls.append(1)
        return original(self, tree)

    monkeypatch.setattr(parallel.SingleDevice, "host", counting)
    _fit(_config(epochs=2, log_every=5), digits)
    # steps 5, 10, 15 | 20, 25, 30, 35 cross a multiple of 5; plus one pull at each epoch's end
    assert len(pulls) == 3 + 4 + 2


def test_the_fast_paths_step_aside_on_a_gpu(monkeypatch):
    x = jnp.ones((1, 8, 8, 1), jnp.float32)
    assert cpu_kernels.fast_path_enabled(x)  # this machine: CPU, float32
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not cpu_kernels.fast_path_enabled(x)
    assert not cpu_kernels.fast_path_enabled(x.astype(jnp.bfloat16))
    # With the switch off, a model lowers to XLA's own convolution: no custom-VJP calls.
    model = get_model("lenet")
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
    text = str(jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, jnp.zeros((1, 28, 28, 1))))
    assert "conv_general_dilated" in text and "custom_vjp" not in text


def test_the_learning_curve_plot_draws_the_history(tmp_path):
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + 0.1 * e, "test_acc": 0.4 + 0.1 * e}
        for e in (1, 2, 3)
    ]
    fig = plots.learning_curves(history, tmp_path / "curves.png", title="mlp")
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    assert set(lines) == {"train loss", "train acc", "test acc"}
    np.testing.assert_allclose(lines["train loss"].get_ydata(), [1.0, 0.5, 1 / 3])
    np.testing.assert_array_equal(lines["test acc"].get_xdata(), [1, 2, 3])
    assert all(np.isfinite(line.get_ydata()).all() for line in lines.values())
    assert Path(tmp_path / "curves.png").stat().st_size > 1000
    plots.close(fig)


def test_no_test_skips_torch_silently_on_python_311():
    # The live PyTorch comparisons must run (and fail if torch is missing) on the 3.11 leg.
    if sys.version_info < (3, 12):
        import torch  # noqa: F401 -- an ImportError here is the failure
