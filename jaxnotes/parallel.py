"""Data parallelism: the same train step on one device, a device mesh (sharded jit) or pmap.

Three placements share one interface, so the engine (``jaxnotes.training``) runs unchanged on any
of them. A placement decides how a step is jitted, donated and sharded, never what it computes:
a train step is any ``(state, batch, metrics) -> (state, metrics)``, an eval step any
``(weights, batch, metrics) -> metrics``; this module imports nothing from the engine.

- :class:`SingleDevice`: the default.
- :class:`ShardedDataParallel` (the modern path, ``--devices N``): a ``Mesh`` with one "batch"
  axis of Auto type (linen Dropout fails on Explicit-axis sharded inputs), parameters and optimizer
  state replicated (``P()``), every batch split along "batch" (``P("batch")``). The step is the
  single-device step jitted with these shardings; XLA inserts the gradient all-reduce. Across
  hosts each process feeds only its slice of the global batch
  (``jax.make_array_from_process_local_data``).
- :class:`PmapDataParallel` (``--parallel pmap``): ``jax.pmap`` over the local devices with
  ``lax.pmean`` of the gradients and the loss, for pmap-style code and TPU notebooks. (pmap is in
  maintenance mode in JAX; prefer the mesh.)

All three compute the same function: dropout keys are drawn per example from
``fold_in(fold_in(key, step), global_index)`` (the train step, ``jaxnotes.steps``), so the masks
do not depend on how a batch is split, and the global batch's mean gradient is the mean of the
devices' equal-sized slices' mean gradients. Models with state (BatchNorm): on the mesh XLA
computes the global batch's statistics, as one device would; under pmap each device normalises
with its own slice's statistics unless the module names the device axis (``axis_name="batch"``),
and the engine averages the running statistics over the devices after each step.

Multi-host: :func:`maybe_initialize_distributed` starts ``jax.distributed`` from explicit flags or
a standard cluster environment; only process 0 writes logs and files, and orbax writes each
replicated array once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXIS = "batch"


def check_devices(requested: int, global_batch: int) -> None:
    """Raise ValueError if ``requested`` devices do not exist or do not divide the batch."""
    available = jax.device_count()
    if requested > available:
        hint = (
            " (on CPU, start Python with JAX_NUM_CPU_DEVICES=N to simulate N devices)"
            if jax.default_backend() == "cpu"
            else ""
        )
        raise ValueError(f"asked for {requested} devices but only {available} exist{hint}")
    if global_batch % requested:
        below = requested * (global_batch // requested)
        nearest = f"{below} or {below + requested}" if below else f"{requested}"
        raise ValueError(
            f"global batch size {global_batch} does not divide by {requested} devices; "
            f"use a multiple of {requested} (e.g. {nearest})"
        )


def make_mesh(num_devices: int) -> jax.sharding.Mesh:
    """A 1-D mesh over the first ``num_devices`` devices, axis "batch", Auto axis type."""
    from jax.sharding import AxisType

    devices = jax.devices()[:num_devices]
    return jax.make_mesh((num_devices,), (BATCH_AXIS,), (AxisType.Auto,), devices=devices)


def to_host(tree: Any) -> Any:
    """NumPy copies of a pytree of (possibly replicated, possibly multi-host) arrays."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))  # replicated: any local copy is the value
        return np.asarray(x)

    return jax.tree.map(one, jax.device_get(tree) if _addressable(tree) else tree)


def _addressable(tree: Any) -> bool:
    return all(
        not isinstance(x, jax.Array) or x.is_fully_addressable for x in jax.tree.leaves(tree)
    )


class SingleDevice:
    """Everything on the default device."""

    num_devices = 1
    process_count, process_index = 1, 0

    axis_name = None

    def jit_train(self, step_fn: Callable) -> Callable:
        """Jit ``(state, batch, metrics) -> (state, metrics)``, donating state and metrics."""
        return jax.jit(step_fn, donate_argnums=(0, 2))

    def jit_eval(self, step_fn: Callable) -> Callable:
        """Jit ``(weights, batch, metrics) -> metrics``, donating the metrics."""
        return jax.jit(step_fn, donate_argnums=(2,))

    def put(self, tree: Any) -> Any:
        return jax.device_put(tree)

    def batches(self, iterator: Iterable[dict], size: int = 2) -> Iterator[dict]:
        from jaxnotes.data import prefetch_to_device

        return prefetch_to_device(iterator, size)

    def host(self, tree: Any) -> Any:
        return to_host(tree)

    def unplace(self, tree: Any) -> Any:
        """The state as one device's copy (what checkpoints hold)."""
        return tree


