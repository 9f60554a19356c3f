"""Train tests/user_models.TinyResNet (BatchNorm) on digits through fit; save the final state.

    python tests/user_model_worker.py WORKDIR [--resume]

Used by test_user_models.py's SIGKILL-and-resume test: WORKDIR/final.npz holds every parameter
and batch statistic of the final state, keyed by path.
"""

import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from user_models import TinyResNet  # noqa: E402

from jaxnotes import training  # noqa: E402


def main(workdir: str, resume: bool) -> None:
    config = training.TrainConfig(
        dataset="digits", epochs=3, batch_size=32, optimizer="adam", learning_rate=3e-3,
        checkpoint_every_steps=20, progress=False,
    )  # fmt: skip
    result = training.fit(config, workdir, model=TinyResNet(), resume=resume)
    leaves = jax.tree_util.tree_leaves_with_path(
        {"params": result.state.params, **result.state.model_state}
    )
    arrays = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}
    np.savez(Path(workdir) / "final.npz", **arrays)


if __name__ == "__main__":
    main(sys.argv[1], "--resume" in sys.argv[2:])
