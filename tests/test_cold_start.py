"""Cold start: every compiled program of a run counted, the persistent cache exact, init cheap.

Each run here is a fresh process (compilations are per process), with its own cache folder.
"""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import fit_quietly, quick_config

from jaxnotes import compile_cache, optim, training
from jaxnotes.models import get_model

QUICK = ["--model", "mlp", "--batch-size", "64", "--epochs", "2", "--no-progress"]


def _run(args, cwd, cache=None):
    env = dict(os.environ)
    if cache is None:
        env["JAXNOTES_COMPILE_CACHE"] = "0"
    else:
        env["JAXNOTES_CACHE_DIR"], env["JAXNOTES_COMPILE_CACHE"] = str(cache), "1"
    done = subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _params(summary, cwd):
    from jaxnotes.checkpoints import Checkpoints

    checkpoints = Checkpoints(cwd / summary["workdir"] / "checkpoints", 2)
    state = checkpoints.manager.restore(checkpoints.latest_step())
    return jax.tree.leaves(state["state"]["params"])


@pytest.mark.slow
def test_the_compilation_cache_gives_bit_identical_results(tmp_path):
    off = _run([*QUICK, "--workdir", "off"], tmp_path)
    cold = _run([*QUICK, "--workdir", "cold"], tmp_path, cache=tmp_path / "xla")
    warm = _run([*QUICK, "--workdir", "warm"], tmp_path, cache=tmp_path / "xla")
    assert off["profile"]["compiles"]["cache_hits"] == 0
    assert cold["profile"]["compiles"]["cache_hits"] == 0 and any((tmp_path / "xla").iterdir())
    assert warm["profile"]["compiles"]["cache_hits"] == warm["compiled_programs"] == 3
    for name in ("train_loss", "test_loss", "test_acc"):
        assert off[name] == cold[name] == warm[name], name
    for a, b, c in zip(
        _params(off, tmp_path), _params(cold, tmp_path), _params(warm, tmp_path), strict=True
    ):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@pytest.mark.slow
def test_a_run_compiles_three_programs_and_a_resume_no_more(tmp_path):
    # init, the train step and the eval step: nothing eager compiles behind the user's back.
    first = _run([*QUICK, "--epochs", "1", "--workdir", "w"], tmp_path)
    assert first["compiled_programs"] == 3, first["profile"]["compiles"]
    names = set(first["profile"]["compiles"]["by_function"])
    assert names == {"jit(initial_state)", "jit(train_step)", "jit(eval_step)"}, names
    resumed = _run([*QUICK, "--epochs", "2", "--workdir", "w", "--resume"], tmp_path)
    assert resumed["compiled_programs"] == 3 and resumed["compilations"] == 1
    # Scanned steps whose count does not divide the epoch: the scan and the single-step tail.
    tail = _run([*QUICK, "--epochs", "1", "--steps-per-dispatch", "4", "--workdir", "t"], tmp_path)
    assert set(tail["profile"]["compiles"]["by_function"]) == names | {"jit(multi_step)"}


def test_the_summary_splits_the_wall_time_into_phases(tmp_path):
    summary = _run([*QUICK, "--workdir", "w"], tmp_path)
    phases = summary["profile"]["phases"]
    assert set(phases) == {"data", "build", "init", "train", "evaluate", "checkpoint", "plot"}
    assert all(seconds >= 0 for seconds in phases.values())
    assert sum(phases.values()) <= summary["wall_s"] + 1e-3  # phases do not overlap


def test_examples_per_sec_counts_step_time_not_the_epochs_data_set_up(digits, monkeypatch):
    # Setting up an epoch's batches (the first imports grain: ~0.2 s) is the "data" phase; the
    # throughput is the steps'. A set-up made 0.3 s slower must not touch it.
    real = training.FitJob.epoch_batches

    def slow(self, *args):
        time.sleep(0.3)
        return real(self, *args)

    monkeypatch.setattr(training.FitJob, "epoch_batches", slow)
    summary = fit_quietly(quick_config(epochs=2), digits).summary
    step_seconds = summary["timed_steps"] * 64 / summary["examples_per_sec"]
    assert step_seconds < 0.3, step_seconds  # 37 MLP steps: milliseconds, not a set-up's sleep
    assert summary["profile"]["phases"]["data"] >= 0.6


@pytest.mark.parametrize("weight_init", ["xavier", "he"])
def test_init_compiled_with_less_optimisation_gives_the_same_parameters(weight_init):
    # The reference: flax's own init, jitted with the default (optimising) compiler. He init
    # draws truncated normals, whose float code is where level 0 differed (by an ulp).
    model, side = get_model("lenet", weight_init=weight_init), 28
    tx = optim.make_optimizer("adam", 1e-3)
    state = training.create_train_state(model, tx, (side, side, 1), seed=5)
    x = np.zeros((1, side, side, 1), np.float32)
    root = jax.random.key(5)
    expected = jax.jit(lambda: model.init(jax.random.fold_in(root, 0), x, train=False))()
    for a, b in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(expected["params"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_the_cache_switch_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXNOTES_CACHE_DIR", str(tmp_path / "here"))
    assert compile_cache.default_directory() == tmp_path / "here"
    monkeypatch.delenv("JAXNOTES_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_directory() == tmp_path / "xdg" / "jaxnotes" / "xla"
    for off in ("0", "false", "off", "no"):
        monkeypatch.setenv("JAXNOTES_COMPILE_CACHE", off)
        assert compile_cache.enable(tmp_path / "never") is None
    assert not (tmp_path / "never").exists()


def test_the_runner_flag_turns_the_cache_off(tmp_path):
    args = [*QUICK, "--epochs", "1", "--no-compile-cache", "--workdir", "w"]
    summary = _run(args, tmp_path, cache=tmp_path / "xla")
    assert summary["profile"]["compiles"]["cache_hits"] == 0
    assert not (tmp_path / "xla").exists() or not any((tmp_path / "xla").iterdir())
