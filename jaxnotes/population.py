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
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnotes import modules, optim, parallel, profiling, runs, steps, training
from jaxnotes.config import TrainConfig, check_value

HYPER = ("learning_rate", "weight_decay", "momentum", "dropout")


@dataclasses.dataclass(frozen=True, eq=False)
class Member:
    """One member's settings; None takes the config's value (dropout: the model's own).

    train_indices: the member's training examples, indices into ``train_data`` (None: all).
    eval_indices: its evaluation examples, indices into ``eval_data`` (None: all).
    """

    seed: int = 0
    learning_rate: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    dropout: float | None = None
    train_indices: np.ndarray | None = None
    eval_indices: np.ndarray | None = None

    def settings(self, config: TrainConfig) -> dict[str, float | None]:
        """The member's effective rates (the optimizer's rules, e.g. "momentum" means 0.9)."""
        pick = lambda mine, default: default if mine is None else mine
        momentum = pick(self.momentum, config.momentum)
        return {
            "learning_rate": pick(self.learning_rate, config.learning_rate),
            "weight_decay": pick(self.weight_decay, config.weight_decay),
            "momentum": optim.effective_momentum(config.optimizer, momentum),
            "dropout": self.dropout,
        }

    def describe(self, config: TrainConfig) -> dict:
        """JSON-able: seed, the rates, and the sizes of the subsets."""
        row = {"seed": self.seed, **self.settings(config)}
        for name in ("train_indices", "eval_indices"):
            value = getattr(self, name)
            row[name.replace("indices", "examples")] = None if value is None else len(value)
        return row


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


# --- checks --------------------------------------------------------------------------------------


def _check_members(members: Sequence[Member], config: TrainConfig, train_data, eval_data) -> None:
    if not members:
        raise ValueError("a population needs at least one member")
    for i, member in enumerate(members):
        if not isinstance(member, Member):
            raise TypeError(f"member {i} must be a jaxnotes.population.Member, got {member!r}")
        try:
            for name, value in {**member.settings(config), "seed": member.seed}.items():
                if value is not None:
                    check_value(name, value)
        except ValueError as error:
            raise ValueError(f"member {i}: {error}") from None
        for name, dataset in (("train_indices", train_data), ("eval_indices", eval_data)):
            _check_indices(i, name, getattr(member, name), dataset)
        n = len(train_data) if member.train_indices is None else len(member.train_indices)
        if n < config.batch_size:
            raise ValueError(
                f"member {i} trains on {n} examples, fewer than one batch of {config.batch_size}"
            )


def _check_indices(i: int, name: str, idx, dataset) -> None:
    if idx is None:
        return
    idx = np.asarray(idx)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"member {i}: {name} must be a non-empty 1-D integer array")
    if idx.min() < 0 or idx.max() >= len(dataset):
        raise ValueError(
            f"member {i}: {name} go from {idx.min()} to {idx.max()}, outside the data set's "
            f"0..{len(dataset) - 1}"
        )


def _dropout_field(module) -> str:
    fields = getattr(module, "__dataclass_fields__", {})
    for name in ("dropout", "aux_dropout"):
        if name in fields:
            return name
    raise ValueError(
        f"members set a dropout rate but {type(module).__name__} has no 'dropout' field to set "
        "(zoo models: mlp, alexnet, vgg*, nin, googlenet's aux heads)"
    )


def hash_indices(indices: np.ndarray) -> str:
    """A short fingerprint of an index array (a resumed population must train the same folds)."""
    return hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()[:16]


# --- the compiled pieces -------------------------------------------------------------------------


def _tx_factory(config: TrainConfig, members: Sequence[Member]) -> Callable[[dict], Any]:
    """hyper -> the member's optax chain (the config's optimizer with traced rates)."""
    rates = [m.settings(config) for m in members]
    with_momentum = config.optimizer != "adam" and any(r["momentum"] > 0 for r in rates)
    with_decay = any(r["weight_decay"] > 0 for r in rates)

    def tx_for(hyper: dict):
        learning_rate = hyper["learning_rate"]
        if config.schedule == "cosine":  # fit's schedule, with each member's own length
            learning_rate = optim.cosine_decay(learning_rate, hyper["total_steps"])
        return optim.chain(
            config.optimizer, learning_rate, hyper["momentum"], hyper["weight_decay"],
            config.decoupled, with_momentum=with_momentum, with_decay=with_decay,
        )  # fmt: skip

    return tx_for


def _hyper(config, members: Sequence[Member], module, steps_per_member: np.ndarray):
    """The members' traced settings, one float32 array per name in HYPER (plus each member's
    total steps), and the module field the dropout rate goes into (None: not traced)."""
    rates = [m.settings(config) for m in members]
    traced_dropout = any(r["dropout"] is not None for r in rates)
    field = _dropout_field(module) if traced_dropout else None
    default_rate = getattr(module, field, 0.0) if field else 0.0
    hyper = {
        name: np.array(
            [r[name] if r[name] is not None else default_rate for r in rates], np.float32
        )
        for name in HYPER
    }
    hyper["total_steps"] = (config.epochs * steps_per_member).astype(np.int32)
    return hyper, field


