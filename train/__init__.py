"""The runner: ``python -m train --model lenet --dataset digits`` (see train/__main__.py)."""
