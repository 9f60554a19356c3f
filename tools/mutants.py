"""Plant realistic bugs one at a time and check that the tests meant to catch each one fail.

    .venv/bin/python tools/mutants.py                 # every mutant (make mutants)
    .venv/bin/python tools/mutants.py --only ID ...   # some of them
    .venv/bin/python tools/mutants.py --list          # the table, nothing run

The repository is copied to a scratch folder (without .venv*, .git, caches and build outputs);
each mutant replaces its exact ``old`` text, which must occur exactly once in its file (else it is
reported "stale": the library moved on, re-read the file), by ``new``, runs
``python -m pytest -q -x <tests>`` there with ``jaxnotes`` imported from the copy, and puts the
file back. pytest failing means the mutant was caught; passing means it survived. Each distinct
test selection is first run once unmutated (a selection that fails without any bug proves
nothing). Not part of CI: a full run takes tens of minutes on 2 cores. The last run's result is
recorded in TESTING.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SURVIVORS = "tests/test_mutant_survivors.py"
IGNORED = (
    ".venv*", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist",
    "*.egg-info", ".ipynb_checkpoints", "workdir", "workdirs", "runs", "checkpoints",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    breaks: str  # what the bug breaks, in words
    tests: tuple[str, ...]  # pytest arguments: files or node ids
    k: str | None = None  # a -k expression, if any

    def selection(self) -> tuple[str, ...]:
        return (*self.tests, *(("-k", self.k) if self.k else ()))


def survivors(k: str) -> tuple[tuple[str, ...], str]:
    return (SURVIVORS,), k


# fmt: off
TABLE: tuple[Mutant, ...] = (
    # --- the bugs the suite let through (each now has its own test in test_mutant_survivors) ---
    Mutant(
        "gap_max_layers", "jaxnotes/models/layers.py",
        "y = jnp.mean(x, axis=(1, 2))", "y = jnp.max(x, axis=(1, 2))",
        "GlobalAvgPool takes the max: NiN and GoogLeNet change",
        *survivors("global_avg_pool or last_map_is_2x2"),
    ),
    Mutant(
        "gap_max_nin", "jaxnotes/models/nin.py",
        "return layers.GlobalAvgPool()(x).astype(jnp.float32)",
        "return jnp.max(x, axis=(1, 2)).astype(jnp.float32)",
        "NiN alone ends in a global max pool",
        *survivors("last_map_is_2x2 and 112"),
    ),
    Mutant(
        "momentum_default", "jaxnotes/optim.py",
        'return 0.9 if name == "momentum" and momentum == 0.0 else momentum',
        "return momentum",
        'optimizer="momentum" without a value is plain SGD',
        *survivors("momentum_optimizer or population_members"),
    ),
    Mutant(
        "train_acc_is_test_acc", "jaxnotes/training.py",
        '        record["wall_s"] = time.perf_counter() - session.phases.started\n',
        '        record["train_acc"] = record.get("test_acc", record["train_acc"])\n'
        '        record["wall_s"] = time.perf_counter() - session.phases.started\n',
        "the history's train_acc is the test accuracy",
        *survivors("train_acc"),
    ),
    Mutant(
        "ensemble_drops_resize", "jaxnotes/population.py",
        "self.model, state, preprocessing, images, stacked=True, batch_size=batch_size",
        "self.model, state, dataclasses.replace(preprocessing, resize=None), images, "
        "stacked=True, batch_size=batch_size",
        "the fold ensemble predicts without the folds' resize",
        *survivors("fold_ensemble"),
    ),
    Mutant(
        "aux_weight_ignored", "jaxnotes/assembly.py",
        "fns, tx, preprocess, config.aux_weight, config.divergence_factor, axis_name=axis,",
        "fns, tx, preprocess, divergence_factor=config.divergence_factor, axis_name=axis,",
        "TrainConfig.aux_weight is ignored (always 0.3)",
        *survivors("aux_loss_weight"),
    ),
    Mutant(
        "aux_weight_default", "jaxnotes/config.py",
        "aux_weight: float = 0.3", "aux_weight: float = 0.03",
        "the auxiliary heads' default weight is 0.03, not the paper's 0.3",
        *survivors("aux_loss_weight"),
    ),
    Mutant(
        "download_size_only", "jaxnotes/data/download.py",
        "    if _recorded_digest(path, stat) == entry.sha256:\n        return True, None\n",
        "    return True, None\n",
        "a cached download is trusted on its size alone",
        ("tests/test_data_faults.py",), "same_size or hashed_once",
    ),
    Mutant(
        "download_record_ignores_mtime", "jaxnotes/data/download.py",
        "if int(size) == stat.st_size and int(mtime_ns) == stat.st_mtime_ns:",
        "if int(size) == stat.st_size:",
        "a cached file's SHA-256 record is trusted after the file changed (same size)",
        ("tests/test_data_faults.py",), "same_size or hashed_once",
    ),
    Mutant(
        "pmap_same_dropout_key", "jaxnotes/steps.py",
        "    if axis_name is not None and not per_example:\n"
        "        step_key = jax.random.fold_in(step_key, device)\n",
        "",
        "under pmap every device draws the same dropout masks (BatchNorm models)",
        *survivors("pmap"),
    ),
    Mutant(
        "guard_baseline_per_epoch", "jaxnotes/runs.py",
        "session.metrics = placement.put(steps.reset_sums(host))",
        "session.metrics = placement.put(job.fresh_metrics())",
        "the divergence guard's first loss is reset every epoch",
        *survivors("loss_that_passes or reset_sums"),
    ),
    # --- caught by one test only: now each has a direct one ---
    Mutant(
        "alexnet_dense_relu", "jaxnotes/models/alexnet.py",
        "x = nn.relu(layers.dense(x, width, dtype=self.dtype, weight_init=self.weight_init))",
        "x = layers.dense(x, width, dtype=self.dtype, weight_init=self.weight_init)",
        "AlexNet's hidden dense layers lose their ReLU",
        *survivors("alexnet"),
    ),
    Mutant(
        "alexnet_conv_relu", "jaxnotes/models/alexnet.py",
        "x, FEATURES, act=nn.relu,", "x, FEATURES, act=lambda y: y,",
        "AlexNet's convolutions lose their ReLU",
        *survivors("alexnet"),
    ),
    Mutant(
        "eval_unmasked_accuracy", "jaxnotes/steps.py",
        "**_metric_sums(metric_fns, logits, labels, mask),",
        "**_metric_sums(metric_fns, logits, labels, 1.0),",
        "evaluation accuracy counts the padding of the last batch",
        *survivors("padded_batch or train_acc"),
    ),
    Mutant(
        "cpu_max_pool_zero_padding", "jaxnotes/models/cpu_kernels.py",
        "xp = _pad(x, padding, -jnp.inf)", "xp = _pad(x, padding, 0.0)",
        "the CPU fast max pool pads with 0: negative maps change at the borders",
        *survivors("max_pool"),
    ),
    Mutant(
        "cosine_horizon_fit", "jaxnotes/optim.py",
        "updates = config.epochs * steps_per_epoch // config.accumulate",
        "updates = config.epochs * steps_per_epoch // config.accumulate - 1",
        "fit's cosine decay ends one update early",
        ("tests/test_claims.py",), "cosine",
    ),
    Mutant(
        "cosine_horizon_population", "jaxnotes/members.py",
        'hyper["total_steps"] = (config.epochs * steps_per_member).astype(np.int32)',
        'hyper["total_steps"] = (config.epochs * steps_per_member + 1).astype(np.int32)',
        "a population member's cosine decay ends one update late",
        *survivors("population_members"),
    ),
    Mutant(
        "population_no_sitting_out", "jaxnotes/population.py",
        'live = batch["live"]', "live = True",
        "a member with fewer batches keeps stepping on its first batch",
        *survivors("population_members"),
    ),
    Mutant(
        "population_init_seed", "jaxnotes/population.py",
        "np.array([m.seed for m in members], np.uint32)",
        "np.array([config.seed for m in members], np.uint32)",
        "every member starts from the config's seed, not its own",
        *survivors("population_members"),
    ),
    Mutant(
        "population_order_seed", "jaxnotes/population.py",
        "subset[epoch_permutation(len(subset), member.seed, epoch)]",
        "subset[epoch_permutation(len(subset), self.config.seed, epoch)]",
        "every member sees its data in the config seed's order",
        *survivors("population_members"),
    ),
    Mutant(
        "population_dropout_rate", "jaxnotes/population.py",
        "        return modules.as_model(module.clone(**{field: hyper_m[\"dropout\"]}))\n",
        "        return fns\n",
        "members train with the module's dropout rate, not their own",
        *survivors("population_members"),
    ),
    Mutant(
        "population_eval_unmasked", "jaxnotes/population.py",
        "mask = np.zeros((self.size, size), np.float32)",
        "mask = np.ones((self.size, size), np.float32)",
        "a member's evaluation counts the padding of its shorter subset",
        *survivors("population_members"),
    ),
    Mutant(
        "population_resume_restarts_epoch", "jaxnotes/population.py",
        "for step in range(start, self.steps_per_epoch):",
        "for step in range(0, self.steps_per_epoch):",
        "a population resumed mid-epoch replays the epoch's first batches",
        *survivors("interrupted_population"),
    ),
    # --- ten more, across the library ---
    Mutant(
        "ops_dropout_not_inverted", "jaxnotes/ops.py",
        "return jnp.where(keep, X / (1.0 - rate), jnp.zeros((), X.dtype))",
        "return jnp.where(keep, X, jnp.zeros((), X.dtype))",
        "from-scratch dropout does not scale kept units by 1/(1-p)",
        ("tests/test_ops.py",), "dropout",
    ),
    Mutant(
        "lenet_max_pool", "jaxnotes/models/lenet.py",
        '    conv_spec(16, 5),\n    pool_spec("avg", 2),\n)',
        '    conv_spec(16, 5),\n    pool_spec("max", 2),\n)',
        "LeNet's second pooling is max, not the book's average",
        ("tests/test_models.py",), "lenet_matches_torch",
    ),
    Mutant(
        "optim_decays_biases", "jaxnotes/optim.py",
        "return jax.tree.map(lambda p: p.ndim > 1, params)",
        "return jax.tree.map(lambda p: p.ndim >= 1, params)",
        "weight decay reaches the biases",
        ("tests/test_optim.py",), "biases",
    ),
    Mutant(
        "losses_last_head", "jaxnotes/losses.py",
        "return outputs[0] if isinstance(outputs, tuple | list) else outputs",
        "return outputs[-1] if isinstance(outputs, tuple | list) else outputs",
        "training accuracy reads an auxiliary head instead of the main logits",
        *survivors("aux_loss_weight"),
    ),
    Mutant(
        "steps_ema_swapped", "jaxnotes/steps.py",
        "lambda e, p: decay * e + (1 - decay) * p",
        "lambda e, p: (1 - decay) * e + decay * p",
        "the weights' moving average weighs the new weights by the decay",
        ("tests/test_policies.py",), "moving_average",
    ),
    Mutant(
        "runs_resume_from_epoch_start", "jaxnotes/runs.py",
        "batches = job.epoch_batches(epoch, session.position - epoch_start)",
        "batches = job.epoch_batches(epoch, 0)",
        "a run resumed mid-epoch replays the epoch from its first batch",
        *survivors("interrupted_population"),
    ),
    Mutant(
        "runs_resume_drops_sums", "jaxnotes/runs.py",
        "k: np.asarray(saved.get(k, v), np.asarray(v).dtype) for k, v in fresh.items()",
        "k: np.asarray(v, np.asarray(v).dtype) for k, v in fresh.items()",
        "a run resumed mid-epoch forgets the epoch's running sums (train loss/acc)",
        *survivors("interrupted_population"),
    ),
    Mutant(
        "checkpoints_keep_the_bad_one", "jaxnotes/checkpoints.py",
        "moved = [s for s in self.all_steps() if s >= first_bad]",
        "moved = [s for s in self.all_steps() if s > first_bad]",
        "after divergence, the checkpoint of the first bad step's weights is kept as good",
        ("tests/test_faults.py",), "after_divergence",
    ),
    Mutant(
        "members_standardize_scale", "jaxnotes/members.py",
        'return lambda images: (scale(images) - hyper_m["mean"]) / hyper_m["std"]',
        'return lambda images: (scale(images) - hyper_m["mean"]) * hyper_m["std"]',
        "population members multiply by the std instead of dividing (standardize)",
        ("tests/test_selection.py",), "own_preprocessing",
    ),
    Mutant(
        "data_eval_mask_off_by_one", "jaxnotes/data/pipeline.py",
        "mask = (idx < n).astype(np.float32)", "mask = (idx <= n).astype(np.float32)",
        "the first padding example of the last eval batch counts as real",
        ("tests/test_data_pipeline.py",), "eval",
    ),
    Mutant(
        "pmap_running_stats_not_averaged", "jaxnotes/steps.py",
        "return jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.floating) else x",
        "return x",
        "under pmap each device keeps its own BatchNorm running statistics",
        *survivors("pmap"),
    ),
    Mutant(
        "pmap_strided_split", "jaxnotes/parallel.py",
        "return {k: np.reshape(v, (n, -1, *v.shape[1:])) for k, v in batch.items()}",
        "return {k: np.reshape(v, (-1, n, *v.shape[1:])).swapaxes(0, 1) "
        "for k, v in batch.items()}",
        "pmap deals the batch out strided instead of in contiguous slices",
        *survivors("pmap"),
    ),
)
# fmt: on


def scratch_copy() -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="jaxnotes-mutants-"))
    shutil.copytree(ROOT, scratch / "repo", ignore=shutil.ignore_patterns(*IGNORED))
    return scratch / "repo"


def environment(repo: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(repo),
        "PYTHONDONTWRITEBYTECODE": "1",  # a restored file is never shadowed by a stale .pyc
        "JAXNOTES_CACHE_DIR": str(repo / ".pytest_cache" / "jaxnotes-xla"),
    }


def check_import(repo: Path) -> str:
    """Where the scratch copy's processes import jaxnotes from (must be the copy)."""
    done = subprocess.run(
        [sys.executable, "-c", "import jaxnotes; print(jaxnotes.__file__)"],
        cwd=repo, env=environment(repo), capture_output=True, text=True, check=True,
    )  # fmt: skip
    where = done.stdout.strip()
    if not Path(where).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"jaxnotes is imported from {where}, not from the copy {repo}")
    return where


