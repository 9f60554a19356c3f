"""Populations: P runs of one model trained at once, as one compiled program, by the engine's step.

A population is P *members* of one model (a zoo name or any module ``fit`` accepts). Each member
has its own parameters, optimizer state, dropout keys and data order, and may differ in seed,
training subset (a fold), learning rate, weight decay, momentum and dropout rate. Chapter 1's
K-fold cross-validation and random search (``jaxnotes.selection``) are populations.

How it is one program whatever P and whatever the values::

    member_step(state, hyper, batch, metrics):            # ONE member, traced
        tx   = optim.chain(..., hyper["learning_rate"], hyper["momentum"], hyper["weight_decay"])
        step = steps.make_train_step(model(rate=hyper["dropout"]), tx, ...)   # the engine's
        return step(state, batch, metrics)                 # ... kept where the member sits out
    population_step = vmap(member_step)                    # over the leading member axis

The hyper-parameters are traced arrays, so they are values of the program, not part of it; only
what changes shapes (the model's architecture, the batch size) needs a separate population.

Members are the runs they would be alone: member i trains like ``training.fit`` run alone with
member i's seed, rates and ``train_data`` subset (same examples, same order, same dropout masks):
its batches are slices of ``epoch_permutation(len(subset), seed, epoch)`` of its own subset, its
keys ``fold_in(key(seed), ...)`` as in ``fit``, and a member whose subset has fewer full batches
than the largest sits out the last steps of each epoch (a mask: its state does not move). Its
"standardize" statistics are those of its own training subset. Evaluation runs every member on
its own evaluation subset (a fold's held-out part), padded and masked: its ``val_`` metrics.

Everything around the step is the run lifecycle ``fit`` uses (``jaxnotes.runs``): the folder,
checkpoints and exact resume (mid-epoch too), Ctrl-C/SIGTERM, progress, compile timing, the
summary. A member whose loss goes non-finite or explodes is marked diverged (its guard records
the step) and the others train on: in a search, that is a result, not an error.

Several devices (``devices=N``): the member axis is split over a 1-D mesh, each device holding
whole members (``parallel.LeadingAxisSharded``). P must divide by N.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnotes import modules, parallel, profiling, runs, steps, training
from jaxnotes.config import TrainConfig
from jaxnotes.members import (
    Member,
    check_members,
    check_population_config,
    hash_indices,
    member_preprocessing,
    traced_preprocess,
    traced_settings,
    tx_factory,
)


@dataclasses.dataclass
class PopulationResult:
    """What ``fit_population`` returns.

    state: every member's final TrainState, leaves stacked on a leading member axis (P, ...).
    history: per member, one dict per epoch (train_loss, train_acc, val_loss, val_acc).
    rows: per member, its settings and final numbers (and ``diverged``).
    model: the module trained; preprocessing: per member, its ``data.Preprocessing``.
    """

    members: list[Member]
    state: steps.TrainState
    history: list[list[dict]]
    rows: list[dict]
    summary: dict
    model: Any
    preprocessing: list
    workdir: Path | None = None

    def member_state(self, index: int) -> steps.TrainState:
        return jax.tree.map(lambda leaf: leaf[index], self.state)

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Every member's class probabilities: (n, H, W, C) -> (P, n, classes), in eval mode,
        each with its own run's preprocessing."""
        groups: dict[Any, list[int]] = {}
        for index, preprocessing in enumerate(self.preprocessing):
            groups.setdefault(preprocessing, []).append(index)
        out = [None] * len(self.members)
        for preprocessing, indices in groups.items():
            chosen = np.asarray(indices)
            state = jax.tree.map(lambda leaf, i=chosen: leaf[i], self.state)
            probabilities = runs.predict_probabilities(
                self.model, state, preprocessing, images, stacked=True, batch_size=batch_size
            )
            for row, index in enumerate(indices):
                out[index] = probabilities[row]
        return np.stack(out)


