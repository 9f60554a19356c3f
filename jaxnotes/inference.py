"""Inference: the one prediction path, and a finished run loaded from its folder.

:func:`predict_probabilities` (a model, its state and the run's own
:class:`jaxnotes.data.Preprocessing`) is what ``FitResult.predict``, a population's members and
fold ensemble, :func:`load_run` and the notebooks all use: what a run trained on is what it
predicts on (resize, normalization with the training split's statistics, eval mode, the moving
average of the weights when the run kept one). ``jaxnotes.export`` serializes the same function.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnotes import losses, modules, steps
from jaxnotes.config import TrainConfig

WHICH = ("best", "latest")


def predict_probabilities(
    model: Any, state: Any, preprocessing, images: np.ndarray, *, stacked: bool = False,
    batch_size: int = 256,
) -> np.ndarray:  # fmt: skip
    """Class probabilities of a trained model, in eval mode, with the run's own preprocessing.

    ``model``: the module (or ``modules.Model``) the run trained; ``state``: its ``TrainState``
    (or bare parameters); ``preprocessing``: the run's ``jaxnotes.data.Preprocessing``;
    ``images`` (n, H, W, C) as the data set stores them. ``stacked``: ``state`` holds P members on
    a leading axis (a population) -> (P, n, classes); else (n, classes). One program per batch
    shape: the last, shorter batch is padded.
    """
    forward = _forward(modules.as_model(model), preprocessing, stacked)
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (n, height, width, channels), got shape {images.shape}")
    state = steps.evaluation_weights(state)
    parts = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        padded = chunk
        if len(images) > batch_size > len(chunk):  # every call the same shape: one program
            pad = np.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)
            padded = np.concatenate([chunk, pad])
        out = np.asarray(forward(state, padded))
        parts.append(out[..., : len(chunk), :])
    return np.concatenate(parts, axis=-2)


def probabilities_function(fns: modules.Model, preprocessing) -> Callable:
    """``(weights, images) -> probabilities``: preprocessing, eval-mode forward, softmax."""
    preprocess = preprocessing.function()

    def forward(weights, x):
        params, model_state = steps.variables_of(weights)
        outputs, _ = fns.apply(params, model_state, preprocess(x), False)
        return jax.nn.softmax(losses.logits_of(outputs).astype(jnp.float32), axis=-1)

    return forward


@functools.lru_cache(maxsize=16)
def _forward(fns: modules.Model, preprocessing, stacked: bool) -> Callable:
    """The jitted forward pass, kept per (model, preprocessing): repeated calls compile once."""
    one = probabilities_function(fns, preprocessing)
    return jax.jit(jax.vmap(one, in_axes=(0, None)) if stacked else one)


@dataclasses.dataclass
class LoadedRun:
    """A finished (or interrupted) run, loaded for inference by :func:`load_run`.

    model: the module; state: a ``TrainState`` (params, model_state, extras; no optimizer
    state); config; summary (``summary.json``, None if the run did not finish); epoch: the
    epoch its weights are from; step; record: that epoch's record (None mid-epoch).
    """

    model: Any
    state: steps.TrainState
    config: TrainConfig
    summary: dict | None
    epoch: int
    step: int
    record: dict | None
    preprocessing: Any
    workdir: Path
    image: dict  # the raw images' shape (H, W, C) and dtype, as the run's data stored them

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (n, classes) with the run's own preprocessing, in eval mode."""
        return predict_probabilities(
            self.model, self.state, self.preprocessing, images, batch_size=batch_size
        )


