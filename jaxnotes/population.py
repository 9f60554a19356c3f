"""Populations: P runs of one model trained at once, as one compiled program, by the engine's step.

A population is P *members* of one model (a zoo name or any module ``fit`` accepts). Each member
has its own parameters, optimizer state, dropout keys and data order, and may differ in seed,
training subset (a fold), learning rate, weight decay, momentum and dropout rate. Chapter 1's
K-fold cross-validation and random search (``jaxnotes.selection``) are populations.

How it is one program whatever P and whatever the values::

    member_step(state, hyper, batch, metrics):            # ONE member, traced
        tx   = optim.chain(..., hyper["learning_rate"], hyper["momentum"], hyper["weight_decay"])
        step = training.make_train_step(model(rate=hyper["dropout"]), tx, ...)   # the engine's
        return step(state, batch, metrics)                 # ... kept where the member sits out
    population_step = vmap(member_step)                    # over the leading member axis

The hyper-parameters are traced arrays, so they are values of the program, not part of it; only
what changes shapes (the model's architecture, the batch size) needs a separate population.

Members are exactly what separate runs would be: member i equals ``training.fit`` run alone with
member i's seed, rates and ``train_data`` subset (same examples, same order, same dropout masks):
its batches are slices of ``epoch_permutation(len(subset), seed, epoch)`` of its own subset, its
keys ``fold_in(key(seed), ...)`` as in ``fit``, and a member whose subset has fewer full batches
than the largest sits out the last steps of each epoch (a mask: its state does not move), so it
takes exactly its own steps. Evaluation runs every member on its own evaluation subset (a fold's
held-out part, or the test set), padded and masked.

Several devices (``devices=N``): the member axis is split over a 1-D mesh, each device holding
whole members (``parallel.LeadingAxisSharded``); members never communicate, so N devices give
what one gives. P must divide by N.

Checkpoints (with a workdir) are taken at epoch ends: the stacked state, every member's record
and the guard's memory; ``resume`` continues a population like ``fit`` continues a run. A member
whose loss goes non-finite or explodes is marked diverged (its guard records the step) and the
others train on: in a search, that is a result, not an error.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnotes import modules, optim, parallel, profiling, training
from jaxnotes import workdir as workdirs
from jaxnotes.config import TrainConfig

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
        """The member's effective rates (make_optimizer's rule: "momentum" means 0.9 if 0)."""
        momentum = config.momentum if self.momentum is None else self.momentum
        if config.optimizer == "momentum" and momentum == 0.0:
            momentum = 0.9
        return {
            "learning_rate": config.learning_rate
            if self.learning_rate is None
            else self.learning_rate,
            "weight_decay": config.weight_decay if self.weight_decay is None else self.weight_decay,
            "momentum": momentum,
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
    history: per member, one dict per epoch (train_loss, train_acc, eval_loss, eval_acc).
    rows: per member, its settings and final numbers (and ``diverged``).
    """

    members: list[Member]
    state: training.TrainState
    history: list[list[dict]]
    rows: list[dict]
    summary: dict
    model: Any
    workdir: Path | None = None

    def member_state(self, index: int) -> training.TrainState:
        return jax.tree.map(lambda leaf: leaf[index], self.state)

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Every member's class probabilities: (n, H, W, C) -> (P, n, classes), eval mode."""
        return predict(self.model, self.state, images, self.summary["resize"], batch_size)


