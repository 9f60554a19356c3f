"""Data parallelism on 4 fake CPU devices equals one device (run by tests/test_parallel.py).

Every comparison is against the single-device run of the same global batch, the independent
reference here: the parallel paths must compute exactly the function it computes.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from user_models import TinyResNet

from jaxnotes import cli, data, parallel, training

pytestmark = pytest.mark.skipif(jax.device_count() != 4, reason="needs JAX_NUM_CPU_DEVICES=4")

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train"), data.load("digits", "test")


def _config(model: str, **overrides) -> training.TrainConfig:
    base = dict(model=model, batch_size=32, learning_rate=0.1, progress=False)
    if model == "lenet":
        base.update(resize=28, learning_rate=0.5)
    return training.TrainConfig(**{**base, **overrides})


def _train(config, train_data, placement, steps: int, model=None, raw=False, every=None):
    """``steps`` training steps on the same global batches; returns params (host) and metrics.

    With ``raw`` the placed state itself comes back (pmap: one copy per device); with ``every``
    a list of (variables, metrics) after each of those step counts (one compile for all)."""
    parts = training.build(config, train_data, placement, model=model)
    state = training.create_train_state(parts.model, parts.tx, parts.input_shape, config.seed)
    state, metrics = placement.put(state), placement.put(training.empty_metrics())
    batches = data.train_batches(train_data, config.batch_size, seed=0, epoch=0)
    snapshots = []
    for done, batch in enumerate(placement.batches(batches), start=1):
        state, metrics = parts.train_step(state, batch, metrics)
        if every and done in every:
            variables = {"params": state.params, **state.model_state}
            snapshots.append((placement.host(variables), placement.host(metrics)))
        if done == steps:
            break
    if every:
        return snapshots
    if raw:
        return state
    variables = {"params": state.params, **state.model_state}
    return placement.host(variables), placement.host(metrics)


@pytest.mark.parametrize("model", ["mlp", "lenet"])  # with dropout and without
@pytest.mark.parametrize("path", ["sharded", "pmap"])
def test_four_devices_equal_one(digits, model, path):
    # After 1 and after 10 steps, from one compiled step per placement.
    config = _config(model)
    reference = _train(config, digits[0], parallel.SingleDevice(), 10, every=(1, 10))
    placement = parallel.make_placement(4, path)
    assert placement.num_devices == 4
    ours = _train(config, digits[0], placement, 10, every=(1, 10))
    for steps, (params, metrics), (ref_params, ref_metrics) in zip(
        (1, 10), ours, reference, strict=True
    ):  # noqa: E501
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(metrics["loss_sum"], ref_metrics["loss_sum"], rtol=1e-5)
        assert float(metrics["correct"]) == float(ref_metrics["correct"])
        assert float(metrics["count"]) == 32 * steps


def test_batchnorm_model_on_four_sharded_devices_equals_one(digits):
    # On the mesh XLA computes the global batch's statistics: parameters AND running averages
    # match one device after 10 steps.
    config = _config(None)  # SGD: Adam's first steps turn float noise into sign flips
    reference, ref_metrics = _train(config, digits[0], parallel.SingleDevice(), 10, TinyResNet())
    placement = parallel.ShardedDataParallel(4)
    variables, metrics = _train(config, digits[0], placement, 10, TinyResNet())
    assert "batch_stats" in variables
    flat_ref = jax.tree_util.tree_leaves_with_path(reference)
    for (path, ours), (_, ref) in zip(
        jax.tree_util.tree_leaves_with_path(variables), flat_ref, strict=True
    ):
        np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5, err_msg=str(path))
    np.testing.assert_allclose(metrics["loss_sum"], ref_metrics["loss_sum"], rtol=1e-5)


def test_batchnorm_under_pmap_averages_the_running_statistics(digits):
    # Each device normalises with its own slice; after the step the running statistics are
    # averaged over devices: every device holds the same values, and the running MEAN equals
    # one device's (the mean of equal slices' means is the batch mean).
    config = _config(None)
    state = _train(config, digits[0], parallel.PmapDataParallel(4), 1, TinyResNet(), raw=True)
    stats = jax.tree.map(np.asarray, state.model_state["batch_stats"])
    for leaf in jax.tree.leaves(stats):
        assert leaf.shape[0] == 4
        np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))
    single, _ = _train(config, digits[0], parallel.SingleDevice(), 1, TinyResNet())
    np.testing.assert_allclose(
        stats["BatchNorm_0"]["mean"][0], single["batch_stats"]["BatchNorm_0"]["mean"], rtol=1e-5
    )


def test_batchnorm_model_trains_under_pmap_to_the_same_band(digits):
    config = _config(
        None, devices=4, parallel="pmap", epochs=8, optimizer="adam",
        learning_rate=3e-3,
    )  # fmt: skip
    result = training.fit(
        config, model=TinyResNet(), train_data=digits[0], test_data=digits[1], log=lambda s: None
    )
    assert result.summary["devices"] == 4
    assert result.summary["test_acc"] >= 0.93, result.history


def test_sharded_state_is_replicated_and_batch_split(digits):
    config = _config("mlp")
    placement = parallel.ShardedDataParallel(4)
    parts = training.build(config, digits[0], placement)
    state = placement.put(
        training.create_train_state(parts.model, parts.tx, (8, 8, 1), config.seed)
    )
    batch = next(iter(placement.batches(data.train_batches(digits[0], 32, seed=0, epoch=0))))
    assert batch["image"].sharding.spec == jax.sharding.PartitionSpec("batch")
    assert {s.data.shape[0] for s in batch["image"].addressable_shards} == {8}
    leaf = jax.tree.leaves(state.params)[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.addressable_shards) == 4


def test_runner_with_four_devices_matches_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    summaries = {}
    for devices in (1, 4):
        args = ["--epochs", "1", "--devices", str(devices), "--no-progress"]
        assert cli.main([*args, "--workdir", f"d{devices}"]) == 0
        summaries[devices] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    one, four = summaries[1], summaries[4]
    assert four["devices"] == 4 and one["devices"] == 1
    assert abs(four["train_loss"] - one["train_loss"]) / one["train_loss"] < 1e-4
    assert four["test_acc"] == one["test_acc"]


def test_batch_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="does not divide by 4 devices"):
        parallel.check_devices(4, 30)
    with pytest.raises(ValueError, match="only 4 exist"):
        parallel.check_devices(8, 32)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_train_like_one(digits, tmp_path):
    """jax.distributed on localhost: 2 processes x 2 CPU devices, each feeding half the batch."""
    port = _free_port()
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2"}
    env.pop("JAXNOTES_MULTIDEVICE", None)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "two_process_worker.py"),
                f"localhost:{port}",
                str(i),
                str(tmp_path),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]
    per_process = [dict(np.load(tmp_path / f"params_{i}.npz")) for i in range(2)]
    # The reference: the same settings in ONE process on ONE device (no mesh, no collectives).
    import dataclasses

    from two_process_worker import CONFIG  # noqa: E402 (same settings as the workers)

    alone = dataclasses.replace(CONFIG, devices=1)
    single = training.fit(alone, train_data=digits[0], test_data=digits[1], log=lambda s: None)
    assert single.summary["devices"] == 1
    reference = {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(single.state.params)
    }
    assert per_process[0].keys() == reference.keys()
    for name in reference:
        np.testing.assert_array_equal(per_process[0][name], per_process[1][name])
        np.testing.assert_allclose(per_process[0][name], reference[name], atol=1e-5, rtol=1e-5)
    assert "process 0 of 2" in outputs[0] and "process 1 of 2" in outputs[1]
    # The metrics process 0 wrote are the single run's, epoch by epoch.
    written = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]  # noqa: E501
    assert len(written) == len(single.history) == CONFIG.epochs
    for ours, ref in zip(written, single.history, strict=True):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert ours[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
    # Only process 0 wrote the run's files (history, summary, plot).
    assert "files written by process 1: 0" in outputs[1], outputs[1][-1500:]
    written_by_0 = int(outputs[0].rsplit("files written by process 0: ", 1)[1].split()[0])
    assert written_by_0 >= CONFIG.epochs + 2  # metrics per epoch, the summary, the plot


def test_pmap_through_fit_equals_the_sharded_path_and_resumes_on_four_devices(digits, tmp_path):
    config = _config("mlp", epochs=2, devices=4)  # dropout: per-example keys on both paths
    run = lambda cfg, workdir=None, **kw: training.fit(  # noqa: E731
        cfg, workdir, train_data=digits[0], test_data=digits[1], log=lambda s: None, **kw
    )
    sharded = run(config)
    pmapped = run(dataclasses_replace(config, parallel="pmap"))
    assert pmapped.summary["devices"] == 4
    for a, b in zip(
        jax.tree.leaves(sharded.state.params), jax.tree.leaves(pmapped.state.params), strict=True
    ):  # noqa: E501
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert pmapped.history[-1]["test_acc"] == sharded.history[-1]["test_acc"]
    # Resume on 4 devices under pmap: 1 epoch, then on to 2, equals the straight 2 epochs.
    pmap_config = dataclasses_replace(config, parallel="pmap")
    run(dataclasses_replace(pmap_config, epochs=1), tmp_path / "split")
    resumed = run(pmap_config, tmp_path / "split", resume=True)
    for a, b in zip(
        jax.tree.leaves(pmapped.state.params), jax.tree.leaves(resumed.state.params), strict=True
    ):  # noqa: E501
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)


def test_the_runner_with_pmap_matches_the_sharded_runner(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    summaries = {}
    for path in ("sharded", "pmap"):
        args = ["--model", "mlp", "--epochs", "1", "--devices", "4", "--parallel", path]
        assert cli.main([*args, "--no-progress", "--workdir", path]) == 0
        summaries[path] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summaries["pmap"]["devices"] == 4
    assert summaries["pmap"]["test_acc"] == summaries["sharded"]["test_acc"]
    assert summaries["pmap"]["train_loss"] == pytest.approx(
        summaries["sharded"]["train_loss"], rel=1e-5
    )


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_a_population_split_over_four_devices_equals_one_device(digits):
    # The member axis is sharded (each device holds whole members): no member's arithmetic
    # changes, so 4 devices give what 1 gives.
    from jaxnotes import population

    config = training.TrainConfig(model="mlp", epochs=1, batch_size=64, progress=False)
    members = [
        population.Member(seed=s, learning_rate=lr, dropout=rate)
        for s, (lr, rate) in enumerate([(0.1, 0.2), (0.05, 0.0), (0.2, 0.5), (0.02, 0.3)])
    ]
    one, four = (
        population.fit_population(
            config,
            members,
            train_data=digits[0],
            eval_data=digits[1],
            devices=n,
            log=lambda s: None,
        )  # fmt: skip
        for n in (1, 4)
    )
    assert four.summary["devices"] == 4
    for a, b in zip(jax.tree.leaves(one.state), jax.tree.leaves(four.state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert [r["val_acc"] for r in one.rows] == [r["val_acc"] for r in four.rows]
