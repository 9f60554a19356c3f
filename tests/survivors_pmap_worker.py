"""One pmap train step of a BatchNorm + dropout model on 4 fake CPU devices, against the same
step computed device by device (run by tests/test_mutant_survivors.py, JAX_NUM_CPU_DEVICES=4).

A model with running statistics cannot take per-example dropout keys (BatchNorm needs the whole
batch), so under pmap each device draws its masks from ``fold_in(fold_in(key, step), device)``
(``jaxnotes.steps._training_forward``). The reference here: for each device d, the loss of its
slice of the batch with that key (flax's own apply, a cross-entropy written here), the gradients
averaged over the devices, one SGD update; the running statistics averaged too.

    JAX_NUM_CPU_DEVICES=4 python tests/survivors_pmap_worker.py
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxnotes import compile_cache, data, parallel, training

compile_cache.enable()  # the tests' cache ($JAXNOTES_CACHE_DIR, set by conftest.py)

DEVICES, BATCH, LR = 4, 32, 0.1


class BatchNormDropout(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(32)(x.reshape(x.shape[0], -1))
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(10)(x)


def cross_entropy(logits, labels):
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


def by_hand(state, batch):
    """(params, batch_stats) after one step, each device's slice with its own key."""
    model = BatchNormDropout()
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), 0)
    variables = {"params": state.params, **state.model_state}
    grads, stats = [], []
    for d in range(DEVICES):
        part = slice(d * BATCH // DEVICES, (d + 1) * BATCH // DEVICES)
        x, y = jnp.asarray(batch["image"][part]), jnp.asarray(batch["label"][part])

        def loss(params, x=x, y=y, d=d):
            logits, updated = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                rngs={"dropout": jax.random.fold_in(step_key, d)},
            )  # fmt: skip
            return cross_entropy(logits, y), updated["batch_stats"]

        (_, new_stats), g = jax.value_and_grad(loss, has_aux=True)(state.params)
        grads.append(g)
        stats.append(new_stats)
    mean = lambda trees: jax.tree.map(lambda *leaves: sum(leaves) / DEVICES, *trees)
    params = jax.tree.map(lambda p, g: p - LR * g, state.params, mean(grads))
    return params, mean(stats)


def main() -> None:
    assert jax.device_count() == DEVICES, jax.devices()
    train = data.load("digits", "train")
    config = training.TrainConfig(batch_size=BATCH, learning_rate=LR, progress=False)
    placement = parallel.PmapDataParallel(DEVICES)
    parts = training.build(config, train, placement, model=BatchNormDropout())
    state = training.create_train_state(parts.model, parts.tx, parts.input_shape, config.seed)
    host_state = jax.device_get(state)
    batch = next(iter(data.train_batches(train, BATCH, seed=0, epoch=0)))
    expected_params, expected_stats = by_hand(host_state, batch)

    placed, metrics = placement.put(host_state), placement.put(training.empty_metrics())
    device_batch = next(iter(placement.batches(iter([batch]))))
    placed, metrics = parts.train_step(placed, device_batch, metrics)
    got = placement.host({"params": placed.params, **placed.model_state})
    worst = 0.0
    for ours, theirs in zip(
        jax.tree.leaves(got), jax.tree.leaves({"params": expected_params,
                                               "batch_stats": expected_stats}), strict=True
    ):  # fmt: skip
        worst = max(worst, float(np.abs(np.asarray(ours) - np.asarray(theirs)).max()))
    print(f"largest difference from the device-by-device step: {worst:.3g}")
    assert worst < 1e-5, "the pmap step is not the device-by-device step with keys fold_in(., d)"
    print("pmap dropout keys: ok")


if __name__ == "__main__":
    main()