def predict(model, state, images, resize=None, batch_size: int = 256) -> np.ndarray:
    """Class probabilities of each stacked member: (n, H, W, C) -> (P, n, classes)."""
    from jaxnotes.data import make_preprocess

    fns = modules.as_model(model)
    preprocess = make_preprocess(resize, "scale")

    @jax.jit
    def one_batch(state, x):
        def member(member_state):
            outputs, _ = fns.apply(
                member_state.params, member_state.model_state, preprocess(x), False
            )
            return jax.nn.softmax(training.logits_of(outputs).astype(jnp.float32), axis=-1)

        return jax.vmap(member)(state)

    images = np.asarray(images)
    parts = [
        np.asarray(one_batch(state, images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts, axis=1)


# --- checks ----------------------------------------------------------------------------------


def _check_members(members: Sequence[Member], config: TrainConfig, train_data, eval_data) -> None:
    if not members:
        raise ValueError("a population needs at least one member")
    for i, member in enumerate(members):
        if not isinstance(member, Member):
            raise TypeError(f"member {i} must be a jaxnotes.population.Member, got {member!r}")
        rates = member.settings(config)
        rules = [
            (rates["learning_rate"] > 0, "learning_rate must be > 0"),
            (rates["weight_decay"] >= 0, "weight_decay must be >= 0"),
            (0 <= rates["momentum"] < 1, "momentum must be in [0, 1)"),
            (rates["dropout"] is None or 0 <= rates["dropout"] < 1, "dropout must be in [0, 1)"),
            (0 <= member.seed <= 2**32 - 1, "seed must be in [0, 2**32)"),
        ]
        for ok, rule in rules:
            if not (np.isfinite([v for v in rates.values() if v is not None]).all() and ok):
                raise ValueError(f"member {i}: {rule}, got {member.describe(config)}")
        for name, dataset in (("train_indices", train_data), ("eval_indices", eval_data)):
            idx = getattr(member, name)
            if idx is None:
                continue
            idx = np.asarray(idx)
            if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
                raise ValueError(f"member {i}: {name} must be a non-empty 1-D integer array")
            if idx.min() < 0 or idx.max() >= len(dataset):
                raise ValueError(
                    f"member {i}: {name} go from {idx.min()} to {idx.max()}, outside the data "
                    f"set's 0..{len(dataset) - 1}"
                )
        n = len(train_data) if member.train_indices is None else len(member.train_indices)
        if n < config.batch_size:
            raise ValueError(
                f"member {i} trains on {n} examples, fewer than one batch of {config.batch_size}"
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


# --- the compiled pieces -----------------------------------------------------------------------


@dataclasses.dataclass
class _Population:
    """Everything fixed for a population run (built before any file is touched)."""

    config: TrainConfig
    members: list[Member]
    module: Any
    fns: modules.Model
    train_data: Any
    eval_data: Any
    preprocess: Callable
    input_shape: tuple
    hyper: dict  # name -> (P,) float32 on the device
    subsets: list[np.ndarray]
    eval_subsets: list[np.ndarray]
    steps: np.ndarray  # (P,) full batches per epoch of each member
    placement: parallel.LeadingAxisSharded
    init: Callable
    train_step: Callable
    eval_step: Callable

    @property
    def size(self) -> int:
        return len(self.members)


def _tx_factory(config: TrainConfig, members: Sequence[Member]):
    rates = [m.settings(config) for m in members]
    with_momentum = config.optimizer != "adam" and any(r["momentum"] > 0 for r in rates)
    with_decay = any(r["weight_decay"] > 0 for r in rates)

    def tx_for(hyper: dict):
        learning_rate = hyper["learning_rate"]
        if config.schedule == "cosine":  # optax.cosine_decay_schedule(lr, total), traced total
            total = jnp.maximum(hyper["total_steps"], 1)
            peak = learning_rate

            def learning_rate(count):
                count = jnp.minimum(count, total)
                return peak * (0.5 * (1 + jnp.cos(jnp.pi * count / total)))

        return optim.chain(
            config.optimizer,
            learning_rate,
            hyper["momentum"],
            hyper["weight_decay"],
            config.decoupled,
            with_momentum=with_momentum,
            with_decay=with_decay,
        )

    return tx_for


def _indices(members: Sequence[Member], train_data, eval_data):
    """Each member's training and evaluation example indices (the whole split when None)."""
    every = lambda data, chosen: np.arange(len(data)) if chosen is None else np.asarray(chosen)
    subsets = [every(train_data, m.train_indices) for m in members]
    eval_subsets = [every(eval_data, m.eval_indices) for m in members]
    return subsets, eval_subsets


def _hyper(config, members: Sequence[Member], module, steps: np.ndarray):
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
    hyper["total_steps"] = (config.epochs * steps).astype(np.int32)
    return hyper, field


def _build(config, members, module, train_data, eval_data, devices) -> _Population:
    placement = parallel.LeadingAxisSharded(devices)
    if len(members) % devices:
        raise ValueError(
            f"{len(members)} members do not divide over {devices} devices; use a multiple of "
            f"{devices} members"
        )
    fns = modules.as_model(module)
    input_shape = training._input_shape(config, train_data, eval_data)
    modules.check_outputs(fns, input_shape, training._num_classes(train_data, eval_data))
    modules.check_memory(fns, input_shape, config.batch_size * len(members) // devices)
    subsets, eval_subsets = _indices(members, train_data, eval_data)
    steps = np.array([len(s) // config.batch_size for s in subsets])
    hyper, field = _hyper(config, members, module, steps)
    tx_for = _tx_factory(config, members)
    preprocess = training.config_preprocess(config, train_data)

    def member_model(hyper_m):
        if field is None:
            return fns
        return modules.as_model(module.clone(**{field: hyper_m["dropout"]}))

    def member_init(seed, hyper_m):
        x = jnp.zeros((1, *input_shape), jnp.float32)
        return training.initial_state(fns, tx_for(hyper_m), x, seed)

    def member_step(state, hyper_m, batch, metrics):
        step = training.make_train_step(
            member_model(hyper_m),
            tx_for(hyper_m),
            preprocess,
            config.aux_weight,
            config.divergence_factor,
        )
        new_state, new_metrics = step(state, {k: batch[k] for k in ("image", "label")}, metrics)
        live = batch["live"]  # this member has a batch at this step (else it sits it out)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(live, a, b), new, old)
        return keep(new_state, state), keep(new_metrics, metrics)

    eval_one = training.make_eval_step(fns, preprocess)
    seeds = jax.ShapeDtypeStruct((len(members),), jnp.uint32)
    abstract_hyper = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), hyper)
    init = (
        jax.jit(jax.vmap(member_init), in_shardings=placement.split, out_shardings=placement.split)
        .lower(seeds, abstract_hyper)
        .compile(compiler_options=training.init_compiler_options())
    )
    return _Population(
        config=config,
        members=list(members),
        module=module,
        fns=fns,
        train_data=train_data,
        eval_data=eval_data,
        preprocess=preprocess,
        input_shape=input_shape,
        hyper=placement.put(hyper),
        subsets=subsets,
        eval_subsets=eval_subsets,
        steps=steps,
        placement=placement,
        init=init,
        train_step=placement.jit_train(_chunked(jax.vmap(member_step), len(members), devices)),
        eval_step=placement.jit_eval(jax.vmap(eval_one)),
    )


# Members vectorised at once, at most: measured on 2 CPU cores (LeNet, batch 16), 4 members
# vmapped ran 1.5x the examples/s of one, 16 or 64 only 0.7x (the stacked convolutions leave
# the caches); chunks of 4 run one after another inside the same program (lax.map).
CHUNK = 4


def _chunked(step: Callable, size: int, devices: int) -> Callable:
    """``step`` over the member axis in chunks of ``CHUNK`` members (one device only)."""
    chunk = max(c for c in range(1, CHUNK + 1) if size % c == 0)
    if devices > 1 or chunk == size:
        return step

    def chunked(state, hyper, batch, metrics):
        split = lambda tree: jax.tree.map(lambda x: x.reshape(-1, chunk, *x.shape[1:]), tree)
        merge = lambda tree: jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)
        out = jax.lax.map(
            lambda a: step(*a), (split(state), split(hyper), split(batch), split(metrics))
        )
        return merge(out[0]), merge(out[1])

    return chunked


# --- host batches ------------------------------------------------------------------------------


def _train_batches(pop: _Population, epoch: int) -> Iterator[dict]:
    """The population's batches of one epoch: image (P, B, ...), label (P, B), live (P,)."""
    from jaxnotes.data import epoch_permutation

    size = pop.config.batch_size
    orders = [
        subset[epoch_permutation(len(subset), member.seed, epoch)]
        for member, subset in zip(pop.members, pop.subsets, strict=True)
    ]
    images, labels = pop.train_data.images, pop.train_data.labels.astype(np.int32)
    for step in range(int(pop.steps.max())):
        live = pop.steps > step
        idx = np.stack(
            [
                order[step * size : (step + 1) * size] if alive else order[:size]
                for order, alive in zip(orders, live, strict=True)
            ]
        )
        yield {"image": images[idx], "label": labels[idx], "live": live}


def _eval_batches(pop: _Population) -> Iterator[dict]:
    """Every member's evaluation subset, padded to the longest and masked."""
    size = pop.config.eval_batch_size
    longest = max(len(s) for s in pop.eval_subsets)
    images, labels = pop.eval_data.images, pop.eval_data.labels.astype(np.int32)
    for start in range(0, longest, size):
        idx = np.zeros((pop.size, size), np.int64)
        mask = np.zeros((pop.size, size), np.float32)
        for m, subset in enumerate(pop.eval_subsets):
            chunk = subset[start : start + size]
            idx[m, : len(chunk)], mask[m, : len(chunk)] = chunk, 1.0
        yield {"image": images[idx], "label": labels[idx], "mask": mask}


def _stacked(tree_fn: Callable[[], dict], size: int) -> dict:
    host = jax.tree.map(np.asarray, tree_fn())
    return jax.tree.map(lambda x: np.broadcast_to(x, (size, *x.shape)).copy(), host)


# --- the loop ----------------------------------------------------------------------------------


def _means(sums: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per member (mean loss, accuracy), in float64 as ``fit`` reports them."""
    count = np.maximum(np.asarray(sums["count"], np.float64), 1.0)
    loss = np.asarray(sums["loss_sum"], np.float64)
    return loss / count, np.asarray(sums["correct"], np.float64) / count


def _evaluate(pop: _Population, state) -> tuple[np.ndarray, np.ndarray]:
    metrics = pop.placement.put(_stacked(training.empty_eval_metrics, pop.size))
    for batch in pop.placement.batches(_eval_batches(pop)):
        metrics = pop.eval_step(state, batch, metrics)
    return _means(jax.device_get(metrics))


def _progress(config: TrainConfig, total: int, epoch: int):
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=f"population epoch {epoch + 1}/{config.epochs}", unit="step",
        leave=False, dynamic_ncols=True, disable=None,
    )  # fmt: skip


def _train_epoch(pop: _Population, session: dict, epoch: int) -> dict:
    """One epoch for every member; returns the host sums (each member's train loss, acc)."""
    placement = pop.placement
    bar = _progress(pop.config, int(pop.steps.max()), epoch)
    started, compile_seconds = time.perf_counter(), 0.0
    for batch in placement.batches(_train_batches(pop, epoch)):
        first = not session["warm"]
        if first:
            began = time.perf_counter()
        session["state"], session["metrics"] = pop.train_step(
            session["state"], pop.hyper, batch, session["metrics"]
        )
        if first:
            jax.block_until_ready(session["state"].step)
            compile_seconds, session["warm"] = time.perf_counter() - began, True
        else:
            session["timed_examples"] += (
                int(np.asarray(batch["live"]).sum()) * pop.config.batch_size
            )
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    host = jax.device_get(session["metrics"])
    session["train_seconds"] += time.perf_counter() - started - compile_seconds
    fresh = _stacked(training.empty_metrics, pop.size)  # zero the sums, keep the guard's memory
    sums = {name: fresh[name] for name in ("loss_sum", "correct", "count")}
    session["metrics"] = placement.put({**host, **sums})
    return host


def _record(pop: _Population, session: dict, epoch: int, host: dict, log) -> None:
    train_loss, train_acc = _means(host)
    eval_loss, eval_acc = _evaluate(pop, session["state"])
    for m in range(pop.size):
        session["history"][m].append(
            {
                "epoch": epoch + 1,
                "train_loss": float(train_loss[m]),
                "train_acc": float(train_acc[m]),
                "eval_loss": float(eval_loss[m]),
                "eval_acc": float(eval_acc[m]),
            }
        )
    diverged = np.asarray(host["bad_step"]) >= 0
    finite = np.where(diverged, -np.inf, eval_acc)
    best = int(np.argmax(finite))
    log(
        f"epoch {epoch + 1}/{pop.config.epochs}  {pop.size} members  eval acc mean "
        f"{np.mean(eval_acc[~diverged]) if (~diverged).any() else float('nan'):.4f}  best "
        f"{eval_acc[best]:.4f} (member {best})  diverged {int(diverged.sum())}"
    )


def _meta(pop: _Population, session: dict, epoch: int) -> dict:
    metrics = jax.device_get(session["metrics"])
    return {
        "epoch": epoch,
        "history": session["history"],
        "config": training._config_json(pop.config),
        "members": [m.describe(pop.config) for m in pop.members],
        "subsets": [hash_indices(s) for s in pop.subsets],
        "metrics": {k: np.asarray(v).tolist() for k, v in metrics.items()},
    }


def hash_indices(indices: np.ndarray) -> str:
    """A short fingerprint of an index array (a resumed population must train the same folds)."""
    import hashlib

    return hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()[:16]


def _restore(pop: _Population, session: dict, checkpoints, log) -> int:
    found = checkpoints.latest_intact_meta()
    if found is None:
        raise FileNotFoundError(f"--resume: no intact checkpoint in {checkpoints.directory}")
    _, meta = found
    training._check_resume_config(meta["config"], pop.config)
    saved = (meta.get("members"), meta.get("subsets"))
    now = ([m.describe(pop.config) for m in pop.members], [hash_indices(s) for s in pop.subsets])
    if saved != now:
        raise ValueError(
            "--resume with other members (seeds, rates or training subsets) than the saved "
            "population; resume with the same members or start a new workdir"
        )
    state, meta = checkpoints.restore(session["state"])
    session["state"] = pop.placement.put(jax.device_get(state))
    session["history"] = meta["history"]
    session["metrics"] = pop.placement.put(
        {
            k: np.asarray(v, np.asarray(session["host_metrics"][k]).dtype)
            for k, v in meta["metrics"].items()
        }
    )
    log(f"resumed the population at epoch {meta['epoch']} ({checkpoints.path(int(meta['epoch']))})")
    return int(meta["epoch"])


def _rows(pop: _Population, session: dict) -> list[dict]:
    host = jax.device_get(session["metrics"])
    rows = []
    for m, member in enumerate(pop.members):
        last = session["history"][m][-1] if session["history"][m] else {}
        bad = int(np.asarray(host["bad_step"])[m])
        rows.append(
            {
                "member": m,
                **member.describe(pop.config),
                **{k: v for k, v in last.items() if k != "epoch"},
                "diverged": bad >= 0 or not np.isfinite(last.get("eval_loss", np.nan)),
                "bad_step": bad if bad >= 0 else None,
            }
        )
    return rows


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
    rows_file: str = "members.jsonl",
    log: Callable[[str], None] = print,
) -> PopulationResult:
    """Train every member of a population at once (see the module docstring).

    Args:
      config: what the members share (model name or label, optimizer kind, schedule, batch
        size, epochs, resize, normalization, precision); the rates are each member's defaults.
      members: the members (``Member``); P = len(members), one compiled program for any P.
      workdir: where checkpoints (epoch ends), ``metrics.jsonl`` (one line per member per epoch),
        ``rows_file`` (one line per member) and ``summary.json`` go; None writes nothing.
      model: any module ``fit`` accepts (None: the zoo's ``config.model``).
      train_data: the data every member's ``train_indices`` index (default ``config.dataset``'s
        training split); eval_data: what ``eval_indices`` index (default its test split).
      resume: continue from the latest intact checkpoint (same config and members).
      devices: split the members over this many devices (P must divide by it).
      log: one line per epoch (mean and best evaluation accuracy, diverged members).

    Returns:
      A ``PopulationResult`` (``rows`` and ``history`` in member order).
    """
    from jaxnotes import data as jdata

    started = time.perf_counter()
    config.validate()
    config = dataclasses.replace(config, model=training.model_label(config, model))
    if train_data is None:
        train_data = jdata.load(config.dataset, "train")
    if eval_data is None:
        eval_data = jdata.load(config.dataset, "test")
    _check_members(members, config, train_data, eval_data)
    module = training.resolve_model(config, model, train_data.num_classes)
    phases = profiling.Phases()
    with profiling.CompileLog() as compiles:
        with phases("build"):
            pop = _build(config, members, module, train_data, eval_data, devices)
        seeds = np.array([m.seed for m in members], np.uint32)
        with phases("init"):
            state = pop.init(pop.placement.put(seeds), pop.hyper)
        session = _new_session(pop, state)
        folder, lock, checkpoints = _open_workdir(config, workdir, resume, overwrite, log)
        try:
            first_epoch = _restore(pop, session, checkpoints, log) if resume else 0
            for epoch in range(first_epoch, config.epochs):
                with phases("train"):
                    host = _train_epoch(pop, session, epoch)
                with phases("evaluate"):
                    _record(pop, session, epoch, host, log)
                if folder is not None:
                    with phases("checkpoint"):
                        _save_epoch(pop, session, epoch, folder, checkpoints)
            if checkpoints is not None:
                checkpoints.wait()
        finally:
            if checkpoints is not None:
                checkpoints.close()
            if lock is not None:
                lock.release()
    rows = _rows(pop, session)
    summary = _summary(pop, session, time.perf_counter() - started, devices, phases, compiles)
    if folder is not None:
        _write_jsonl(folder / rows_file, rows)
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        summary["workdir"] = str(folder)
    return PopulationResult(
        list(members),
        jax.device_get(session["state"]),
        session["history"],
        rows,
        summary,
        module,
        folder,
    )


def _new_session(pop: _Population, state) -> dict:
    """What changes as the population trains: state, metric sums, history, timings."""
    host_metrics = _stacked(training.empty_metrics, pop.size)
    return {
        "state": state,
        "metrics": pop.placement.put(host_metrics),
        "host_metrics": host_metrics,
        "history": [[] for _ in range(pop.size)],
        "warm": False,
        "timed_examples": 0,
        "train_seconds": 0.0,
    }


def _save_epoch(pop: _Population, session: dict, epoch: int, folder: Path, checkpoints) -> None:
    """The epoch's metrics lines, and its checkpoint when ``checkpoint_every`` says so."""
    _write_jsonl(folder / "metrics.jsonl", _metric_lines(session["history"]))
    every = pop.config.checkpoint_every
    if every and (epoch + 1) % every == 0:
        # Numbered by epoch: members take different numbers of steps.
        saved = jax.device_get(session["state"])  # the buffers are donated
        checkpoints.save(saved, _meta(pop, session, epoch + 1), step=epoch + 1)


def _summary(pop: _Population, session: dict, wall_s: float, devices: int, phases, compiles):
    config, seconds, examples = pop.config, session["train_seconds"], session["timed_examples"]
    return {
        "model": config.model,
        "dataset": config.dataset,
        "members": pop.size,
        "epochs": config.epochs,
        "resize": config.resize,
        "examples_per_sec": examples / seconds if seconds > 0 and examples else None,
        "wall_s": wall_s,
        "devices": devices,
        "compiled_programs": compiles.count,
        "profile": {"phases": phases.report(), "compiles": compiles.report()},
    }


def _open_workdir(config, workdir, resume, overwrite, log):
    if workdir is None:
        if resume:
            raise FileNotFoundError("--resume: no checkpoint found in (no workdir given)")
        return None, None, None
    from jaxnotes.checkpoints import Checkpoints

    folder = workdirs.open_folder(workdir, resume=resume)
    lock = workdirs.Lock(folder).acquire()
    try:
        workdirs.check_reusable(folder, resume=resume, overwrite=overwrite)
        if overwrite and not resume:
            workdirs.clear_run(folder)
        checkpoints = Checkpoints(folder / "checkpoints", config.keep_checkpoints, log)
    except BaseException:
        lock.release()
        raise
    return folder, lock, checkpoints


def _metric_lines(history: list[list[dict]]) -> list[dict]:
    return [{"member": m, **row} for m, rows in enumerate(history) for row in rows]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    training._write_json_lines(path, rows)
