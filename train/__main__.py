"""``python -m train``: train a model of the book on a data set, with the book's settings.

    python -m train                                   # LeNet on the embedded digits, offline
    python -m train --model googlenet --dataset fashion_mnist --precision bf16
    python -m train --model lenet --workdir runs/a --resume

The runner itself is ``jaxnotes.cli`` (installed as the command ``jaxnotes-train``, and
``python -m jaxnotes``); this folder is its entry point in a checkout. Writes metrics.jsonl,
learning_curves.png and checkpoints/ to --workdir (default runs/MODEL-DATASET/TIMESTAMP). The
last line on stdout is one JSON object with the results. Exit codes: 0 done, 1 the run failed
(diverged, disk full), 2 a bad flag or setting (one line on stderr), 128 + N a signal N (Ctrl-C
is 130) with a checkpoint to --resume from.
"""

from jaxnotes.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
