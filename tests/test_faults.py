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

from jaxnotes import data, ops, optim, training
from jaxnotes.models import get_model
from jaxnotes import cli

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
    assert len(RUNNER_CASES) + len(API_CASES) + len(CONFIG_CASES) >= 60
