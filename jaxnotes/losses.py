"""The one loss home: what every training and evaluation in the package minimises and reports.

Models only return outputs; what is minimised lives here, with the engine. A model that returns a
tuple is read as GoogLeNet's (main logits, auxiliary heads' logits...): the loss adds
``aux_weight`` x each auxiliary head's cross-entropy (the paper's 0.3), and accuracy and
evaluation use the main logits only. The engine's step (``jaxnotes.steps``) averages
:func:`per_example_loss` over a training batch and sums it over the real examples of an
evaluation batch; the chapters' small scanned models (``jaxnotes.small_models``) use the masked
means below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

AUX_WEIGHT = 0.3  # GoogLeNet's auxiliary classifiers (Szegedy et al. 2015)


def logits_of(outputs: Any) -> jax.Array:
    """The main logits of a model's outputs: the array itself, or the first of a tuple/list."""
    return outputs[0] if isinstance(outputs, tuple | list) else outputs


def per_example_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy of each example, in float32: (N, K), integer (N,) -> (N,)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy in float32; ``logits`` (N, K), integer ``labels`` (N,)."""
    return jnp.mean(per_example_cross_entropy(logits, labels))


def per_example_loss(
    outputs: jax.Array | Sequence[jax.Array], labels: jax.Array, aux_weight: float = AUX_WEIGHT
) -> jax.Array:
    """Each example's ``ce(logits) + aux_weight * sum(ce(aux_i))`` for logits or a tuple: (N,)."""
    if isinstance(outputs, tuple | list):
        logits, *aux = outputs
    else:
        logits, aux = outputs, []
    loss = per_example_cross_entropy(logits, labels)
    for aux_logits in aux:
        loss = loss + aux_weight * per_example_cross_entropy(aux_logits, labels)
    return loss


def classification_loss(
    outputs: jax.Array | Sequence[jax.Array], labels: jax.Array, aux_weight: float = AUX_WEIGHT
) -> jax.Array:
    """The batch mean of :func:`per_example_loss` (what a training step minimises)."""
    return jnp.mean(per_example_loss(outputs, labels, aux_weight))


def masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean over the examples with weight 1; an all-padding batch gives 0 rather than 0/0."""
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the examples with weight 1: (N, C), (N,), (N,) -> ()."""
    return masked_mean(per_example_cross_entropy(logits, labels), weights)


def masked_accuracy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Fraction of the weight-1 examples whose argmax is the label: (N, C), (N,), (N,) -> ()."""
    return masked_mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32), weights)