# Members vectorised at once on one device, by backend. On 2 CPU cores (LeNet, batch 16) 4
# members vmapped ran 1.5x the examples/s of one, 16 or 64 only 0.7x (the stacked convolutions
# leave the caches): chunks of 4 run one after another inside the same program (lax.map). On one
# H200 (LeNet, batch 128, P = 64) all members at once ran 10.39x P = 1, chunks of 4 only 7.01x:
# a backend not named here vmaps every member at once.
CHUNK: dict[str, int] = {"cpu": 4}


def members_at_once(size: int, devices: int, backend: str | None = None) -> int:
    """How many of ``size`` members one device steps in one vmap.

    Several devices: each its share, at once. One device: all of them, or on a backend named in
    ``CHUNK`` the largest divisor of ``size`` up to its limit. ``backend``: default JAX's.
    """
    if devices > 1:
        return size // devices
    limit = CHUNK.get(backend or jax.default_backend())
    if limit is None:
        return size
    return max(c for c in range(1, limit + 1) if size % c == 0)


def _chunked(step: Callable, size: int, chunk: int) -> Callable:
    """``step`` over the member axis, ``chunk`` members at a time (``lax.map`` over chunks)."""
    if chunk == size:
        return step

    def chunked(*trees):
        split = lambda tree: jax.tree.map(lambda x: x.reshape(-1, chunk, *x.shape[1:]), tree)
        merge = lambda tree: jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)
        out = jax.lax.map(lambda a: step(*a), tuple(split(t) for t in trees))
        return merge(out[0]), merge(out[1])

    return chunked


def _member_programs(job: PopulationJob, module, field, preprocess) -> tuple[Callable, Callable]:
    """(the vmapped train step over (state, hyper, batch, metrics), the vmapped eval step)."""
    config, fns, tx_for = job.config, job.fns, tx_factory(job.config, job.members, job.make_tx)

    def member_model(hyper_m):
        if field is None:
            return fns
        return modules.as_model(module.clone(**{field: hyper_m["dropout"]}))

    def member_step(state, hyper_m, batch, metrics):
        step = steps.make_train_step(
            member_model(hyper_m), tx_for(hyper_m), preprocess(hyper_m), config.aux_weight,
            config.divergence_factor,
        )  # fmt: skip
        new_state, new_metrics = step(state, {k: batch[k] for k in ("image", "label")}, metrics)
        live = batch["live"]  # this member has a batch at this step (else it sits it out)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(live, a, b), new, old)
        return keep(new_state, state), keep(new_metrics, metrics)

    def member_eval(state, hyper_m, batch, metrics):
        return steps.make_eval_step(fns, preprocess(hyper_m))(state, batch, metrics)

    placement, size = job.placement, len(job.members)
    # Several devices: the member axis is sharded, each device takes its share at once.
    chunk = members_at_once(size, 1) if placement.num_devices == 1 else size
    train = placement.jit_train(_chunked(jax.vmap(member_step), size, chunk))
    evaluate = placement.jit_eval(jax.vmap(member_eval))
    return train, evaluate


# --- the job -------------------------------------------------------------------------------------


