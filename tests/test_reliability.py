"""Nothing lost, nothing silently wrong: each fault class of the reliability issue, reproduced.

Each test sets up the fault for real (a second process holding the workdir, a damaged
checkpoint file, a tmpfs that fills up, SIGINT to a running process, a socket that never answers)
and checks the outcome against an independent fact: an uninterrupted run's numbers, the files
as they were before, the step the fault was placed at.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import fit_quietly, quick_config
from processes import signal_when

from jaxnotes import cli, data, training
from jaxnotes import workdir as workdirs
from jaxnotes.checkpoints import CheckpointError, Checkpoints

QUICK = ["--model", "mlp", "--batch-size", "64", "--no-progress"]  # 19 steps per epoch
STEPS = 1257 // 64


_config, _fit = quick_config, fit_quietly


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (the lock's PID bookkeeping aside)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != workdirs.LOCK_NAME
    }


def _strip(history):
    return [{k: v for k, v in h.items() if k != "wall_s"} for h in history]


def _main(args, capsys) -> tuple[int, list[str]]:
    try:
        code = cli.main(args)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


# --- data lost -----------------------------------------------------------------------------------


def test_a_workdir_in_use_is_refused_naming_the_holder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "busy").mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from jaxnotes.workdir import Lock; from pathlib import Path; "
            "Lock(Path(sys.argv[1])).acquire(); print('held', flush=True); "
            "time.sleep(60)",
            str(tmp_path / "busy"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = _main([*QUICK, "--epochs", "1", "--workdir", "busy"], capsys)
        assert code == 2
        assert f"in use by another run (PID {holder.pid})" in err[-1], err
        assert not workdirs.holds_run(tmp_path / "busy")  # nothing was written
    finally:
        holder.kill()
        holder.wait()
    # The holder died (SIGKILL): the kernel released its lock, nothing stale is left.
    assert _main([*QUICK, "--epochs", "1", "--workdir", "busy"], capsys)[0] == 0


def test_default_run_names_cannot_collide(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "20261201-120000")  # the same second
    made = [workdirs.NewRun(tmp_path / "runs").create() for _ in range(3)]
    assert [p.name for p in made] == ["20261201-120000", "20261201-120000-2", "20261201-120000-3"]


def test_overwrite_keeps_the_old_run_until_the_new_one_first_writes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _main([*QUICK, "--epochs", "1", "--workdir", "w"], capsys)[0] == 0
    before = snapshot(tmp_path / "w")
    assert "summary.json" in before and any(k.startswith("checkpoints/") for k in before)
    # A new configuration that fails its checks (LeNet cannot take 2x2 inputs): nothing lost.
    code, err = _main(
        ["--model", "lenet", "--resize", "2", "--workdir", "w", "--overwrite"], capsys
    )
    assert code == 2 and "LeNet" in err[-1]
    assert snapshot(tmp_path / "w") == before
    # A valid one replaces it.
    assert _main([*QUICK, "--epochs", "2", "--workdir", "w", "--overwrite"], capsys)[0] == 0
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["steps"] == 2 * STEPS
    assert sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir()) == ["19", "38"]


def test_a_finished_run_without_checkpoints_is_not_replaced(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        _main([*QUICK, "--epochs", "1", "--checkpoint-every", "0", "--workdir", "w"], capsys)[0]
        == 0
    )
    before = snapshot(tmp_path / "w")
    assert "summary.json" in before and "metrics.jsonl" in before
    code, err = _main([*QUICK, "--epochs", "1", "--workdir", "w"], capsys)
    assert code == 2 and "already holds a run" in err[-1]
    assert snapshot(tmp_path / "w") == before


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("keep_checkpoints", 0, "keep_checkpoints must be >= 1"),
        ("checkpoint_every_steps", -5, "checkpoint_every_steps must be >= 0"),
        ("checkpoint_every", -1, "checkpoint_every must be >= 0"),
    ],
)
def test_checkpoint_fields_are_range_checked(field, value, message, digits, tmp_path):
    with pytest.raises(ValueError, match=message):
        _fit(_config(**{field: value}), digits, tmp_path / "w")
    assert not (tmp_path / "w").exists()  # validated before any folder is made


def test_late_validation_leaves_no_empty_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (
        ["--model", "lenet", "--resize", "2"],
        ["--model", "lenet", "--resize", "2", "--workdir", "new/run"],
    ):
        code, err = _main([*args, "--no-progress"], capsys)
        assert code == 2 and "LeNet" in err[-1], err
    assert list(tmp_path.iterdir()) == []  # neither runs/ nor new/ was created


# --- silently wrong ------------------------------------------------------------------------------


def test_step_checkpoint_on_an_epochs_last_step_does_not_collide(digits, tmp_path):
    config = _config(checkpoint_every_steps=STEPS)  # due exactly at 19 and 38
    straight = _fit(config, digits, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["19", "38"]
    meta = Checkpoints(tmp_path / "checkpoints", 2).read_meta(STEPS)
    assert [h["epoch"] for h in meta["history"]] == [1]  # the epoch's record is in it
    # Resuming the finished run reports the last epoch, not the first.
    (tmp_path / "summary.json").unlink()
    resumed = _fit(config, digits, tmp_path, resume=True)
    assert _strip(resumed.history) == _strip(straight.history)
    assert resumed.summary["train_loss"] == straight.summary["train_loss"]


def _crash_copy(source: Path, target: Path, last_step: int) -> None:
    """What a run killed just after checkpoint ``last_step`` leaves: later checkpoints gone."""
    shutil.copytree(source, target)
    for step_dir in (target / "checkpoints").iterdir():
        if step_dir.name.isdigit() and int(step_dir.name) > last_step:
            shutil.rmtree(step_dir)
    for name in workdirs.RUN_FILES:
        (target / name).unlink(missing_ok=True)


def test_a_run_resumed_mid_epoch_reports_the_uninterrupted_numbers(digits, tmp_path):
    config = _config(checkpoint_every_steps=7, keep_checkpoints=100)
    straight = _fit(config, digits, tmp_path / "straight")
    _crash_copy(tmp_path / "straight", tmp_path / "crashed", last_step=28)  # epoch 2, step 9/19
    resumed = _fit(config, digits, tmp_path / "crashed", resume=True)
    assert _strip(resumed.history) == _strip(straight.history)  # epoch 2's sums restored
    for a, b in zip(
        jax.tree.leaves(straight.state.params), jax.tree.leaves(resumed.state.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_the_guard_remembers_its_baseline_across_a_resume(digits, tmp_path):
    # lr 20 on the dropout MLP: the loss explodes after a few steps (finite, > 1000 x the first).
    config = _config(
        learning_rate=20.0, model_kwargs={"dropout": 0.0}, checkpoint_every_steps=1, log_every=1
    )
    with pytest.raises(training.TrainingDivergedError) as first:
        _fit(config, digits, tmp_path)
    last_good = Checkpoints(tmp_path / "checkpoints", 2).latest_step()
    # the checkpoint of the weights whose loss the guard saw last: the one before the bad step
    assert last_good == first.value.step - 1
    assert first.value.checkpoint.endswith(f"checkpoints/{last_good}")
    before = snapshot(tmp_path / "checkpoints")
    with pytest.raises(training.TrainingDivergedError) as again:
        _fit(config, digits, tmp_path, resume=True)
    assert again.value.step == first.value.step  # the same bad step, judged by the same baseline
    assert snapshot(tmp_path / "checkpoints") == before  # nothing saved, the good one kept


@pytest.mark.parametrize(
    "labels, num_classes, message",
    [
        ([0, 1, -1, 2], None, "label -1 at index 2 is negative"),
        ([0, 1, 10, 2], 10, r"label 10 at index 2 is outside \[0, 10\)"),
        ([0.0, 1.0, 2.5, 1.0], None, "label 2.5 at index 2 is not"),
        ([0, 1, 2, 3], 3, r"label 3 at index 3 is outside \[0, 3\)"),
        (np.array([True, False, True, True]), None, "labels must be integers, got dtype bool"),
    ],
)
def test_labels_out_of_range_are_rejected_at_load_time(labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        data.from_arrays(np.zeros((4, 8, 8)), labels, num_classes=num_classes)


def test_an_idx_set_with_other_than_ten_classes_is_reported(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        data.write_idx(
            tmp_path / f"{prefix}-images-idx3-ubyte",
            rng.integers(0, 255, (n, 8, 8), dtype=np.uint8),
        )
        labels = rng.integers(0, 10, n).astype(np.uint8)
        labels[3] = 200
        data.write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    train = data.load(f"idx:{tmp_path}", "train")
    assert train.num_classes == 201
    assert "201 classes" in capsys.readouterr().err


def test_the_guard_blames_bad_inputs_and_weight_decay_before_the_learning_rate(digits):
    train, test = digits
    images = train.images.copy()
    images[5] = np.inf
    with pytest.raises(training.TrainingDivergedError) as bad_input:
        _fit(_config(epochs=1), (dataclasses.replace(train, images=images), test))
    text = str(bad_input.value)
    assert "non-finite input value" in text and text.index("non-finite input") < text.index(
        "learning rate too large"
    )
    with pytest.raises(training.TrainingDivergedError) as decay:
        _fit(
            _config(epochs=3, learning_rate=0.5, weight_decay=8.0, model_kwargs={"dropout": 0.0}),
            digits,
        )
    assert "weight decay 8 with learning rate 0.5 (lr x wd = 4 >= 1" in str(decay.value)


def test_throughput_leaves_out_compiles_and_a_one_step_run_reports_null(digits, tmp_path):
    one = _fit(_config(epochs=1, batch_size=1257), digits)  # one step: the one that compiled
    assert one.summary["steps"] == 1 and one.summary["timed_steps"] == 0
    assert one.summary["examples_per_sec"] is None
    _fit(_config(epochs=1), digits, tmp_path)
    resumed = _fit(_config(epochs=2), digits, tmp_path, resume=True)
    # 19 steps after the resume, the first of which compiled: 18 timed, and no second compile.
    assert resumed.summary["timed_steps"] == STEPS - 1 and resumed.compilations == 1
    assert resumed.summary["examples_per_sec"] > 0


def test_resuming_a_cosine_run_with_other_epochs_is_refused(digits, tmp_path):
    _fit(_config(epochs=1, schedule="cosine"), digits, tmp_path)
    with pytest.raises(ValueError, match=r"epochs: 1 -> 3"):
        _fit(_config(epochs=3, schedule="cosine"), digits, tmp_path, resume=True)
    # A constant rate does not depend on the run's length: extending it is allowed.
    _fit(_config(epochs=1), digits, tmp_path / "constant")
    assert len(_fit(_config(epochs=2), digits, tmp_path / "constant", resume=True).history) == 2


# --- tracebacks and hangs ------------------------------------------------------------------------


def _damage_truncate(step_dir: Path) -> None:
    biggest = max(
        (p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])


def _damage_empty(step_dir: Path) -> None:
    shutil.rmtree(step_dir)
    step_dir.mkdir()


def _damage_metadata(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").write_text("{not json")


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_empty, _damage_metadata])
def test_a_damaged_newest_checkpoint_falls_back_to_the_intact_one(damage, digits, tmp_path):
    straight = _fit(_config(), digits, tmp_path / "straight")
    _crash_copy(tmp_path / "straight", tmp_path / "w", last_step=2 * STEPS)
    damage(tmp_path / "w" / "checkpoints" / str(2 * STEPS))
    lines = []
    resumed = _fit(_config(), digits, tmp_path / "w", resume=True, log=lines.append)
    note = [line for line in lines if "is damaged" in line]
    assert len(note) == 1 and f"checkpoints/{2 * STEPS} is damaged" in note[0], lines
    assert (tmp_path / "w" / "damaged-checkpoints" / str(2 * STEPS)).is_dir()  # kept aside
    assert f"resumed from step {STEPS}" in " ".join(lines)
    for a, b in zip(
        jax.tree.leaves(straight.state.params), jax.tree.leaves(resumed.state.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_resume_with_another_model_is_refused_before_reading_arrays(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _main([*QUICK, "--epochs", "1", "--workdir", "w"], capsys)[0] == 0
    before = snapshot(tmp_path / "w")
    code, err = _main(
        ["--model", "lenet", "--epochs", "2", "--workdir", "w", "--resume", "--no-progress"], capsys
    )
    assert code == 2 and "model: 'mlp' -> 'lenet'" in err[-1] and len(err) <= 3, err
    code, err = _main(
        [*QUICK, "--resize", "12", "--epochs", "2", "--workdir", "w", "--resume"], capsys
    )
    assert code == 2 and "resize: None -> 12" in err[-1]
    assert snapshot(tmp_path / "w") == before


@pytest.fixture
def tiny_disk(tmp_path):
    """A 600 KB tmpfs: room for one MLP checkpoint, not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_gives_one_line_naming_the_intact_checkpoint(tiny_disk, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "train", *QUICK, "--epochs", "3", "--workdir", str(tiny_disk / "w")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(err) == 2, err  # "workdir ..." and the error
    intact = f"{tiny_disk}/w/checkpoints/{STEPS}"
    assert f"(No space left on device); the last intact checkpoint is {intact}" in err[-1]
    assert not list((tiny_disk / "w" / "checkpoints").glob("*tmp*"))  # no partial folder left


def test_a_full_disk_through_the_api_raises_checkpoint_error(digits, tmp_path, monkeypatch):
    # Where no tmpfs can be mounted the same path runs with the writer failing as a full disk
    # does (orbax's async save raising an OSError with ENOSPC).
    import orbax.checkpoint as ocp

    calls = {"n": 0}
    original = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, os.strerror(28))
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(CheckpointError, match=f"No space left on device.*checkpoints/{STEPS}$"):
        _fit(_config(), digits, tmp_path)


