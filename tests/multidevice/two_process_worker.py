"""One process of the 2-process test: ``python two_process_worker.py HOST:PORT ID OUTDIR``.

Each process owns 2 CPU devices (JAX_NUM_CPU_DEVICES=2), reads only its half of every global
batch and trains on the 4-device mesh; it saves the parameters it ends with to OUTDIR and
prints how many files it wrote itself (only process 0 may write the run's logs and plots).
"""

import sys
from pathlib import Path

from jaxnotes.training import TrainConfig

# Dropout model, so the per-example keys are exercised across processes too.
CONFIG = TrainConfig(
    model="mlp", epochs=2, batch_size=32, learning_rate=0.1, progress=False, devices=4
)


def main() -> None:
    coordinator, process_id, outdir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    from jaxnotes import parallel

    parallel.maybe_initialize_distributed(coordinator, 2, process_id)
    import jax
    import numpy as np

    from jaxnotes import plots, runs, training

    writes = []  # every run file this process writes (history, summary, plot)
    for module, name in ((runs, "write_text"), (plots, "learning_curves")):
        original = getattr(module, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            writes.append(_name)
            return _original(*args, **kwargs)

        setattr(module, name, counted)
    print(f"process {jax.process_index()} of {jax.process_count()}", flush=True)
    result = training.fit(CONFIG, outdir / "run")
    params = {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(parallel.to_host(result.state.params))
    }
    np.savez(outdir / f"params_{process_id}.npz", **params)
    print(f"files written by process {process_id}: {len(writes)}", flush=True)


if __name__ == "__main__":
    main()
