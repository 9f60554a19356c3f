"""The runner's presets live in ``jaxnotes.presets`` (importable without the ``train`` package,
which a reader's own ``train.py`` would shadow in a notebook); re-exported here."""

from jaxnotes.presets import BOOK, CLASSIC, D2L1, DIGITS, EDITIONS, SOURCES, preset, source

__all__ = ["BOOK", "CLASSIC", "D2L1", "DIGITS", "EDITIONS", "SOURCES", "preset", "source"]
