"""JAX's persistent compilation cache, on by default for the runner, the notebooks and the tests.

A compiled XLA program is written to disk keyed by the program, the backend and the flags, so the
next process that builds the same step loads it instead of compiling (on CPU, GPU and TPU since
JAX 0.4.26; measured here on CPU with jax 0.10 and 0.12: a hit returns bit-identical results,
see tests/test_compile_cache.py). Where it goes: ``$JAXNOTES_CACHE_DIR``, else
``~/.cache/jaxnotes/xla``. ``JAXNOTES_COMPILE_CACHE=0`` (or ``python -m train --no-compile-cache``)
turns it off. Every program is cached, however small or fast to compile: the runner's short jobs
are made of small programs.

The cache directory is trusted code (a program read from it runs): keep it private to you.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_DIR = "JAXNOTES_CACHE_DIR"
ENV_SWITCH = "JAXNOTES_COMPILE_CACHE"


def default_directory() -> Path:
    """``$JAXNOTES_CACHE_DIR`` or ``~/.cache/jaxnotes/xla`` (``$XDG_CACHE_HOME`` respected)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "jaxnotes" / "xla"


def disabled_by_environment() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "off", "no")


def enable(directory: str | os.PathLike | None = None) -> Path | None:
    """Turn the cache on (unless the environment turns it off); returns its directory or None.

    Call before the first compilation; later calls only change where new programs go.
    """
    if disabled_by_environment():
        return None
    import jax

    path = Path(directory).expanduser() if directory is not None else default_directory()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return path


def active() -> bool:
    """Whether compiled programs are being written to (and read from) a persistent cache."""
    import jax

    return bool(jax.config.jax_compilation_cache_dir)


def disable() -> None:
    """Turn the cache off for this process (programs compile as usual)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", None)