class ShardedDataParallel(SingleDevice):
    """One jit over a mesh: state replicated, batches split along "batch".

    The step is the single-device one (no axis name): XLA partitions it and adds the all-reduce.
    """

    def __init__(self, num_devices: int):
        self.mesh = make_mesh(num_devices)
        self.num_devices = num_devices
        self.process_count, self.process_index = jax.process_count(), jax.process_index()
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P(BATCH_AXIS))

    def jit_train(self, step_fn: Callable) -> Callable:
        rep, split = self.replicated, self.batch_sharding
        return jax.jit(
            step_fn, in_shardings=(rep, split, rep), out_shardings=(rep, rep), donate_argnums=(0, 2)
        )

    def jit_eval(self, step_fn: Callable) -> Callable:
        rep, split = self.replicated, self.batch_sharding
        return jax.jit(
            step_fn, in_shardings=(rep, split, rep), out_shardings=rep, donate_argnums=(2,)
        )

    def put(self, tree: Any) -> Any:
        if self.process_count == 1:
            return jax.device_put(tree, self.replicated)
        # Every process holds the same host values (same seed): build the global arrays.
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)),
            to_host(tree),
        )

    def batches(self, iterator: Iterable[dict], size: int = 2) -> Iterator[dict]:
        from jaxnotes.data import prefetch_to_device

        return prefetch_to_device(iterator, size, sharding=self.batch_sharding)


class PmapDataParallel(SingleDevice):
    """``jax.pmap`` over the local devices; state replicated along a leading device axis.

    Arrays are placed as global arrays sharded along that leading axis (what pmap itself builds
    since JAX 0.8, replacing the deprecated ``device_put_replicated`` / ``device_put_sharded``).
    """

    axis_name = BATCH_AXIS

    def __init__(self, num_devices: int):
        if jax.process_count() > 1:
            raise ValueError("the pmap path runs on one host; use the sharded path across hosts")
        self.devices = jax.local_devices()[:num_devices]
        self.num_devices = num_devices
        mesh = jax.sharding.Mesh(np.array(self.devices), (BATCH_AXIS,))
        self.stacked = NamedSharding(mesh, P(BATCH_AXIS))

    def jit_train(self, step_fn: Callable) -> Callable:
        return jax.pmap(step_fn, axis_name=BATCH_AXIS, devices=self.devices, donate_argnums=(0, 2))

    def jit_eval(self, step_fn: Callable) -> Callable:
        return jax.pmap(step_fn, axis_name=BATCH_AXIS, devices=self.devices, donate_argnums=(2,))

    def put(self, tree: Any) -> Any:
        n = self.num_devices
        copies = jax.tree.map(lambda x: np.broadcast_to(x, (n, *np.shape(x))), to_host(tree))
        return jax.device_put(copies, self.stacked)

    def batches(self, iterator: Iterable[dict], size: int = 2) -> Iterator[dict]:
        from jaxnotes.data import prefetch_to_device

        n = self.num_devices

        def split(batch: dict) -> dict:  # (B, ...) -> (devices, B / devices, ...)
            return {k: np.reshape(v, (n, -1, *v.shape[1:])) for k, v in batch.items()}

        return prefetch_to_device(map(split, iterator), size, sharding=self.stacked)

    def host(self, tree: Any) -> Any:
        return jax.tree.map(lambda x: x[0], to_host(tree))

    def unplace(self, tree: Any) -> Any:
        return jax.tree.map(lambda x: x[0], tree)


class LeadingAxisSharded(SingleDevice):
    """Every array's leading axis split over a 1-D mesh ("population"): for stacked independent
    runs (the members of ``jaxnotes.population``), each device holding whole members.

    Members never talk to each other, so the compiled step has no communication; the result is
    the same on any number of devices. The leading axis must divide by the device count.
    """

    AXIS = "population"

    def __init__(self, num_devices: int):
        from jax.sharding import AxisType

        devices = jax.devices()[:num_devices]
        self.mesh = jax.make_mesh((num_devices,), (self.AXIS,), (AxisType.Auto,), devices=devices)
        self.num_devices = num_devices
        self.split = NamedSharding(self.mesh, P(self.AXIS))

    def jit_train(self, step_fn: Callable) -> Callable:
        """``(state, hyper, batch, metrics) -> (state, metrics)``, all split along members."""
        s = self.split
        return jax.jit(
            step_fn, in_shardings=(s, s, s, s), out_shardings=(s, s), donate_argnums=(0, 3)
        )

    def jit_eval(self, step_fn: Callable) -> Callable:
        """``(state, hyper, batch, metrics) -> metrics``, all split along members."""
        s = self.split
        return jax.jit(step_fn, in_shardings=(s, s, s, s), out_shardings=s, donate_argnums=(3,))

    def put(self, tree: Any) -> Any:
        return jax.device_put(tree, self.split)

    def batches(self, iterator: Iterable[dict], size: int = 2) -> Iterator[dict]:
        from jaxnotes.data import prefetch_to_device

        return prefetch_to_device(iterator, size, sharding=self.split)


