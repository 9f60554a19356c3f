"""``python -m train``: train a model of the book on a data set, with the book's settings.

    python -m train                                   # LeNet on the embedded digits, offline
    python -m train --model googlenet --dataset fashion_mnist --precision bf16
    python -m train --model lenet --workdir runs/a --resume

Writes metrics.jsonl, learning_curves.png and checkpoints/ to --workdir (default
runs/MODEL-DATASET/TIMESTAMP). The last line on stdout is one JSON object with the results.
Bad flags print one line and exit with code 2; a diverging run exits with code 1.
"""

from train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