# Members vectorised at once, at most: measured on 2 CPU cores (LeNet, batch 16), 4 members
# vmapped ran 1.5x the examples/s of one, 16 or 64 only 0.7x (the stacked convolutions leave
# the caches); chunks of 4 run one after another inside the same program (lax.map).
CHUNK = 4


def _chunked(step: Callable, size: int, devices: int) -> Callable:
    """``step`` over the member axis in chunks of ``CHUNK`` members (one device only)."""
    chunk = max(c for c in range(1, CHUNK + 1) if size % c == 0)
    if devices > 1 or chunk == size:
        return step

    def chunked(*trees):
        split = lambda tree: jax.tree.map(lambda x: x.reshape(-1, chunk, *x.shape[1:]), tree)
        merge = lambda tree: jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)
        out = jax.lax.map(lambda a: step(*a), tuple(split(t) for t in trees))
        return merge(out[0]), merge(out[1])

    return chunked


def _member_programs(job: PopulationJob, module, field, preprocess) -> tuple[Callable, Callable]:
    """(the vmapped train step over (state, hyper, batch, metrics), the vmapped eval step)."""
    config, fns, tx_for = job.config, job.fns, _tx_factory(job.config, job.members)

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
    train = placement.jit_train(_chunked(jax.vmap(member_step), size, placement.num_devices))
    evaluate = placement.jit_eval(jax.vmap(member_eval))
    return train, evaluate


def _preprocessing(config: TrainConfig, train_data, subsets) -> list:
    """Each member's ``Preprocessing``: "standardize" statistics of its own training subset."""
    from jaxnotes import data as jdata

    if config.normalization != "standardize":
        return [training.config_preprocessing(config, train_data)] * len(subsets)
    out = []
    for subset in subsets:
        part = jdata.from_arrays(train_data.images[subset], train_data.labels[subset])
        out.append(training.config_preprocessing(config, part))
    return out


def _traced_preprocess(preprocessing: list, hyper: dict) -> Callable:
    """hyper_m -> the member's preprocessing function (its statistics ride in ``hyper``)."""
    first = preprocessing[0]
    if first.normalization != "standardize":
        return lambda hyper_m: first.function()
    hyper["mean"] = np.array([p.mean for p in preprocessing], np.float32)
    hyper["std"] = np.array([p.std for p in preprocessing], np.float32)
    from jaxnotes.data import make_preprocess

    def preprocess(hyper_m):
        scale = make_preprocess(first.resize, "scale")
        return lambda images: (scale(images) - hyper_m["mean"]) / hyper_m["std"]

    return preprocess


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


def _build(config, members, module, train_data, eval_data, devices, log) -> PopulationJob:
    if len(members) % devices:
        raise ValueError(
            f"{len(members)} members do not divide over {devices} devices; use a multiple of "
            f"{devices} members"
        )
    fns = modules.as_model(module)
    shape = training.input_shape(config, train_data, eval_data)
    modules.check_outputs(fns, shape, training.num_classes(train_data, eval_data))
    modules.check_memory(fns, shape, config.batch_size * len(members) // devices)
    every = lambda data, chosen: np.arange(len(data)) if chosen is None else np.asarray(chosen)
    job = PopulationJob(
        config, list(members), fns, train_data, eval_data, shape,
        parallel.LeadingAxisSharded(devices), log,
    )  # fmt: skip
    job.subsets = [every(train_data, m.train_indices) for m in members]
    job.eval_subsets = [every(eval_data, m.eval_indices) for m in members]
    job.member_steps = np.array([len(s) // config.batch_size for s in job.subsets])
    hyper, field = _hyper(config, members, module, job.member_steps)
    job.preprocessing = _preprocessing(config, train_data, job.subsets)
    preprocess = _traced_preprocess(job.preprocessing, hyper)
    job.train_step, job.eval_step = _member_programs(job, module, field, preprocess)
    job.hyper = job.placement.put(hyper)
    job.init = _compiled_init(job, hyper)
    return job


def _compiled_init(job: PopulationJob, hyper: dict) -> Callable:
    tx_for, fns, placement = _tx_factory(job.config, job.members), job.fns, job.placement

    def member_init(seed, hyper_m):
        x = jnp.zeros((1, *job.input_shape), jnp.float32)
        return steps.initial_state(fns, tx_for(hyper_m), x, seed)

    seeds = jax.ShapeDtypeStruct((job.size,), jnp.uint32)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), hyper)
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
      resume: continue from the newest intact checkpoint (same config and members).
      devices: split the members over this many devices (P must divide by it).
      log: one line per epoch (mean and best validation accuracy, diverged members).

    Returns:
      A ``PopulationResult`` (``rows`` and ``history`` in member order).
    """
    from jaxnotes import data as jdata

    phases, session, failing = profiling.Phases(), None, True
    config.validate()
    config = dataclasses.replace(config, model=training.model_label(config, model))
    train_data = jdata.load(config.dataset, "train") if train_data is None else train_data
    eval_data = jdata.load(config.dataset, "test") if eval_data is None else eval_data
    _check_members(members, config, train_data, eval_data)
    module = training.resolve_model(config, model, train_data.num_classes)
    with profiling.CompileLog() as compiles:
        with phases("build"):
            job = _build(config, members, module, train_data, eval_data, devices, log)
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
