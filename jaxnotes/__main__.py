"""``python -m jaxnotes``: the runner (the flags of ``jaxnotes-train``, ``python -m train``)."""

from jaxnotes.cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m jaxnotes"))