@dataclasses.dataclass
class PopulationJob:
    """A population's run, as the lifecycle (``jaxnotes.runs``) drives it."""

    config: TrainConfig
    members: list[Member]
    fns: modules.Model
    train_data: Any
    eval_data: Any
    input_shape: tuple
    placement: parallel.LeadingAxisSharded
    log: Callable[[str], None]
    subsets: list = dataclasses.field(default_factory=list)
    eval_subsets: list = dataclasses.field(default_factory=list)
    member_steps: np.ndarray = None  # (P,) full batches per epoch of each member
    preprocessing: list = dataclasses.field(default_factory=list)
    hyper: dict = dataclasses.field(default_factory=dict)  # name -> (P,) on the device
    train_step: Callable = None
    eval_step: Callable = None
    init: Callable = None
    primary: bool = True
    make_tx: Callable | None = None  # the user's tx factory (None: the config's optimizer)

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def steps_per_epoch(self) -> int:
        return int(self.member_steps.max())

    def fresh_metrics(self) -> dict:
        return _stacked(steps.empty_metrics, self.size)

    def epoch_batches(self, epoch: int, start: int) -> Iterator[dict]:
        """Batches of one epoch from position ``start``: image (P, B, ...), label (P, B),
        live (P,) (False where a member has no batch left: it sits the step out)."""
        from jaxnotes.data import epoch_permutation

        size = self.config.batch_size
        orders = [
            subset[epoch_permutation(len(subset), member.seed, epoch)]
            for member, subset in zip(self.members, self.subsets, strict=True)
        ]
        images, labels = self.train_data.images, self.train_data.labels.astype(np.int32)
        for step in range(start, self.steps_per_epoch):
            live = self.member_steps > step
            idx = np.stack(
                [
                    order[step * size : (step + 1) * size] if alive else order[:size]
                    for order, alive in zip(orders, live, strict=True)
                ]
            )
            yield {"image": images[idx], "label": labels[idx], "live": live}

    def dispatch(self, batch: dict) -> tuple[str, Callable, int, int]:
        live = int(np.asarray(batch["live"]).sum())
        step = lambda state, b, metrics: self.train_step(state, self.hyper, b, metrics)
        return "population_step", step, 1, live * self.config.batch_size

    def check(self, host: dict, last_checkpoint: str | None) -> None:
        """Nothing stops a population: a diverged member is a result (see ``rows``)."""

    def evaluate(self, state) -> dict:
        metrics = self.placement.put(_stacked(steps.empty_eval_metrics, self.size))
        for batch in self.placement.batches(self._eval_batches()):
            metrics = self.eval_step(state, self.hyper, batch, metrics)
        return steps.means(jax.device_get(metrics))

    def _eval_batches(self) -> Iterator[dict]:
        """Every member's evaluation subset, padded to the longest and masked."""
        size = self.config.eval_batch_size
        longest = max(len(s) for s in self.eval_subsets)
        images, labels = self.eval_data.images, self.eval_data.labels.astype(np.int32)
        for start in range(0, longest, size):
            idx = np.zeros((self.size, size), np.int64)
            mask = np.zeros((self.size, size), np.float32)
            for m, subset in enumerate(self.eval_subsets):
                chunk = subset[start : start + size]
                idx[m, : len(chunk)], mask[m, : len(chunk)] = chunk, 1.0
            yield {"image": images[idx], "label": labels[idx], "mask": mask}

    def end_epoch(self, session: runs.Session, epoch: int, host: dict) -> dict:
        train = steps.means(host)
        with session.phases("evaluate"):
            val = self.evaluate(session.state)
        if not session.history:
            session.history = [[] for _ in range(self.size)]
        for m in range(self.size):
            row = {"epoch": epoch + 1, "train_loss": float(train["loss"][m]),
                   "train_acc": float(train["acc"][m]), "val_loss": float(val["loss"][m]),
                   "val_acc": float(val["acc"][m])}  # fmt: skip
            session.history[m].append(row)
        diverged = np.asarray(host["bad_step"]) >= 0
        scores = np.where(diverged, -np.inf, val["acc"])
        best = int(np.argmax(scores))
        mean = np.mean(val["acc"][~diverged]) if (~diverged).any() else float("nan")
        self.log(
            f"epoch {epoch + 1}/{self.config.epochs}  {self.size} members  val acc mean "
            f"{mean:.4f}  best {val['acc'][best]:.4f} (member {best})  diverged "
            f"{int(diverged.sum())}"
        )
        return {"epoch": epoch + 1, "val_acc_mean": float(mean), "diverged": int(diverged.sum())}

    def metric_rows(self, history: list) -> list[dict]:
        return [{"member": m, **row} for m, rows in enumerate(history) for row in rows]

    def resume_facts(self) -> dict:
        return {
            "members": [m.describe(self.config) for m in self.members],
            "subsets": [hash_indices(s) for s in self.subsets],
            "preprocessing": [p.to_json() for p in self.preprocessing],
        }

    def rows(self, session: runs.Session) -> list[dict]:
        host = jax.device_get(session.metrics)
        rows = []
        for m, member in enumerate(self.members):
            last = session.history[m][-1] if session.history else {}
            bad = int(np.asarray(host["bad_step"])[m])
            rows.append({
                "member": m, **member.describe(self.config),
                **{k: v for k, v in last.items() if k != "epoch"},
                "diverged": bad >= 0 or not np.isfinite(last.get("val_loss", np.nan)),
                "bad_step": bad if bad >= 0 else None,
            })  # fmt: skip
        return rows