def load_run(workdir, which: str = "best", *, model: Any = None) -> LoadedRun:
    """A run in ``workdir`` at its best (by the monitored metric, among the checkpoints taken at
    epoch ends) or its latest checkpoint.

    Zoo models are rebuilt by name; for your own module pass ``model=MyNet()`` (built like the
    one you trained). The optimizer is not needed (its state is not read).

    Raises:
      FileNotFoundError: no checkpoint in ``workdir``; ValueError: ``which`` unknown, or "best"
      with no checkpoint at an epoch's end.
    """
    from jaxnotes.checkpoints import Checkpoints

    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    workdir = Path(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise FileNotFoundError(f"no checkpoints in {workdir} (is it a run's --workdir?)")
    checkpoints = Checkpoints(workdir / "checkpoints", 1, read_only=True)
    step, meta = _choose(checkpoints, which)
    saved = checkpoints.restore_saved(step)
    config = _config_of(meta["config"])
    module = _module(config, model, meta)
    _check_parameters(module, saved["params"], meta)
    from jaxnotes.data import Preprocessing

    summary_path = workdir / "summary.json"
    record = _epoch_record(meta)
    return LoadedRun(
        module, _state_of(saved), config,
        json.loads(summary_path.read_text()) if summary_path.exists() else None,
        int(meta["epoch"]), step, record, Preprocessing.from_json(meta["preprocessing"]), workdir,
        meta.get("image", {}),
    )  # fmt: skip


def _epoch_record(meta: dict) -> dict | None:
    """The record of the epoch a checkpoint closes (None for a checkpoint mid-epoch)."""
    history = meta.get("history") or []
    position = meta.get("position", meta.get("step"))
    if history and history[-1].get("step") == position:
        return history[-1]
    return None


def _choose(checkpoints, which: str) -> tuple[int, dict]:
    steps_saved = checkpoints.all_steps()
    if not steps_saved:
        raise FileNotFoundError(f"no checkpoint in {checkpoints.directory}")
    if which == "latest":
        found = checkpoints.latest_intact_meta()
        if found is None:
            raise FileNotFoundError(f"no intact checkpoint in {checkpoints.directory}")
        return found
    candidates = []
    for step in steps_saved:
        meta = checkpoints.read_meta(step)
        name, mode = _config_of(meta["config"]).monitored
        record = _epoch_record(meta)
        if record is not None and name in record:
            value = record[name] if mode == "min" else -record[name]
            candidates.append((value, -step, step, meta))
    if not candidates:
        raise ValueError(
            f"which='best': no checkpoint in {checkpoints.directory} was taken at an epoch's end "
            "with its monitored metric; use which='latest'"
        )
    _, _, step, meta = min(candidates, key=lambda c: c[:2])  # the earlier of equal ones
    return step, meta


def _tuples(value: Any) -> Any:
    """JSON lists back to tuples (model fields such as MLP's ``hidden`` are tuples)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _config_of(saved: dict) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    fields = {k: v for k, v in saved.items() if k in known}
    fields["model_kwargs"] = _tuples(fields.get("model_kwargs") or {})
    return TrainConfig(**fields)


def _module(config: TrainConfig, model: Any, meta: dict) -> Any:
    from jaxnotes.assembly import resolve_model

    if model is None and config.model is not None:
        from jaxnotes.models import MODELS

        if config.model not in MODELS:
            raise ValueError(
                f"the run trained {config.model!r}, not a zoo model: pass load_run(..., "
                "model=YourModule()) built as you trained it"
            )
    return resolve_model(config, model, int(meta.get("num_classes", 10)))


def _check_parameters(module: Any, params: Any, meta: dict) -> None:
    """The module must have the saved parameters' tree (else it is another model)."""
    from jaxnotes.checkpoints import first_difference, tree_signature

    fns = modules.as_model(module)
    shape = meta.get("image", {}).get("shape")
    resize = meta.get("preprocessing", {}).get("resize")
    if shape is None:
        return
    side = (resize, resize, shape[2]) if resize else tuple(shape)
    x = jax.ShapeDtypeStruct((1, *side), jnp.float32)
    expected, _ = jax.eval_shape(fns.init, jax.random.key(0), x)
    difference = first_difference(tree_signature(params), tree_signature(expected))
    if difference:
        raise ValueError(
            f"the checkpoint's parameters are not those of {fns.label} ({difference}); pass "
            "load_run(..., model=YourModule()) built as you trained it"
        )


def _state_of(saved: dict) -> steps.TrainState:
    return steps.TrainState(
        step=saved["step"], params=saved["params"], opt_state=None, key=saved["key"],
        model_state=saved.get("model_state") or {}, extras=saved.get("extras") or {},
    )  # fmt: skip
