"""The training loss for any classifier the engine trains: logits, or (logits, *aux_logits).

Models only return outputs; what is minimised lives here, with the engine. A model that returns a
tuple is read as GoogLeNet's (main logits, auxiliary heads' logits...): the loss adds
``aux_weight`` x each auxiliary head's cross-entropy (the paper's 0.3), and accuracy and
evaluation use the main logits only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp


def logits_of(outputs: Any) -> jax.Array:
    """The main logits of a model's outputs: the array itself, or the first of a tuple/list."""
    return outputs[0] if isinstance(outputs, tuple | list) else outputs


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy in float32; ``logits`` (N, K), integer ``labels`` (N,)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)
    return -jnp.mean(picked)


def classification_loss(
    outputs: jax.Array | Sequence[jax.Array], labels: jax.Array, aux_weight: float = 0.3
) -> jax.Array:
    """``cross_entropy(logits) + aux_weight * sum(cross_entropy(aux_i))`` for logits or a tuple."""
    if isinstance(outputs, tuple | list):
        logits, *aux = outputs
    else:
        logits, aux = outputs, []
    loss = cross_entropy(logits, labels)
    for aux_logits in aux:
        loss = loss + aux_weight * cross_entropy(aux_logits, labels)
    return loss


googlenet_loss = classification_loss