def _stacked(tree_fn: Callable[[], dict], size: int) -> dict:
    host = jax.tree.map(np.asarray, tree_fn())
    return jax.tree.map(lambda x: np.broadcast_to(x, (size, *x.shape)).copy(), host)


def _build(config, members, module, data, devices, log, make_tx=None) -> PopulationJob:
    train_data, eval_data = data
    if len(members) % devices:
        raise ValueError(
            f"{len(members)} members do not divide over {devices} devices; use a multiple of "
            f"{devices} members"
        )
    fns = modules.as_model(module)
    shape = training.input_shape(config, train_data, eval_data)
    modules.check_outputs(fns, shape, training.num_classes(train_data, eval_data))
    every = lambda data, chosen: np.arange(len(data)) if chosen is None else np.asarray(chosen)
    job = PopulationJob(
        config, list(members), fns, train_data, eval_data, shape,
        parallel.LeadingAxisSharded(devices), log, make_tx=make_tx,
    )  # fmt: skip
    job.subsets = [every(train_data, m.train_indices) for m in members]
    job.eval_subsets = [every(eval_data, m.eval_indices) for m in members]
    job.member_steps = np.array([len(s) // config.batch_size for s in job.subsets])
    hyper, field = traced_settings(config, members, module, job.member_steps)
    job.preprocessing = member_preprocessing(config, train_data, job.subsets)
    preprocess = traced_preprocess(job.preprocessing, hyper)
    job.train_step, job.eval_step = _member_programs(job, module, field, preprocess)
    job.hyper = job.placement.put(hyper)
    job.init = _compiled_init(job, hyper)
    return job


def _compiled_init(job: PopulationJob, hyper: dict) -> Callable:
    tx_for, fns, placement = (
        tx_factory(job.config, job.members, job.make_tx),
        job.fns,
        job.placement,
    )

    def member_init(seed, hyper_m):
        x = jnp.zeros((1, *job.input_shape), jnp.float32)
        return steps.initial_state(fns, tx_for(hyper_m), x, seed)

    seeds = jax.ShapeDtypeStruct((job.size,), jnp.uint32)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), hyper)
    # Every member's whole state (parameters, optimizer slots) is on the devices at once.
    state = jax.eval_shape(jax.vmap(member_init), seeds, abstract)
    per_device = job.size // placement.num_devices
    state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
    at_once = members_at_once(job.size, placement.num_devices)  # the rest wait in lax.map
    modules.check_memory(
        fns, job.input_shape, job.config.batch_size * at_once, copies=per_device,
        state_bytes=state_bytes // placement.num_devices,
    )  # fmt: skip
    jitted = jax.jit(jax.vmap(member_init), in_shardings=placement.split,
                     out_shardings=placement.split)  # fmt: skip
    return jitted.lower(seeds, abstract).compile(compiler_options=steps.init_compiler_options())


