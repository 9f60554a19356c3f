"""The runner's entry point in a checkout: ``python -m train`` (see train/__main__.py). The
runner's code is ``jaxnotes.cli``; the installed wheel has only ``jaxnotes``."""