def make_placement(num_devices: int, parallel: str = "sharded") -> SingleDevice:
    """The placement for ``num_devices`` devices: "sharded" (mesh + jit) or "pmap"."""
    if parallel not in ("sharded", "pmap"):
        raise ValueError(f"parallel must be 'sharded' or 'pmap', got {parallel!r}")
    if num_devices == 1 and jax.process_count() == 1:
        return SingleDevice()
    if parallel == "pmap":
        return PmapDataParallel(num_devices)
    return ShardedDataParallel(num_devices)


# --- multi-host -------------------------------------------------------------------------------

# Environment variables that mean "this process is one of several launched by a cluster manager";
# jax.distributed.initialize() reads the details itself (SLURM, Open MPI, TPU pods, ...).
CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS", "TPU_WORKER_ID")


class DistributedStartError(ValueError):
    """The processes of a multi-host run did not all join in time (or the address is bad)."""


def maybe_initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout: int = 180,
    log: Callable[[str], None] | None = None,
) -> bool:
    """Start ``jax.distributed`` when asked (flags) or when a cluster environment is present.

    Must run before anything else touches the JAX backend. Returns whether it was started.
    Says on stderr what it waits for; raises DistributedStartError after ``timeout`` seconds
    without every process (a coordinator that never answers would otherwise wait forever).
    """
    explicit = (coordinator, num_processes, process_id)
    if any(value is not None for value in explicit):
        if None in explicit:
            raise ValueError(
                "multi-host needs all three of --coordinator HOST:PORT, --num-processes N "
                "and --process-id I"
            )
        if num_processes < 1:
            raise ValueError(f"--num-processes must be >= 1, got {num_processes}")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process-id must be in [0, {num_processes}), got {process_id}")
        role = "serving as" if process_id == 0 else "waiting for"
        _say(
            log,
            f"process {process_id} of {num_processes}: {role} the coordinator at {coordinator}, "
            f"up to {timeout} s for all processes to join",
        )
        _initialize(timeout, coordinator, num_processes, process_id, log=log)
        return True
    in_cluster = any(
        name in os.environ and (name != "SLURM_NTASKS" or int(os.environ[name]) > 1)
        for name in CLUSTER_ENV
    )
    if in_cluster:
        _say(log, f"cluster environment found: joining it (up to {timeout} s)")
        _initialize(timeout, log=log)
        return True
    return False


def _say(log: Callable[[str], None] | None, line: str) -> None:
    if log is not None:
        log(line)
    else:
        import sys

        print(line, file=sys.stderr, flush=True)


def _initialize(timeout: int, *args, log: Callable[[str], None] | None = None) -> None:
    """``jax.distributed.initialize`` under a watchdog.

    When the coordinator never answers, JAX aborts the whole process (a C++ fatal error and a
    stack dump, exit -6) only after its own deadline; the watchdog fires first, says what was
    awaited, and exits with code 2 (a usage error: the addresses or counts do not match).
    """
    done = threading.Event()
    where = f"the coordinator at {args[0]}" if args else "the cluster's coordinator"

    def watchdog() -> None:
        if not done.wait(timeout):
            _say(
                log,
                f"error: no answer from {where} within {timeout} s; check that every process "
                "was started with the same --coordinator and --num-processes and that the "
                "coordinator's port is reachable (--coordinator-timeout to wait longer)",
            )
            os._exit(2)

    threading.Thread(target=watchdog, name="coordinator-watchdog", daemon=True).start()
    try:
        jax.distributed.initialize(*args, initialization_timeout=timeout + 60)
    except Exception as error:  # noqa: BLE001 -- XLA's errors carry pages of C++ context
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DistributedStartError(
            f"the multi-host start with {where} failed ({first[:200]}); check that every "
            "process was started with the same --coordinator and --num-processes"
        ) from None
    finally:
        done.set()
