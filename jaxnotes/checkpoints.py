"""Checkpoints of a run: orbax saves of the state pytree plus JSON metadata, checked on restore.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a crash
mid-write never leaves a half-written checkpoint that ``latest_step`` would pick up. The metadata
holds the run's configuration, its history and the *tree signature* of the state (every
parameter's and state variable's path, shape and dtype): a resume reads the metadata first and
stops with a message naming the first differing path or setting, before orbax touches the arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np


def tree_signature(tree: Any) -> list[list]:
    """``[[path, shape, dtype], ...]`` of a pytree's leaves, in flattening order (JSON-able)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [
        [jax.tree_util.keystr(path).lstrip("."), list(np.shape(leaf)), str(np.dtype(_dtype(leaf)))]
        for path, leaf in leaves
    ]


def _dtype(leaf: Any) -> Any:
    return getattr(leaf, "dtype", np.asarray(leaf).dtype)


def first_difference(saved: list[list], current: list[list]) -> str | None:
    """A sentence naming the first path where two tree signatures differ (None: they agree)."""
    saved_by_path = {path: (shape, dtype) for path, shape, dtype in saved}
    current_by_path = {path: (shape, dtype) for path, shape, dtype in current}
    for path, shape, dtype in current:
        if path not in saved_by_path:
            return f"the model has {path} {tuple(shape)}, the checkpoint does not"
        old_shape, old_dtype = saved_by_path[path]
        if (old_shape, old_dtype) != (shape, dtype):
            return (
                f"{path} is {tuple(old_shape)} {old_dtype} in the checkpoint but "
                f"{tuple(shape)} {dtype} in the model"
            )
    for path, shape, _ in saved:
        if path not in current_by_path:
            return f"the checkpoint has {path} {tuple(shape)}, the model does not"
    return None


class Checkpoints:
    """Orbax checkpoints of a state pytree, each with JSON metadata, in ``directory``."""

    def __init__(self, directory: Path, keep: int):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def path(self, step: int) -> str:
        return str(self.directory / str(step))

    def save(self, state: Any, meta: dict) -> str:
        ocp = self._ocp
        step = int(state.step)
        meta = {**meta, "tree": tree_signature(state)}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        # Wait: a later crash must not take the checkpoint we report as "the last good one".
        self.manager.wait_until_finished()
        return self.path(step)

    def read_meta(self, step: int | None = None) -> dict:
        """The metadata of checkpoint ``step`` (default: the latest), without reading arrays."""
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """The state of checkpoint ``step`` (default: the latest) shaped like ``abstract_state``.

        Raises ValueError naming the first differing path when the saved tree is not the one
        ``abstract_state`` has (another model, input size or optimizer).
        """
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        meta = self.read_meta(step)
        if "tree" in meta:
            difference = first_difference(meta["tree"], tree_signature(abstract_state))
            if difference:
                raise ValueError(
                    f"checkpoint {self.path(step)} holds another model or optimizer: "
                    f"{difference}; resume with the same model or start a new --workdir"
                )
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        return restored["state"], meta

    def close(self) -> None:
        self.manager.close()