def run_pytest(repo: Path, selection: tuple[str, ...], timeout: float) -> tuple[str, str, float]:
    """(verdict, pytest's last line, seconds): "passed", "failed", "timeout" or "error"."""
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *selection]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=repo, env=environment(repo), capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "timeout", f"no result in {timeout:.0f} s", time.perf_counter() - started
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else done.stderr.strip()[-200:]
    failed = [line.split()[1] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    if failed:  # which test caught it (-x: the first to fail)
        last = f"{last}: {failed[0].rpartition('::')[2] or failed[0]}"
    verdict = {0: "passed", 1: "failed"}.get(done.returncode, "error")
    return verdict, last, time.perf_counter() - started


def apply(repo: Path, mutant: Mutant) -> str | None:
    """Plant the mutant; returns the original text, or None if its old text is stale."""
    path = repo / mutant.file
    text = path.read_text()
    if text.count(mutant.old) != 1:
        return None
    path.write_text(text.replace(mutant.old, mutant.new))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="print the table and stop")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    parser.add_argument(
        "--select", metavar="ARGS",
        help='other pytest arguments for the chosen mutants, e.g. "tests/test_models.py -k lenet" '
        "(which existing tests catch a bug?)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    ids = [m.id for m in TABLE]
    assert len(set(ids)) == len(ids), "mutant ids must be unique"
    unknown = sorted(set(args.only or ()) - set(ids))
    if unknown:
        parser.error(f"unknown mutant id(s) {unknown}; see --list")
    chosen = [m for m in TABLE if not args.only or m.id in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.id:34} {m.file:32} {' '.join(m.selection())}\n{'':34} {m.breaks}")
        return 0

    repo = scratch_copy()
    print(f"scratch copy: {repo}")
    print(f"jaxnotes imported from: {check_import(repo)}")
    results: dict[str, list[Mutant]] = {}
    baselines: dict[tuple[str, ...], str] = {}
    try:
        for number, mutant in enumerate(chosen, start=1):
            label = f"[{number:2}/{len(chosen)}] {mutant.id:34}"
            selection = tuple(shlex.split(args.select)) if args.select else mutant.selection()
            if not args.no_baseline and selection not in baselines:
                verdict, last, seconds = run_pytest(repo, selection, args.timeout)
                baselines[selection] = verdict
                if verdict != "passed":
                    print(f"{label} baseline {verdict} without the bug ({seconds:.0f} s): {last}")
            if baselines.get(selection, "passed") != "passed":
                results.setdefault("error", []).append(mutant)
                print(f"{label} error      (its tests fail without the bug)", flush=True)
                continue
            original = apply(repo, mutant)
            if original is None:
                results.setdefault("stale", []).append(mutant)
                print(f"{label} stale      (old text not found exactly once in {mutant.file})")
                continue
            try:
                verdict, last, seconds = run_pytest(repo, selection, args.timeout)
            finally:
                (repo / mutant.file).write_text(original)
            outcome = {"failed": "caught", "timeout": "caught", "passed": "survived"}
            status = outcome.get(verdict, "error")
            results.setdefault(status, []).append(mutant)
            note = " (timeout)" if verdict == "timeout" else ""
            print(f"{label} {status:10} {seconds:5.0f} s  {last}{note}", flush=True)
    finally:
        if args.keep:
            print(f"kept {repo}")
        else:
            shutil.rmtree(repo.parent, ignore_errors=True)

    caught, survived = len(results.get("caught", [])), len(results.get("survived", []))
    scored = caught + survived
    print()
    print(f"score: {caught}/{scored} caught ({100 * caught / max(scored, 1):.0f}%)")
    for status in ("survived", "stale", "error"):
        if results.get(status):
            print(f"{status}: {', '.join(m.id for m in results[status])}")
    return 0 if not survived and not results.get("stale") and not results.get("error") else 1


if __name__ == "__main__":
    raise SystemExit(main())