def test_orbax_stays_quiet_from_a_save_until_its_write_is_waited_for(tmp_path, monkeypatch):
    # A background write can fail at any moment after save() returns; if orbax's absl logger
    # is loud for even an instant in between, its traceback reaches the user (seen in CI on a
    # full disk). Every level the logger is given is recorded: none may be loud until wait().
    import logging

    absl_logger = logging.getLogger("absl")
    loud, levels = absl_logger.level, []
    set_level = absl_logger.setLevel
    checkpoints = Checkpoints(tmp_path / "checkpoints", 2)
    monkeypatch.setattr(absl_logger, "setLevel", lambda lvl: (levels.append(lvl), set_level(lvl)))
    state = {"w": np.arange(4.0, dtype=np.float32)}
    checkpoints.save(state, {"config": {}}, step=1)
    assert levels and all(level == logging.CRITICAL for level in levels), levels
    checkpoints.wait()
    assert levels[-1] == loud  # and as before once the write is done
    checkpoints.close()


def test_an_impossible_resize_is_refused_with_the_memory_figure(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    code, err = _main(["--resize", "10000", "--epochs", "1", "--no-progress"], capsys)
    assert code == 2 and "needs at least" in err[-1] and "GiB" in err[-1], err
    assert time.perf_counter() - started < 60  # refused from the shapes, not after minutes


def test_a_coordinator_that_never_answers_times_out_with_exit_2(tmp_path):
    with socket.socket() as silent:  # listens, never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "train",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                "1",
                "--coordinator-timeout",
                "3",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"waiting for the coordinator at 127.0.0.1:{port}" in done.stderr
    assert "no answer from the coordinator" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_ctrl_c_stops_with_one_line_and_the_run_resumes(tmp_path):
    args = [
        sys.executable,
        "-m",
        "train",
        *QUICK,
        "--epochs",
        "30",
        "--checkpoint-every-steps",
        "5",
    ]
    process = signal_when(
        [*args, "--workdir", "w"],
        tmp_path / "w" / "checkpoints" / "5",
        signal.SIGINT,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = process.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert process.returncode == 128 + signal.SIGINT, err[-2000:]
    assert "Traceback" not in err and len(lines) == 2, lines
    assert lines[-1].startswith("python -m train: interrupted at step ")
    assert "--resume continues from checkpoint " in lines[-1]
    checkpoint = Path(lines[-1].rsplit(" ", 1)[-1])
    assert checkpoint.is_dir() and int(checkpoint.name) >= 5
    resumed = subprocess.run(
        [*args, "--workdir", "w", "--resume", "--epochs", "30"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == 30 * STEPS


def test_train_and_test_images_of_different_sizes_name_both():
    rng = np.random.default_rng(0)
    train = data.from_arrays(rng.random((64, 8, 8)), rng.integers(0, 10, 64), num_classes=10)
    test = data.from_arrays(rng.random((16, 12, 10)), rng.integers(0, 10, 16), num_classes=10)
    with pytest.raises(
        ValueError, match=r"train images are 8x8x1 but evaluation images are 12x10x1.*--resize"
    ):
        training.fit(
            _config(epochs=1, batch_size=16), train_data=train, test_data=test, log=lambda s: None
        )


def test_resume_without_workdir_picks_the_newest_run_with_a_checkpoint(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert (
        _main([*QUICK, "--epochs", "1", "--workdir", "runs/mlp-digits/20261201-090000"], capsys)[0]
        == 0
    )
    newer = tmp_path / "runs" / "mlp-digits" / "20261201-100000"
    (newer / "checkpoints").mkdir(parents=True)  # a run that failed before its first checkpoint
    code, err = _main([*QUICK, "--epochs", "2", "--resume"], capsys)
    assert code == 0, err
    assert "workdir runs/mlp-digits/20261201-090000" in err[0]
