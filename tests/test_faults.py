"""A sweep of bad invocations, as a careless or hostile user would type them.

Runner: every case must exit with code 2 and one ``python -m train: error:`` line that names the
bad value, print no traceback, create nothing and leave an earlier run's workdir byte-identical.
API: every case must raise the named exception with a message naming the argument.
"""

import hashlib
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxnotes import cli, data, ops, optim, training
from jaxnotes.models import get_model

QUICK = ["--model", "mlp", "--batch-size", "64", "--epochs", "1", "--no-progress"]

RUNNER_CASES = [
    (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--lr", "fast"], "invalid float value: 'fast'"),
    (["--epochs", "0"], "epochs must be >= 1 (an integer), got 0"),
    (["--epochs", "-3"], "epochs must be >= 1 (an integer), got -3"),
    (["--epochs", "abc"], "invalid int value: 'abc'"),
    (["--batch-size", "0"], "batch_size must be >= 1 (an integer), got 0"),
    (["--batch-size", "1.5"], "invalid int value: '1.5'"),
    (["--batch-size", "5000"], "batch_size 5000 is larger than the data set (1257 examples)"),
    (["--momentum", "1"], "--momentum must be in [0, 1), got 1.0"),
    (["--momentum", "-0.5"], "--momentum must be in [0, 1), got -0.5"),
    (["--momentum", "nan"], "--momentum must be in [0, 1), got nan"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0, got -1.0"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number >= 0, got inf"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
    (["--seed", str(2**32)], f"--seed must be an integer in [0, 2**32), got {2**32}"),
    (["--seed", str(2**64)], f"--seed must be an integer in [0, 2**32), got {2**64}"),
    (["--log-every", "0"], "--log-every must be >= 1 (an integer), got 0"),
    (["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0 (an integer), got -1"),
    (["--checkpoint-every-steps", "-1"], "--checkpoint-every-steps must be >= 0 (an integer), got -1"),
    (["--devices", "0"], "--devices must be >= 1 (an integer), got 0"),
    (["--devices", "3"], "asked for 3 devices but only 1 exist"),
    (["--resize", "0"], "--resize must be >= 1, got 0"),
    (["--resize", "-3"], "--resize must be >= 1, got -3"),
    (["--model", "lenet", "--resize", "2"], "LeNet cannot take inputs of shape (batch, 2, 2, 1)"),
    (["--model", "lenet", "--resize", "10000"], "LeNet at input 10000x10000x1 with batch 16 needs at least"),
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--model", ""], "unknown model ''"),
    (["--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["--dataset", ""], "unknown dataset ''"),
    (["--dataset", "idx:/no/such/dir"], "/no/such/dir is not a directory"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1), got 1.5"),
    (["--dropout", "-0.1"], "--dropout must be in [0, 1), got -0.1"),
    (["--model", "lenet", "--dropout", "0.5"], "lenet has no dropout layer"),
    (["--model", "lenet", "--aux-logits"], "--aux-logits applies to googlenet only"),
    (["--steps-per-dispatch", "0"], "--steps-per-dispatch must be >= 1 (an integer), got 0"),
    (["--steps-per-dispatch", "2", "--devices", "2"], "--steps-per-dispatch > 1 runs on one device only"),
    (["--parallel", "ddp"], "invalid choice: 'ddp'"),
    (["--precision", "fp8"], "invalid choice: 'fp8'"),
    (["--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    (["--normalization", "whiten"], "invalid choice: 'whiten'"),
    (["--schedule", "linear"], "invalid choice: 'linear'"),
    (["--weight-init", "zeros"], "invalid choice: 'zeros'"),
    (["--coordinator", "notahost"], "--coordinator must be HOST:PORT with a port in 1..65535, got 'notahost'"),
    (["--coordinator", "host:0"], "got 'host:0'"),
    (["--coordinator", "host:99999"], "got 'host:99999'"),
    (["--coordinator", ":1234"], "got ':1234'"),
    (["--coordinator", "localhost:1234"], "needs all three of --coordinator HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "3"], "--process-id must be in [0, 2), got 3"),
    (["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"], "--num-processes must be >= 1, got 0"),
    (["--coordinator-timeout", "0"], "--coordinator-timeout must be >= 1 second, got 0"),
    (["--resume", "--overwrite"], "--resume continues a run and --overwrite replaces it"),
    (["--resume"], "no earlier run with a checkpoint under runs/mlp-digits/"),
    (["--resume", "--workdir", "empty"], "--resume: no checkpoint in empty/checkpoints"),
    (["--workdir", "afile"], "--workdir afile is not writable"),
    (["--workdir", "afile/sub"], "--workdir afile/sub is not writable"),
    (["--workdir", "prev"], "prev already holds a run"),
    (["--workdir", "prev", "--resume", "--lr", "0.5"], "learning_rate: 0.1 -> 0.5"),
    (["--workdir", "prev", "--resume", "--model", "lenet"], "model: 'mlp' -> 'lenet'"),
    (["--workdir", "prev", "--resume", "--resize", "12"], "resize: None -> 12"),
    (["--workdir", "prev", "--resume", "--batch-size", "32"], "batch_size: 64 -> 32"),
    (["--workdir", "prev", "--resume", "--seed", "3"], "seed: 0 -> 3"),
    (["--search", "4", "--search-space", "lr=1:0.1"], "lr=1:0.1: the range must have finite LOW <= HIGH, got 1 > 0.1"),
    (["--search", "4", "--search-space", "lr=-1:2:log"], "lr=-1:2:log: a log-uniform range needs LOW > 0"),
    (["--search", "4", "--search-space", "lr=1e-3:1:cubic"], "the scale must be log or uniform, got 'cubic'"),
    (["--search", "4", "--search-space", "foo=1"], "unknown parameter 'foo'"),
    (["--search", "4", "--search-space", "lr="], "'lr=' must be NAME=LOW:HIGH"),
    (["--search", "4", "--search-space", "lr=a:b"], "lr=a:b: could not convert string to float"),
    (["--search", "4", "--search-space", "dropout=0.5:1.5"], "dropout=0.5:1.5: dropout must be in [0, 1), got 1.5"),
    (["--search", "4", "--search-space", "momentum=1.5"], "momentum must be in [0, 1), but trial 0 got 1.5"),
    (["--search", "4", "--search-space", ","], "--search-space is empty"),
    (["--search", "0"], "--search must be >= 1 trials, got 0"),
    (["--k-fold", "1"], "--k-fold must be >= 2, got 1"),
    (["--k-fold", "3", "--search", "2"], "--k-fold and --search are two experiments: choose one"),
    (["--search-space", "lr=0.1:1"], "--search-space needs --search N"),
    (["--model", "lenet", "--search", "2", "--search-space", "width=8|16"], "width applies to --model mlp only"),
    (["--k-fold", "3", "--steps-per-dispatch", "2"], "they take neither --steps-per-dispatch nor --parallel"),
    # round 3: populations and searches
    (["--optimizer", "adam", "--search", "4", "--search-space", "momentum=0.5:0.99"], "momentum is not used by the adam optimizer"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0, got nan"),
    (["--search", "4", "--search-space", "wd=nan"], "weight_decay must be a finite number >= 0"),
    (["--model", "lenet", "--search", "200000"], "200000 x LeNet at input 28x28x1 with batch 64 needs at least"),
    (["--k-fold", "3", "--early-stopping", "2"], "early_stopping: a population (K-fold, search) does not take these"),
    (["--k-fold", "3", "--precision", "fp16"], "precision='fp16': a population"),
    (["--accumulate", "7"], "accumulate 7 does not divide the epoch's 19 batches"),
    (["--validation-fraction", "1.5"], "--validation-fraction must be 0 (off) or in (0, 1), got 1.5"),
    (["--early-stopping", "2", "--validation-fraction", "0.2", "--monitor", "val_f1"], "monitor 'val_f1' is not a metric this run reports"),
    (["--model", "resnet18", "--dropout", "0.5"], "--dropout: resnet18 has no dropout layer in the book"),
]  # fmt: skip


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    """A folder with an earlier finished run (prev/), an empty folder and a plain file."""
    root = tmp_path_factory.mktemp("faults")
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert cli.main([*QUICK, "--workdir", "prev"]) == 0
    finally:
        os.chdir(cwd)
    (root / "empty").mkdir()
    (root / "afile").write_text("a file, not a folder")
    return root


@pytest.mark.parametrize("args, message", RUNNER_CASES, ids=[" ".join(a) for a, _ in RUNNER_CASES])
def test_bad_runner_invocation(args, message, playground, capsys, monkeypatch):
    monkeypatch.chdir(playground)
    # Quick settings (the MLP, one epoch of batch 64) where the case does not set them.
    defaults = {"--model": "mlp", "--batch-size": "64", "--epochs": "1"}
    if "--model" in args:
        defaults = {"--epochs": "1"}
    fill = [item for flag, value in defaults.items() if flag not in args for item in (flag, value)]
    before = {name: _files(playground / name) for name in ("prev", "empty")}
    entries = sorted(p.name for p in playground.iterdir())
    try:
        code = cli.main([*fill, *args, "--no-progress"])
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("python -m train: error:")]
    assert len(errors) == 1 and message in errors[0], err[-2000:]
    assert "Traceback" not in err
    assert {name: _files(playground / name) for name in before} == before
    assert sorted(p.name for p in playground.iterdir()) == entries  # nothing created


def _model_apply_uint8():
    model = get_model("lenet")
    x = jnp.zeros((1, 28, 28, 1), jnp.uint8)
    model.init(__import__("jax").random.key(0), x)


API_CASES = [
    (lambda: optim.make_optimizer("sgd", "0.1"), ValueError, "learning_rate must be a finite number > 0"),
    (lambda: optim.make_optimizer("sgd", None), ValueError, "learning_rate must be a finite number > 0, got None"),
    (lambda: optim.make_optimizer("sgd", float("inf")), ValueError, "got inf"),
    (lambda: optim.make_optimizer("sgd", -0.1), ValueError, "got -0.1"),
    (lambda: optim.make_optimizer("sgd", True), ValueError, "got True"),
    (lambda: optim.make_optimizer("sgd", 0.1, momentum=1.0), ValueError, r"momentum must be in \[0, 1\)"),
    (lambda: optim.make_optimizer("sgd", 0.1, momentum=float("nan")), ValueError, "momentum must be in \\[0, 1\\), got nan"),
    (lambda: optim.make_optimizer("sgd", 0.1, weight_decay=-1), ValueError, "weight_decay must be a finite number >= 0"),
    (lambda: optim.make_optimizer("sgd", 0.1, weight_decay="big"), ValueError, "got 'big'"),
    (lambda: optim.make_optimizer("rmsprop", 0.1), ValueError, "unknown optimizer 'rmsprop'"),
    (lambda: get_model("mlp", dropout=1.5), ValueError, r"dropout is a dropout rate and must be in \[0, 1\), got 1.5"),
    (lambda: get_model("mlp", dropout=-0.2), ValueError, "got -0.2"),
    (lambda: get_model("alexnet", dropout="half"), ValueError, "got 'half'"),
    (lambda: get_model("googlenet", aux_dropout=1.0), ValueError, "aux_dropout is a dropout rate"),
    (lambda: get_model("lenet", num_classes=0), ValueError, "num_classes must be >= 1, got 0"),
    (lambda: get_model("lenet", num_classes=-3), ValueError, "got -3"),
    (lambda: get_model("lenet", num_classes="10"), ValueError, "num_classes must be an integer >= 1, got '10'"),
    (lambda: get_model("lenet", num_classes=2.5), ValueError, "got 2.5"),
    (lambda: get_model("resnet"), ValueError, "unknown model 'resnet'"),
    (lambda: get_model("lenet", dropout=0.5), TypeError, r"lenet has no field\(s\) \['dropout'\]"),
    (lambda: ops.corr2d(jnp.ones((4, 4), bool), jnp.ones((2, 2))), ValueError, "corr2d: X has dtype bool"),
    (lambda: ops.corr2d(jnp.ones((4, 4)), jnp.ones((2, 2), bool)), ValueError, "corr2d: K has dtype bool"),
    (_model_apply_uint8, ValueError, "got uint8 images: convert them to floats first"),
    (lambda: data.from_arrays(np.zeros((3, 4, 4)), [0, -1, 2]), ValueError, "label -1 at index 1"),
    (lambda: data.from_arrays(np.zeros((3, 4, 4)), [0, 1.5, 2]), ValueError, "label 1.5 at index 1 is not"),
    (lambda: data.from_arrays(np.zeros((3, 4, 4)), [0, 1, 9], num_classes=5), ValueError, r"label 9 at index 2 is outside \[0, 5\)"),
    (lambda: data.from_arrays(np.zeros((3, 4, 4)), [0, 1, 2], num_classes=0), ValueError, "num_classes must be >= 1"),
    (lambda: data.from_arrays(np.array([["a"] * 4] * 3), [0, 1, 2]), ValueError, "images must be numbers"),
    (lambda: data.from_arrays(np.zeros((3, 4, 4)), ["x", "y", "z"]), ValueError, "labels must be integers"),
    (lambda: data.load("cifar", "train"), ValueError, "unknown data set 'cifar'"),
    (lambda: data.load("digits", "validation"), ValueError, "unknown split 'validation'"),
    (lambda: training.fit(training.TrainConfig(), model=len), TypeError, "got the function 'len'"),
    (lambda: training.fit(training.TrainConfig(), model=object()), TypeError, "got object"),
]  # fmt: skip

CONFIG_CASES = [
    ({"keep_checkpoints": 0}, "keep_checkpoints must be >= 1"),
    ({"divergence_factor": 1.0}, "divergence_factor must be a finite number > 1"),
    ({"divergence_factor": float("nan")}, "divergence_factor must be a finite number > 1"),
    ({"aux_weight": -0.3}, "aux_weight must be a finite number >= 0"),
    ({"seed": 2**32}, r"seed must be an integer in \[0, 2\*\*32\)"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"epochs": 1.5}, r"epochs must be >= 1 \(an integer\), got 1.5"),
    ({"batch_size": True}, r"batch_size must be >= 1 \(an integer\), got True"),
    ({"eval_batch_size": 0}, "eval_batch_size must be >= 1"),
    ({"parallel": "ddp"}, "parallel must be one of sharded, pmap, got 'ddp'"),
    ({"precision": "fp8"}, "precision must be one of fp32, bf16, fp16, got 'fp8'"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of sgd, momentum, adam"),
    ({"schedule": "step"}, "schedule must be one of constant, cosine"),
    ({"normalization": "whiten"}, "normalization must be one of scale, standardize, imagenet"),
    ({"learning_rate": "0.1"}, "learning_rate must be a finite number > 0"),
    ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
    ({"decoupled": "yes"}, "decoupled must be True or False"),
    ({"model_kwargs": None}, "model_kwargs must be a dict"),
    ({"resize": 2.5}, "resize must be >= 1, got 2.5"),
    ({"dataset": ""}, "dataset must be a name"),
    ({"model": 3}, "model must be a name, got 3"),
]


@pytest.mark.parametrize(
    "call, error, message", API_CASES, ids=[f"api{i}" for i in range(len(API_CASES))]
)
def test_bad_api_call(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    "fields, message", CONFIG_CASES, ids=[re.sub(r"\W", "", str(f)) for f, _ in CONFIG_CASES]
)
def test_bad_config_field(fields, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        training.fit(training.TrainConfig(**fields), tmp_path / "w", log=lambda s: None)
    assert not (tmp_path / "w").exists()


def test_the_sweep_is_at_least_sixty_cases():
    assert len(RUNNER_CASES) + len(API_CASES) + len(ROUND_3_API_CASES) + len(CONFIG_CASES) >= 60


# --- round 3: populations, searches, the engine's files ----------------------------------------


class _AuxHeadTooNarrow(__import__("flax.linen", fromlist=["Module"]).Module):
    """Main logits for 10 classes, an auxiliary head of 5 in training (GoogLeNet's shape)."""

    @__import__("flax.linen", fromlist=["compact"]).compact
    def __call__(self, x, train=False):
        import flax.linen as nn

        flat = x.reshape(x.shape[0], -1)
        logits, aux = nn.Dense(10)(flat), nn.Dense(5)(flat)
        return (logits, aux) if train else logits


def _digits_with(images):
    train = data.load("digits", "train")
    return data.from_arrays(images, train.labels, 10)


ROUND_3_API_CASES = [
    (lambda: __import__("jaxnotes.population", fromlist=["x"]).fit_population(
        training.TrainConfig(model="mlp", progress=False), [__import__("jaxnotes.population", fromlist=["x"]).Member(weight_decay=float("nan"))],
        log=lambda s: None), ValueError, r"member 0: weight_decay must be a finite number >= 0, got nan"),
    (lambda: training.fit(training.TrainConfig(epochs=1, progress=False), model=_AuxHeadTooNarrow(), log=lambda s: None),
     ValueError, r"auxiliary head 1 \(training mode\) outputs 5 logits; give it at least 10"),
    (lambda: __import__("jaxnotes.selection", fromlist=["x"]).k_fold_cv(
        "mlp", _digits_with(np.where(np.arange(1257)[:, None, None, None] == 7, np.nan, data.load("digits", "train").images)), 3),
     ValueError, "train_data holds 64 non-finite pixel value\\(s\\) \\(NaN or inf; the first in example 7\\)"),
    (lambda: training.fit(training.TrainConfig(model="mlp", epochs=2, batch_size=64, progress=False),
                          train_data=_digits_with(data.load("digits", "train").images * 255), log=lambda s: None),
     training.TrainingDivergedError, "Found: the inputs reach 255: float images are taken to be in \\[0, 1\\]"),
]  # fmt: skip


@pytest.mark.parametrize(
    "call, error, message",
    ROUND_3_API_CASES,
    ids=[f"r3-{i}" for i in range(len(ROUND_3_API_CASES))],
)
def test_round_3_bad_api_call(call, error, message):
    with pytest.raises(error, match=message):
        call()


def _runner(args, cwd, **kwargs):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "train", "--no-progress", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, **kwargs)  # fmt: skip


def _one_error_line(done, code):
    lines = [line for line in done.stderr.splitlines() if line.startswith("python -m train:")]
    assert done.returncode == code, done.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return lines[0]


WIDTHS = ["--model", "mlp", "--epochs", "1", "--batch-size", "64", "--search", "4"]


def test_a_second_width_search_into_the_same_folder_is_refused_and_keeps_the_first(tmp_path):
    first = _runner([*WIDTHS, "--search-space", "width=16|32", "--workdir", "s"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _files(tmp_path / "s")
    assert "trials.jsonl" in before and any(k.startswith("width-16/") for k in before)
    again = _runner([*WIDTHS, "--search-space", "width=8|64", "--workdir", "s"], tmp_path)
    assert "already holds a run" in _one_error_line(again, 2)
    assert _files(tmp_path / "s") == before


def test_an_interrupted_width_search_resumes_to_every_trial(tmp_path):
    import signal

    from processes import checkpoints_at_least, signal_when

    args = [*WIDTHS, "--epochs", "3", "--search-space", "width=16|32", "--workdir", "s"]
    import sys

    process = signal_when(
        [sys.executable, "-m", "train", "--no-progress", *args],
        checkpoints_at_least(tmp_path / "s" / "width-16" / "checkpoints", 1), signal.SIGINT,
        cwd=tmp_path,
    )  # fmt: skip
    assert process.wait(timeout=300) == 130
    resumed = _runner([*args, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = [
        __import__("json").loads(x)
        for x in (tmp_path / "s" / "trials.jsonl").read_text().splitlines()
    ]
    assert sorted(r["trial"] for r in rows) == [0, 1, 2, 3] and {r["width"] for r in rows} == {
        16,
        32,
    }


def test_after_divergence_the_named_checkpoint_holds_the_last_good_weights(tmp_path):
    # lr 10: the weights after step 2 give a loss over 1000 x the first; the checkpoint of
    # them, saved before the guard could see their loss, must not be called good.
    done = _runner(["--model", "mlp", "--lr", "10", "--checkpoint-every-steps", "1",
                    "--log-every", "1", "--workdir", "w"], tmp_path)  # fmt: skip
    line = _one_error_line(done, 1)
    step = int(re.search(r"Training stopped at step (\d+)", line).group(1))
    named = re.search(r"The last good checkpoint is intact: (\S+)\.$", line).group(1)
    assert Path(named).name == str(step - 1)  # the weights whose loss the guard saw
    assert all(int(p.name) >= step for p in (tmp_path / "w" / "diverged-checkpoints").iterdir())
    from jaxnotes import runs

    run = runs.load_run(tmp_path / "w", "latest")
    test = data.load("digits", "test")
    probabilities = run.predict(test.images)[np.arange(len(test)), test.labels]
    loss = -np.mean(np.log(np.maximum(probabilities, 1e-30)))
    assert run.step == step - 1 and np.isfinite(loss) and loss < 1000 * np.log(10)


def test_overwriting_a_population_leaves_none_of_the_previous_runs_files(tmp_path):
    kfold = _runner(
        ["--model", "mlp", "--epochs", "1", "--k-fold", "3", "--workdir", "p"], tmp_path
    )
    assert kfold.returncode == 0 and (tmp_path / "p" / "folds.png").exists()
    search = _runner([*WIDTHS, "--workdir", "p", "--overwrite"], tmp_path)
    assert search.returncode == 0, search.stderr[-2000:]
    names = {p.name for p in (tmp_path / "p").iterdir()}
    assert not names & {"folds.jsonl", "folds.png"} and {"trials.jsonl", "search.png"} <= names


def test_a_search_whose_trials_all_diverge_exits_1_and_writes_strict_json(tmp_path):
    import json

    done = _runner([*WIDTHS, "--search-space", "lr=1e3:1e4", "--workdir", "s"], tmp_path)
    assert "every trial diverged" in _one_error_line(done, 1)
    strict = lambda text: json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    for line in (tmp_path / "s" / "trials.jsonl").read_text().splitlines():
        assert strict(line)["diverged"] is True
    strict((tmp_path / "s" / "summary.json").read_text())


def test_k_fold_standardizes_each_fold_with_its_own_training_statistics(digits):
    # Fold i must be `fit` on its training part alone: its statistics, not the whole set's.
    from jaxnotes import selection

    config = training.TrainConfig(model="mlp", epochs=2, batch_size=64, normalization="standardize",
                                  model_kwargs={"dropout": 0.0}, progress=False)  # fmt: skip
    cv = selection.k_fold_cv("mlp", digits[0], 3, config=config, seed=1)
    for fold, (train_idx, val_idx) in enumerate(cv.folds):
        part = lambda idx: data.from_arrays(digits[0].images[idx], digits[0].labels[idx], 10)
        alone = training.fit(config, train_data=part(train_idx), test_data=part(val_idx),
                             log=lambda s: None)  # fmt: skip
        stats = data.channel_stats(part(train_idx))
        assert cv.population.preprocessing[fold].mean == pytest.approx(tuple(stats[0]), rel=1e-6)
        assert cv.metrics["val_loss"][fold] == pytest.approx(alone.summary["test_loss"], rel=1e-4)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 12 KB tmpfs: a lock file and a few epochs of metrics.jsonl, never a plot."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("epochs, file", [(60, "metrics.jsonl"), (2, "learning_curves.png")])
def test_a_full_disk_while_writing_the_runs_files_ends_in_one_line(tiny_tmpfs, epochs, file):
    done = _runner(["--model", "mlp", "--batch-size", "256", "--epochs", str(epochs),
                    "--checkpoint-every", "0", "--workdir", str(tiny_tmpfs / "w")], tiny_tmpfs.parent)  # fmt: skip
    line = _one_error_line(done, 1)
    assert f"could not write {tiny_tmpfs}/w/{file} (No space left on device)" in line
    assert not list((tiny_tmpfs / "w").glob("*.tmp"))  # nothing half-written left


def test_a_truncated_checkpoint_falls_back_in_one_note_line(tmp_path):
    first = _runner([*QUICK[:-1], "--epochs", "2", "--workdir", "w"], tmp_path)
    assert first.returncode == 0
    newest = max((tmp_path / "w" / "checkpoints").iterdir(), key=lambda p: int(p.name))
    for array in (newest / "state").rglob("*"):
        if array.is_file() and array.stat().st_size > 1000:
            array.write_bytes(array.read_bytes()[:100])  # truncated
    (tmp_path / "w" / "summary.json").unlink()
    resumed = _runner([*QUICK[:-1], "--epochs", "2", "--workdir", "w", "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    err = [line for line in resumed.stderr.splitlines() if line.strip()]
    assert len(err) <= 3 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    assert "is damaged" in resumed.stdout + resumed.stderr


def test_a_closed_stdout_does_not_stop_the_run(tmp_path):
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "train", "--no-progress", *QUICK[:-1], "--epochs", "4",
         "--workdir", "w"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    process.stdout.readline()  # `| head -1`: one line, then the pipe closes
    process.stdout.close()
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0 and b"Traceback" not in err, err[-2000:]
    assert (tmp_path / "w" / "summary.json").exists()