def fit_population(
    config: TrainConfig,
    members: Sequence[Member],
    workdir=None,
    *,
    model: Any = None,
    train_data=None,
    eval_data=None,
    resume: bool = False,
    overwrite: bool = False,
    devices: int = 1,
    rows_file: str | None = "members.jsonl",
    tx: Callable[..., optax.GradientTransformation] | None = None,
    log: Callable[[str], None] = print,
) -> PopulationResult:
    """Train every member of a population at once (see the module docstring).

    Args:
      config: what the members share (model name or label, optimizer kind, schedule, batch
        size, epochs, resize, normalization, precision); the rates are each member's defaults.
      members: the members (``Member``); P = len(members), one compiled program for any P.
      workdir: where checkpoints, ``metrics.jsonl`` (one line per member per epoch),
        ``rows_file`` (one line per member; None: not written) and ``summary.json`` go; None
        writes nothing. Locked, replaced only at the first write with ``overwrite``.
      model: any module ``fit`` accepts (None: the zoo's ``config.model``).
      train_data: the data every member's ``train_indices`` index (default ``config.dataset``'s
        training split); eval_data: what ``eval_indices`` index (default its test split).
      resume: continue from the newest intact checkpoint (same config and members); devices:
        split the members over this many devices (P must divide by it).
      tx: a factory of the members' optimizer, ``tx(learning_rate=..., [weight_decay=...,
        momentum=...])``, e.g. ``optax.inject_hyperparams(optax.adamw)``: each member's rates
        (the ones it takes) are passed as traced arrays: a population varies exactly these
        three (the config's schedule, warm-up and clipping apply). None: config's optimizer.
      log: one line per epoch (mean and best validation accuracy, diverged members).

    Returns:
      A ``PopulationResult`` (``rows`` and ``history`` in member order).
    """
    phases, session, failing = profiling.Phases(), None, True
    config, module, train_data, eval_data = _set_up(config, members, model, train_data, eval_data)
    with profiling.CompileLog() as compiles:
        with phases("build"):
            job = _build(config, members, module, (train_data, eval_data), devices, log, tx)
        try:
            with phases("init"):
                seeds = job.placement.put(np.array([m.seed for m in members], np.uint32))
                state = job.init(seeds, job.hyper)
                folder = _open_folder(job, workdir, resume, overwrite)
                session = runs.start_session(job, state, folder, resume, phases)
            runs.train_epochs(job, session, lambda record: False)
            result = _outputs(job, session, compiles, rows_file)
            failing = False
            return result
        finally:
            if session is not None and session.folder is not None:
                session.folder.close(failing)


def _set_up(config, members, model, train_data, eval_data):
    """Every check before anything is built: (config, module, train_data, eval_data)."""
    from jaxnotes import data as jdata

    config.validate()
    check_population_config(config)
    config = dataclasses.replace(config, model=training.model_label(config, model))
    train_data = jdata.load(config.dataset, "train") if train_data is None else train_data
    eval_data = jdata.load(config.dataset, "test") if eval_data is None else eval_data
    check_members(members, config, train_data, eval_data)
    module = training.resolve_model(config, model, train_data.num_classes)
    return config, module, train_data, eval_data


def _open_folder(job: PopulationJob, workdir, resume: bool, overwrite: bool):
    if workdir is None:
        return None
    return runs.RunFolder.open(
        workdir, resume=resume, overwrite=overwrite, keep=job.config.keep_checkpoints, log=job.log
    )


def _outputs(job: PopulationJob, session: runs.Session, compiles, rows_file) -> PopulationResult:
    config, rows = job.config, job.rows(session)
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "members": job.size,
        "epochs": config.epochs,
        "resize": config.resize,
        "examples_per_sec": runs.throughput(session),
        "wall_s": time.perf_counter() - session.phases.started,
        "devices": job.placement.num_devices,
        "compiled_programs": compiles.count,
        "profile": {"phases": session.phases.report(), "compiles": compiles.report()},
        "preprocessing": [p.to_json() for p in job.preprocessing],
    }
    if session.folder is not None and rows_file is not None:
        session.folder.write_json_lines(rows_file, rows)
    runs.finish(job, session, summary)
    folder = session.folder.path if session.folder is not None else None
    return PopulationResult(
        job.members, jax.device_get(session.state), session.history, rows, summary, job.fns,
        job.preprocessing, folder,
    )  # fmt: skip
